"""The stages: each reads the run folder, calls the library, writes the run folder.

The pipeline (:mod:`compressor.pipeline`) decides which stages run; this module does them. The CLI commands that
work on existing artifacts (``validate``, ``evaluate``, ``export``, ``profile``) call the same functions here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch
from safetensors.torch import save as st_save

from ..checkpoints import list_checkpoints
from ..complexity import profile_model
from ..data import batch_keys, check_data_root, input_images, make_dataset, stack_images
from ..errors import Interrupted, RecipeError, UserError
from ..exporters.benchmark import benchmark
from ..exporters.export import (
    FORMATS,
    ExportSpec,
    export_command,
    export_model,
    export_other_formats,
    find_artifacts,
    folder_images,
    load_target,
)
from ..exporters.onnx import check_not_failed
from ..exporters.profile import profile_models, resolve_models
from ..exporters.records import RecordFile
from ..exporters.report import report_run
from ..exporters.runtimes import BACKENDS, get_backend
from ..features import check_tap_pair, probe_shapes, resolve_taps
from ..io import atomic_write_bytes, atomic_write_json, own_folder
from ..metrics import evaluate_models, evaluate_pair
from ..models import (
    build_generator,
    build_teacher,
    check_output,
    check_teacher_spec,
    input_channels,
    load_teacher,
    size_multiple,
    teacher_spec,
    with_ranges,
)
from ..models.layers import align_free_norms
from ..procs import run_group_stoppable
from ..recipe import LossesSpec, Recipe
from ..resume import prepare_checkpoints
from ..runfolder import RunDir, is_run_folder, load_run_recipe, load_run_student, load_run_teacher, profile_refs
from ..schemas import StudentPlan, TeacherMeta, read_json
from ..slim import load_student, make_student, save_student
from ..train import Direction, Trainer, TrainSetup, seed_everything
from ..trust import consent_to
from .cmdline import command_line_hint
from .plan import plan_width

log = logging.getLogger(__name__)


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


# ----------------------------------------------------------------------------------------------- pre-flight


def preflight(recipe: Recipe, build_model: bool = True) -> None:
    """The checks the schema cannot make, because they need the zoo, the data folder or the model itself.

    ``validate`` runs all of them; the pipeline runs the cheap ones before it creates the run folder and the
    model checks (``check_taps``) when the teacher stage starts.
    """
    check_teacher_spec(recipe.teacher)
    check_backends(recipe)
    if recipe.data.kind != "synthetic":
        check_data_root(recipe.data, recipe.resolve_path(recipe.data.root))
    if build_model:
        check_taps(recipe)


def check_backends(recipe: Recipe) -> None:
    """``profile.backends`` and ``student.budget.backend`` against the backend table (the schema keeps plain
    strings: it imports no exporter)."""
    try:
        for b in recipe.profile.backends:
            get_backend(b, "profile.backends")
        for f in recipe.export.formats:
            if f not in FORMATS or f in ("torch", "tensorrt"):
                names = ", ".join(n for n in FORMATS if n not in ("torch", "tensorrt"))
                raise ValueError(
                    f"export.formats: unknown format {f!r}; choose from {names} (TensorRT: export.tensorrt)"
                )
        budget = recipe.student.budget
        if budget is not None:
            row = get_backend(budget.backend, "student.budget.backend", plan=True)
            if budget.host and row.artifact != "onnx":
                onnx = ", ".join(n for n, r in BACKENDS.items() if r.artifact == "onnx")
                raise ValueError(
                    f"student.budget.host: only ONNX files travel to a remote machine; use backend {onnx}, "
                    f"not {budget.backend}"
                )
    except ValueError as exc:
        raise RecipeError(str(exc)) from None


def check_taps(recipe: Recipe) -> None:
    """Build the teacher's architecture (no weights) and check that every tapped layer exists and yields a 4-D
    feature map at ``data.size``. Users' own code runs here only through ``teacher.import``."""
    L = recipe.distill.losses
    layers = L.tapped_layers()
    if not layers:
        return
    t = recipe.teacher
    model = build_teacher(t, recipe.base_dir, init=None)
    align_free_norms(model, "teacher")  # GAN Compression's mismatched norms: one log line, not a warning per call
    key = "distill.losses.srp.layers" if L.srp.weight > 0 else "distill.losses.feat.layers"
    taps = resolve_taps(model, layers, t.taps, key=key)
    try:
        shapes = probe_shapes(model.eval(), taps, _example_input(recipe, model).zero_())
    except Exception as exc:  # noqa: BLE001 - a size or a channel count the model cannot take
        raise input_mismatch(recipe, model, exc) from None
    for alias, shape in shapes.items():
        if len(shape) != 4:
            raise RecipeError(
                f"{key}: layer {alias!r} ({taps[alias]}) gives a {len(shape)}-D output {shape}; SRP "
                f"needs (B, C, H, W) feature maps"
            )
    for alias in taps:
        if alias not in shapes:
            raise RecipeError(f"{key}: layer {alias!r} ({taps[alias]}) is not executed by the forward pass")


