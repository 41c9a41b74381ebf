"""Stage order, the run directory, and skip/resume logic.

Each stage is a plain function of the recipe and the run directory. A stage whose outputs exist and whose
inputs (its recipe sections and the upstream stages) are unchanged is skipped; ``force`` redoes it; ``resume``
continues an interrupted training stage. ``compress RECIPE`` is these stages in a row; ``compress export``,
``profile`` and ``report`` call the same functions on existing artifacts.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from .errors import RecipeError, UserError
from .io import atomic_write_json, atomic_write_text
from .recipe import Recipe

log = logging.getLogger(__name__)

STAGES = ["teacher", "student", "distill", "evaluate", "export", "profile", "report"]
UPSTREAM = {"teacher": [], "student": ["teacher"], "distill": ["student"], "evaluate": ["distill"],
            "export": ["distill"], "profile": ["export"], "report": ["evaluate", "profile"]}
SECTIONS = {"teacher": ["teacher"], "student": ["student"], "distill": ["distill", "data"],
            "evaluate": ["evaluate", "data"], "export": ["export", "data"], "profile": ["profile", "data"],
            "report": []}


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
    student_onnx = property(lambda s: s.root / "student.onnx")
    student_int8 = property(lambda s: s.root / "student.int8.onnx")
    student_plan = property(lambda s: s.root / "student.plan")
    teacher_onnx = property(lambda s: s.root / "teacher.onnx")
    export_json = property(lambda s: s.root / "export.json")
    profile_json = property(lambda s: s.root / "profile.json")
    report_md = property(lambda s: s.root / "report.md")
    report_html = property(lambda s: s.root / "report.html")

    def outputs(self, stage: str) -> list[Path]:
        return {
            "teacher": [self.teacher_json, self.teacher_weights],
            "student": [self.student_init / "student.json", self.student_init / "student.safetensors"],
            "distill": [self.student_weights, self.student_json, self.distill_json],
            "evaluate": [self.eval_json],
            "export": [self.export_json, self.student_onnx],
            "profile": [self.profile_json],
            "report": [self.report_md, self.report_html],
        }[stage]

    # ---- stage records
    def records(self) -> dict:
        if not self.stages_json.exists():
            return {}
        try:
            return json.loads(self.stages_json.read_text())
        except json.JSONDecodeError:
            return {}

    def record(self, stage: str, digest: str, seconds: float) -> None:
        recs = self.records()
        recs[stage] = {"hash": digest, "seconds": round(seconds, 2), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        atomic_write_json(self.stages_json, recs)

    def forget(self, stage: str) -> None:
        recs = self.records()
        if recs.pop(stage, None) is not None:
            atomic_write_json(self.stages_json, recs)

    def up_to_date(self, stage: str, digest: str) -> bool:
        rec = self.records().get(stage)
        return bool(rec and rec.get("hash") == digest and all(p.exists() for p in self.outputs(stage)))


@dataclass
class Context:
    recipe: Recipe
    run: RunDir
    device: torch.device
    resume: bool = False
    force: bool = False
    trust_checkpoint: bool = False
    nproc: int = 1
    progress: Optional[Callable] = None  # progress(stage, step, total, losses)
    recipe_path: Optional[Path] = None
    hashes: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device: cuda was requested but no CUDA device is available (use --device cpu)")
    return torch.device(name)


def _file_fingerprint(path: Optional[Path]) -> str:
    if path is None or not path.exists():
        return "none"
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}"


def stage_digest(ctx: Context, stage: str) -> str:
    r = ctx.recipe
    h = hashlib.sha256()
    h.update(stage.encode())
    secs = list(SECTIONS[stage])
    if stage == "teacher":
        if r.teacher.train is not None:
            secs.append("data")
        h.update(_file_fingerprint(r.resolve_path(r.teacher.checkpoint)).encode())
        h.update(_file_fingerprint(r.resolve_path(r.teacher.reverse_checkpoint)).encode())
    if secs:
        h.update(r.section_hash(*secs).encode())
    for up in UPSTREAM[stage]:
        h.update((ctx.hashes.get(up) or stage_digest(ctx, up)).encode())
    digest = h.hexdigest()[:16]
    ctx.hashes[stage] = digest
    return digest


# ----------------------------------------------------------------------------------------------- run dir


def prepare_run_dir(recipe: Recipe, out_root: Path, force: bool, recipe_path: Optional[Path]) -> RunDir:
    """Create runs/<name>/, refusing (unless ``force``) to mix artifacts of a different recipe."""
    run = RunDir(Path(out_root) / recipe.name)
    source = str(recipe_path.resolve()) if recipe_path else None
    if run.run_json.exists():
        try:
            prev = json.loads(run.run_json.read_text())
        except json.JSONDecodeError:
            prev = {}
        if prev.get("recipe_source") != source:
            if not force:
                raise UserError(f"{run.root} holds a run of a different recipe ({prev.get('recipe_source')}); "
                                f"choose another name or --out, or pass --force to move it aside and start over")
            aside = run.root.with_name(f"{run.root.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
            shutil.move(str(run.root), str(aside))
            log.warning("moved the previous run of another recipe to %s", aside)
    elif run.root.exists() and any(run.root.iterdir()) and not force:
        raise UserError(f"{run.root} exists and was not written by compressor; choose another name or --out, or "
                        f"pass --force")
    run.root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run.run_json, {"recipe_source": source, "name": recipe.name})
    atomic_write_text(run.recipe, recipe.to_yaml())
    return run


# ----------------------------------------------------------------------------------------------- stages


def _teacher_spec_dict(recipe: Recipe) -> dict:
    t = recipe.teacher
    if t.arch:
        from .models import build_generator

        cfg = build_generator(t.arch, init=None, **t.kwargs).config
        return {"arch": t.arch, "kwargs": {k: cfg[k] for k in ("input_nc", "output_nc", "ngf", "norm",
                                                                 "use_dropout")}}
    path = t.import_
    mod, _, attr = path.rpartition(":")
    if mod.endswith(".py"):
        path = f"{recipe.resolve_path(mod)}:{attr}"
    return {"import": path, "kwargs": dict(t.kwargs)}


def load_run_teacher(run: RunDir, reverse: bool = False) -> torch.nn.Module:
    """The teacher as the teacher stage wrote it (no pickle)."""
    from safetensors.torch import load_file

    from .models import apply_state_dict
    from .slim import build_from_spec

    if not run.teacher_json.exists():
        raise UserError(f"{run.teacher_json}: not found; run the teacher stage first")
    meta = json.loads(run.teacher_json.read_text())
    model = build_from_spec(meta["spec"])
    weights = run.teacher_reverse_weights if reverse else run.teacher_weights
    apply_state_dict(model, load_file(str(weights)), source=str(weights), key="teacher")
    model.compressor_spec = meta["spec"]
    return model.eval()


def _example_input(recipe: Recipe, model: torch.nn.Module, batch: int = 1) -> torch.Tensor:
    cfg = getattr(model, "config", {})
    return torch.randn(batch, cfg.get("input_nc", 3), recipe.data.size, recipe.data.size)


def _check_size(recipe: Recipe, model: torch.nn.Module) -> None:
    from .models import size_multiple

    m = size_multiple(model)
    if recipe.data.size % m:
        raise RecipeError(f"data.size: {recipe.data.size} is not a multiple of {m}, which "
                          f"{getattr(model, 'arch', type(model).__name__)} needs")


def stage_teacher(ctx: Context) -> None:
    from .models import load_teacher
    from .recipe import check_taps

    r, run = ctx.recipe, ctx.run
    check_taps(r)  # a misspelt tap fails now, not after the teacher has trained
    spec = _teacher_spec_dict(r)
    t = r.teacher
    if t.train is not None:
        teachers = train_teacher(ctx, spec)
    else:
        teachers = [load_teacher(t, r.base_dir, ctx.trust_checkpoint)]
        if r.data.kind == "unpaired":
            if not t.reverse_checkpoint:
                raise RecipeError("teacher.reverse_checkpoint: unpaired data needs the B->A teacher too")
            rev = t.model_copy(update={"checkpoint": t.reverse_checkpoint})
            teachers.append(load_teacher(rev, r.base_dir, ctx.trust_checkpoint))
    _check_size(r, teachers[0])
    from .io import atomic_write_bytes
    from safetensors.torch import save as st_save

    for model, path in zip(teachers, [run.teacher_weights, run.teacher_reverse_weights]):
        atomic_write_bytes(path, st_save({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}))
    from .complexity import profile_model

    cx = profile_model(teachers[0], tuple(_example_input(r, teachers[0]).shape))
    atomic_write_json(run.teacher_json, {"spec": spec, "source": t.checkpoint or "trained",
                                         "params": cx["params"], "macs": cx["macs"],
                                         "macs_paper_convention": cx["macs_paper_convention"]})


def _sample_batch(recipe: Recipe, n: int, keys: tuple[str, ...]) -> Optional[dict]:
    if n <= 0:
        return None
    from .data import make_dataset

    ds = make_dataset(recipe.data, recipe.resolve_path(recipe.data.root), "test", recipe.seed, max_items=n)
    items = [ds[i] for i in range(min(n, len(ds)))]
    return {k: torch.stack([it[k] for it in items]) for k in keys if k in items[0]}


def _run_training(ctx: Context, directions, losses, steps, lr, out_dir: Path, stage: str, *, taps=None,
                  srp_layers=(), feat_channels=None, distill=None) -> dict:
    from .data import make_dataset
    from .train import TrainSetup, Trainer

    r = ctx.recipe
    d = distill or r.distill
    ds = make_dataset(r.data, r.resolve_path(r.data.root), "train", r.seed)
    keys = ("A", "B") if r.data.kind == "unpaired" else ("input", "target")
    setup = TrainSetup(
        kind="paired" if r.data.kind == "synthetic" else r.data.kind, directions=directions, dataset=ds,
        losses=losses, steps=steps, lr=lr, decay_from=d.decay_from, batch_size=r.data.batch_size,
        num_workers=r.data.num_workers, seed=r.seed, taps=dict(taps or {}), srp_layers=list(srp_layers),
        feat_channels=dict(feat_channels or {}), teacher_as_real=d.teacher_as_real,
        disc_spec=d.discriminator.model_dump(), checkpoint_every=d.checkpoint_every, keep_last=d.keep_last,
        log_every=d.log_every, sample_every=d.sample_every, amp=d.amp, channels_last=d.channels_last,
        cache_teacher=d.cache_teacher,
        sample_batch=_sample_batch(r, min(4, r.evaluate.samples or 4), keys),
        resume_command=resume_command(ctx))
    progress = None
    if ctx.progress:
        progress = lambda step, total, losses_: ctx.progress(stage, step, total, losses_)  # noqa: E731
    trainer = Trainer(setup, out_dir, ctx.device, progress)
    ckpts = out_dir / "checkpoints"
    from .train import list_checkpoints

    if list_checkpoints(ckpts) and not ctx.resume:
        if ctx.force:
            aside = ckpts.with_name(f"checkpoints.old-{time.strftime('%Y%m%d-%H%M%S')}")
            shutil.move(str(ckpts), str(aside))
            (out_dir / "metrics.jsonl").unlink(missing_ok=True)
            log.warning("moved earlier checkpoints to %s", aside)
        else:
            raise UserError(f"{ckpts} holds checkpoints of an unfinished run: add --resume to continue it, or "
                            f"--force to start over (the old checkpoints are kept aside)")
    return trainer.fit(resume=ctx.resume)


def resume_command(ctx: Context) -> str:
    src = ctx.recipe_path or "RECIPE.yaml"
    return f"compress {src} --out {ctx.run.root.parent} --resume"


def train_teacher(ctx: Context, spec: dict) -> list:
    """pix2pix (or CycleGAN) training of a zoo teacher: GAN + L1 (+ cycle)."""
    from .models import build_generator
    from .recipe import LossesSpec
    from .train import Direction, seed_everything

    r = ctx.recipe
    tt = r.teacher.train
    seed_everything(r.seed)
    losses = LossesSpec.model_validate({"gan": {"weight": tt.gan_weight, "mode": tt.gan_mode},
                                        "recon": {"weight": tt.recon_weight}, "kd": {"weight": 0},
                                        "srp": {"weight": 0}, "feat": {"weight": 0},
                                        "cycle": {"weight": r.distill.losses.cycle.weight}})
    nets = [build_generator(spec["arch"], **spec["kwargs"])]
    if r.data.kind == "unpaired":
        nets.append(build_generator(spec["arch"], **spec["kwargs"]))
        dirs = [Direction("AB", nets[0], None, "A", "B"), Direction("BA", nets[1], None, "B", "A")]
    else:
        dirs = [Direction("G", nets[0], None, "input", "target")]
    ctx.run.teacher_train.mkdir(parents=True, exist_ok=True)
    summary = _run_training(ctx, dirs, losses, tt.steps, tt.lr, ctx.run.teacher_train, "teacher")
    atomic_write_json(ctx.run.teacher_train / "train.json", summary)
    return [n.cpu().eval() for n in nets]


def stage_student(ctx: Context) -> None:
    from .slim import make_student, save_student
    from .train import seed_everything

    r, run = ctx.recipe, ctx.run
    seed_everything(r.seed)  # a scratch student's initial weights depend on the seed alone
    teacher = load_run_teacher(run)
    example = _example_input(r, teacher)
    student, plan = make_student(teacher, r.student.width, r.student.method, r.student.init, example)
    save_student(student, plan, run.student_init)
    if r.data.kind == "unpaired":
        rev = load_run_teacher(run, reverse=True)
        s2, plan2 = make_student(rev, r.student.width, r.student.method, r.student.init, example)
        save_student(s2, plan2, run.student_init / "reverse")


def distill_setup(ctx: Context):
    """Teachers, students, taps and loss settings for the distill stage."""
    from .features import check_tap_pair, resolve_taps
    from .slim import load_student
    from .train import Direction

    r, run = ctx.recipe, ctx.run
    L = r.distill.losses
    # when no loss looks at the teacher, train without loading or running it
    teacher_of = (lambda reverse=False: load_run_teacher(run, reverse)) if L.uses_teacher(r.data.kind) else \
        (lambda reverse=False: None)
    teacher = teacher_of()
    student = load_student(run.student_init).train()
    layers = L.tapped_layers()  # non-empty only when the teacher is used
    taps = resolve_taps(teacher, layers, r.teacher.taps) if layers else {}
    channels = check_tap_pair(teacher, student, taps, _example_input(r, student)) if taps else {}
    if r.data.kind == "unpaired":
        dirs = [Direction("AB", student, teacher, "A", "B"),
                Direction("BA", load_student(run.student_init / "reverse").train(), teacher_of(True), "B", "A")]
    else:
        dirs = [Direction("G", student, teacher, "input", "target")]
    srp_layers = L.srp.layers if L.srp.weight > 0 else []
    feat = {k: channels[k] for k in L.feat.layers} if L.feat.weight > 0 else {}
    return dirs, taps, srp_layers, feat


def stage_distill(ctx: Context) -> None:
    from .train import seed_everything

    r, run = ctx.recipe, ctx.run
    if ctx.nproc > 1:
        summary = launch_distributed(ctx)
    else:
        seed_everything(r.seed)
        dirs, taps, srp_layers, feat = distill_setup(ctx)
        summary = _run_training(ctx, dirs, r.distill.losses, r.distill.steps, r.distill.lr, run.root, "distill",
                                taps=taps, srp_layers=srp_layers, feat_channels=feat)
        finish_distill(ctx, dirs, summary)


def finish_distill(ctx: Context, dirs, summary: dict) -> None:
    from .slim import save_student

    run = ctx.run
    plan = json.loads((run.student_init / "student.json").read_text())
    save_student(dirs[0].student.cpu().eval(), plan, run.root)
    if len(dirs) > 1:
        plan2 = json.loads((run.student_init / "reverse" / "student.json").read_text())
        save_student(dirs[1].student.cpu().eval(), plan2, run.student_reverse)
    atomic_write_json(run.distill_json, summary)


def launch_distributed(ctx: Context) -> dict:
    """Run the distill stage in ``nproc`` processes with torchrun (gloo on CPU, nccl on GPU)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ctx.nproc}",
           "-m", "compressor.worker", str(ctx.run.root), "--device", ctx.device.type]
    if ctx.resume:
        cmd.append("--resume")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise UserError(f"distributed training failed (exit {proc.returncode}); see the messages above")
    return json.loads(ctx.run.distill_json.read_text())


