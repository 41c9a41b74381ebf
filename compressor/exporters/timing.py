"""One timing measurement in its own process: ``python -m compressor.exporters.timing --worker CONFIG``.

The profile harness (:mod:`compressor.exporters.profile`) starts one such process per configuration and reads
its one JSON line. The configuration carries the backend's row as data (:meth:`~compressor.exporters.rows.Backend.to_data`),
so this process imports only that row's Runner module: an ONNX Runtime measurement never loads torch. It runs
warm-up iterations, then timed ones (``perf_counter_ns``; on CUDA also CUDA events, giving device time without
host<->device copies), and reports percentiles, peak memory and the precision the file holds.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Optional

import numpy as np

from compressor.procs import die_with_parent

from .rows import Backend


def build_torch(ref: dict):
    """Load the PyTorch model a ref describes (in the worker process)."""
    from compressor.models import build_generator, load_saved_teacher
    from compressor.slim import load_student, make_student

    kind = ref["type"]
    if kind == "zoo":
        model = build_generator(ref["arch"], **ref["kwargs"])
        if ref["width"] < 1:
            model, _ = make_student(model, ref["width"], "rebuild", "scratch")
        return model.eval()
    if kind == "student_dir":
        return load_student(ref["path"])
    if kind == "saved_teacher":  # a JSON spec plus safetensors weights, as a run folder holds them
        return load_saved_teacher(ref["spec"], ref["weights"])
    raise ValueError(kind)


def latency_stats(ms: list[float], batch: int) -> dict:
    """Percentiles of per-call latency (ms). Throughput is taken at the median (``img/s at p50``), so it agrees
    with the p50 printed beside it; a few slow outliers move the mean, not the typical rate."""
    a = np.asarray(ms, dtype=np.float64)
    p50 = float(np.percentile(a, 50))
    return {
        "p10": float(np.percentile(a, 10)),
        "p50": p50,
        "p90": float(np.percentile(a, 90)),
        "p99": float(np.percentile(a, 99)),
        "mean": float(a.mean()),
        "std": float(a.std()),
        "min": float(a.min()),
        "n": int(a.size),
        "throughput_ips": float(batch * 1000.0 / p50) if p50 > 0 else 0.0,
        "throughput_basis": "p50",
    }


def _status_kb(field: str) -> Optional[float]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def reset_peak_rss() -> Optional[float]:
    """Reset this process's resident-set high-water mark (Linux: ``/proc/self/clear_refs`` "5") and return the
    resident set now (MB), or None where that is not possible.

    ``getrusage(RUSAGE_SELF).ru_maxrss`` is no use in a child: Linux carries the parent's peak across fork and
    exec, so every child would report the parent's memory.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    rss = _status_kb("VmRSS")
    return None if rss is None else rss / 1024.0


def peak_rss_mb() -> Optional[float]:
    """This process's resident-set high-water mark since the last :func:`reset_peak_rss` (MB)."""
    hwm = _status_kb("VmHWM")
    return None if hwm is None else hwm / 1024.0


def onnx_precision(path: Optional[str]) -> Optional[str]:
    """``int8`` for a QDQ/QOperator-quantised ONNX file, ``fp16`` for a half-precision one, else ``fp32``."""
    if not path:
        return None
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - an unreadable file is reported by the runner itself
        return None
    ops = {n.op_type for n in model.graph.node}
    if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger"}:
        return "int8"
    if any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer):
        return "fp16"
    return "fp32"


def worker(cfg: dict) -> dict:
    """Time one configuration (runs in its own process)."""
    start_rss = reset_peak_rss()  # this child's own high-water mark from here on
    batch, size = cfg["batch"], cfg["size"]
    row = Backend.from_data(cfg["row"])  # the row as data: only its Runner's module is imported
    device = row.pick_device(cfg.get("device"))
    artifact = (lambda: build_torch(cfg["torch"])) if row.artifact == "torch" else cfg["artifact"]
    runner = row.make_runner(artifact, device=device, precision=cfg["precision"], threads=cfg.get("threads"))
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (batch, cfg.get("input_nc", 3), size, size)).astype(np.float32)
    for _ in range(cfg["warmup"]):
        runner(x)
    runner.sync()
    times, dev_times = [], []
    deadline = time.perf_counter() + cfg["seconds"] if cfg.get("seconds") else None
    i = 0
    while (i < cfg["iters"]) if deadline is None else (time.perf_counter() < deadline or i < 3):
        times.append(runner.time_once(x))
        d = runner.time_device(x)
        if d is not None:
            dev_times.append(d)
        i += 1
    res = {"latency_ms": latency_stats(times, batch)}
    if dev_times:
        res["device_latency_ms"] = latency_stats(dev_times, batch)
    mem = runner.peak_memory_mb()
    if mem is not None:
        res["peak_memory_kind"] = getattr(runner, "peak_memory_kind", "cuda_max_allocated")
    else:
        mem = peak_rss_mb() if start_rss is not None else None
        if mem is not None:
            res["peak_memory_kind"] = "rss_hwm"  # the child's own peak resident set (runtime + model + tensors)
            res["start_memory_mb"] = round(start_rss, 1)
        else:  # no /proc: the best we have (may include the parent's peak)
            import resource

            mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
            res["peak_memory_kind"] = "ru_maxrss"
    res["peak_memory_mb"] = round(mem, 1)
    res["device"] = device
    prec = runner.file_precision or (onnx_precision(artifact) if str(artifact).endswith(".onnx") else None)
    if prec:
        res["precision"] = prec  # what the file holds, whatever was asked for
    return res


def worker_many(cfg: dict) -> dict:
    """Time several files of one backend in this one process (a latency table's layers: each file is small, and a
    process per file would cost more than its timing): ``{"items": [{"latency_ms": ...} or {"error": ...}]}``.
    Each item names its ``artifact``, ``size`` and ``input_nc``; warm-up and iterations are the configuration's."""
    row = Backend.from_data(cfg["row"])
    device = row.pick_device(cfg.get("device"))
    rng = np.random.default_rng(0)
    out = []
    for item in cfg["items"]:
        try:
            runner = row.make_runner(
                item["artifact"], device=device, precision=cfg["precision"], threads=cfg.get("threads")
            )
            x = rng.uniform(-1, 1, (cfg["batch"], item["input_nc"], item["size"], item["size"])).astype(np.float32)
            for _ in range(cfg["warmup"]):
                runner(x)
            runner.sync()
            times = [runner.time_once(x) for _ in range(cfg["iters"])]
            out.append({"latency_ms": latency_stats(times, cfg["batch"])})
        except Exception as exc:  # noqa: BLE001 - one file's failure is reported in its row, the others still run
            out.append({"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"})
    return {"items": out, "device": device}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", required=True)
    args = ap.parse_args(argv)
    die_with_parent()  # a killed profile run leaves no worker behind
    cfg = json.loads(args.worker)
    print(json.dumps(worker_many(cfg) if "items" in cfg else worker(cfg)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
