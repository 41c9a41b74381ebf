"""The ``compress`` command line.

``compress RECIPE.yaml`` runs the pipeline (it is ``compress run RECIPE.yaml``); ``validate``, ``evaluate``,
``export``, ``profile`` and ``report`` work on recipes and existing artifacts. User mistakes print one line,
``error: …``, and exit with code 2; an interrupted training exits with 130 and prints the resume command.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler

from .. import schemas
from ..errors import Interrupted, UserError
from ..exporters.export import ExportSpec
from ..exporters.profile import profile_models, remote_profile
from ..exporters.report import benchmark_table, speedups, write_report
from ..exporters.report.tables import benchmark_caption
from ..exporters.table import backend_help, format_help
from ..io import atomic_write_json, atomic_write_text
from ..lock import run_lock
from ..metrics import evaluate_folder
from ..recipe import load_recipe, missing_files
from ..runfolder import RunDir, enclosing_run, is_run_folder, load_run_recipe, lock_for
from ..trust import check_import_target, require_consent, trust_all_code
from ..version import __version__
from .ablate import AblateSpec, recipe_document, render, run_ablation
from .cmdline import command_line_hint, set_command_line
from .commands import benchmark_target, evaluate_run, export_target, plan_student, profile_targets
from .console import (
    QUANT_FILTER,
    captured_output,
    closing_summary,
    duration,
    eval_table,
    install_log_filters,
    interrupted,
    print_table,
    watch_interrupts,
)
from .console import Progress as _Progress  # bars on a terminal, a heartbeat in logs and pipes
from .context import resolve_device
from .flags import (
    ProfileRequest,
    ablate_students,
    check_evaluate_flags,
    check_export_flags,
    check_folder,
    check_run_device,
    check_student_evaluation,
    check_threads,
    csv_list,
    make_out_folder,
    parse_numbers,
)
from .pipeline import RunOptions, StageResult, prepare_run_dir, run_pipeline
from .preflight import preflight

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Make image-to-image GAN generators small and fast: distill, evaluate, export, profile.",
)
COMMANDS = {"run", "validate", "evaluate", "export", "profile", "report", "plan", "benchmark", "ablate"}
log = logging.getLogger("compressor")


def _setup_logging(quiet: bool) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    if sys.stderr.isatty():
        handler = RichHandler(console=Console(stderr=True), show_time=False, show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:  # logs and pipes: one plain line per message
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_LowerLevelFormatter("%(levelname)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    install_log_filters()
    for name in ("compressor",):
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.INFO)


class _LowerLevelFormatter(logging.Formatter):
    def format(self, record):
        record.levelname = record.levelname.lower()
        return super().format(record)


def _trust(trust_code: bool) -> None:
    if trust_code:
        trust_all_code()


def _check_folder_imports(paths: List[Path]) -> None:
    """One line, before anything runs, when a student or run folder names code to import without consent."""
    for p in paths:
        for name, get in (("student.json", lambda d: d.get("teacher")), ("teacher.json", lambda d: d.get("spec"))):
            f = p / name if p.is_dir() else None
            if f is None or not f.is_file():
                continue
            try:
                spec = get(schemas.loads(schemas.read_text_bounded(f), str(f)))
            except (UserError, AttributeError):
                continue  # unreadable: the loader reports it
            if isinstance(spec, dict) and spec.get("import"):
                require_consent(str(spec["import"]), str(f))


# ------------------------------------------------------------------------------------------ options, declared once
# Options that mean the same in several commands come first. An option whose meaning differs between commands
# (--force, --device, --data, --precision, --out of a file or a folder) has one alias per meaning, named for it;
# --trust-code has two: a folder's own code (TrustFolderCode), the recipe's imported teacher (TrustTeacherCode).
RecipeFile = Annotated[Path, typer.Argument(help="recipe YAML file")]
RunsOut = Annotated[Path, typer.Option("--out", help="parent folder of runs/<name>/")]
SetOverrides = Annotated[
    Optional[List[str]], typer.Option("--set", help="override a key: dotted.key=value (YAML scalar)")
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars or info messages")]
TrustFolderCode = Annotated[
    bool,
    typer.Option(
        "--trust-code", help="allow the folder's student.json/teacher.json to import code (an imported architecture)"
    ),
]
TrustTeacherCode = Annotated[
    bool, typer.Option("--trust-code", help="also import an imported teacher to check its feature taps (runs its code)")
]
TrustCheckpoint = Annotated[
    bool, typer.Option("--trust-checkpoint", help="allow pickled teacher checkpoints (runs code from the file)")
]
ImageSize = Annotated[Optional[int], typer.Option("--size", help="image size (default: the run's, or 256)")]
CalibImages = Annotated[int, typer.Option("--calib-images", min=1, help="INT8 calibration images")]
Threads = Annotated[Optional[int], typer.Option("--threads", min=1, help="intra-op threads (default: all cores)")]
Warmup = Annotated[int, typer.Option("--warmup", min=0, max=1_000_000)]
Iters = Annotated[int, typer.Option("--iters", min=1, max=1_000_000)]

# compress run
RedoStages = Annotated[bool, typer.Option("--force", help="redo stages even when up to date")]
Resume = Annotated[bool, typer.Option("--resume", help="continue an interrupted training from its checkpoint")]
Only = Annotated[Optional[str], typer.Option("--only", help="run only these stages, e.g. export,profile")]
RunDevice = Annotated[Optional[str], typer.Option("--device", help="auto | cpu | cuda (overrides the recipe)")]
Nproc = Annotated[int, typer.Option("--nproc", min=1, help="training processes (torchrun; gloo on CPU, nccl on GPU)")]
# compress evaluate
EvalTarget = Annotated[Path, typer.Argument(help="a run folder (runs/<name>), or a student folder with --data")]
EvalData = Annotated[Optional[Path], typer.Option("--data", help="dataset root (default: the recipe's)")]
EvalKind = Annotated[str, typer.Option("--kind", help="with a student folder: paired | folder")]
EvalDirection = Annotated[str, typer.Option("--direction", help="with a student folder: AtoB | BtoA")]
EvalSize = Annotated[int, typer.Option("--size", help="with a student folder: image size")]
InceptionWeights = Annotated[Optional[Path], typer.Option("--inception-weights", help="FID Inception (.pt)")]
MaxImages = Annotated[Optional[int], typer.Option("--max-images", min=1, help="evaluate at most N test images")]
Metrics = Annotated[Optional[str], typer.Option("--metrics", help="e.g. fid,kid,psnr,ssim (default: the recipe's)")]
TorchDevice = Annotated[str, typer.Option("--device", help="auto | cpu | cuda")]
# compress export
ExportTarget = Annotated[Path, typer.Argument(help="a run folder, a student folder, or a .pth/.safetensors checkpoint")]
WriteOnnx = Annotated[bool, typer.Option("--onnx/--no-onnx", help="write the ONNX file (needed for everything else)")]
ExportFormats = Annotated[
    Optional[str],
    typer.Option("--format", help=f"formats to write, e.g. onnx,openvino (default onnx; {format_help()})"),
]
Static = Annotated[bool, typer.Option("--static", help="fixed-shape files: batch 1 at --size (every format)")]
MaxDrop = Annotated[
    Optional[float],
    typer.Option("--max-drop", min=0, help="OpenVINO INT8: NNCF accuracy control, largest PSNR drop in dB"),
]
Trt = Annotated[
    bool, typer.Option("--trt", help="the tensorrt format: lint, and build an engine where TensorRT exists")
]
EnginePrecision = Annotated[str, typer.Option("--precision", help="fp32 | fp16 | int8")]
Dynamic = Annotated[str, typer.Option("--dynamic", help="dynamic axes: batch, or batch,hw")]
Opset = Annotated[int, typer.Option("--opset", min=13, max=23)]
ExportOut = Annotated[Optional[Path], typer.Option("--out", help="output folder (default: next to the input)")]
EmitTrtexec = Annotated[bool, typer.Option("--emit-trtexec", help="write a trtexec script for the device")]
TrtVersion = Annotated[int, typer.Option("--trt-version", help="TensorRT major version for lint and trtexec (10|11)")]
CalibData = Annotated[Optional[Path], typer.Option("--data", help="images for INT8 calibration and parity")]
Arch = Annotated[Optional[str], typer.Option("--arch", help="zoo name when TARGET is a bare checkpoint")]
# compress profile
ProfileModels = Annotated[
    List[str],
    typer.Argument(
        help="run folder, student folder, .onnx, .plan, trtexec .json or zoo name (e.g. resnet_9blocks:width=0.25)"
    ),
]
Backends = Annotated[str, typer.Option("--backend", help=backend_help())]
Batches = Annotated[str, typer.Option("--batch", help="batch sizes, e.g. 1,4")]
Sizes = Annotated[
    Optional[str],
    typer.Option("--size", help="image sizes, e.g. 256,512 (default: a run folder's own data.size, else 256)"),
]
Precisions = Annotated[str, typer.Option("--precision", help="fp32, fp16, int8")]
Seconds = Annotated[Optional[float], typer.Option("--seconds", help="time for S seconds instead of --iters")]
ProfileDevice = Annotated[
    str,
    typer.Option("--device", help="cpu | cuda (torch backends) | gpu | npu (openvino); a backend runs where it can"),
]
ResultFile = Annotated[Path, typer.Option("--out", help="result JSON")]
Host = Annotated[Optional[str], typer.Option("--host", help="profile on user@board over SSH (ONNX models)")]
Port = Annotated[Optional[int], typer.Option("--port", help="SSH port for --host")]
SshOptions = Annotated[
    Optional[List[str]],
    typer.Option("--ssh-option", help="extra ssh -o option for --host, e.g. StrictHostKeyChecking=accept-new"),
]
RemoteCompress = Annotated[
    str, typer.Option("--remote-compress", help="the compress command on the --host machine (e.g. ~/venv/bin/compress)")
]
OverwriteOut = Annotated[bool, typer.Option("--force", help="overwrite an existing --out file")]
# compress benchmark
BenchTarget = Annotated[Path, typer.Argument(help="a run folder, or a student folder")]
BenchData = Annotated[
    Optional[Path],
    typer.Option("--data", help="student folder: images to compare on and calibrate INT8 with (a run uses its own)"),
]
BenchFormats = Annotated[
    Optional[str], typer.Option("--format", help=f"only these formats (default: all: {format_help()})")
]
RefImages = Annotated[int, typer.Option("--images", min=1, help="reference images for PSNR/SSIM")]
# compress ablate
AblateOut = Annotated[Path, typer.Option("--out", help="parent folder of the ablation's runs")]
Arms = Annotated[str, typer.Option("--arms", help="scratch, kd, kd_srp, kd_matched")]
Inits = Annotated[str, typer.Option("--inits", help="student inits: inherit, scratch")]
Widths = Annotated[
    Optional[str],
    typer.Option(
        "--widths",
        help="the students: widths, e.g. 0.5,0.25, or plan.json files of per-layer widths (compress plan); the "
        "first is the base the others are compared with (default: the recipe's)",
    ),
]
Seeds = Annotated[
    str, typer.Option("--seeds", help="seeds, spaced apart (the sampler draws epoch e of seed s from s + e)")
]
Ratio = Annotated[
    float, typer.Option("--ratio", min=0.001, max=100, help="kd_srp: SRP's gradient as a multiple of KD's")
]
SrpLayers = Annotated[Optional[str], typer.Option("--layers", help="SRP taps (default: the recipe's srp.layers)")]
Bootstrap = Annotated[int, typer.Option("--bootstrap", min=100, max=100000, help="bootstrap replicates")]
TablesOnly = Annotated[bool, typer.Option("--tables-only", help="train nothing: tabulate the finished runs")]

# compress plan, report
BudgetRecipe = Annotated[Path, typer.Argument(help="recipe YAML file with student.budget")]
Remeasure = Annotated[bool, typer.Option("--force", help="measure again even when plan.json is up to date")]
ReportFiles = Annotated[List[Path], typer.Argument(help="profile.json, eval.json and export.json files, any machines")]
ReportOut = Annotated[Path, typer.Option("--out", help="output folder for report.md and report.html")]
Title = Annotated[str, typer.Option("--title")]


@app.command("run")
def run_cmd(
    recipe: RecipeFile,
    out: RunsOut = Path("runs"),
    set_: SetOverrides = None,
    force: RedoStages = False,
    resume: Resume = False,
    only: Only = None,
    device: RunDevice = None,
    nproc: Nproc = 1,
    trust_checkpoint: TrustCheckpoint = False,
    quiet: Quiet = False,
):
    """Run the recipe's pipeline: teacher, student, distill, evaluate, export, profile, report."""
    _setup_logging(quiet)
    check_run_device(device)
    check_threads(nproc, "--nproc", what="processes")
    r = load_recipe(recipe, set_)
    opts = RunOptions(
        force=force,
        resume=resume,
        only=csv_list(only) or None,
        device=device,
        trust_checkpoint=trust_checkpoint,
        nproc=nproc,
        recipe_path=recipe,
    )
    with _Progress(quiet) as progress:
        run_pipeline(r, out, opts, progress=progress, on_stage=lambda res: _stage_done(progress, res, quiet))
    if not quiet:
        QUANT_FILTER.explain()
        for line in closing_summary(out / r.name):
            typer.echo(line, err=True)


