"""The commands on existing artifacts, and the run's inputs to them: ``compress evaluate`` (a run's teacher against
its student), ``export`` (a run, a student folder or a bare checkpoint), ``benchmark``, ``profile`` (run folders
opened through the run folder) and ``plan`` (``student.width: auto`` too). The stages call the same functions, so
``compress RECIPE`` is these steps in a row."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

import torch

from ..data import FolderDataset, input_images
from ..errors import UserError
from ..exporters.benchmark import benchmark
from ..exporters.export import (
    MAX_EXPORT_SIZE,
    ExportSpec,
    export_files,
    export_trained,
    needs_calibration,
    plan_files,
    record_lines,
)
from ..exporters.profile import resolve_models
from ..exporters.records import RecordFile
from ..exporters.report import report_run
from ..exporters.table import find_artifacts, get_format
from ..io import atomic_write_json, own_folder
from ..metrics import evaluate_pair
from ..models import (
    apply_state_dict,
    build_generator,
    build_teacher,
    check_output,
    input_channels,
    load_state_dict_file,
    load_teacher,
    size_multiple,
    teacher_spec,
    with_ranges,
)
from ..recipe import Recipe
from ..runfolder import (
    RunDir,
    is_run_folder,
    load_run_qad,
    load_run_recipe,
    load_run_student,
    load_run_teacher,
    profile_refs,
)
from ..schemas import TeacherMeta, read_json
from ..slim import load_student
from .layerwise import plan_layers
from .plan import plan_width
from .preflight import check_backends, example_input

log = logging.getLogger(__name__)


def plan_student(
    recipe: Recipe,
    run: RunDir,
    force: bool = False,
    teacher: Optional[torch.nn.Module] = None,
    trust_checkpoint: bool = False,
) -> dict:
    """``compress plan`` and ``student.width: auto``: the widest width within ``student.budget``, timed on the
    target (plan.json in the run). Times ``teacher`` when given, else the run's teacher when the teacher stage has
    run, else the recipe's architecture (latency does not depend on the weights). The per-layer search ranks
    channels by the teacher's weights: there the recipe's checkpoint is loaded, and a teacher the recipe trains
    must have been trained first."""
    check_backends(recipe)
    st = recipe.student
    if teacher is None and run.teacher_json.exists() and run.teacher_weights.exists():
        teacher = load_run_teacher(run)
    elif teacher is None:
        if st.search == "per-layer" and _weights_for_importance(recipe):  # with its ranges, as the run loads it
            teacher = load_teacher(recipe.teacher, recipe.base_dir, trust_checkpoint)
        else:
            teacher = with_ranges(build_teacher(recipe.teacher, recipe.base_dir, init=None), recipe.teacher)
        teacher.compressor_spec = teacher_spec(recipe.teacher, recipe.base_dir)
        check_output(teacher, example_input(recipe, teacher))
    if st.search == "per-layer":
        return plan_layers(
            teacher,
            st.budget,
            size=recipe.data.size,
            margin=st.margin,
            keep=list(st.keep),
            round_to=st.round_channels,
            run_dir=run.root,
            table_path=recipe.resolve_path(st.latency_table) if st.latency_table else None,
            force=force,
            images=importance_images(recipe) if st.importance in ("sensitivity", "measured") else None,
            measured=st.importance == "measured",
        )
    return plan_width(
        teacher,
        recipe.student.budget,
        size=recipe.data.size,
        method=recipe.student.method,
        margin=recipe.student.margin,
        run_dir=run.root,
        force=force,
    )


def _weights_for_importance(recipe: Recipe) -> bool:
    """Whether the per-layer plan loads the recipe's checkpoint (True), or may rank an untrained teacher (False:
    a teacher with no weights at all, said in a warning); a teacher the recipe trains and has not trained yet stops
    the plan with one line."""
    t = recipe.teacher
    if t.checkpoint:
        return True
    if t.onnx:  # its weights are the ONNX file's, ranked as they are
        return False
    if t.train is not None:
        raise UserError(
            "student.search: the per-layer search ranks the teacher's channels by its weights, and this recipe "
            "trains its teacher (teacher.train), not trained yet: run `compress RECIPE --only teacher` first "
            "(compress plan then reads the run folder's teacher)"
        )
    log.warning("plan: the teacher has no checkpoint; the per-layer search ranks its initial weights")
    return False


EVALUATE_DOING = "loading the teacher, the student and the test images"


def evaluate_run(
    run: RunDir, recipe: Recipe, device: torch.device, progress=None, inception_weights: Optional[str] = None
) -> dict:
    """Teacher and student of a run side by side: eval.json (with the teacher's published check, where the recipe
    asked for one) and samples/eval.png."""
    check = read_json(run.teacher_json, TeacherMeta).get("published_check") if run.teacher_json.exists() else None
    if progress:
        progress("evaluate", 0, 0, {"doing": EVALUATE_DOING})
    student = load_run_student(run)
    extra = {"published_check": check} if check else {}
    built = student_built(getattr(student, "student_plan", None))
    if built:
        extra["student_built"] = built
    return evaluate_pair(
        load_run_teacher(run),
        student,
        recipe,
        device,
        run.eval_json,
        run.eval_samples,
        progress,
        inception_weights,
        extra=extra or None,
    )


def student_built(plan: Optional[dict]) -> Optional[str]:
    """How the student was made, in words, from its plan: a width of the teacher, or a network of its own."""
    if not isinstance(plan, dict):
        return None
    if plan.get("method") == "arch":
        own = plan.get("student") or {}
        kwargs = ", ".join(f"{k} {v}" for k, v in (own.get("kwargs") or {}).items())
        name = own.get("arch") or own.get("import")
        return f"a network of its own: {name}" + (f" ({kwargs})" if kwargs else "")
    width = plan.get("width")
    if plan.get("method") not in ("rebuild", "prune") or not isinstance(width, (int, float)):
        return None
    keep = plan.get("keep") or []
    kept = f"; at full width: {', '.join(keep)}" if keep else ""
    if plan.get("importance") == "sensitivity":
        kept += "; channels the teacher's output is most sensitive to"
    widths = plan.get("widths")
    if isinstance(widths, dict) and widths:
        per = ", ".join(f"{k} {v}" for k, v in widths.items())
        return (
            f"the teacher with per-layer widths ({len(widths)} channel groups, {width:.3g} of their channels; "
            f"{plan['method']}, init {plan.get('init', 'inherit')}{kept}): {per}"
        )
    return f"the teacher at width {width:g} ({plan['method']}, init {plan.get('init', 'inherit')}{kept})"


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


IMPORTANCE_IMAGES = 16  # training inputs the output sensitivity is averaged over (4 sign vectors each)


def importance_images(recipe: Recipe, reverse: bool = False) -> torch.Tensor:
    """The training inputs ``student.importance: sensitivity`` ranks the teacher's channels on (the recipe's seed;
    ``reverse``: an unpaired recipe's B images, what its reverse teacher takes)."""
    root = recipe.resolve_path(recipe.data.root)
    return input_images(recipe.data, root, "train", recipe.seed, IMPORTANCE_IMAGES, key="B" if reverse else None)


