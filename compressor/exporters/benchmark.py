"""``compress benchmark``: every format and precision of the format table, exported, checked and timed.

For each row of :data:`compressor.exporters.table.FORMATS` and each of its precisions: export through the one export
flow (:class:`compressor.exporters.export.ExportRun`: the format's own parity check, one record per file, kept in
``benchmark/export.json``), run the file on the reference images through its backend's Runner and compare with the
reference outputs (PSNR and SSIM; the teacher's output for a run, the student's PyTorch output otherwise), then
time it in its own process with the profile harness (:func:`compressor.exporters.profile.time_artifact`). A row is
the file's record (format, precision, path, bytes, parity) with the backend, the measurements and the benchmark's
status: ``passed``; ``not installed`` with the pip line (the exporter or the runtime is absent); ``export-only`` (it
exports but cannot run here: a TensorRT engine without a GPU); ``failed`` with the one-line reason.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn

from compressor.metrics import paired_metrics

from .export import ExportRun, ExportSpec
from .profile import environment, time_artifact
from .records import RecordFile
from .rows import Format, has_module
from .table import FORMATS, get_format

log = logging.getLogger(__name__)

SCHEMA = "compressor.benchmark/1"
STATUSES = ("passed", "export-only", "failed", "not installed")


def _missing(fmt: Format) -> Optional[str]:
    """The install line for a format whose exporter or runtime module is absent, else None."""
    row = fmt.backend
    gone = fmt.missing() + ([m for m in row.requires if not has_module(m)] if row is not None else [])
    return f"{gone[0]} is not installed: {fmt.extra or (row.extra if row else '')}" if gone else None


def _outputs(fmt: Format, artifact, images: np.ndarray, threads: Optional[int]) -> np.ndarray:
    runner = fmt.backend.make_runner(artifact, threads=threads)
    return np.concatenate([runner(images[i : i + 1]) for i in range(len(images))])


def benchmark(
    model: nn.Module,
    out_dir: str | Path,
    images: torch.Tensor,
    reference: np.ndarray,
    reference_kind: str,
    *,
    torch_ref: dict,
    calibration: Optional[list[np.ndarray]] = None,
    size: Optional[int] = None,
    metadata: Optional[dict] = None,
    stem: str = "student",
    threads: Optional[int] = None,
    warmup: int = 5,
    iters: int = 20,
    formats: Optional[list[str]] = None,
    progress: Optional[Callable] = None,
    trained: Optional[nn.Module] = None,
) -> dict:
    """Export ``model`` to every format and precision into ``out_dir``, check and time each; the result document.

    ``images``: (N, C, H, W) in [-1, 1], the reference inputs; ``reference``: the outputs each format is compared
    with (``reference_kind`` says whose: "teacher" or "student (PyTorch)"); ``torch_ref``: the profile harness's
    reference to the PyTorch model (for the torch row's timing process); ``calibration``: INT8 calibration images
    (INT8 rows fail with the reason when there are none); ``trained``: the quantisation-aware student of the same
    model (``distill.quantize``), whose INT8 rows (``quantization: qad``, from its trained scales) follow the
    calibrated ones (``quantization: ptq``), each INT8 row with its PSNR against ``model`` too."""
    for name in formats or ():
        get_format(name)  # an unknown name is one line naming --format
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for p in out.iterdir():  # a link among the files it writes is removed, never read or written through
        if p.is_symlink():
            p.unlink()
    model = model.eval().cpu()
    size = size or int(images.shape[-1])
    x = images.numpy().astype(np.float32)
    ref_t = torch.from_numpy(np.asarray(reference, dtype=np.float32))
    plan = [(f, p) for f in FORMATS.values() if not formats or f.name in formats for p in f.precisions]
    spec = ExportSpec(name=stem, size=size, keep_going=True, metadata=dict(metadata or {}))
    run = ExportRun(model, out, spec, images, calibration, journal=RecordFile(out).write)
    rows: list[dict] = []
    qad = _Trained(trained, model, plan, run) if trained is not None else None
    plan = plan + [(f, "int8-qad") for f in (qad.formats if qad else [])]
    for k, (fmt, prec) in enumerate(plan):
        trained_row, prec = prec == "int8-qad", "int8" if prec == "int8-qad" else prec
        row: dict = {"format": fmt.name, "precision": prec, "backend": fmt.backend.name if fmt.backend else None}
        if qad is not None and prec == "int8":
            row["quantization"] = "qad" if trained_row else "ptq"
            if not fmt.trained_int8:  # no QAD row follows: say why, beside its post-training one
                row["note"] = f"{fmt.name} cannot take trained INT8 scales yet: post-training quantisation"
        rows.append(row)
        if progress:
            doing = f"{fmt.name} {prec}: export, check against the reference, time"
            progress("benchmark", k, len(plan), {"doing": doing})
        t0 = time.perf_counter()
        why = _missing(fmt)
        if why:
            row.update(status="not installed", reason=why, install=fmt.extra)
            continue
        path = qad.export(row, fmt) if trained_row else _export_row(row, run, fmt, prec)
        if path is None:
            continue
        timing = dict(torch_ref=torch_ref, threads=threads, warmup=warmup, iters=iters)
        fp32_ref = qad.fp32_ref if qad is not None else None
        if _run_row(row, fmt, prec, model, path, x, ref_t, size=size, fp32_ref=fp32_ref, **timing):
            row["seconds"] = round(time.perf_counter() - t0, 2)
    if progress:
        progress("benchmark", len(plan), len(plan), {"doing": "writing benchmark.json"})
    return {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "reference": reference_kind,
        "images": int(len(x)),
        "size": size,
        "threads": threads,
        "environment": environment(threads),
        "rows": rows,
    }


class _Trained:
    """The INT8 rows of a quantisation-aware student: its files (``<stem>.qad.int8.*``, from its trained scales) in
    the same folder, the QDQ ONNX first (compared with the FP32 ONNX), the formats that convert from it after; and
    the FP32 student's outputs, which every INT8 row is also compared with."""

    def __init__(self, trained: nn.Module, model: nn.Module, plan: list, run: ExportRun):
        self.formats = [f for f, p in plan if p == "int8" and f.trained_int8]
        self.main, self.onnx = run, None
        spec = replace(run.spec, name=f"{run.spec.name}.qad")
        self.run = ExportRun(trained, run.out, spec, run.samples, None, journal=RecordFile(run.out).write)
        with torch.inference_mode():
            self.fp32_ref = torch.cat([model(s[None]) for s in run.samples]).float()

    def export(self, row: dict, fmt: Format) -> Optional[Path]:
        if fmt.name != "onnx" and self.onnx is None:
            row.update(status="failed", reason="export: the trained INT8 ONNX file it converts from was not written")
            return None
        self.run.written["onnx"] = self.onnx if fmt.name != "onnx" else self.main.written.get("onnx")
        path = _export_row(row, self.run, fmt, "int8")
        if path is not None and fmt.name == "onnx":
            self.onnx = path
        return path


def _export_row(row: dict, run: ExportRun, fmt: Format, prec: str) -> Optional[Path]:
    """Export one format at one precision for ``row`` (its record's fields): the artifact's path, or None with the
    row marked failed."""
    recs = [r for r in run.write(fmt, prec) if r["format"] == fmt.name] or [{"status": "failed", "reason": "no file"}]
    rec = recs[-1]
    if rec["status"] != "passed":
        row.update(status="failed", reason=f"export: {rec.get('reason', rec['status'])}")
        return None
    row.update(path=rec["path"], bytes=rec["bytes"], export_seconds=rec.get("seconds"), parity=rec.get("parity"))
    return run.out / rec["path"]


def _run_row(
    row: dict,
    fmt: Format,
    prec: str,
    model: nn.Module,
    path: Path,
    x: np.ndarray,
    ref_t: torch.Tensor,
    *,
    size: int,
    torch_ref: dict,
    threads: Optional[int],
    warmup: int,
    iters: int,
    fp32_ref: Optional[torch.Tensor] = None,
) -> bool:
    """Run an exported artifact in its backend, compare with the reference and time it; True when ``row`` passed
    (otherwise its status says why: export-only where the backend cannot run it here, or failed)."""
    backend = fmt.backend
    ok, why = backend.available()
    if ok:
        why = backend.load().refuse(backend, prec, backend.device)
        ok = not why
    if not ok:
        row.update(status="export-only", reason=why)
        return False
    is_torch = backend.artifact == "torch"
    try:
        y = _outputs(fmt, (lambda: model) if is_torch else path, x, threads)
    except Exception as exc:  # noqa: BLE001 - a runtime's own error, reported as the row's reason
        row.update(status="failed", reason=f"run: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
        return False
    q = paired_metrics(torch.from_numpy(y), ref_t)
    row.update(psnr=float(q["psnr"].mean()), ssim=float(q["ssim"].mean()))
    if fp32_ref is not None and prec == "int8":
        row["psnr_vs_fp32"] = float(paired_metrics(torch.from_numpy(y), fp32_ref)["psnr"].mean())
    timing = time_artifact(
        backend.name,
        None if is_torch else path,
        precision=prec,
        size=size,
        input_nc=x.shape[1],
        torch_ref=torch_ref if is_torch else None,
        warmup=warmup,
        iters=iters,
        threads=threads,
    )
    if timing.get("status") != "ok":
        row.update(status="failed", reason=f"timing: {timing.get('reason', 'no result')}")
        return False
    lat = timing["latency_ms"]
    row.update(status="passed", latency_ms=lat, p50_ms=lat["p50"], ips=lat["throughput_ips"])
    for key in ("peak_memory_mb", "device"):
        if key in timing:
            row[key] = timing[key]
    return True