def _stage_done(progress: _Progress, res: StageResult, quiet: bool) -> None:
    progress.stage_done(res.stage)
    if not quiet:
        verb = "up to date, skipped" if res.status == "skipped" else f"done in {res.seconds:.1f} s"
        typer.echo(f"{res.stage:>9}: {verb}", err=True)


@app.command()
def validate(recipe: RecipeFile, set_: SetOverrides = None, trust_code: TrustTeacherCode = False):
    """Check a recipe without running anything (an imported teacher's code is located, not executed)."""
    _trust(trust_code)
    r = load_recipe(recipe, set_)
    t = r.teacher
    if t.import_:
        check_import_target(t.import_, r.base_dir)
    preflight(r, build_model=bool(t.arch or trust_code))
    if t.train is None:
        for key in ("checkpoint", "reverse_checkpoint"):
            value = getattr(t, key)
            if value and not r.resolve_path(value).is_file():
                raise UserError(f"{recipe}: teacher.{key}: file not found: {r.resolve_path(value)}")
    for w in missing_files(r):
        typer.echo(f"warning: {w}", err=True)
    typer.echo(f"{recipe}: valid (run name {r.name!r})")


@app.command()
def evaluate(
    target: EvalTarget,
    data: EvalData = None,
    kind: EvalKind = "paired",
    direction: EvalDirection = "AtoB",
    size: EvalSize = 256,
    inception_weights: InceptionWeights = None,
    max_images: MaxImages = None,
    metrics: Metrics = None,
    device: TorchDevice = "auto",
    trust_code: TrustFolderCode = False,
    quiet: Quiet = False,
):
    """Evaluate teacher and student of a run: FID, KID, PSNR, SSIM, params, MACs; writes eval.json."""
    _setup_logging(quiet)
    _trust(trust_code)
    check_evaluate_flags(device, data, inception_weights)
    weights = str(inception_weights) if inception_weights else None
    if not is_run_folder(target):
        check_student_evaluation(target, data, kind, direction, size)
        with lock_for(target), _Progress(quiet) as progress:  # a student folder inside a run: the run's lock
            kw = dict(kind=kind, direction=direction, size=size, max_images=max_images, inception_weights=weights)
            names = csv_list(metrics) or ["fid", "kid", "psnr", "ssim"]
            res = evaluate_folder(target, data, resolve_device(device), metrics=names, progress=progress, **kw)
        print_table(eval_table({"student": res["student"]}, f"student against {data}"))
        typer.echo(f"wrote {target / 'eval.json'}")
        return
    overrides = [f"data.root={data.resolve()}"] if data else []
    overrides += [f"evaluate.max_images={max_images}"] if max_images else []
    overrides += [f"evaluate.metrics=[{metrics}]"] if metrics else []
    run = RunDir(target)
    r = load_run_recipe(run, overrides)
    with run_lock(run.root), _Progress(quiet) as progress:  # one writer per run folder
        res = evaluate_run(run, r, resolve_device(device), progress, weights)
        if data or max_images:  # other images than the recipe's: the pipeline's evaluate stage is not up to date
            run.forget("evaluate")
    print_table(eval_table(res, f"teacher against student, {res.get('n_images')} test images"))
    typer.echo(f"wrote {run.eval_json}")