def recipe_calibration(recipe: Recipe, n: int) -> list:
    imgs = input_images(recipe.data, recipe.resolve_path(recipe.data.root), "train", recipe.seed, n)
    return [x[None].numpy() for x in imgs]


def run_export_spec(recipe: Recipe, model: torch.nn.Module, name: str = "student") -> ExportSpec:
    """The recipe's ``export`` section as the files to write for ``model``: the student's ONNX, its ONNX Runtime
    INT8 (``export.int8``), its TensorRT engine (``export.tensorrt``), then each of ``export.formats`` at its
    default precision and INT8 where it has one (these are ``optional``: one that fails is a record with the
    reason); the teacher's ONNX alone (for profiling)."""
    ex = recipe.export
    jobs = [("onnx", "fp32")]
    if name == "student":
        jobs += [("onnx", "int8")] if ex.int8.enabled else []
        jobs += [("tensorrt", ex.tensorrt.precision)] if ex.tensorrt is not None else []
        for f in (f for f in ex.formats if f != "onnx"):
            precisions = get_format(f, "export.formats", recipe=True).precisions
            jobs += [(f, precisions[0])] + ([(f, "int8")] if ex.int8.enabled and "int8" in precisions[1:] else [])
    trt = ex.tensorrt
    return ExportSpec(
        jobs=tuple(jobs),
        optional=tuple(f for f in ex.formats if f != "onnx"),
        name=name,
        size=recipe.data.size,
        static=ex.static,
        dynamic=list(ex.onnx.dynamic),
        opset=ex.onnx.opset,
        parity_tol=ex.onnx.parity_tol,
        slim=ex.onnx.slim,
        trt_versions=(10, 11),
        emit_trtexec=trt is not None,
        workspace_mb=trt.workspace_mb if trt else 1024,
        metadata=run_export_metadata(recipe, model),
    )