def stage_evaluate(ctx: Context) -> None:
    from .metrics import evaluate_run

    evaluate_run(ctx.run, ctx.recipe, ctx.device, progress=ctx.progress)


def stage_export(ctx: Context) -> None:
    from exporters.onnx import export_run

    export_run(ctx.run, ctx.recipe, notes=ctx.notes)


def stage_profile(ctx: Context) -> None:
    from exporters.profile import profile_run

    profile_run(ctx.run, ctx.recipe)


def stage_report(ctx: Context) -> None:
    from exporters.report import report_run

    report_run(ctx.run)


STAGE_FUNCS = {"teacher": stage_teacher, "student": stage_student, "distill": stage_distill,
               "evaluate": stage_evaluate, "export": stage_export, "profile": stage_profile, "report": stage_report}


@dataclass
class StageResult:
    stage: str
    status: str  # ran | skipped
    seconds: float


def run_pipeline(recipe: Recipe, out_root: str | Path = "runs", *, force: bool = False, resume: bool = False,
                 only: Optional[list[str]] = None, device: Optional[str] = None, trust_checkpoint: bool = False,
                 nproc: int = 1, progress: Optional[Callable] = None, recipe_path: Optional[Path] = None,
                 on_stage: Optional[Callable[[StageResult], None]] = None) -> list[StageResult]:
    """Run the recipe's stages in order, skipping those that are up to date."""
    if only:
        bad = [s for s in only if s not in STAGES]
        if bad:
            raise UserError(f"--only: unknown stage {bad[0]!r}; stages are {', '.join(STAGES)}")
    dev = resolve_device(device or recipe.device)
    run = prepare_run_dir(recipe, Path(out_root), force, recipe_path)
    ctx = Context(recipe, run, dev, resume=resume, force=force, trust_checkpoint=trust_checkpoint, nproc=nproc,
                  progress=progress, recipe_path=recipe_path)
    results = []
    for stage in STAGES:
        digest = stage_digest(ctx, stage)
        if only and stage not in only:
            continue
        if only:
            for up in UPSTREAM[stage]:
                if not all(p.exists() for p in run.outputs(up)):
                    raise UserError(f"--only {stage}: the {up} stage has not produced its artifacts yet; run "
                                    f"without --only first")
        if not force and run.up_to_date(stage, digest):
            res = StageResult(stage, "skipped", 0.0)
        else:
            run.forget(stage)
            t0 = time.perf_counter()
            STAGE_FUNCS[stage](ctx)
            res = StageResult(stage, "ran", time.perf_counter() - t0)
            run.record(stage, digest, res.seconds)
        results.append(res)
        if on_stage:
            on_stage(res)
    return results
