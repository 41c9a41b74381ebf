"""``compress benchmark``: every format and precision of the export formats table, exported, checked and timed.

For each row of :data:`exporters.export.FORMATS` and each of its precisions: export (the format's own parity check
against PyTorch), run the file on the reference images through its backend's Runner and compare with the reference
outputs (PSNR and SSIM; the teacher's output for a run, the student's PyTorch output otherwise), then time it in its
own process with the profile harness (:func:`exporters.profile.time_artifact`). A format whose exporter or runtime
is not installed is listed as such with its pip line; one that exports but cannot run here (a TensorRT engine on a
machine without a GPU) is ``export-only``; a failure keeps its one-line reason.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn

from compressor.errors import ExportError, UserError
from compressor.metrics import paired_metrics

from .export import FORMATS, Format
from .profile import environment, time_artifact
from .report import BENCHMARK_HEADER, benchmark_cells
from .runtimes import BACKENDS, backend_available, make_runner

log = logging.getLogger(__name__)

SCHEMA = "compressor.benchmark/1"
STATUSES = ("passed", "export-only", "failed", "not installed")


def _missing(fmt) -> Optional[str]:
    """The install line for a format whose exporter or runtime module is absent, else None."""
    gone = fmt.missing()
    row = BACKENDS.get(fmt.backend)
    if not gone and row is not None:
        gone = [m for m in row.requires if not _importable(m)]
    return f"{gone[0]} is not installed: {fmt.extra or (row.extra if row else '')}" if gone else None


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _outputs(backend: str, artifact, images: np.ndarray, threads: Optional[int]) -> np.ndarray:
    runner = make_runner(backend, artifact, threads=threads)
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
) -> dict:
    """Export ``model`` to every format and precision into ``out_dir``, check and time each; the result document.

    ``images``: (N, C, H, W) in [-1, 1], the reference inputs; ``reference``: the outputs each format is compared
    with (``reference_kind`` says whose: "teacher" or "student (PyTorch)"); ``torch_ref``: the profile harness's
    reference to the PyTorch model (for the torch row's timing process); ``calibration``: INT8 calibration images
    (INT8 rows fail with the reason when there are none)."""
    unknown = [f for f in formats or () if f not in FORMATS]
    if unknown:
        raise UserError(f"--format: unknown format {unknown[0]!r}; choose from {', '.join(FORMATS)}")
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
    rows: list[dict] = []
    for k, (fmt, prec) in enumerate(plan):
        row: dict = {"format": fmt.name, "precision": prec, "backend": fmt.backend}
        rows.append(row)
        if progress:
            progress(
                "benchmark", k, len(plan), {"doing": f"{fmt.name} {prec}: export, check against the reference, time"}
            )
        t0 = time.perf_counter()
        why = _missing(fmt)
        if why:
            row.update(status="not installed", reason=why, install=fmt.extra)
            continue
        onnx = _fresh_onnx(rows, out, stem)
        path = _export_row(
            row, fmt, prec, model, out, stem, x, onnx, size=size, calibration=calibration, metadata=metadata
        )
        if path is None:
            continue
        timing = dict(torch_ref=torch_ref, threads=threads, warmup=warmup, iters=iters)
        if _run_row(row, fmt, prec, model, path, x, ref_t, size=size, **timing):
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


def _export_row(
    row: dict,
    fmt: Format,
    prec: str,
    model: nn.Module,
    out: Path,
    stem: str,
    x: np.ndarray,
    onnx: Optional[Path],
    *,
    size: int,
    calibration: Optional[list[np.ndarray]],
    metadata: Optional[dict],
) -> Optional[Path]:
    """Export one format at one precision for ``row``: the artifact's path, or None with the row marked failed.
    ``onnx``: the FP32 ONNX file this benchmark wrote, for converters that start from it."""
    path = fmt.path(out, stem, prec)
    try:
        if prec in fmt.calibrated and not calibration:
            raise UserError("INT8 needs calibration images (the run's train images, or --data FOLDER)")
        rec = fmt.exporter(
            model,
            path,
            x,
            precision=prec,
            size=size,
            calibration=calibration if prec in fmt.calibrated else None,
            metadata=metadata,
            onnx_path=onnx,
        )
    except (ExportError, UserError) as exc:
        row.update(status="failed", reason=f"export: {str(exc).splitlines()[0][:300]}")
        return None
    except Exception as exc:  # noqa: BLE001 - a converter's own error, reported as the row's reason
        log.debug("export of %s %s failed", fmt.name, prec, exc_info=True)
        row.update(status="failed", reason=f"export: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
        return None
    size_on_disk = rec.get("bytes") or _size(path)
    row.update(file=rec["path"], bytes=size_on_disk, export_seconds=rec.get("seconds"), parity=rec.get("parity"))
    return path


def _fresh_onnx(rows: list[dict], out: Path, stem: str) -> Optional[Path]:
    """The FP32 ONNX file when this benchmark exported it (its row has a file): a file found there from before,
    or put there by someone else, is not converted as this model."""
    done = any(r["format"] == "onnx" and r["precision"] == "fp32" and r.get("file") for r in rows)
    return FORMATS["onnx"].path(out, stem, "fp32") if done else None


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
) -> bool:
    """Run an exported artifact in its backend, compare with the reference and time it; True when ``row`` passed
    (otherwise its status says why: export-only where the backend cannot run it here, or failed)."""
    ok, why = backend_available(fmt.backend)
    if ok:
        why = BACKENDS[fmt.backend].load().refuse(BACKENDS[fmt.backend], prec, BACKENDS[fmt.backend].device)
        ok = not why
    if not ok:
        row.update(status="export-only", reason=why)
        return False
    is_torch = BACKENDS[fmt.backend].artifact == "torch"
    try:
        y = _outputs(fmt.backend, (lambda: model) if is_torch else path, x, threads)
    except Exception as exc:  # noqa: BLE001 - a runtime's own error, reported as the row's reason
        row.update(status="failed", reason=f"run: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
        return False
    q = paired_metrics(torch.from_numpy(y), ref_t)
    row.update(psnr=float(q["psnr"].mean()), ssim=float(q["ssim"].mean()))
    timing = time_artifact(
        fmt.backend,
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


def _size(path: Path) -> int:
    """Bytes on disk of an exported file with its companion files (an IR's .bin, ncnn's .bin beside its .param),
    or of every file in a package folder (Core ML's .mlpackage)."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    total = path.stat().st_size
    companion = {".xml": ".bin", ".param": ".bin"}.get(path.suffix)
    if companion and path.with_suffix(companion).is_file():
        total += path.with_suffix(companion).stat().st_size
    return total


def table_rows(doc: dict) -> list[list[str]]:
    """format, precision, size, PSNR, SSIM, p50, p90/p50, img/s, status: as printed (the report's cells)."""
    return [benchmark_cells(r) for r in doc["rows"]]


HEADER = BENCHMARK_HEADER
