"""What every stage is given: the run options (``compress run``'s flags, :class:`RunOptions`), the :class:`Context`
of one run (recipe, run folder, device, progress, stage digests), the device resolved, the command that resumes an
interrupted run, and the policy for the checkpoints a training stage finds."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from ..errors import UserError
from ..models import teacher_spec
from ..recipe import Recipe
from ..resume import prepare_checkpoints
from ..runfolder import RunDir
from ..trust import consent_to
from .cmdline import command_line_hint


@dataclass
class RunOptions:
    """How to run a recipe (``compress run``'s flags): built once by the caller, read by the pipeline and the stages
    as ``ctx.options``. ``RunOptions()`` is a plain run: stages that are up to date are skipped."""

    force: bool = False  # redo stages even when up to date
    resume: bool = False  # continue an interrupted training from its checkpoint
    only: Optional[list[str]] = None  # run only these stages (upstream artifacts must exist)
    device: Optional[str] = None  # auto | cpu | cuda; None: the recipe's
    trust_checkpoint: bool = False  # allow pickled teacher checkpoints (runs code from the file)
    nproc: int = 1  # training processes (torchrun; gloo on CPU, nccl on GPU)
    recipe_path: Optional[Path] = None  # the recipe file: the run folder records it, the resume hint names it
    # builds the distill stage's discriminators (TrainSetup.build_discriminator, called as
    # build(input_nc=..., **distill.discriminator)); None: the zoo's PatchGAN. In-process only: a torchrun launch
    # (nproc > 1) cannot carry it
    build_discriminator: Optional[Callable] = None


@dataclass
class Context:
    recipe: Recipe
    run: RunDir
    device: torch.device  # options.device (or the recipe's) resolved
    options: RunOptions = field(default_factory=RunOptions)
    progress: Optional[Callable] = None  # progress(stage, step, total, losses)
    hashes: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("device: cuda was requested but no CUDA device is available (use --device cpu)")
    try:
        return torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"device: expected auto, cpu or cuda, got {str(name)[:40]!r}") from None


def consent_to_own_import(recipe: Recipe) -> None:
    """A recipe's own ``teacher.import`` and ``student.import`` are consent to run that code for this run (see
    :mod:`compressor.trust`)."""
    if recipe.teacher.import_:
        consent_to(teacher_spec(recipe.teacher, recipe.base_dir)["import"])
    if recipe.student.import_:
        consent_to(teacher_spec({"import": recipe.student.import_}, recipe.base_dir)["import"])


def resume_command(ctx: Context) -> str:
    if command_line_hint():
        return command_line_hint()  # every flag as the user gave it
    src = ctx.options.recipe_path or "RECIPE.yaml"
    return f"compress {src} --out {ctx.run.root.parent} --resume"


def checkpoint_policy(ctx: Context, out_dir: Path, stage: str) -> bool:
    """Continue only checkpoints written for this configuration (see :mod:`compressor.resume`); the pipeline
    computed the stage's digest before calling it."""
    return prepare_checkpoints(
        out_dir, ctx.hashes[stage], resume=ctx.options.resume, force=ctx.options.force, command=resume_command(ctx)
    )