@app.command()
def export(
    target: ExportTarget,
    onnx: WriteOnnx = True,
    format_: ExportFormats = None,
    static: Static = False,
    max_drop: MaxDrop = None,
    trt: Trt = False,
    precision: EnginePrecision = "fp32",
    dynamic: Dynamic = "batch",
    opset: Opset = 18,
    size: ImageSize = None,
    out: ExportOut = None,
    emit_trtexec: EmitTrtexec = False,
    trt_version: TrtVersion = 10,
    data: CalibData = None,
    calib_images: CalibImages = 32,
    arch: Arch = None,
    trust_checkpoint: TrustCheckpoint = False,
    trust_code: TrustFolderCode = False,
    quiet: Quiet = False,
):
    """Export a student to ONNX (with parity), OpenVINO, INT8 and TensorRT; emit trtexec scripts for edge devices."""
    _setup_logging(quiet)
    _trust(trust_code)
    formats = csv_list(format_)
    tensorrt = (["onnx"] if not formats else []) + ["tensorrt"] if (trt or emit_trtexec) else []
    spec = check_export_flags(
        ExportSpec(
            formats=tuple(dict.fromkeys(formats + tensorrt)),
            static=static,
            max_drop=max_drop,
            rewrite_sources=onnx,
            build_engine=trt or "tensorrt" in formats,
            precision=precision,
            dynamic=csv_list(dynamic),
            opset=opset,
            size=size,
            out=out,
            emit_trtexec=emit_trtexec,
            trt_versions=(trt_version,),
            data=data,
            calib_images=calib_images,
        )
    )
    folder = _written_folder(target, out)
    # one writer per folder: a run folder (also an --out inside one), a student folder, an --out folder
    with _writer_lock(folder), _Progress(quiet) as progress:
        res = export_target(target, spec, arch=arch, trust_checkpoint=trust_checkpoint, progress=progress)
    QUANT_FILTER.explain()
    for line in res["lines"]:
        typer.echo(line)