def input_mismatch(recipe: Recipe, model: torch.nn.Module, exc: Exception) -> RecipeError:
    """The one line for a teacher that failed on an input of the recipe's size and channels: ``data.channels`` when
    it runs on the other channel count (an RGB network on grayscale data, or the reverse), else ``data.size``."""
    d = recipe.data
    other = 1 if d.channels == 3 else 3
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, other, d.size, d.size))
    except Exception:  # noqa: BLE001 - not the channels either: the size (or something else) it cannot take
        return RecipeError(
            f"data.size: the teacher cannot run at {d.size}x{d.size} with {d.channels} channel(s) "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        )
    kind = {1: "grayscale (1-channel)", 3: "RGB (3-channel)"}
    return RecipeError(
        f"data.channels: the teacher takes {kind[other]} images but the data gives {kind[d.channels]} ones "
        f"(data.channels: {d.channels}); set data.channels: {other} or use a checkpoint made for {kind[d.channels]} "
        f"images"
    )


def check_runs(recipe: Recipe, model: torch.nn.Module) -> None:
    """One forward pass at the recipe's size and channels: a mismatch is one line (:func:`input_mismatch`); then
    the output must be one tensor (``teacher.output`` otherwise)."""
    x = _example_input(recipe, model)
    try:
        with torch.no_grad():
            model.eval()(x)
    except RecipeError:
        raise
    except Exception as exc:  # noqa: BLE001 - users' networks raise anything
        raise input_mismatch(recipe, model, exc) from None
    check_output(model, x)  # several outputs need teacher.output


def check_size(recipe: Recipe, model: torch.nn.Module) -> None:
    m = size_multiple(model)
    if recipe.data.size % m:
        raise RecipeError(
            f"data.size: {recipe.data.size} is not a multiple of {m}, which "
            f"{getattr(model, 'arch', type(model).__name__)} needs"
        )


# ----------------------------------------------------------------------------------------------- helpers


def _example_input(recipe: Recipe, model: torch.nn.Module, batch: int = 1) -> torch.Tensor:
    """A random input at the recipe's size with the data's channels (the teacher's config where it has one)."""
    cfg = getattr(model, "config", {})
    return torch.randn(batch, cfg.get("input_nc", recipe.data.channels), recipe.data.size, recipe.data.size)


def _sample_batch(recipe: Recipe, n: int, keys: tuple[str, ...]) -> Optional[dict]:
    if n <= 0:
        return None
    ds = make_dataset(recipe.data, recipe.resolve_path(recipe.data.root), "test", recipe.seed, max_items=n)
    items = [ds[i] for i in range(min(n, len(ds)))]
    return {k: stack_images([it[k] for it in items]) for k in keys if k in items[0]}


VAL_OFFSET = 10**9  # held-out crops: dataset indices no training epoch reaches (datasets take them modulo length)


def held_out_batch(ds, n: int, keys: tuple[str, ...]) -> dict:
    """A fixed batch for the plateau rule: ``n`` crops (and noise) of the training images that the training stream
    never draws (indices past :data:`VAL_OFFSET`), the same in every run with this seed."""
    items = [ds[VAL_OFFSET + j] for j in range(n)]
    return {k: stack_images([it[k] for it in items]) for k in keys if k in items[0]}


def consent_to_own_import(recipe: Recipe) -> None:
    """A recipe's own ``teacher.import`` is consent to run that code for this run (see :mod:`compressor.trust`)."""
    if recipe.teacher.import_:
        consent_to(teacher_spec(recipe.teacher, recipe.base_dir)["import"])


def resume_command(ctx: Context) -> str:
    if command_line_hint():
        return command_line_hint()  # every flag as the user gave it
    src = ctx.options.recipe_path or "RECIPE.yaml"
    return f"compress {src} --out {ctx.run.root.parent} --resume"


