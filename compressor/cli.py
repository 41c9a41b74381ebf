"""The ``compress`` command line.

``compress RECIPE.yaml`` runs the pipeline (it is ``compress run RECIPE.yaml``); ``validate``, ``evaluate``,
``export``, ``profile`` and ``report`` work on recipes and existing artifacts. User mistakes print one line,
``error: …``, and exit with code 2; an interrupted training exits with 130 and prints the resume command.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .errors import Interrupted, UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Make image-to-image GAN generators small and fast: distill, evaluate, export, profile.")
COMMANDS = {"run", "validate", "evaluate", "export", "profile", "report", "plan"}
log = logging.getLogger("compressor")


def _setup_logging(quiet: bool) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

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
    for name in ("compressor", "exporters"):
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.INFO)


class _LowerLevelFormatter(logging.Formatter):
    def format(self, record):
        record.levelname = record.levelname.lower()
        return super().format(record)


class _Progress:
    """A rich progress bar per stage: step, loss and ETA."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bar = None
        self.tasks = {}

    def __enter__(self):
        return self

    def _start(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                            console=Console(stderr=True), transient=False)
        self.bar.__enter__()

    def __call__(self, stage: str, step: int, total: int, losses: dict) -> None:
        if self.quiet or not sys.stderr.isatty():
            return  # no bars in logs and pipes
        if self.bar is None:
            self._start()
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(stage, total=total, info="")
        info = ""
        if losses:
            main = {k: v for k, v in losses.items() if not k.endswith("/disc")}
            info = f"loss {sum(main.values()):.3f}"
        self.bar.update(self.tasks[stage], completed=step, total=total, info=info)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)


def _csv(value: Optional[str], cast=str) -> list:
    if not value:
        return []
    try:
        return [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"cannot parse {value!r} as a comma-separated list of {cast.__name__}") from None


@app.command("run")
def run_cmd(
    recipe: Path = typer.Argument(..., help="recipe YAML file"),
    out: Path = typer.Option(Path("runs"), "--out", help="parent folder of runs/<name>/"),
    set_: List[str] = typer.Option([], "--set", help="override a key: dotted.key=value (YAML scalar)"),
    force: bool = typer.Option(False, "--force", help="redo stages even when up to date"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted training from its checkpoint"),
    only: Optional[str] = typer.Option(None, "--only", help="run only these stages, e.g. export,profile"),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda (overrides the recipe)"),
    nproc: int = typer.Option(1, "--nproc", min=1, help="training processes (torchrun; gloo on CPU, nccl on GPU)"),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint",
                                          help="allow pickled teacher checkpoints (runs code from the file)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars or info messages"),
):
    """Run the recipe's pipeline: teacher, student, distill, evaluate, export, profile, report."""
    from .pipeline import run_pipeline
    from .recipe import load_recipe

    _setup_logging(quiet)
    if device not in (None, "auto", "cpu", "cuda"):
        raise UserError(f"--device: expected auto, cpu or cuda, got {device!r}")
    r = load_recipe(recipe, set_)
    stages = _csv(only)

    def on_stage(res):
        if not quiet:
            verb = "up to date, skipped" if res.status == "skipped" else f"done in {res.seconds:.1f} s"
            typer.echo(f"{res.stage:>9}: {verb}", err=True)

    with _Progress(quiet) as progress:
        run_pipeline(r, out, force=force, resume=resume, only=stages or None, device=device,
                     trust_checkpoint=trust_checkpoint, nproc=nproc, progress=progress, recipe_path=recipe,
                     on_stage=on_stage)
    report = out / r.name / "report.md"
    if not quiet:
        typer.echo(f"run folder: {out / r.name}" + (f"\nreport: {report}" if report.exists() else ""), err=True)


@app.command()
def validate(
    recipe: Path = typer.Argument(..., help="recipe YAML file"),
    set_: List[str] = typer.Option([], "--set", help="override a key: dotted.key=value"),
):
    """Check a recipe without running anything."""
    from .recipe import check_taps, load_recipe, missing_files

    r = load_recipe(recipe, set_)
    check_taps(r)
    for w in missing_files(r):
        typer.echo(f"warning: {w}", err=True)
    typer.echo(f"{recipe}: valid (run name {r.name!r})")


