"""The stages and their table: each stage reads the run folder, calls the library and the exporters, and writes the
run folder. :data:`STAGES` holds one :class:`Stage` row per stage (name, upstream stages, the recipe sections in its
digest, its function, the files it writes); the pipeline (:mod:`compressor.app.pipeline`) decides which run. The
pre-flight checks live in :mod:`~compressor.app.preflight`, the commands on existing artifacts (which the export,
evaluate, profile and student stages call too) in :mod:`~compressor.app.commands`, the torchrun launch in
:mod:`~compressor.app.distributed`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch
from safetensors.torch import save as st_save

from .. import qat
from ..complexity import profile_model
from ..data import ViewBank, batch_keys, make_dataset, stack_images
from ..errors import RecipeError, UserError
from ..exporters.export import export_files, export_trained, needs_calibration
from ..exporters.formats.onnx import check_not_failed
from ..exporters.profile import profile_models
from ..exporters.records import RecordFile
from ..exporters.report import report_run
from ..exporters.table import find_artifacts, get_format
from ..features import check_tap_pair, resolve_tap_pairs
from ..io import atomic_write_bytes, atomic_write_json, file_sha256, own_folder
from ..metrics import evaluate_models
from ..models import build_generator, load_teacher, teacher_spec
from ..recipe import QUANTIZE_SHARE, LossesSpec, Recipe
from ..runfolder import RunDir, load_run_qad, load_run_student, load_run_teacher, profile_refs
from ..schemas import StudentPlan, read_json
from ..slim import kept_fraction, load_student, make_student, other_student, save_student
from ..teacher_cache import DiskTeacherCache
from ..terms import stage_losses
from ..train import Direction, Trainer, TrainSetup, seed_everything
from .commands import (
    EVALUATE_DOING,
    evaluate_run,
    importance_images,
    plan_student,
    recipe_calibration,
    recipe_samples,
    run_export_spec,
)
from .context import Context, checkpoint_policy, resume_command
from .distributed import launch_distributed
from .preflight import check_runs, check_size, check_taps, example_input, given_widths, student_arch_spec

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- helpers


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


def _teacher_cache(ctx: Context, ds, taps: Optional[dict]) -> DiskTeacherCache:
    """``distill.cache_teacher``: the teacher's outputs for every training image, on disk in the run folder
    (``teacher_cache/``, FP16 or ``cache_dtype``, memory-mapped), shared by distill and quantize; keyed by the
    teacher's weights and spec, the data section, the taps, the views and the teacher's precision."""
    r, run = ctx.recipe, ctx.run
    h = hashlib.sha256()
    for f in (run.teacher_weights, run.teacher_json):
        h.update(file_sha256(f).encode() if f.is_file() else b"none")
    if r.teacher.onnx:
        h.update(file_sha256(r.resolve_path(r.teacher.onnx)).encode())
    h.update(r.section_hash("data").encode())
    h.update(
        json.dumps({"taps": taps or {}, "amp": r.distill.amp, "views": r.distill.cache_views}, sort_keys=True).encode()
    )
    rows = getattr(ds, "keys", len(ds))  # a bank of views: one row per (image, view)
    return DiskTeacherCache(
        run.teacher_cache, h.hexdigest()[:16], rows, r.distill.cache_dtype, rebuild=ctx.options.force
    )


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
    student_taps=None,
    srp_layers=(),
    feat_channels=None,
    tap_channels=None,
    distill=None,
    before_step=None,
) -> dict:
    r = ctx.recipe
    d = distill or r.distill
    ds = make_dataset(r.data, r.resolve_path(r.data.root), "train", r.seed)
    cache = d.cache_teacher and stage != "teacher"
    train_ds = ViewBank(ds, d.cache_views) if cache and d.cache_views else ds
    setup = TrainSetup(
        kind="paired" if r.data.kind in ("synthetic", "degraded") else r.data.kind,
        directions=directions,
        dataset=train_ds,
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
        student_taps=dict(student_taps or {}),
        srp_layers=list(srp_layers),
        feat_channels=dict(feat_channels or {}),
        tap_channels=dict(tap_channels or {}),
        teacher_as_real=d.teacher_as_real,
        disc_spec=d.discriminator.model_dump(),
        checkpoint_every=d.checkpoint_every,
        keep_last=d.keep_last,
        log_every=d.log_every,
        sample_every=d.sample_every,
        amp=d.amp,
        channels_last=d.channels_last,
        cache_teacher=d.cache_teacher,
        teacher_cache=_teacher_cache(ctx, train_ds, taps) if cache else None,
        sample_batch=_sample_batch(r, min(4, r.evaluate.samples or 4), batch_keys(r.data.kind)),
        resume_command=resume_command(ctx),
        before_step=before_step,
    )
    if ctx.options.build_discriminator is not None:
        setup.build_discriminator = ctx.options.build_discriminator
    progress = None
    if ctx.progress:
        doing = {
            "doing": {"teacher": "training the teacher", "quantize": "training the student with fake INT8"}.get(
                stage, "distilling the student"
            )
        }
        progress = lambda step, total, losses_: ctx.progress(stage, step, total, {**losses_, **doing})  # noqa: E731
    # torchrun workers: the launching process already decided (launch_distributed)
    resume = ctx.options.resume if torch.distributed.is_initialized() else checkpoint_policy(ctx, out_dir, stage)
    trainer = Trainer(setup, out_dir, ctx.device, progress)
    return trainer.fit(resume=resume)


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
    cx = profile_model(teachers[0], tuple(example_input(r, teachers[0]).shape))
    atomic_write_json(
        run.teacher_json,
        {
            "spec": spec,
            "source": t.checkpoint or t.onnx or "trained",
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
        stage_losses(
            "teacher",
            {
                "gan": {"weight": tt.gan_weight, "mode": tt.gan_mode},
                "recon": {"weight": tt.recon_weight},
                "cycle": {"weight": r.distill.losses.cycle.weight},
            },
        )
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


def stage_student(ctx: Context) -> None:
    r, run = ctx.recipe, ctx.run
    seed_everything(r.seed)  # a scratch student's initial weights depend on the seed alone
    teacher = load_run_teacher(run)
    example = example_input(r, teacher)
    if r.student.other_arch:  # a network of its own: built, checked against the teacher's output shape
        with torch.no_grad():
            out_channels = teacher.eval()(example[:1]).shape[1]
        spec = student_arch_spec(r, example, out_channels)
        seed_everything(r.seed)  # its initial weights depend on the seed alone, not on how the teacher was built
        student, plan = other_student(teacher, spec, example)
        save_student(student, plan, own_folder(run.student_init))
        if r.data.kind == "unpaired":
            seed_everything(r.seed + 1)
            s2, plan2 = other_student(load_run_teacher(run, reverse=True), spec, example)
            save_student(s2, plan2, own_folder(run.student_init / "reverse"))
        return
    width, widths = r.student.width, None
    shape = {"keep": r.student.keep or None, "round_to": r.student.round_channels, "outputs": r.student.outputs}
    if width == "auto":  # measured on the target: the widest width (or per-layer widths) within student.budget
        doc = plan_student(r, run, teacher=teacher)
        width, widths = doc["width"], doc.get("widths")
        seed_everything(r.seed)
    elif r.student.widths is not None:  # per-layer widths chosen before (a plan.json, or named in the recipe)
        widths = given_widths(r)
        width = kept_fraction(teacher, widths, example, r.student.keep or None, r.student.outputs)
        seed_everything(r.seed)
    if widths:
        shape["widths"] = widths
    inherits = r.student.importance in ("sensitivity", "measured") and r.student.init == "inherit"
    images = importance_images(r) if inherits else None  # the channels it inherits
    student, plan = make_student(teacher, width, r.student.method, r.student.init, example, images=images, **shape)
    save_student(student, plan, own_folder(run.student_init))
    if r.data.kind == "unpaired":
        rev = load_run_teacher(run, reverse=True)
        rev_images = importance_images(r, reverse=True) if images is not None else None
        s2, plan2 = make_student(rev, width, r.student.method, r.student.init, example, images=rev_images, **shape)
        save_student(s2, plan2, own_folder(run.student_init / "reverse"))


@dataclass
class DistillTaps:
    """What the feature terms tap: alias -> module name in the teacher and in the student, the SRP aliases, the
    feature-distillation aliases with their (teacher, student) channels, and every alias's channels."""

    teacher: dict[str, str]
    student: dict[str, str]
    srp_layers: list[str]
    feat: dict[str, tuple[int, int]]
    channels: dict[str, tuple[int, int]]

    def training_kwargs(self) -> dict:
        return {
            "taps": self.teacher,
            "student_taps": self.student,
            "srp_layers": self.srp_layers,
            "feat_channels": self.feat,
            "tap_channels": self.channels,
        }


