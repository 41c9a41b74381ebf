"""Latency measurement: one subprocess per (model, backend, batch, size, precision).

The harness resolves the models (run and student folders, exported files by the format table's suffixes, zoo
names), picks for each backend the file it runs (a PyTorch model is exported to ONNX here, in the parent, for a
backend that reads ONNX), and times each configuration in its own process (:mod:`compressor.exporters.timing`).
Results carry p50/p90/p99/mean/std/min latency, throughput, peak memory, an efficiency figure (achieved MAC rate
over the machine's FP32 GEMM peak, from a short matmul probe), and the environment. Backends that are not available
are listed with the reason; ``compress profile --host`` runs the installed toolkit's profiler on another machine.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch

from compressor import remote, schemas
from compressor.complexity import profile_model
from compressor.errors import UserError
from compressor.models import input_channels, size_multiple
from compressor.procs import run_group
from compressor.remote import check_host, check_program
from compressor.zoo_args import ZOO_ARCHS, check_zoo_kwargs

from ..lazy import onnx
from .formats.onnx import export_onnx
from .rows import Backend, Runner
from .table import BACKENDS, backend_available, file_kind, find_artifacts, format_of_backend
from .timing import build_torch, latency_stats

SCHEMA = "compressor.profile/1"
log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ environment


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") or line.startswith("Model"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _run(cmd: list[str]) -> Optional[str]:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def environment(threads: Optional[int] = None, with_torch: bool = True) -> dict:
    """Machine and library facts recorded with every result."""
    env = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "threads": threads or os.cpu_count(),
    }
    runtimes = dict.fromkeys(m for b in BACKENDS.values() for m in b.requires)  # each runtime's version, in order
    for pkg in (*runtimes, "onnx", "compressor"):
        try:
            env[f"{pkg}_version"] = md.version(pkg)
        except md.PackageNotFoundError:
            env[f"{pkg}_version"] = None
    smi = _run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    if smi:
        name, _, driver = smi.splitlines()[0].partition(",")
        env["gpu"], env["driver"] = name.strip(), driver.strip()
    if with_torch:
        try:
            import torch

            env["cuda"] = torch.version.cuda
            if torch.cuda.is_available():
                env["gpu"] = torch.cuda.get_device_name(0)
                env["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        except ImportError:
            pass
    if Path("/etc/nv_tegra_release").exists():  # Jetson
        env["jetson_release"] = Path("/etc/nv_tegra_release").read_text().splitlines()[0]
        env["nvpmodel"] = _run(["nvpmodel", "-q"])
        clocks = _run(["jetson_clocks", "--show"])
        env["jetson_clocks"] = clocks is not None and "MaxFreq" in clocks and "MinFreq" in clocks
    label = env.get("gpu") or env["cpu"]
    env["machine"] = f"{env['hostname']} · {label} · {env['threads']}t"
    return env


# ------------------------------------------------------------------------------------------------ statistics


def gemm_peak(threads: Optional[int] = None, device: str = "cpu", seconds: float = 0.5) -> float:
    """Achieved FP32 GEMM rate in MAC/s, from a short matmul probe in a fresh process."""
    code = f"""
import time, torch, json
if {threads!r}: torch.set_num_threads({threads!r})
n = 1024 if {device!r} == 'cpu' else 8192
a = torch.randn(n, n, device={device!r}); b = torch.randn(n, n, device={device!r})
sync = (lambda: torch.cuda.synchronize()) if {device!r} != 'cpu' else (lambda: None)
for _ in range(3): a @ b
sync(); t0 = time.perf_counter(); k = 0
while time.perf_counter() - t0 < {seconds}:
    a @ b; k += 1