def run_training(
    ctx: Context,
    directions,
    losses,
    steps,
    lr,
    out_dir: Path,
    stage: str,
    *,
    taps=None,
    srp_layers=(),
    feat_channels=None,
    distill=None,
) -> dict:
    r = ctx.recipe
    d = distill or r.distill
    ds = make_dataset(r.data, r.resolve_path(r.data.root), "train", r.seed)
    setup = TrainSetup(
        kind="paired" if r.data.kind in ("synthetic", "degraded") else r.data.kind,
        directions=directions,
        dataset=ds,
        losses=losses,
        steps=steps,
        lr=lr,
        decay_from=d.decay_from,
        schedule=d.schedule,
        beta1=d.beta1,
        plateau=d.plateau,
        val_batch=held_out_batch(ds, d.plateau.val_images, batch_keys(r.data.kind))
        if d.schedule == "plateau"
        else None,
        batch_size=r.data.batch_size,
        num_workers=r.data.num_workers,
        seed=r.seed,
        taps=dict(taps or {}),
        srp_layers=list(srp_layers),
        feat_channels=dict(feat_channels or {}),
        teacher_as_real=d.teacher_as_real,
        disc_spec=d.discriminator.model_dump(),
        checkpoint_every=d.checkpoint_every,
        keep_last=d.keep_last,
        log_every=d.log_every,
        sample_every=d.sample_every,
        amp=d.amp,
        channels_last=d.channels_last,
        cache_teacher=d.cache_teacher,
        sample_batch=_sample_batch(r, min(4, r.evaluate.samples or 4), batch_keys(r.data.kind)),
        resume_command=resume_command(ctx),
    )
    if ctx.options.build_discriminator is not None:
        setup.build_discriminator = ctx.options.build_discriminator
    progress = None
    if ctx.progress:
        doing = {"doing": "training the teacher" if stage == "teacher" else "distilling the student"}
        progress = lambda step, total, losses_: ctx.progress(stage, step, total, {**losses_, **doing})  # noqa: E731
    # torchrun workers: the launching process already decided (launch_distributed)
    resume = ctx.options.resume if torch.distributed.is_initialized() else _checkpoint_policy(ctx, out_dir, stage)
    trainer = Trainer(setup, out_dir, ctx.device, progress)
    return trainer.fit(resume=resume)


def _checkpoint_policy(ctx: Context, out_dir: Path, stage: str) -> bool:
    """Continue only checkpoints written for this configuration (see :mod:`compressor.resume`); the pipeline
    computed the stage's digest before calling it."""
    return prepare_checkpoints(
        out_dir, ctx.hashes[stage], resume=ctx.options.resume, force=ctx.options.force, command=resume_command(ctx)
    )


# ----------------------------------------------------------------------------------------------- teacher, student


def stage_teacher(ctx: Context) -> None:
    r, run = ctx.recipe, ctx.run
    check_taps(r)  # a misspelt tap fails now, not after the teacher has trained
    spec = teacher_spec(r.teacher, r.base_dir)
    t = r.teacher
    if t.train is not None:
        teachers = train_teacher(ctx, spec)
    else:
        teachers = [load_teacher(t, r.base_dir, ctx.options.trust_checkpoint)]
        if r.data.kind == "unpaired":
            if not t.reverse_checkpoint:
                raise RecipeError("teacher.reverse_checkpoint: unpaired data needs the B->A teacher too")
            rev = t.model_copy(update={"checkpoint": t.reverse_checkpoint})
            teachers.append(load_teacher(rev, r.base_dir, ctx.options.trust_checkpoint))
    check_size(r, teachers[0])
    check_runs(r, teachers[0])
    reproduced = check_published_figure(ctx, teachers[0]) if t.expect is not None else None
    for model, path in zip(teachers, [run.teacher_weights, run.teacher_reverse_weights]):
        atomic_write_bytes(path, st_save({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}))
    cx = profile_model(teachers[0], tuple(_example_input(r, teachers[0]).shape))
    atomic_write_json(
        run.teacher_json,
        {
            "spec": spec,
            "source": t.checkpoint or "trained",
            "params": cx["params"],
            "macs": cx["macs"],
            "macs_paper_convention": cx["macs_paper_convention"],
            **({"published_check": reproduced} if reproduced else {}),
        },
    )


def check_published_figure(ctx: Context, teacher: torch.nn.Module) -> dict:
    """``teacher.expect``: the teacher's PSNR against the ground truth on the test split must reproduce the
    published figure within the tolerance, or the run stops with one line before anything is distilled from it
    (a wrong range, residual sign, σ or checkpoint gives a figure far off)."""
    r = ctx.recipe
    exp = r.teacher.expect
    if r.data.kind in ("folder", "unpaired"):
        raise RecipeError(f"teacher.expect: {r.data.kind} data has no ground truth to measure the teacher against")
    ds = make_dataset(r.data, r.resolve_path(r.data.root), "test", r.seed, max_items=r.evaluate.max_images)
    t0 = time.time()
    log.info("teacher: reproducing the published %.2f dB on %s (%d images)", exp.psnr, r.data.test_split, len(ds))
    progress = (
        (lambda _s, step, total, losses: ctx.progress("teacher check", step, total, losses)) if ctx.progress else None
    )
    res = evaluate_models({"teacher": teacher}, ds, ["psnr"], ctx.device, r.evaluate.batch_size, progress=progress)
    psnr = res["teacher"]["psnr"]
    doc = {
        "psnr": round(psnr, 4),
        "expected": exp.psnr,
        "tolerance": exp.tolerance,
        "split": r.data.test_split,
        "n_images": len(ds),
        "seconds": round(time.time() - t0, 1),
    }
    if abs(psnr - exp.psnr) > exp.tolerance:
        raise RecipeError(
            f"teacher.expect.psnr: the teacher scores {psnr:.2f} dB on {r.data.test_split} ({len(ds)} images), not "
            f"the published {exp.psnr:g} ± {exp.tolerance:g} dB; a teacher that does not reproduce its figure is not "
            f"distilled (check teacher.checkpoint, teacher.input_range/output_range, teacher.residual and "
            f"data.degrade)"
        )
    log.info(
        "teacher: %.2f dB on %s, the published %g ± %g dB (%.0f s)",
        psnr,
        doc["split"],
        exp.psnr,
        exp.tolerance,
        doc["seconds"],
    )
    return doc