def distill_setup(ctx: Context, student_dir: Optional[Path] = None) -> tuple[list, DistillTaps]:
    """Teachers, students, taps and loss settings for the distill stage (``student_dir``: start from the student
    saved there instead of the slimmed one: the quantize stage starts from the distilled student)."""
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
    student = load_student(student_dir or run.student_init).train()
    pairs = L.tap_pairs()  # non-empty only when the teacher is used
    key = "distill.losses.srp" if L.srp.weight > 0 else "distill.losses.feat"
    key += ".pairs" if any(t != s for t, s in pairs.values()) else ".layers"
    t_taps, s_taps = resolve_tap_pairs(teacher, student, pairs, r.teacher.taps, key=key) if pairs else ({}, {})
    channels = (
        check_tap_pair(teacher, student, t_taps, example_input(r, student), key=key, student_taps=s_taps)
        if t_taps
        else {}
    )
    if r.data.kind == "unpaired":
        dirs = [
            Direction("AB", student, teacher, "A", "B"),
            Direction("BA", load_student(run.student_init / "reverse").train(), teacher_of(True), "B", "A"),
        ]
    else:
        dirs = [Direction("G", student, teacher, "input", "target")]
    srp_layers = L.srp.aliases if L.srp.weight > 0 else []
    feat = {k: channels[k] for k in L.feat.aliases} if L.feat.weight > 0 else {}
    return dirs, DistillTaps(t_taps, s_taps, srp_layers, feat, channels)