def _writer_lock(folder: Optional[Path]):
    """The lock a command takes before writing into ``folder``: the run folder's that holds it, else the folder's
    own (a student folder, an ``--out`` folder); nothing for None."""
    if folder is None:
        return contextlib.nullcontext()
    return lock_for(folder) if enclosing_run(folder) is not None else run_lock(folder)


def _written_folder(target: Path, out: Optional[Path]) -> Optional[Path]:
    """The folder ``compress export`` (or ``benchmark``) writes into and locks, one writer at a time as in a run
    folder: ``--out``, or the run or student folder itself; None for a bare checkpoint written beside itself."""
    if out is not None:
        return make_out_folder(out)
    if is_run_folder(target) or (target.is_dir() and (target / "student.json").is_file()):
        return target
    return None


@app.command()
def profile(
    models: ProfileModels,
    backend: Backends = "torch,ort-cpu",
    batch: Batches = "1",
    size: Sizes = None,
    precision: Precisions = "fp32",
    warmup: Warmup = 10,
    iters: Iters = 50,
    seconds: Seconds = None,
    threads: Threads = None,
    device: ProfileDevice = "cpu",
    out: ResultFile = Path("profile.json"),
    host: Host = None,
    port: Port = None,
    ssh_option: SshOptions = None,
    remote_compress: RemoteCompress = "compress",
    force: OverwriteOut = False,
    trust_code: TrustFolderCode = False,
    quiet: Quiet = False,
):
    """Measure latency per model, backend, batch, size and precision (each in its own process)."""
    _setup_logging(quiet)
    _trust(trust_code)
    _check_folder_imports([Path(m) for m in models])  # before any worker process imports them
    size = size if size is not None else _run_size(models)
    req = ProfileRequest(backend, batch, size, precision, warmup, iters, seconds, threads, device, host, out, force)
    req.check()
    with lock_for(out.parent):  # --out inside a run folder: not while a pipeline writes it
        if host is not None:
            doc = remote_profile(host, models, req.remote_args(), out, port, list(ssh_option or []), remote_compress)
        else:
            with _Progress(quiet) as progress:
                doc = profile_models(profile_targets(models), progress=progress, **req.profile_kwargs())
            atomic_write_json(out, doc)
    _print_profile(doc)
    typer.echo(f"wrote {out}")