sync(); dt = time.perf_counter() - t0
print(json.dumps(k * n ** 3 / dt))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=_thread_env(threads)
    )
    try:
        return float(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return float("nan")


def _thread_env(threads: Optional[int]) -> dict:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
        env["MKL_NUM_THREADS"] = str(threads)
    return env


# ------------------------------------------------------------------------------------------------ model refs


def parse_zoo_spec(text: str) -> Optional[dict]:
    """``resnet_9blocks`` or ``resnet_9blocks:ngf=64,norm=instance,width=0.25``; None if not a zoo spec."""
    name, _, args = text.partition(":")
    if name not in ZOO_ARCHS:
        return None

    kwargs, width = {}, 1.0
    for part in filter(None, args.split(",")):
        k, _, v = part.partition("=")
        try:
            if k == "width":
                width = float(v)
                if not 0 < width <= 1:
                    raise ValueError
            elif k in ("ngf", "input_nc", "output_nc"):
                kwargs[k] = int(v)
            elif k == "norm":
                kwargs[k] = v
            else:
                raise UserError(f"{text}: unknown zoo option {k!r} (ngf, norm, input_nc, output_nc, width)")
        except ValueError:
            want = "a number in (0, 1]" if k == "width" else "an integer"
            raise UserError(f"{text}: zoo option {k}={v!r} is not {want}") from None
    try:
        check_zoo_kwargs(name, kwargs)
    except ValueError as exc:
        raise UserError(f"{text}: {exc}") from None
    return {"arch": name, "kwargs": kwargs, "width": width}


def resolve_models(specs: list[str]) -> list[dict]:
    """Turn MODEL arguments into refs: student dir, ONNX file, TensorRT engine, trtexec JSON, zoo spec.

    Run folders are opened by :func:`compressor.app.commands.profile_targets` (the run folder knows its teacher)."""
    refs = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir() and (p / "student.json").exists():
            onnx = p / "student.onnx"
            refs.append(
                {
                    "label": p.name,
                    "role": "student",
                    "torch": {"type": "student_dir", "path": str(p)},
                    "onnx": str(onnx) if onnx.exists() else None,
                    "artifacts": find_artifacts(p, "student"),
                }
            )
        elif p.is_file() and (found := file_kind(p)):
            kind, precision = found  # a named file is timed at the precision it holds, whatever --precision says
            ref = {"label": p.stem, "role": "model", "torch": None, "onnx": None, "artifacts": {kind: str(p)}}
            refs.append({**ref, "precisions": [precision]})
        elif p.suffix == ".onnx":
            if not p.is_file():
                raise UserError(f"{p}: file not found")
            refs.append(
                {"label": p.stem, "role": "student" if "student" in p.stem else "model", "torch": None, "onnx": str(p)}
            )
        elif p.suffix in (".plan", ".engine"):
            if not p.is_file():
                raise UserError(f"{p}: file not found")
            refs.append(
                {"label": p.stem, "role": "model", "torch": None, "onnx": None, "artifacts": {"engine": str(p)}}
            )
        elif p.suffix == ".json":
            if not p.is_file():
                raise UserError(f"{p}: file not found")
            ref = {"label": p.stem, "role": "model", "torch": None, "onnx": None}
            refs.append({**ref, "artifacts": {"trtexec-json": str(p)}})
        else:
            zoo = parse_zoo_spec(spec)
            if zoo is None:
                raise UserError(
                    f"{spec}: not a run folder, student folder, .onnx, OpenVINO .xml, .plan/.engine, trtexec .json "
                    f"or zoo name"
                )
            role = "student" if zoo["width"] < 1 else "teacher"
            refs.append({"label": spec, "role": role, "torch": {"type": "zoo", **zoo}, "onnx": None})
    return refs


def _complexity(ref: dict, size: int) -> dict:
    if not ref.get("torch"):
        return {}
    model = build_torch(ref["torch"])
    in_nc = input_channels(model)
    cx = profile_model(model, (1, in_nc, size, size))
    return {
        "params": cx["params"],
        "macs": cx["macs"],
        "macs_paper_convention": cx["macs_paper_convention"],
        "size_multiple": size_multiple(model),
        "input_nc": in_nc,
    }


def _onnx_channels(path: Optional[str]) -> Optional[int]:
    """The channel count an ONNX file's first input declares (None where it is not a fixed number)."""
    if not path or not str(path).endswith(".onnx"):
        return None
    try:
        dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
        return int(dims[1].dim_value) if len(dims) == 4 and dims[1].dim_value > 0 else None
    except Exception:  # noqa: BLE001 - unreadable here means the runtime will say so
        return None


def _ensure_onnx(ref: dict, size: int, workdir: Path) -> Optional[str]:
    """ONNX for a torch-only ref, exported once in this (parent) process: the timing worker never loads torch."""
    if ref.get("onnx") or not ref.get("torch"):
        return ref.get("onnx")
    model = build_torch(ref["torch"])
    path = workdir / f"{abs(hash(json.dumps(ref['torch'], sort_keys=True)))}.onnx"
    if not path.exists():
        export_onnx(model, path, torch.zeros(1, input_channels(model), size, size), dynamic=("batch", "hw"))
    ref["onnx"] = str(path)
    return ref["onnx"]


# ------------------------------------------------------------------------------------------------ worker


def _run_worker(cfg: dict, timeout: float) -> dict:
    env = _thread_env(cfg.get("threads"))
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    try:
        out = run_group(
            [sys.executable, "-m", "compressor.exporters.timing", "--worker", json.dumps(cfg)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"timed out after {timeout:.0f} s"}
    lines = [l for l in out.stdout.strip().splitlines() if l.startswith("{")]
    if out.returncode != 0 or not lines:
        err = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"status": "failed", "reason": err[:300]}
    return {"status": "ok", **json.loads(lines[-1])}


def time_artifact(
    backend: str,
    artifact: Optional[str],
    *,
    precision: str = "fp32",
    batch: int = 1,
    size: int = 256,
    input_nc: int = 3,
    torch_ref: Optional[dict] = None,
    warmup: int = 5,
    iters: int = 20,
    seconds: Optional[float] = None,
    threads: Optional[int] = None,
    device: str = "cpu",
    timeout: float = 600,
) -> dict:
    """Time one file (or, for a torch backend, the model ``torch_ref`` names) in its own process, as
    :func:`profile_models` does for each configuration: ``{"status": "ok", "latency_ms": ..., ...}`` or
    ``{"status": "failed", "reason": ...}``."""
    cfg = {
        "backend": backend,
        "row": BACKENDS[backend].to_data(),
        "batch": batch,
        "size": size,
        "precision": precision,
        "warmup": warmup,
        "iters": iters,
        "seconds": seconds,
        "threads": threads,
        "device": device,
        "torch": torch_ref,
        "artifact": None if artifact is None else str(artifact),
        "input_nc": input_nc,
    }
    return _run_worker(cfg, timeout)


def time_artifacts(
    backend: str,
    items: list[dict],
    *,
    precision: str = "fp32",
    batch: int = 1,
    warmup: int = 3,
    iters: int = 10,
    threads: Optional[int] = None,
    device: str = "cpu",
    timeout: float = 600,
) -> list[dict]:
    """Time several small files of one backend in one process of their own (``items``: ``{"artifact", "size",
    "input_nc"}`` each); one row per item, ``{"status": "ok", "latency_ms": ...}`` or ``{"status": "failed",
    "reason": ...}``."""
    cfg = {
        "backend": backend,
        "row": BACKENDS[backend].to_data(),
        "batch": batch,
        "precision": precision,
        "warmup": warmup,
        "iters": iters,
        "threads": threads,
        "device": device,
        "items": [
            {"artifact": str(i["artifact"]), "size": int(i["size"]), "input_nc": int(i["input_nc"])} for i in items
        ],
    }
    res = _run_worker(cfg, timeout)
    if res.get("status") != "ok":
        return [dict(res) for _ in items]
    return [{"status": "failed", "reason": r["error"]} if "error" in r else {"status": "ok", **r} for r in res["items"]]


# ------------------------------------------------------------------------------------------------ trtexec import


class TrtexecTimes(Runner):
    """The ``trtexec-json`` backend: timings measured by ``trtexec --exportTimes`` elsewhere, imported."""

    @classmethod
    def unavailable(cls, row: Backend) -> str:
        return ""

    @staticmethod
    def import_times(path: str | Path, batch: int = 1) -> dict:
        return import_trtexec_times(path, batch)


def import_trtexec_times(path: str | Path, batch: int = 1) -> dict:
    """Read ``trtexec --exportTimes`` output (a list of per-inference records) into the result schema."""
    try:
        data = schemas.loads(schemas.read_text_bounded(path), str(path))
    except (OSError, UserError) as exc:
        raise UserError(f"{path}: not a trtexec --exportTimes JSON file ({exc})") from None
    if not isinstance(data, list) or not data or not isinstance(data[0], dict) or "latencyMs" not in data[0]:
        raise UserError(f"{path}: not a trtexec --exportTimes JSON file (expected a list of records with latencyMs)")
    lat = [float(r["latencyMs"]) for r in data]
    compute = [float(r["computeMs"]) for r in data if "computeMs" in r]
    res = {"status": "ok", "latency_ms": latency_stats(lat, batch), "device": "cuda", "source": "trtexec"}
    if compute:
        res["device_latency_ms"] = latency_stats(compute, batch)
    return res


# ------------------------------------------------------------------------------------------------ driver


def check_onnx_sizes(path: str | Path, sizes: list[int]) -> None:
    """One line, before anything is timed, for an ONNX file that cannot be read or a size its H/W rule refuses
    (a dynamic-size model records ``size_multiple`` in its metadata)."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf and onnx raise several types
        why = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise UserError(f"{path}: not a readable ONNX model ({why})") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    try:
        mult = int(json.loads(meta.get("size_multiple", "1")))
    except (ValueError, TypeError):
        mult = 1
    dims = proto.graph.input[0].type.tensor_type.shape.dim if proto.graph.input else []
    dynamic_hw = len(dims) == 4 and not (dims[2].HasField("dim_value") and dims[3].HasField("dim_value"))
    bad = [s for s in sizes if dynamic_hw and mult > 1 and s % mult]
    if bad:
        raise UserError(f"{path}: --size {bad[0]} is not a multiple of {mult}, which this model needs")


def ref_artifact(ref: dict, kind: str) -> Optional[str]:
    """The file of ``kind`` a model reference holds (``artifacts`` by kind; the ONNX file also as ``onnx``)."""
    found = (ref.get("artifacts") or {}).get(kind)
    return found or (ref.get("onnx") if kind == "onnx" else None)


def _artifact(ref: dict, row: Backend, prec: str, size: int, workdir: Path) -> tuple[Optional[str], str]:
    """(the file backend ``row`` runs for ``ref`` at ``prec``, or None and why not). A PyTorch model is
    exported to ONNX here, in the parent, for a backend that reads ONNX: the timing worker never loads torch."""
    kind = row.artifact_for(prec)
    if kind == "torch":
        return ("torch", "") if ref.get("torch") else (None, f"{row.name} needs a PyTorch model ({row.make})")
    path = ref_artifact(ref, kind)
    if path is None and kind == row.artifact and ("onnx" in (row.artifact,) + row.reads):
        path = ref_artifact(ref, "onnx") or (_ensure_onnx(ref, size, workdir) if ref.get("torch") else None)
    if path is None:
        fmt = format_of_backend(row.name)
        make = row.make or (fmt.make_hint(prec) if fmt else f"a {kind} file")
        return None, f"no {kind} file for this model ({make})"
    return str(path), ""


def _what_to_time(row: dict, ref: dict, spec: Optional[Backend], device: str, workdir: Path):
    """(the file or "torch" to time for ``row``, or None; why not; the model's complexity), the complexity also
    written into ``row``."""
    backend, prec, size = row["backend"], row["precision"], row["size"]
    ok, why = backend_available(backend)
    cx = {}
    if ok and ref.get("torch"):
        cx = _complexity(ref, size)
        row.update({k: v for k, v in cx.items() if k in ("params", "macs", "macs_paper_convention")})
    if ok:
        why = spec.load().refuse(spec, prec, spec.pick_device(device))
        ok = not why
    artifact = None
    if ok:
        artifact, why = _artifact(ref, spec, prec, size, workdir)
    if artifact is not None and cx.get("size_multiple") and size % cx["size_multiple"]:
        artifact, why = None, f"size {size} is not a multiple of {cx['size_multiple']}"
    return artifact, why, cx


def profile_models(
    models: list[str] | list[dict],
    backends: list[str],
    batches: list[int],
    sizes: list[int],
    precisions: list[str] = ("fp32",),
    warmup: int = 5,
    iters: int = 20,
    seconds: Optional[float] = None,
    threads: Optional[int] = None,
    device: str = "cpu",
    timeout: float = 600,
    progress=None,
) -> dict:
    """Profile every configuration, each in its own process; return the versioned result document.
    ``progress("profile", step, total, {"doing": ...})`` hears of each configuration begun."""
    refs = resolve_models(models) if models and isinstance(models[0], str) else list(models)
    for ref in refs:
        if ref.get("onnx"):
            check_onnx_sizes(ref["onnx"], sizes)
    configs = [
        (r, b, n, s, p)
        for r in refs
        for b in backends
        for n in batches
        for s in sizes
        for p in r.get("precisions") or precisions
    ]
    say = progress or (lambda *a: None)
    say("profile", 0, len(configs), {"doing": "probing the machine (versions, GEMM peak)"})
    env = environment(threads)
    peak_device = "cuda" if device == "cuda" else "cpu"
    peak = gemm_peak(threads, peak_device)
    env["gemm_peak_macs_per_s"] = peak
    results = []
    workdir = Path(tempfile.mkdtemp(prefix="compressor-profile-"))
    for k, (ref, backend, batch, size, prec) in enumerate(configs):
        say("profile", k, len(configs), {"doing": f"{ref['label']} {backend} b{batch} {size}² {prec}"})
        row = {
            "model": ref["label"],
            "role": ref.get("role", "model"),
            "backend": backend,
            "batch": batch,
            "size": size,
            "precision": prec,
        }
        spec = BACKENDS.get(backend)
        artifact, why, cx = _what_to_time(row, ref, spec, device, workdir)
        if artifact is None:
            row.update(status="unavailable", reason=why)
            results.append(row)
            continue
        if not spec.measured:
            row.update(spec.load().import_times(artifact, batch))
        else:
            cfg = {
                "backend": backend,
                "row": spec.to_data(),
                "batch": batch,
                "size": size,
                "precision": prec,
                "warmup": warmup,
                "iters": iters,
                "seconds": seconds,
                "threads": threads,
                "device": device,
                "torch": ref.get("torch"),
                "artifact": artifact if spec.artifact != "torch" else None,
                "input_nc": cx.get("input_nc") or _onnx_channels(ref.get("onnx")) or 3,
            }
            row.update(_run_worker(cfg, timeout))
        if row.get("status") == "ok" and row.get("macs") and peak == peak:
            rate = row["macs"] * batch / (row["latency_ms"]["p50"] / 1000)
            row["achieved_macs_per_s"] = rate
            row["efficiency"] = rate / peak
        results.append(row)
    say("profile", len(configs), len(configs), {})
    return {"schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "environment": env, "results": results}


def remote_profile(
    host: str,
    onnx_files: list[str],
    args: list[str],
    out: Path,
    port: Optional[int] = None,
    ssh_options: Optional[list[str]] = None,
    remote_compress: str = "compress",
) -> dict:
    """Copy ONNX files to ``host`` over SSH, run the installed toolkit's profiler there, bring the JSON back.

    ``args``: the profile flags as separate arguments (``["--batch", "1,4"]``); ``ssh_options``: ``Keyword=value``
    strings, checked against :data:`compressor.remote.ALLOWED`. Every piece of the remote command is quoted
    (:func:`compressor.remote.remote_argv`); nothing runs through a local shell."""
    check_host(host)
    check_program(remote_compress)
    opts = list(ssh_options or [])
    remote.ssh_options(opts)  # refused before anything runs
    for f in onnx_files:
        if not str(f).endswith(".onnx") or not Path(f).is_file():
            raise UserError(f"--host: {f}: remote profiling takes .onnx files (export first)")
    remote_dir = f"/tmp/compressor-profile-{os.getpid()}"
    names = []
    for f in onnx_files:  # names without shell or scp meaning, unique
        name = remote.safe_name(Path(f).name)
        while name in names:
            name = "_" + name
        names.append(name)
    steps = [remote.ssh_command(host, ["mkdir", "-p", "--", remote_dir], port, opts)]
    steps += [
        remote.scp_command([str(f)], f"{host}:{remote_dir}/{name}", port, opts) for f, name in zip(onnx_files, names)
    ]
    profile_argv = [remote_compress, "profile", *(f"{remote_dir}/{n}" for n in names), *map(str, args)]
    profile_argv += ["--quiet", "--force", "--out", f"{remote_dir}/profile.json"]
    steps.append(remote.ssh_command(host, profile_argv, port, opts))
    steps.append(remote.scp_command([f"{host}:{remote_dir}/profile.json"], str(out), port, opts))
    for cmd in steps:  # argument lists in their own process group (killed with compress), never a local shell
        proc = run_group(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            msg = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            raise UserError(f"--host {host}: {' '.join(cmd[:1] + cmd[-1:])} failed: {msg}")
    return schemas.read_json(out, schemas.ProfileDoc)  # what another machine sent: checked like any input
