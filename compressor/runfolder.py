"""The run folder ``runs/<name>/``: every artifact path, "is this a run", its recipe and its models.

This module is the one owner of the folder's layout: the properties name the files the library and the commands
read; a stage's own outputs are named by relative path in its row of :data:`compressor.app.stages.STAGES` and found
with :meth:`RunDir.file`. The stages read and write through it; the CLI commands that
work on existing artifacts (``evaluate``, ``export``, ``profile``) find the run's recipe, teacher and student here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import ContextManager, Iterable, Optional

import torch
import torch.nn as nn
from safetensors.torch import load_file

from .errors import CheckpointError, UserError
from .io import NotRegularFile, atomic_write_json, refuse_link, refuse_special
from .lock import run_lock
from .models import load_saved_teacher
from .qat import rebuild
from .recipe import Recipe, load_recipe
from .schemas import QuantizeJson, RunJson, StagesJson, TeacherMeta, check, loads, read_json, read_text_bounded
from .slim import load_student
from .trust import all_trusted

log = logging.getLogger(__name__)


class RunDir:
    """Knows every artifact path of ``runs/<name>/``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __getattr__(self, item):  # pragma: no cover - helpful error for typos
        raise AttributeError(f"RunDir has no artifact {item!r}")

    recipe = property(lambda s: s.root / "recipe.resolved.yaml")
    run_json = property(lambda s: s.root / "run.json")
    stages_json = property(lambda s: s.root / "stages.json")
    teacher_json = property(lambda s: s.root / "teacher.json")
    teacher_weights = property(lambda s: s.root / "teacher.safetensors")
    teacher_reverse_weights = property(lambda s: s.root / "teacher_reverse.safetensors")
    teacher_train = property(lambda s: s.root / "teacher_train")
    student_init = property(lambda s: s.root / "student_init")
    student_init_json = property(lambda s: s.root / "student_init" / "student.json")
    student_init_weights = property(lambda s: s.root / "student_init" / "student.safetensors")
    student_dir = property(lambda s: s.root)
    student_weights = property(lambda s: s.root / "student.safetensors")
    student_json = property(lambda s: s.root / "student.json")
    student_reverse = property(lambda s: s.root / "student_reverse")
    checkpoints = property(lambda s: s.root / "checkpoints")
    metrics = property(lambda s: s.root / "metrics.jsonl")
    samples = property(lambda s: s.root / "samples")
    distill_json = property(lambda s: s.root / "distill.json")
    eval_json = property(lambda s: s.root / "eval.json")
    eval_samples = property(lambda s: s.root / "samples" / "eval.png")
    quantize_dir = property(lambda s: s.root / "quantize")
    teacher_cache = property(lambda s: s.root / "teacher_cache")
    quantize_json = property(lambda s: s.root / "quantize.json")
    student_qad = property(lambda s: s.root / "student.qad.safetensors")
    student_onnx = property(lambda s: s.root / "student.onnx")
    student_int8 = property(lambda s: s.root / "student.int8.onnx")
    student_trt_int8 = property(lambda s: s.root / "student.trt-int8.onnx")
    student_plan = property(lambda s: s.root / "student.plan")
    teacher_onnx = property(lambda s: s.root / "teacher.onnx")
    export_json = property(lambda s: s.root / "export.json")
    profile_json = property(lambda s: s.root / "profile.json")
    report_md = property(lambda s: s.root / "report.md")
    report_html = property(lambda s: s.root / "report.html")

    # the sub-folders a run writes into, and the files it reads back as its own: never links (see refuse_links)
    SUBFOLDERS = (
        "checkpoints",
        "samples",
        "benchmark",
        "student_init",
        "student_init/reverse",
        "student_reverse",
        "teacher_train",
        "teacher_train/checkpoints",
        "teacher_train/samples",
        "quantize",
        "quantize/checkpoints",
        "quantize/samples",
        "teacher_cache",
    )
    OWN_FILES = (
        "recipe.resolved.yaml",
        "run.json",
        "stages.json",
        "teacher.json",
        "teacher.safetensors",
        "teacher_reverse.safetensors",
        "student.json",
        "student.safetensors",
        "student_init/student.json",
        "student_init/student.safetensors",
        "student_init/reverse/student.json",
        "student_init/reverse/student.safetensors",
        "student_reverse/student.json",
        "student_reverse/student.safetensors",
        "distill.json",
        "quantize.json",
        "student.qad.safetensors",
    )

    def refuse_links(self) -> None:
        """One UserError line naming the first sub-folder or own artifact that is a symlink: a link to a folder
        elsewhere would be written and pruned through (checkpoints, samples, benchmark files), a linked model
        or record would be trusted as this run's. Outputs the run rewrites (eval.json, student.onnx, ...) are
        replaced by the rename that writes them instead."""
        for name in self.SUBFOLDERS + self.OWN_FILES:
            refuse_link(self.root / name)

    def file(self, name: str) -> Path:
        """A path inside the run folder by its relative name (``"eval.json"``, ``"student_init/student.json"``,
        ``"."``): how a stage names the files it writes (its ``outputs`` in :data:`compressor.app.stages.STAGES`)."""
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"run folder artifact {name!r}: expected a relative path inside the run folder")
        return self.root / rel

    def artifacts(self, names: Iterable[str]) -> list[Path]:
        """The paths of artifacts by relative name (a stage's ``outputs``)."""
        return [self.file(n) for n in names]

    # ---- stage records
    def records(self) -> dict:
        if not self.stages_json.exists():
            return {}
        try:
            doc = loads(read_text_bounded(self.stages_json), str(self.stages_json))
        except NotRegularFile:
            raise  # a FIFO or device there: one line, not "every stage runs again"
        except UserError:
            return {}  # cut by a crash: every stage runs again
        try:
            return check(doc, StagesJson, str(self.stages_json))
        except UserError as exc:
            raise UserError(f"{exc}; remove it to run every stage again") from None

    def record(self, stage: str, digest: str, seconds: float) -> None:
        recs = self.records()
        recs[stage] = {"hash": digest, "seconds": round(seconds, 2), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        atomic_write_json(self.stages_json, recs)

    def forget(self, stage: str) -> None:
        recs = self.records()
        if recs.pop(stage, None) is not None:
            atomic_write_json(self.stages_json, recs)

    def has(self, names: Iterable[str]) -> bool:
        """Whether every named artifact exists."""
        return all(p.exists() for p in self.artifacts(names))

    def up_to_date(self, stage: str, digest: str, outputs: Iterable[str]) -> bool:
        """Whether ``stage`` was recorded with ``digest`` and its ``outputs`` (artifact names) all exist."""
        rec = self.records().get(stage)
        return bool(rec and rec.get("hash") == digest and self.has(outputs))


def is_run_folder(path: str | Path) -> bool:
    """Whether ``path`` is a run folder written by the pipeline (its resolved recipe and its run.json)."""
    run = RunDir(path)
    if not run.root.is_dir():
        return False
    for f in (run.recipe, run.run_json):
        refuse_special(f)  # a FIFO or device there: one line, not "not a run folder"
    return run.recipe.is_file() and run.run_json.is_file()


def enclosing_run(path: str | Path) -> Optional[Path]:
    """The run folder ``path`` lies in (``path`` itself or the nearest parent that is a run folder, links
    resolved), else None: where a command's output lands inside a run, that run's lock must be held."""
    p = Path(os.path.realpath(path))
    for folder in (p, *p.parents):
        if is_run_folder(folder):
            return folder
    return None


def lock_for(path: str | Path) -> ContextManager:
    """The lock of the run folder that ``path`` (a file or folder a command writes) lies in; a no-op outside run
    folders. Every command writing into a run folder holds it, so none writes while a pipeline does."""
    run = enclosing_run(path)
    return run_lock(run) if run is not None else contextlib.nullcontext()


def read_run_json(run: RunDir) -> Optional[dict]:
    """``run.json`` checked (None when absent or cut by a crash); a wrong structure is one UserError line."""
    if not run.run_json.is_file():
        return None
    try:
        doc = loads(read_text_bounded(run.run_json), str(run.run_json))
    except UserError:
        return None
    return check(doc, RunJson, str(run.run_json))


def recipe_source(run: RunDir) -> Optional[Path]:
    """The recipe file the run was made from (relative paths in the recipe resolve against its folder)."""
    src = (read_run_json(run) or {}).get("recipe_source")
    return Path(src) if src else None


def read_teacher_meta(run: RunDir) -> dict:
    """``teacher.json``, checked against :class:`compressor.schemas.TeacherMeta`."""
    if not run.teacher_json.exists():
        raise UserError(f"{run.teacher_json}: not found; run the teacher stage first")
    return read_json(run.teacher_json, TeacherMeta)


def load_run_recipe(run: RunDir, overrides: Optional[list[str]] = None) -> Recipe:
    """The run's resolved recipe, with relative paths resolving against the original recipe's folder."""
    run.refuse_links()
    if not run.recipe.is_file():
        raise UserError(f"{run.root}: not a run folder (no {run.recipe.name})")
    recipe = load_recipe(run.recipe, overrides, check_paths=False)
    src = recipe_source(run)
    if src is not None:
        recipe._base_dir = src.parent
    if recipe.evaluate.inception_weights and not all_trusted():
        # a folder's recorded recipe names no file that runs (FID weights are TorchScript: loading runs code)
        log.warning(
            "%s: evaluate.inception_weights (%s) is TorchScript, which runs code; not loaded from a run folder's "
            "recipe (pass --inception-weights, or --trust-code if you trust the folder)",
            run.recipe,
            str(recipe.evaluate.inception_weights)[:120],
        )
        recipe.evaluate.inception_weights = None
    return recipe


def load_run_teacher(run: RunDir, reverse: bool = False) -> nn.Module:
    """The teacher as the teacher stage wrote it (no pickle)."""
    run.refuse_links()
    meta = read_teacher_meta(run)
    return load_saved_teacher(meta["spec"], run.teacher_reverse_weights if reverse else run.teacher_weights)


def load_run_student(run: RunDir, reverse: bool = False) -> nn.Module:
    """The distilled student (``reverse``: the B->A student of unpaired data)."""
    run.refuse_links()
    return load_student(run.student_reverse if reverse else run.student_dir)


def load_run_qad(run: RunDir) -> Optional[nn.Module]:
    """The quantisation-aware student of a run (``distill.quantize``), or None where the run has none."""
    run.refuse_links()
    if not run.student_qad.is_file():
        return None
    meta = read_json(run.quantize_json, QuantizeJson)
    try:
        state = load_file(str(run.student_qad))
    except Exception as exc:  # safetensors raises several types
        raise CheckpointError(f"{run.student_qad}: unreadable ({exc})") from None
    example = torch.zeros(tuple(meta["example_shape"]))
    try:
        return rebuild(load_run_student(run), example, state, meta["taps"])
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(
            f"{run.student_qad}: does not fit the run's student ({str(exc).splitlines()[0][:160]})"
        ) from None


def profile_refs(run: RunDir) -> list[dict]:
    """Model references (see :func:`exporters.profile.resolve_models`) for the teacher and student of a run."""
    run.refuse_links()
    meta = read_teacher_meta(run)
    name = run.root.name

    def present(p: Path) -> Optional[str]:
        return str(p) if p.is_file() else None  # a FIFO or device there is no model file

    return [
        {
            "label": f"{name}/teacher",
            "role": "teacher",
            # an ONNX teacher has no PyTorch model to time: its own file is teacher.onnx
            "torch": None
            if "onnx" in meta["spec"]
            else {"type": "saved_teacher", "spec": meta["spec"], "weights": str(run.teacher_weights)},
            "onnx": present(run.teacher_onnx),
        },
        {
            "label": f"{name}/student",
            "role": "student",
            "torch": {"type": "student_dir", "path": str(run.root)},
            "onnx": present(run.student_onnx),
            "int8": present(run.student_int8),
            "engine": present(run.student_plan),
        },
    ]