def _run_size(models: List[str]) -> str:
    """``--size`` by default: a run folder, or a file inside one (``RUN/student.onnx``, ``RUN/benchmark/…``), is
    profiled at the size it was trained at, anything else at 256."""
    for m in models:
        p = Path(m)
        for folder in (p, p.parent, p.parent.parent) if p.exists() else ():
            if is_run_folder(folder):
                return str(load_run_recipe(RunDir(folder)).data.size)
    return "256"


def _print_profile(doc: dict) -> None:
    for r in doc["results"]:
        head = f"{r['model']:<32} {r['backend']:<12} b{r['batch']:<3} {r['size']:>4}² {r.get('precision', 'fp32'):<5}"
        if r.get("status") == "ok":
            lat = r["latency_ms"]
            typer.echo(
                f"{head} p50 {lat['p50']:9.2f} ms  p90 {lat['p90']:9.2f} ms  {lat['throughput_ips']:8.1f} img/s at p50"
            )
        else:
            typer.echo(f"{head} {r.get('status')}: {r.get('reason', '')}")
    for s in speedups([doc]):
        mac = f"  MAC reduction {s['mac_reduction']:.1f}×" if s["mac_reduction"] else ""
        typer.echo(f"speed-up {s['backend']} b{s['batch']} {s['size']}²: {s['speedup']:.1f}×{mac}")