def train_teacher(ctx: Context, spec: dict) -> list:
    """pix2pix (or CycleGAN) training of a zoo teacher: GAN + L1 (+ cycle)."""
    r = ctx.recipe
    tt = r.teacher.train
    seed_everything(r.seed)
    losses = LossesSpec.model_validate(
        {
            "gan": {"weight": tt.gan_weight, "mode": tt.gan_mode},
            "recon": {"weight": tt.recon_weight},
            "kd": {"weight": 0},
            "srp": {"weight": 0},
            "feat": {"weight": 0},
            "cycle": {"weight": r.distill.losses.cycle.weight},
        }
    )
    nets = [build_generator(spec["arch"], **spec["kwargs"])]
    if r.data.kind == "unpaired":
        nets.append(build_generator(spec["arch"], **spec["kwargs"]))
        dirs = [Direction("AB", nets[0], None, "A", "B"), Direction("BA", nets[1], None, "B", "A")]
    else:
        dirs = [Direction("G", nets[0], None, "input", "target")]
    own_folder(ctx.run.teacher_train)  # a link to a folder elsewhere is refused, never trained into
    summary = run_training(ctx, dirs, losses, tt.steps, tt.lr, ctx.run.teacher_train, "teacher")
    atomic_write_json(ctx.run.teacher_train / "train.json", summary)
    return [n.cpu().eval() for n in nets]


def plan_student(recipe: Recipe, run: RunDir, force: bool = False, teacher: Optional[torch.nn.Module] = None) -> dict:
    """``compress plan`` and ``student.width: auto``: the widest width within ``student.budget``, timed on the
    target (plan.json in the run). Times ``teacher`` when given, else the run's teacher when the teacher stage has
    run, else the recipe's architecture (latency does not depend on the weights)."""
    check_backends(recipe)
    if teacher is None and run.teacher_json.exists() and run.teacher_weights.exists():
        teacher = load_run_teacher(run)
    elif teacher is None:
        teacher = with_ranges(build_teacher(recipe.teacher, recipe.base_dir, init=None), recipe.teacher)
        teacher.compressor_spec = teacher_spec(recipe.teacher, recipe.base_dir)
        check_output(teacher, _example_input(recipe, teacher))
    return plan_width(
        teacher,
        recipe.student.budget,
        size=recipe.data.size,
        method=recipe.student.method,
        margin=recipe.student.margin,
        run_dir=run.root,
        force=force,
    )


def stage_student(ctx: Context) -> None:
    r, run = ctx.recipe, ctx.run
    seed_everything(r.seed)  # a scratch student's initial weights depend on the seed alone
    teacher = load_run_teacher(run)
    example = _example_input(r, teacher)
    width = r.student.width
    if width == "auto":  # measured on the target: the widest width within student.budget (plan.json)
        width = plan_student(r, run, teacher=teacher)["width"]
        seed_everything(r.seed)
    shape = {"keep": r.student.keep or None, "round_to": r.student.round_channels, "outputs": r.student.outputs}
    student, plan = make_student(teacher, width, r.student.method, r.student.init, example, **shape)
    save_student(student, plan, own_folder(run.student_init))
    if r.data.kind == "unpaired":
        rev = load_run_teacher(run, reverse=True)
        s2, plan2 = make_student(rev, width, r.student.method, r.student.init, example, **shape)
        save_student(s2, plan2, own_folder(run.student_init / "reverse"))


# ----------------------------------------------------------------------------------------------- distill


def distill_setup(ctx: Context):
    """Teachers, students, taps and loss settings for the distill stage."""
    r, run = ctx.recipe, ctx.run
    L = r.distill.losses
    L.log_old_weights()
    # when no loss looks at the teacher, train without loading or running it
    teacher_of = (
        (lambda reverse=False: load_run_teacher(run, reverse))
        if L.uses_teacher(r.data.kind)
        else (lambda reverse=False: None)
    )
    teacher = teacher_of()
    student = load_student(run.student_init).train()
    layers = L.tapped_layers()  # non-empty only when the teacher is used
    taps = resolve_taps(teacher, layers, r.teacher.taps) if layers else {}
    channels = check_tap_pair(teacher, student, taps, _example_input(r, student)) if taps else {}
    if r.data.kind == "unpaired":
        dirs = [
            Direction("AB", student, teacher, "A", "B"),
            Direction("BA", load_student(run.student_init / "reverse").train(), teacher_of(True), "B", "A"),
        ]
    else:
        dirs = [Direction("G", student, teacher, "input", "target")]
    srp_layers = L.srp.layers if L.srp.weight > 0 else []
    feat = {k: channels[k] for k in L.feat.layers} if L.feat.weight > 0 else {}
    return dirs, taps, srp_layers, feat