def load_target(target: Path, arch: Optional[str], trust: bool) -> tuple[torch.nn.Module, Path]:
    """(model, default output folder) for a student folder or a bare checkpoint."""
    target = Path(target)
    if target.is_dir() and (target / "student.json").exists():
        return load_student(target), target
    if target.is_file() and target.suffix in (".pth", ".pt", ".safetensors"):
        if not arch:
            raise UserError(f"{target}: a bare checkpoint needs --arch (a zoo name) to rebuild its architecture")
        build_generator(arch, init=None)  # an unknown zoo name fails here, before the file is read
        state = load_state_dict_file(target, trust=trust, key="export")
        norm_guess = "instance" if not any(k.endswith("running_mean") for k in state) else "batch"
        model = build_generator(arch, init=None, norm=norm_guess)
        apply_state_dict(model, state, source=str(target), key="export")
        return model.eval(), target.parent
    if not target.exists():
        raise UserError(f"{target}: not found")
    raise UserError(f"{target}: not a run folder, a student folder (student.json) or a .pth/.safetensors file")


def folder_images(data: Path, size: int, n: int) -> torch.Tensor:
    """Up to ``n`` images of folder ``data`` at ``size`` (``--data``), in [-1, 1]."""
    ds = FolderDataset(Path(data), size=size, train=False, max_items=n)
    if len(ds) == 0:
        raise UserError(f"--data: no images in {data}")
    return torch.stack([ds[i]["input"] for i in range(min(n, len(ds)))])


def export_command(
    model: torch.nn.Module,
    out_dir: Path,
    spec: ExportSpec,
    samples: Optional[torch.Tensor] = None,
    calibration: Optional[list] = None,
    progress: Optional[Callable] = None,
) -> dict:
    """``compress export`` of a model: images from ``spec.data`` where given (random ones otherwise, said so),
    calibration images where a file needs them, the files through the one export flow, ``export.json``; returns the
    export's records with printable ``lines``."""
    mult = size_multiple(model)
    size = spec.size or max(256, mult)
    if not 1 <= size <= MAX_EXPORT_SIZE:
        raise UserError(f"--size: {size} is outside 1..{MAX_EXPORT_SIZE}")
    if size % mult:
        raise UserError(f"--size: {size} is not a multiple of {mult}, which this model needs")
    spec = replace(spec, size=size)
    lines = []
    if samples is None and spec.data is not None:
        samples = folder_images(spec.data, size, 3)
    if samples is None:
        g = torch.Generator().manual_seed(0)
        samples = torch.rand(3, input_channels(model), size, size, generator=g) * 2 - 1
        lines.append("note: no images given (--data); parity uses random inputs")
    if needs_calibration(spec) and not calibration:
        if spec.data is None:
            raise UserError(
                f"--precision {spec.precision} needs calibration images: pass --data FOLDER (or export a run)"
            )
        calibration = [x[None].numpy() for x in folder_images(spec.data, size, spec.calib_images)]
    width = (getattr(model, "student_plan", None) or {}).get("width", 1.0)
    spec = replace(spec, metadata=spec.metadata or {"recipe_hash": "", "width": width})
    records = RecordFile(out_dir)  # earlier records kept; each new one written once its file is in place
    doc = export_files(model, out_dir, spec, samples, calibration, journal=records.write, progress=progress)
    return {**doc, "lines": lines + record_lines(doc, Path(out_dir)) + [f"wrote {records.path}"]}


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
    spec = replace(spec, size=spec.size or recipe.data.size)
    samples = calibration = None
    if spec.data is None:  # the run's own data, at the export size
        data = recipe if spec.size == recipe.data.size else load_run_recipe(run, [f"data.size={spec.size}"])
        samples = recipe_samples(data)
        if needs_calibration(spec):
            calibration = recipe_calibration(data, spec.calib_images)
    spec = replace(spec, metadata=run_export_metadata(recipe, model), parity_tol=recipe.export.onnx.parity_tol)
    res = export_command(model, Path(spec.out or target), spec, samples, calibration, progress)
    int8 = tuple(fmt.name for fmt, prec in plan_files(spec) if prec == "int8")
    qad = load_run_qad(run) if int8 else None
    if qad is not None:  # distill.quantize: the INT8 files from the trained scales too, as the export stage writes
        out = Path(spec.out or target)
        if samples is None:
            samples = folder_images(spec.data, spec.size, 3)
        fp32 = out / f"{spec.name}.onnx"
        qspec = replace(spec, name=f"{spec.name}.qad", jobs=(), precision=None, formats=int8)
        qdoc = export_trained(
            qad, out, qspec, samples, fp32_onnx=fp32 if fp32.is_file() else None, journal=RecordFile(out).write
        )
        res["files"].update(qdoc["files"])
        res["lines"][-1:-1] = record_lines(qdoc, out)
    if spec.out is None and (target / "student.onnx").name in res["files"]:
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
        trained = load_run_qad(run)
    elif target.is_dir() and (target / "student.json").exists():
        trained = None
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
        trained=trained,
    )
    path = target / "benchmark.json"
    atomic_write_json(path, doc)
    if is_run_folder(target) and RunDir(target).report_md.exists():
        report_run(RunDir(target))  # the run's report shows the new table now (the report stage's digest too)
    return doc, path


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