@app.command()
def benchmark(
    target: BenchTarget,
    data: BenchData = None,
    size: ImageSize = None,
    format_: BenchFormats = None,
    images: RefImages = 8,
    calib_images: CalibImages = 32,
    threads: Threads = None,
    warmup: Warmup = 5,
    iters: Iters = 20,
    trust_code: TrustFolderCode = False,
    quiet: Quiet = False,
):
    """Export to every format and precision, check each against the teacher and time each: one table, benchmark.json."""
    _setup_logging(quiet)
    _trust(trust_code)
    _check_folder_imports([target])
    check_folder(data, "--data")
    check_threads(threads)
    formats = csv_list(format_) or None
    folder = _written_folder(target, None)  # a run or student folder: one writer at a time
    t0 = time.perf_counter()
    with _writer_lock(folder), captured_output() as caught:
        with _Progress(quiet, stream=caught.stderr) as progress:  # converters' noise caught, progress shown
            doc, path = benchmark_target(
                target,
                data=data,
                size=size,
                formats=formats,
                images=images,
                calib_images=calib_images,
                threads=threads,
                warmup=warmup,
                iters=iters,
                progress=progress,
            )
    QUANT_FILTER.explain()
    _print_benchmark(target, doc)
    typer.echo(f"total {duration(time.perf_counter() - t0)} for {len(doc['rows'])} rows")
    if not quiet:
        typer.echo(f"wrote {path}")
        if caught.lines:
            log_file = atomic_write_text(target / "benchmark" / "converters.log", caught.text)
            typer.echo(f"the converters' own messages ({caught.lines} lines) are in {log_file}")


def _print_benchmark(target: Path, doc: dict) -> None:
    typer.echo(f"{target}: {benchmark_caption(doc)}")
    for line in benchmark_table(doc):
        typer.echo(line)