def distill_in_process(ctx: Context) -> dict:
    """One training process of the distill stage (the whole stage, or one rank under torchrun)."""
    seed_everything(ctx.recipe.seed)
    dirs, taps, srp_layers, feat = distill_setup(ctx)
    r = ctx.recipe
    summary = run_training(
        ctx,
        dirs,
        r.distill.losses,
        r.distill.steps,
        r.distill.lr,
        ctx.run.root,
        "distill",
        taps=taps,
        srp_layers=srp_layers,
        feat_channels=feat,
    )
    return {"dirs": dirs, "summary": summary}


def stage_distill(ctx: Context) -> None:
    if ctx.options.nproc > 1:
        launch_distributed(ctx)
    else:
        out = distill_in_process(ctx)
        finish_distill(ctx, out["dirs"], out["summary"])


def finish_distill(ctx: Context, dirs, summary: dict) -> None:
    run = ctx.run
    plan = read_json(run.student_init_json, StudentPlan)
    save_student(dirs[0].student.cpu().eval(), plan, run.root)
    if len(dirs) > 1:
        plan2 = read_json(run.student_init / "reverse" / "student.json", StudentPlan)
        save_student(dirs[1].student.cpu().eval(), plan2, own_folder(run.student_reverse))
    atomic_write_json(run.distill_json, summary)


def distributed_interrupted(ctx: Context, stop: Path) -> Interrupted:
    """The :class:`Interrupted` of a stopped ``--nproc`` run, naming its newest checkpoint."""
    stop.unlink(missing_ok=True)
    ckpts = list_checkpoints(ctx.run.checkpoints)
    where = f"at step {ckpts[-1][0]}; checkpoint written to {ckpts[-1][1]}" if ckpts else "before the first checkpoint"
    return Interrupted(f"interrupted {where}", resume_command(ctx))