@app.command()
def evaluate(
    target: Path = typer.Argument(..., help="a run folder (runs/<name>), or a student folder with --data"),
    data: Optional[Path] = typer.Option(None, "--data", help="dataset root (default: the recipe's)"),
    kind: str = typer.Option("paired", "--kind", help="with a student folder: paired | folder"),
    direction: str = typer.Option("AtoB", "--direction", help="with a student folder: AtoB | BtoA"),
    size: int = typer.Option(256, "--size", help="with a student folder: image size"),
    inception_weights: Optional[Path] = typer.Option(None, "--inception-weights", help="FID Inception (.pt)"),
    max_images: Optional[int] = typer.Option(None, "--max-images", min=1, help="evaluate at most N test images"),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="e.g. fid,kid,psnr,ssim (default: the recipe's)"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Evaluate teacher and student of a run: FID, KID, PSNR, SSIM, params, MACs; writes eval.json."""
    from .metrics import evaluate_run
    from .pipeline import RunDir, resolve_device
    from .recipe import load_recipe

    _setup_logging(quiet)
    run = RunDir(target)
    if not run.recipe.exists():
        if not (target / "student.json").exists():
            raise UserError(f"{target}: neither a run folder (recipe.resolved.yaml) nor a student folder "
                            f"(student.json)")
        if data is None:
            raise UserError(f"{target}: a student folder needs --data (the dataset root with a test split)")
        if kind not in ("paired", "folder") or direction not in ("AtoB", "BtoA"):
            raise UserError("--kind must be paired or folder; --direction AtoB or BtoA")
        from .metrics import evaluate_folder

        with _Progress(quiet) as progress:
            res = evaluate_folder(target, data, resolve_device(device), kind=kind, direction=direction, size=size,
                                  metrics=_csv(metrics) or ["fid", "kid", "psnr", "ssim"], max_images=max_images,
                                  inception_weights=str(inception_weights) if inception_weights else None,
                                  progress=progress)
        for k, v in res["student"].items():
            typer.echo(f"{k:>16}  student {v}")
        typer.echo(f"wrote {target / 'eval.json'}")
        return
    overrides = [f"data.root={data.resolve()}"] if data else []
    if max_images:
        overrides.append(f"evaluate.max_images={max_images}")
    if metrics:
        overrides.append(f"evaluate.metrics=[{metrics}]")
    r = load_recipe(run.recipe, overrides)
    src = json.loads(run.run_json.read_text()).get("recipe_source") if run.run_json.exists() else None
    if src and not data:
        r._base_dir = Path(src).parent
    with _Progress(quiet) as progress:
        res = evaluate_run(run, r, resolve_device(device), progress,
                           str(inception_weights) if inception_weights else None)
    keys = [k for k in ("params", "macs", "fid", "kid", "psnr", "ssim", "psnr_vs_teacher")
            if k in res["teacher"] or k in res["student"]]
    for k in keys:
        typer.echo(f"{k:>16}  teacher {res['teacher'].get(k, '–')!s:>14}  student {res['student'].get(k, '–')!s:>14}")
    typer.echo(f"wrote {run.eval_json}")


@app.command()
def export(
    target: Path = typer.Argument(..., help="a run folder, a student folder, or a .pth/.safetensors checkpoint"),
    onnx: bool = typer.Option(True, "--onnx/--no-onnx", help="write the ONNX file (needed for everything else)"),
    trt: bool = typer.Option(False, "--trt", help="lint for TensorRT and build an engine where TensorRT exists"),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | fp16 | int8"),
    dynamic: str = typer.Option("batch", "--dynamic", help="dynamic axes: batch, or batch,hw"),
    opset: int = typer.Option(18, "--opset", min=13, max=23),
    size: Optional[int] = typer.Option(None, "--size", help="image size (default: the run's, or 256)"),
    out: Optional[Path] = typer.Option(None, "--out", help="output folder (default: next to the input)"),
    emit_trtexec: bool = typer.Option(False, "--emit-trtexec", help="write a trtexec script for the device"),
    trt_version: int = typer.Option(10, "--trt-version", help="TensorRT major version for lint and trtexec (10|11)"),
    data: Optional[Path] = typer.Option(None, "--data", help="images for INT8 calibration and parity"),
    calib_images: int = typer.Option(32, "--calib-images", min=1, help="INT8 calibration images"),
    arch: Optional[str] = typer.Option(None, "--arch", help="zoo name when TARGET is a bare checkpoint"),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Export a student to ONNX (with parity), INT8 and TensorRT; emit trtexec scripts for edge devices."""
    from exporters.cli_export import export_command

    _setup_logging(quiet)
    if precision not in ("fp32", "fp16", "int8"):
        raise UserError(f"--precision: expected fp32, fp16 or int8, got {precision!r}")
    if trt_version not in (10, 11):
        raise UserError(f"--trt-version: expected 10 or 11, got {trt_version}")
    dyn = _csv(dynamic)
    bad = [d for d in dyn if d not in ("batch", "hw")]
    if bad:
        raise UserError(f"--dynamic: unknown axis {bad[0]!r} (batch, hw)")
    res = export_command(target, onnx=onnx, trt=trt, precision=precision, dynamic=dyn, opset=opset, size=size,
                         out=out, emit_trtexec=emit_trtexec, trt_version=trt_version, data=data,
                         calib_images=calib_images, arch=arch, trust_checkpoint=trust_checkpoint)
    for line in res["lines"]:
        typer.echo(line)


@app.command()
def profile(
    models: List[str] = typer.Argument(..., help="run folder, student folder, .onnx, .plan, trtexec .json or zoo "
                                                 "name (e.g. resnet_9blocks:width=0.25)"),
    backend: str = typer.Option("torch,ort-cpu", "--backend", help="torch, torch-compile, ort-cpu, ort-cuda, "
                                                                  "ort-trt, tensorrt, trtexec-json"),
    batch: str = typer.Option("1", "--batch", help="batch sizes, e.g. 1,4"),
    size: str = typer.Option("256", "--size", help="image sizes, e.g. 256,512"),
    precision: str = typer.Option("fp32", "--precision", help="fp32, fp16, int8"),
    warmup: int = typer.Option(10, "--warmup", min=0),
    iters: int = typer.Option(50, "--iters", min=1),
    seconds: Optional[float] = typer.Option(None, "--seconds", help="time for S seconds instead of --iters"),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="intra-op threads"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda (for torch backends)"),
    out: Path = typer.Option(Path("profile.json"), "--out", help="result JSON"),
    host: Optional[str] = typer.Option(None, "--host", help="profile on user@board over SSH (ONNX models)"),
    port: Optional[int] = typer.Option(None, "--port", help="SSH port for --host"),
    ssh_option: List[str] = typer.Option([], "--ssh-option", help="extra ssh -o option for --host, e.g. "
                                                                  "StrictHostKeyChecking=accept-new"),
    remote_compress: str = typer.Option("compress", "--remote-compress",
                                        help="the compress command on the --host machine (e.g. ~/venv/bin/compress)"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing --out file"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Measure latency per model, backend, batch, size and precision (each in its own process)."""
    from exporters.profile import profile_models, remote_profile

    _setup_logging(quiet)
    if out.exists() and not force:
        raise UserError(f"--out: {out} exists; pass --force to overwrite it or choose another file")
    backends = _csv(backend)
    from exporters.runtimes import BACKENDS

    for b in backends:
        if b not in BACKENDS:
            raise UserError(f"--backend: unknown backend {b!r}; choose from {', '.join(BACKENDS)}")
    if host:
        args = [f"--backend {backend}", f"--batch {batch}", f"--size {size}", f"--precision {precision}",
                f"--warmup {warmup}", f"--iters {iters}"] + ([f"--threads {threads}"] if threads else [])
        opts = [x for o in ssh_option for x in ("-o", o)]
        doc = remote_profile(host, models, args, out, port, opts, remote_compress)
    else:
        with _Progress(quiet) as progress:
            doc = profile_models(models, backends, _csv(batch, int), _csv(size, int), _csv(precision), warmup, iters,
                                 seconds, threads, device, progress=progress)
        from .io import atomic_write_json

        atomic_write_json(out, doc)
    _print_profile(doc)
    typer.echo(f"wrote {out}")


def _print_profile(doc: dict) -> None:
    from exporters.report import speedups

    for r in doc["results"]:
        head = f"{r['model']:<32} {r['backend']:<12} b{r['batch']:<3} {r['size']:>4}² {r.get('precision', 'fp32'):<5}"
        if r.get("status") == "ok":
            lat = r["latency_ms"]
            typer.echo(f"{head} p50 {lat['p50']:9.2f} ms  p90 {lat['p90']:9.2f} ms  {lat['throughput_ips']:8.1f} img/s")
        else:
            typer.echo(f"{head} {r.get('status')}: {r.get('reason', '')}")
    for s in speedups([doc]):
        mac = f"  MAC reduction {s['mac_reduction']:.1f}×" if s["mac_reduction"] else ""
        typer.echo(f"speed-up {s['backend']} b{s['batch']} {s['size']}²: {s['speedup']:.1f}×{mac}")


@app.command()
def plan(
    recipe: Path = typer.Argument(..., help="recipe YAML file with student.budget"),
    out: Path = typer.Option(Path("runs"), "--out", help="parent folder of runs/<name>/"),
    set_: List[str] = typer.Option([], "--set", help="override a key: dotted.key=value (YAML scalar)"),
    force: bool = typer.Option(False, "--force", help="measure again even when plan.json is up to date"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no info messages"),
):
    """Choose student.width from student.budget by timing untrained students on the target; writes plan.json."""
    from .models import build_teacher
    from .pipeline import RunDir, _teacher_spec_dict, load_run_teacher, prepare_run_dir
    from .plan import plan_width
    from .recipe import load_recipe

    _setup_logging(quiet)
    r = load_recipe(recipe, set_, check_paths=False)
    if r.student.budget is None:
        raise UserError("student.budget: compress plan needs a budget (latency_ms, speedup, macs or params), "
                        "e.g. --set student.budget.latency_ms=30")
    run = RunDir(out / r.name)
    if run.teacher_json.exists() and run.teacher_weights.exists():
        teacher = load_run_teacher(run)
    else:  # latency does not depend on the weights: the architecture is enough
        teacher = build_teacher(r.teacher, r.base_dir, init=None)
        teacher.compressor_spec = _teacher_spec_dict(r)
        run = prepare_run_dir(r, out, False, recipe)
    doc = plan_width(teacher, r.student.budget, size=r.data.size, method=r.student.method, margin=r.student.margin,
                     run_dir=run.root, force=force)
    _print_plan(doc)
    typer.echo(f"wrote {run.root / 'plan.json'}" + (f" and {run.root / doc['plot']}" if doc.get("plot") else ""))


def _print_plan(doc: dict) -> None:
    stat = doc["stat"]
    for c in doc["candidates"]:
        lat = f"{stat} {c[stat]:9.2f} ms" if c.get(stat) is not None else ""
        mark = "  <- chosen" if c["width"] == doc["width"] else ""
        typer.echo(f"width {c['width']:<8.4g} params {c['params']:>12,}  MACs {c['macs']:>16,}  {lat}{mark}")
    cached = " (cached: same teacher, budget and machine)" if doc.get("cached") else ""
    typer.echo(f"chosen width {doc['width']:.6g}{cached}; set student.width: {doc['width']:.6g}")


@app.command()
def report(
    files: List[Path] = typer.Argument(..., help="profile.json, eval.json and export.json files, any machines"),
    out: Path = typer.Option(Path("report"), "--out", help="output folder for report.md and report.html"),
    title: str = typer.Option("compressor report", "--title"),
):
    """Merge profile and evaluation results into report.md and a self-contained report.html."""
    from exporters.report import write_report

    _setup_logging(True)
    md, page = write_report(files, [], out, title)
    typer.echo(f"wrote {md} and {page}")


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        argv.insert(0, "run")
    try:
        app(args=argv, prog_name="compress", standalone_mode=False)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except Interrupted as exc:
        typer.echo(f"{exc}", err=True)
        if exc.resume_hint:
            typer.echo(f"resume with: {exc.resume_hint}", err=True)
        return 130
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    except Exception as exc:  # click's usage errors
        import click

        if isinstance(exc, click.exceptions.UsageError):
            typer.echo(f"error: {exc.format_message()}", err=True)
            return 2
        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            return exc.exit_code
        raise
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