@app.command()
def ablate(
    recipe: RecipeFile,
    out: AblateOut = Path("runs/ablate"),
    set_: SetOverrides = None,
    arms: Arms = "scratch,kd,kd_srp,kd_matched",
    inits: Inits = "inherit",
    widths: Widths = None,
    seeds: Seeds = "0,1000,2000",
    ratio: Ratio = 1.0,
    layers: SrpLayers = None,
    max_images: MaxImages = None,
    bootstrap: Bootstrap = 1000,
    tables_only: TablesOnly = False,
    device: TorchDevice = "auto",
    quiet: Quiet = False,
):
    """Does SRP help on this network? Arms x inits x widths x seeds of the recipe, paired; writes ablate.md."""
    _setup_logging(quiet)
    r = load_recipe(recipe, set_)
    spec = AblateSpec(
        arms=tuple(csv_list(arms)),
        inits=tuple(csv_list(inits)),
        widths=ablate_students(widths),
        seeds=tuple(parse_numbers(seeds, "--seeds", int, 0, 2**32 - 1)),
        ratio=ratio,
        layers=tuple(csv_list(layers)) if layers else (),
        n_boot=bootstrap,
        max_images=max_images,
    )
    doc = run_ablation(
        recipe_document(r), spec, out / r.name, resolve_device(device), train=not tables_only, say=typer.echo
    )
    typer.echo(render(doc))
    typer.echo(f"wrote {out / r.name / 'ablate.md'} and {out / r.name / 'ablate.json'}")


@app.command()
def plan(
    recipe: BudgetRecipe,
    out: RunsOut = Path("runs"),
    set_: SetOverrides = None,
    force: Remeasure = False,
    trust_checkpoint: TrustCheckpoint = False,
    quiet: Quiet = False,
):
    """Choose student.width from student.budget by timing untrained students on the target; writes plan.json.
    With student.search per-layer: a width per channel group, from a latency table measured on the target."""
    _setup_logging(quiet)
    r = load_recipe(recipe, set_, check_paths=False)
    if r.student.budget is None:
        raise UserError(
            "student.budget: compress plan needs a budget (latency_ms, speedup, macs or params), "
            "e.g. --set student.budget.latency_ms=30"
        )
    with run_lock(out / r.name):  # one writer per run folder
        run = RunDir(out / r.name)
        if not (run.teacher_json.exists() and run.teacher_weights.exists()):
            run = prepare_run_dir(r, out, False, recipe)
        doc = plan_student(r, run, force=force, trust_checkpoint=trust_checkpoint)
    _print_plan(doc)
    typer.echo(f"wrote {run.root / 'plan.json'}" + (f" and {run.root / doc['plot']}" if doc.get("plot") else ""))


def _print_plan(doc: dict) -> None:
    if doc.get("search") == "per-layer":
        _print_per_layer(doc)
        return
    stat = doc["stat"]
    for c in doc["candidates"]:
        lat = f"{stat} {c[stat]:9.2f} ms" if c.get(stat) is not None else ""
        mark = "  <- chosen" if c["width"] == doc["width"] else ""
        typer.echo(f"width {c['width']:<8.4g} params {c['params']:>12,}  MACs {c['macs']:>16,}  {lat}{mark}")
    cached = " (cached: same teacher, budget and machine)" if doc.get("cached") else ""
    typer.echo(f"chosen width {doc['width']:.6g}{cached}; set student.width: {doc['width']:.6g}")


def _print_per_layer(doc: dict) -> None:
    pl, stat = doc["per_layer"], doc["stat"]
    for g in pl["groups"]:
        typer.echo(f"group {g['name']:<28} {g['kept']:>5} of {g['channels']:<5} channels ({g['layers']} layer(s))")
    ch = pl["chosen"]
    cached = " (cached: same teacher, budget and machine)" if doc.get("cached") else ""
    measured = ch.get("measured", {}).get(stat) if isinstance(ch.get("measured"), dict) else None
    got = f"predicted {ch['predicted']:.4g}" + (f", measured {stat} {measured:.4g} ms" if measured is not None else "")
    typer.echo(
        f"per-layer: {got}; MACs {ch.get('macs', 0):,}; params {ch.get('params', 0):,}; "
        f"retained importance ({pl.get('importance', 'magnitude')}) {ch['retained']:.3f}{cached}"
    )
    for u in pl.get("uniform_measured") or []:
        mark = "  (within the target)" if doc.get("target") and u[stat] <= doc["target"] else ""
        typer.echo(f"uniform width {u['width']:<6g} measured {stat} {u[stat]:9.2f} ms{mark}")
    t = pl.get("table")
    if t:
        errs = ", ".join(f"{c['width']:g}: {c['error']:+.1%}" for c in t["checks"])
        typer.echo(
            f"latency table: {t['measurements']} networks measured ({t['seconds']:.0f} s); predicts uniform widths "
            f"{errs}; reference drift {t['noise']['reference_drift']:.1%}"
        )
    if ch.get("uniform"):
        typer.echo(f"uniform width {ch['uniform']:g} chosen: it keeps more of the teacher within the target")
    elif ch.get("grown_from"):
        typer.echo(
            f"per-layer widths chosen ({doc['width']:.3g} of the groups' channels): uniform width "
            f"{ch['grown_from']:g}, which kept more of the teacher than the per-layer steps, widened where the "
            "target left room; the run uses them"
        )
    else:
        typer.echo(f"per-layer widths chosen ({doc['width']:.3g} of the groups' channels); the run uses them")