def last_metrics_line(path: Path, tail: int = 1 << 16) -> Optional[dict]:
    """The newest complete line of a ``metrics.jsonl`` (read from its last ``tail`` bytes, without following a
    link or blocking on a FIFO); None when there is none yet."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        start = max(0, os.fstat(fd).st_size - tail)
        f.seek(start)
        lines = f.read(tail).decode("utf-8", "replace").splitlines()
    for line in reversed(lines[1:] if start else lines):  # a tail's first line may be cut
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and isinstance(doc.get("step"), int):
            return doc
    return None


@contextlib.contextmanager
def _relay_training_progress(ctx: Context, stage: str, steps: int, every: float = 1.0):
    """``--nproc N``: the workers have no progress callback; their rank 0 appends to metrics.jsonl every
    ``distill.log_every`` steps, and a thread passes the newest line on to ``ctx.progress`` (steps, losses,
    gradient shares), so the heartbeat shows steps, not only "working…"."""
    if ctx.progress is None:
        yield
        return
    done = threading.Event()

    def relay() -> None:
        seen = None
        while not done.wait(every):
            line = last_metrics_line(ctx.run.metrics)
            if line is not None and line["step"] != seen:
                seen = line["step"]
                keep = {k: v for k, v in line.items() if ("/" in k and ":" not in k) or k.startswith("share:")}
                ctx.progress(stage, seen, steps, {**keep, "doing": f"distilling in {ctx.options.nproc} processes"})

    thread = threading.Thread(target=relay, name="progress-relay", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=5)


def launch_distributed(ctx: Context) -> dict:
    """Run the distill stage in ``nproc`` processes with torchrun (gloo on CPU, nccl on GPU)."""
    if ctx.options.build_discriminator is not None:
        raise ValueError("a discriminator builder works in one process only (nproc 1), not under torchrun")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={ctx.options.nproc}",
        "-m",
        "compressor.app.worker",
        str(ctx.run.root),
        "--device",
        ctx.device.type,
    ]
    if _checkpoint_policy(ctx, ctx.run.root, "distill"):
        cmd.append("--resume")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    stop = ctx.run.root / ".stop"
    stop.unlink(missing_ok=True)
    try:  # torchrun and its workers die with this process; on Ctrl-C they checkpoint and stop first
        with _relay_training_progress(ctx, "distill", ctx.recipe.distill.steps):
            proc = run_group_stoppable(cmd, stop, env=env)
    except KeyboardInterrupt:
        raise distributed_interrupted(ctx, stop) from None
    if stop.exists():  # asked to stop (SIGINT reached the workers' launcher another way)
        raise distributed_interrupted(ctx, stop)
    if proc.returncode != 0:
        raise UserError(f"distributed training failed (exit {proc.returncode}); see the messages above")
    return read_json(ctx.run.distill_json)


# ----------------------------------------------------------------------------------------------- evaluate


EVALUATE_DOING = "loading the teacher, the student and the test images"


def evaluate_run(
    run: RunDir, recipe: Recipe, device: torch.device, progress=None, inception_weights: Optional[str] = None
) -> dict:
    """Teacher and student of a run side by side: eval.json (with the teacher's published check, where the recipe
    asked for one) and samples/eval.png."""
    check = read_json(run.teacher_json, TeacherMeta).get("published_check") if run.teacher_json.exists() else None
    if progress:
        progress("evaluate", 0, 0, {"doing": EVALUATE_DOING})
    return evaluate_pair(
        load_run_teacher(run),
        load_run_student(run),
        recipe,
        device,
        run.eval_json,
        run.eval_samples,
        progress,
        inception_weights,
        extra={"published_check": check} if check else None,
    )


def stage_evaluate(ctx: Context) -> None:
    evaluate_run(ctx.run, ctx.recipe, ctx.device, progress=ctx.progress)


# ----------------------------------------------------------------------------------------------- export


def run_export_metadata(recipe: Recipe, model: torch.nn.Module) -> dict:
    """ONNX metadata a run adds to every export (the same for the stage and ``compress export``)."""
    plan = getattr(model, "student_plan", None) or {}
    t = recipe.teacher
    return {
        "recipe_hash": recipe.digest(),
        "width": plan.get("width", 1.0),
        # the ONNX takes and returns [-1, 1]; a network with another native range converts inside
        "value_range": "[-1, 1]",
        "network_input_range": json.dumps(list(t.input_range)),
        "network_output_range": json.dumps(list(t.output_range)),
        **({"network_output": t.output} if t.output is not None else {}),  # a teacher returning several tensors
    }


def recipe_samples(recipe: Recipe, n: int = 3) -> torch.Tensor:
    return input_images(recipe.data, recipe.resolve_path(recipe.data.root), "test", recipe.seed, n)


def recipe_calibration(recipe: Recipe, n: int) -> list:
    imgs = input_images(recipe.data, recipe.resolve_path(recipe.data.root), "train", recipe.seed, n)
    return [x[None].numpy() for x in imgs]


def stage_export(ctx: Context) -> dict:
    """Student ONNX (with INT8 and TensorRT as the recipe asks) and teacher ONNX (for profiling): export.json."""
    r, run = ctx.recipe, ctx.run
    ex = r.export
    student, teacher = load_run_student(run), load_run_teacher(run)
    samples = recipe_samples(r)
    trt = ex.tensorrt
    wants_int8 = ex.int8.enabled or (trt is not None and trt.precision == "int8")
    calibration = recipe_calibration(r, ex.int8.calib_images) if wants_int8 else None
    others = [f for f in ex.formats if f != "onnx"]
    common = dict(
        size=r.data.size,
        static=ex.static,
        dynamic=list(ex.onnx.dynamic),
        opset=ex.onnx.opset,
        parity_tol=ex.onnx.parity_tol,
        slim=ex.onnx.slim,
    )
    spec = ExportSpec(
        **common,
        name="student",
        int8=ex.int8.enabled,
        tensorrt=trt is not None,
        precision=trt.precision if trt else "fp32",
        trt_versions=(10, 11),
        emit_trtexec=trt is not None,
        workspace_mb=trt.workspace_mb if trt else 1024,
        metadata=run_export_metadata(r, student),
    )
    records = RecordFile(run.root)  # earlier records kept; each new one written once its file is in place
    say = ctx.progress or (lambda *a: None)
    say("export", 0, 0, {"doing": f"student.onnx{' and INT8' if ex.int8.enabled else ''} (parity against PyTorch)"})
    rec = export_model(student, run.root, spec, samples, calibration, journal=records.write)
    say("export", 0, 0, {"doing": "teacher.onnx (for profiling)"})
    trec = export_model(
        teacher,
        run.root,
        ExportSpec(**common, name="teacher", metadata=run_export_metadata(r, teacher)),
        samples,
        journal=records.write,
    )
    rec["onnx"]["teacher"] = trec["onnx"]["teacher"]
    records.write(rec)
    if others:  # the recipe's other targets (OpenVINO, phone formats), each checked against PyTorch
        more = export_other_formats(
            student,
            run.root,
            others,
            samples,
            calibration,
            int8=ex.int8.enabled,
            static=ex.static,
            size=r.data.size,
            metadata=run_export_metadata(r, student),
            journal=lambda m: records.write({**rec, "formats": m["formats"], "notes": rec["notes"] + m["notes"]}),
            progress=ctx.progress,
        )
        rec["formats"], rec["notes"] = more["formats"], rec["notes"] + more["notes"]
    ctx.notes.extend(rec["notes"])
    records.write(rec)
    return rec


def export_target(
    target: Path,
    spec: ExportSpec,
    *,
    arch: Optional[str] = None,
    trust_checkpoint: bool = False,
    progress: Optional[Callable] = None,
) -> dict:
    """``compress export``: a run folder (with its recipe's data and metadata, as the export stage uses them), a
    student folder or a bare checkpoint. Writes export.json beside the exported files."""
    target = Path(target)
    if progress:
        progress("export", 0, 0, {"doing": f"loading {target.name or target}"})
    if not is_run_folder(target):
        model, out_dir = load_target(target, arch, trust_checkpoint)
        return export_command(model, Path(spec.out or out_dir), spec, progress=progress)
    run = RunDir(target)
    recipe = load_run_recipe(run)
    model = load_run_student(run)
    spec.size = spec.size or recipe.data.size
    samples = calibration = None
    if spec.data is None:  # the run's own data, at the export size
        data = recipe if spec.size == recipe.data.size else load_run_recipe(run, [f"data.size={spec.size}"])
        samples = recipe_samples(data)
        if spec.precision == "int8":
            calibration = recipe_calibration(data, spec.calib_images)
    spec.metadata = run_export_metadata(recipe, model)
    spec.parity_tol = recipe.export.onnx.parity_tol
    res = export_command(model, Path(spec.out or target), spec, samples, calibration, progress)
    if spec.out is None and res["onnx"]:
        # student.onnx was rewritten with this command's settings, which may not be the recipe's: the pipeline's
        # export stage runs again rather than call it up to date (records of other formats are added, kept)
        run.forget("export")
    return res


def benchmark_target(
    target: Path,
    *,
    data: Optional[Path] = None,
    size: Optional[int] = None,
    formats: Optional[list[str]] = None,
    images: int = 8,
    calib_images: int = 32,
    threads: Optional[int] = None,
    warmup: int = 5,
    iters: int = 20,
    progress: Optional[Callable] = None,
) -> tuple[dict, Path]:
    """``compress benchmark``: every format of a run's student (compared with the teacher's output on the run's
    test images, calibrated on its train images) or of a student folder (compared with its own PyTorch output on
    ``data``'s images, or random inputs). Files go to ``<target>/benchmark/``; returns (document, benchmark.json)."""
    target = Path(target)
    if is_run_folder(target):
        run = RunDir(target)
        recipe = load_run_recipe(run)
        if size and size != recipe.data.size:
            recipe = load_run_recipe(run, [f"data.size={size}"])
        model, teacher = load_run_student(run), load_run_teacher(run)
        x = recipe_samples(recipe, images)
        with torch.inference_mode():
            reference = torch.cat([teacher.eval()(x[i : i + 1]) for i in range(len(x))]).numpy()
        kind, metadata = "teacher", run_export_metadata(recipe, model)
        calibration = recipe_calibration(recipe, calib_images)
        torch_ref = {"type": "student_dir", "path": str(run.root)}
        size = recipe.data.size
    elif target.is_dir() and (target / "student.json").exists():
        model = load_student(target).eval()
        size = size or max(256, size_multiple(model))
        if size % size_multiple(model):
            raise UserError(f"--size: {size} is not a multiple of {size_multiple(model)}, which this model needs")
        if data is not None:
            x = folder_images(data, size, images)
            calibration = [c[None].numpy() for c in folder_images(data, size, calib_images)]
            kind = "student (PyTorch), on --data images"
        else:
            x = (
                torch.rand(images, input_channels(model), size, size, generator=torch.Generator().manual_seed(0)) * 2
                - 1
            )
            calibration = None
            kind = "student (PyTorch), on random inputs (no --data: INT8 rows need calibration images)"
        with torch.inference_mode():
            reference = torch.cat([model(x[i : i + 1]) for i in range(len(x))]).numpy()
        metadata = {"width": (getattr(model, "student_plan", None) or {}).get("width", 1.0)}
        torch_ref = {"type": "student_dir", "path": str(target)}
    else:
        raise UserError(f"{target}: not a run folder (recipe.resolved.yaml) or a student folder (student.json)")
    doc = benchmark(
        model,
        own_folder(target / "benchmark"),  # a link to a folder elsewhere is refused, never written through
        x,
        reference,
        kind,
        torch_ref=torch_ref,
        calibration=calibration,
        size=size,
        metadata=metadata,
        threads=threads,
        warmup=warmup,
        iters=iters,
        formats=formats,
        progress=progress,
    )
    path = target / "benchmark.json"
    atomic_write_json(path, doc)
    if is_run_folder(target) and RunDir(target).report_md.exists():
        report_run(RunDir(target))  # the run's report shows the new table now (the report stage's digest too)
    return doc, path


# ----------------------------------------------------------------------------------------------- profile, report


def profile_targets(targets: list[str]) -> list[dict]:
    """Model references for ``compress profile``: run folders through the run folder, the rest as files/zoo names."""
    refs = []
    for t in targets:
        if is_run_folder(t):
            run_refs = profile_refs(RunDir(t))
            for ref in run_refs:  # every exported file of the run (OpenVINO IR, ...), by the kind a backend runs
                ref["artifacts"] = find_artifacts(t, ref["role"])
            refs.extend(run_refs)
        else:
            refs.extend(resolve_models([t]))
    return refs


def stage_profile(ctx: Context) -> dict:
    """Teacher and student of the run, timed on the run's device for the torch backends."""
    r, run = ctx.recipe, ctx.run
    spec = r.profile
    for f in (run.student_onnx, run.teacher_onnx, run.student_plan):
        if f.exists():
            check_not_failed(f)
    refs = profile_refs(run)
    for ref in refs:  # the files the export stage wrote, by the kind of file a backend runs
        ref["artifacts"] = find_artifacts(run.root, ref["role"])
    backends = list(spec.backends)  # and each exported format, timed in its own runtime
    backends += [FORMATS[f].backend for f in r.export.formats if FORMATS[f].backend not in backends]
    doc = profile_models(
        refs,
        backends,
        spec.batch,
        spec.size or [r.data.size],
        warmup=spec.warmup,
        iters=spec.iters,
        threads=spec.threads,
        device=ctx.device.type,
        progress=ctx.progress,
    )
    atomic_write_json(run.profile_json, doc)
    return doc


def stage_report(ctx: Context) -> None:
    report_run(ctx.run)


# ----------------------------------------------------------------------------------------------- the stage table


@dataclass(frozen=True)
class Stage:
    """One stage: everything the pipeline, the run folder and ``--only`` know about it.

    ``sections`` are the recipe sections hashed into its digest (``more_sections`` adds those that depend on the
    recipe; ``input_files`` are files fingerprinted by path, size and mtime); the digests of ``upstream`` stages
    are hashed in too. ``outputs`` are the files it writes, by path relative to the run folder
    (:meth:`~compressor.runfolder.RunDir.file`): a stage whose digest is recorded and whose outputs exist is up to
    date. ``checkpoints`` is the folder (relative, ``"."`` for the run folder) where a training stage keeps its
    checkpoints (checked before the run folder is touched).
    """

    name: str
    func: Callable[[Context], object]
    upstream: tuple[str, ...] = ()
    sections: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    more_sections: Optional[Callable[[Recipe], tuple[str, ...]]] = None
    input_files: Optional[Callable[[Recipe, RunDir], tuple[Optional[Path], ...]]] = None
    checkpoints: Optional[str] = None
    doing: str = "working"  # what the stage's first progress line says it does

    def digest_sections(self, recipe: Recipe) -> list[str]:
        return list(self.sections) + list(self.more_sections(recipe) if self.more_sections else ())


def _teacher_sections(r: Recipe) -> tuple[str, ...]:
    return ("data",) if r.teacher.train is not None else ()


def _teacher_files(r: Recipe, run: RunDir) -> tuple[Optional[Path], ...]:
    return (r.resolve_path(r.teacher.checkpoint), r.resolve_path(r.teacher.reverse_checkpoint))


def _report_files(r: Recipe, run: RunDir) -> tuple[Optional[Path], ...]:
    """benchmark.json, written by ``compress benchmark``: a new table re-renders the report. Left out while there
    is none, so the report's digest of a run without one is what it always was."""
    bench = run.root / "benchmark.json"
    return (bench,) if bench.exists() else ()


# In pipeline order. A new stage is its function above plus one row here, naming the files it writes.
STAGES: tuple[Stage, ...] = (
    Stage(
        "teacher",
        stage_teacher,
        sections=("teacher",),
        more_sections=_teacher_sections,
        input_files=_teacher_files,
        outputs=("teacher.json", "teacher.safetensors"),
        checkpoints="teacher_train",
        doing="loading the teacher (or training it: teacher.train)",
    ),
    Stage(
        "student",
        stage_student,
        upstream=("teacher",),
        sections=("student",),
        outputs=("student_init/student.json", "student_init/student.safetensors"),
        doing="slimming the teacher into the student (timing widths first for student.width: auto)",
    ),
    Stage(
        "distill",
        stage_distill,
        upstream=("student",),
        sections=("distill", "data"),
        outputs=("student.safetensors", "student.json", "distill.json"),
        checkpoints=".",
        doing="loading the data, teacher and student for distillation",
    ),
    Stage(
        "evaluate",
        stage_evaluate,
        upstream=("distill",),
        sections=("evaluate", "data"),
        outputs=("eval.json",),
        doing=EVALUATE_DOING,
    ),
    Stage(
        "export",
        stage_export,
        upstream=("distill",),
        sections=("export", "data"),
        outputs=("export.json", "student.onnx"),
        doing="loading the student and the teacher to export",
    ),
    Stage(
        "profile",
        stage_profile,
        upstream=("export",),
        sections=("profile", "data"),
        outputs=("profile.json",),
        doing="timing the teacher and the student, each configuration in its own process",
    ),
    Stage(
        "report",
        stage_report,
        upstream=("evaluate", "profile"),
        outputs=("report.md", "report.html"),
        input_files=_report_files,
        doing="writing report.md and report.html",
    ),
)
STAGE_BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}


def check_stage_names(names: Iterable[str], key: str = "--only") -> None:
    """A ``UserError`` naming ``key`` for the first name that is not a stage."""
    for name in names:
        if name not in STAGE_BY_NAME:
            raise UserError(f"{key}: unknown stage {name!r}; stages are {', '.join(STAGE_BY_NAME)}")