def distill_in_process(ctx: Context) -> dict:
    """One training process of the distill stage (the whole stage, or one rank under torchrun)."""
    seed_everything(ctx.recipe.seed)
    dirs, taps = distill_setup(ctx)
    # the discriminators and the rest depend on the seed alone, not on what building the teacher drew (a zoo
    # teacher's layers draw their initial weights before its checkpoint loads; an ONNX teacher draws nothing)
    seed_everything(ctx.recipe.seed)
    r = ctx.recipe
    summary = run_training(
        ctx, dirs, r.distill.losses, r.distill.steps, r.distill.lr, ctx.run.root, "distill", **taps.training_kwargs()
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


# ----------------------------------------------------------------------------------------------- quantize


def stage_quantize(ctx: Context) -> None:
    """``distill.quantize``: quantisation-aware distillation. The distilled student gets fake INT8 quantisation
    (:mod:`compressor.qat`: the INT8 exports' scheme, ranges calibrated on training images), then trains on with the
    same teacher and loss terms for ``steps``, its quantisers' ranges held from ``freeze_at``; checkpoints, metrics
    and samples in ``quantize/`` (resumable as distill is), the result in ``student.qad.safetensors``."""
    r, run = ctx.recipe, ctx.run
    q = r.distill.quantize
    steps = q.steps or max(1, r.distill.steps // QUANTIZE_SHARE)
    seed_everything(r.seed)  # (its quantizer and data kind were checked before the run began: preflight)
    dirs, taps = distill_setup(ctx, run.student_dir)
    d = dirs[0]
    example = example_input(r, d.student, batch=2)  # batch 2: export keeps batch, height and width dynamic
    modules = list(dict.fromkeys((taps.student or taps.teacher).values()))
    calibration = recipe_calibration(r, q.calib_images)
    d.student = qat.quantize_student(d.student, example, calibration, modules).train()
    freeze_from = max(1, int(round(q.freeze_at * steps)) + 1)

    def hold_ranges(step: int) -> None:
        if step >= freeze_from and d.student.observing():
            d.student.observers(False)

    own_folder(run.quantize_dir)
    summary = run_training(
        ctx,
        dirs,
        r.distill.losses,
        steps,
        q.lr or r.distill.lr / 10,
        run.quantize_dir,
        "quantize",
        **taps.training_kwargs(),
        distill=r.distill.model_copy(update={"amp": "none"}),  # fake quantisation rounds in FP32, not under autocast
        before_step=hold_ranges,
    )
    d.student.observers(False)  # held at the end, whatever freeze_at said
    state = {k: v.detach().contiguous().cpu() for k, v in d.student.state_dict().items()}
    atomic_write_bytes(run.student_qad, st_save(state))
    meta = {
        "precision": q.precision,
        "taps": modules,
        "example_shape": list(example.shape),
        "scheme": qat.SCHEME,
        "calibration_images": len(calibration),
        "observers_held_from_step": freeze_from,
        **summary,
    }
    atomic_write_json(run.quantize_json, meta)


# ----------------------------------------------------------------------------------------------- evaluate


def stage_evaluate(ctx: Context) -> None:
    evaluate_run(ctx.run, ctx.recipe, ctx.device, progress=ctx.progress)


# ----------------------------------------------------------------------------------------------- export


def stage_export(ctx: Context) -> dict:
    """The student's files as the recipe's ``export`` section asks (ONNX with parity, INT8, TensorRT, the other
    formats) and the teacher's ONNX (for profiling), through the one export flow: export.json."""
    r, run = ctx.recipe, ctx.run
    student, teacher = load_run_student(run), load_run_teacher(run)
    samples = recipe_samples(r)
    spec = run_export_spec(r, student)
    calibration = recipe_calibration(r, r.export.int8.calib_images) if needs_calibration(spec) else None
    records = RecordFile(run.root)  # earlier records kept; each new one written once its file is in place
    doc = export_files(student, run.root, spec, samples, calibration, journal=records.write, progress=ctx.progress)
    if ctx.progress:
        ctx.progress("export", 0, 0, {"doing": "teacher.onnx (for profiling)"})
    if r.teacher.onnx:  # the teacher's own file, as given, is what profile times
        atomic_write_bytes(run.teacher_onnx, r.resolve_path(r.teacher.onnx).read_bytes())
        tdoc = {"notes": []}
    else:
        tdoc = export_files(teacher, run.root, run_export_spec(r, teacher, "teacher"), samples, journal=records.write)
    ctx.notes.extend(doc["notes"] + tdoc["notes"])
    qad = load_run_qad(run) if r.distill.quantize is not None else None
    if qad is not None:  # distill.quantize: the INT8 files from the trained scales, beside the calibrated ones
        qspec = replace(spec, name="student.qad", jobs=(), formats=tuple(r.export.formats))
        qdoc = export_trained(
            qad, run.root, qspec, samples, fp32_onnx=run.student_onnx, journal=records.write, progress=ctx.progress
        )
        ctx.notes.extend(qdoc["notes"])
    return records.doc


# ----------------------------------------------------------------------------------------------- profile, report


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
    backends += [b for b in (get_format(f).backend.name for f in r.export.formats) if b not in backends]
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
    recipe; ``input_files`` are files fingerprinted by their content: size and SHA-256); the digests of ``upstream`` stages
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
    # whether the recipe asks for the stage (None: always); a stage that does not apply neither runs nor counts in
    # its downstream stages' digests, so adding an optional stage leaves earlier runs up to date
    applies: Optional[Callable[[Recipe], bool]] = None

    def digest_sections(self, recipe: Recipe) -> list[str]:
        return list(self.sections) + list(self.more_sections(recipe) if self.more_sections else ())

    def applies_to(self, recipe: Recipe) -> bool:
        return self.applies is None or bool(self.applies(recipe))


def _teacher_sections(r: Recipe) -> tuple[str, ...]:
    return ("data",) if r.teacher.train is not None else ()


def _teacher_files(r: Recipe, run: RunDir) -> tuple[Optional[Path], ...]:
    files = (r.resolve_path(r.teacher.checkpoint), r.resolve_path(r.teacher.reverse_checkpoint))
    return files + ((r.resolve_path(r.teacher.onnx),) if r.teacher.onnx else ())  # (none: earlier digests kept)


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
        "quantize",
        stage_quantize,
        upstream=("distill",),
        sections=("distill", "distill.quantize", "data"),
        outputs=("student.qad.safetensors", "quantize.json"),
        checkpoints="quantize",
        doing="inserting fake INT8 quantisation into the distilled student and calibrating it",
        applies=lambda r: r.distill.quantize is not None,
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
        upstream=("distill", "quantize"),
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