@app.command()
def report(files: ReportFiles, out: ReportOut = Path("report"), title: Title = "compressor report"):
    """Merge profile and evaluation results into report.md and a self-contained report.html."""
    _setup_logging(True)
    make_out_folder(out)
    with lock_for(out):  # --out inside a run folder: not while a pipeline writes it
        md, page = write_report(files, [], out, title)
    typer.echo(f"wrote {md} and {page}")


def _click_exceptions() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(usage errors, other click errors) of every click the installed typer may raise: typer >= 0.20 bundles its
    own copy as ``typer._click``; older typers use the ``click`` package."""
    usage, other = [], []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        usage.append(mod.UsageError)
        other.append(mod.ClickException)
    return tuple(usage), tuple(other)


def _exit_like(exc: BaseException) -> Optional[int]:
    """The exit code of typer's or click's Exit/Abort (whichever copy raised it), else None."""
    for cls in type(exc).__mro__:
        if cls.__name__ == "Exit" and hasattr(exc, "exit_code"):
            return int(exc.exit_code or 0)
        if cls.__name__ == "Abort":
            return 130
    return None


def _version() -> str:
    try:
        return importlib.metadata.version("compressor")
    except importlib.metadata.PackageNotFoundError:  # not installed: the source tree's version
        return __version__


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("--version", "-V"):
        typer.echo(f"compress {_version()}")
        return 0
    if not argv:
        typer.echo(
            f"error: missing command: compress RECIPE.yaml, or one of {', '.join(sorted(COMMANDS))} (compress --help)",
            err=True,
        )
        return 2
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        argv.insert(0, "run")
    usage_errors, click_errors = _click_exceptions()
    set_command_line(argv)
    watch_interrupts()
    try:
        # not standalone, typer turns Ctrl-C (KeyboardInterrupt) into its exit code 130 and returns it
        code = app(args=argv, prog_name="compress", standalone_mode=False)
    except UserError as exc:
        if interrupted():  # a Ctrl-C that a library turned into an error
            return _interrupted()
        typer.echo(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", err=True)
        return exc.exit_code
    except Interrupted as exc:
        typer.echo(f"{exc}", err=True)
        if exc.resume_hint:
            typer.echo(f"resume with: {command_line_hint(argv) or exc.resume_hint}", err=True)
        return 130
    except KeyboardInterrupt:
        return _interrupted()
    except usage_errors as exc:
        msg = " ".join(exc.format_message().split())  # one line
        cmd = getattr(getattr(exc, "ctx", None), "command_path", "") or "compress"
        typer.echo(f"error: {cmd}: {msg}", err=True)
        return 2
    except click_errors as exc:
        typer.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
        return exc.exit_code if exc.exit_code not in (0, 1) else 2
    except Exception as exc:
        code = _exit_like(exc)
        if code is None and interrupted():
            return _interrupted()  # a Ctrl-C that a library turned into another exception
        if code is None:
            raise
        if code == 130:
            typer.echo("aborted", err=True)
        return code
    if (isinstance(code, int) and not isinstance(code, bool) and code == 130) or interrupted():
        return _interrupted()  # typer's code for Ctrl-C, or one a library swallowed while the command went on
    return code if isinstance(code, int) and not isinstance(code, bool) else 0


def _interrupted() -> int:
    typer.echo("interrupted", err=True)
    return 130


if __name__ == "__main__":
    raise SystemExit(main())
