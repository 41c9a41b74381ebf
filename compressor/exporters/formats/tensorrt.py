"""TensorRT: the engine format's row and exporter, engine build (TensorRT 10 and 11), runner, parity against ONNX
Runtime, and trtexec scripts for devices; the offline lint lives in :mod:`compressor.exporters.trt_lint`.

The row converts from the FP32 ONNX file (written first when the export did not ask for it): INT8 engines read
``<stem>.trt-int8.onnx`` (symmetric signed INT8 QDQ, TensorRT's explicit quantisation), written here. The lint runs
on every file TensorRT will read, for each major asked for, and a failing lint stops the export; the engine is
built where TensorRT is installed (else its record is ``skipped`` with the reason), and the trtexec scripts are
written on request (``--emit-trtexec``).

``tensorrt`` is imported lazily (``pip install 'compressor[trt]'`` on a machine with an NVIDIA GPU). On TensorRT
10, FP16/INT8 come from builder flags (INT8 from the QDQ ONNX, explicit quantisation). TensorRT 11 removed
those flags and the calibrators: networks are strongly typed, so FP16 comes from an FP16-converted ONNX and
INT8 from the QDQ ONNX. FP32 means FP32: TF32 (on by default in both majors) is cleared for FP32 builds.

Jetson: JetPack 6.1 and 6.2 ship TensorRT 10.3 (JetPack 6.0 ships TensorRT 8.6, which this module does not
target); TensorRT 11.3 and newer do not support JetPack, so a Jetson uses the TensorRT 10 path.

This path was written against the TensorRT 10 and 11 Python APIs and trtexec sources by reading them
(``compressor/exporters/trt_rules.py`` cites each line); it has not been run on a GPU in this project's CI, where its tests
use a fake ``tensorrt`` module that records calls.
"""

from __future__ import annotations

import logging
import shlex
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from compressor.errors import ExportError, UserError
from compressor.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_bounded, staged
from compressor.models import input_channels, size_multiple

from .. import trt_rules
from ..quantize import psnr
from ..records import record
from ..rows import INPUT, Backend, Format, Request, Runner
from ..runtimes import ort_session
from ..trt_lint import lint_onnx
from .onnx import export_int8, failed_marker

log = logging.getLogger(__name__)

MAX_ENGINE_BYTES = 16 << 30  # an engine or timing cache read back whole (a FIFO or device there is one line)


def tensorrt_available() -> tuple[bool, str]:
    return FORMAT.backend.available()


def trt_version() -> tuple[int, int]:
    """(major, minor) of the installed TensorRT."""
    import tensorrt as trt

    parts = (trt.__version__.split(".") + ["0"])[:2]
    return int(parts[0]), int(parts[1])


def trt_major() -> int:
    return trt_version()[0]


def fp16_onnx(src: Path, dst: Path) -> Path:
    """An FP16 copy of an ONNX model with FP32 inputs and outputs (for TensorRT 11's strong typing)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    with staged(dst) as tmp:  # fresh and exclusive; renamed over dst (a link there is replaced, never written through)
        onnx.save(model, str(tmp))
    return dst


PRECISIONS = ("fp32", "fp16", "int8")


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise UserError(f"--precision: {precision!r} is not one of {', '.join(PRECISIONS)}")


def engine_source(onnx_path: Path, precision: str, major: int, int8_onnx: Path | None = None) -> Path:
    """The ONNX file the engine builder (and trtexec) reads: the QDQ file for INT8, an FP16 copy for FP16 on
    TensorRT 11 (written next to ``onnx_path``), else ``onnx_path``. Lint this file, not the FP32 one."""
    _check_precision(precision)
    onnx_path = Path(onnx_path)
    if precision == "int8":
        if int8_onnx is None or not Path(int8_onnx).exists():
            raise ExportError("TensorRT INT8 needs the QDQ ONNX: export with --precision int8 first")
        return Path(int8_onnx)
    if precision == "fp16" and major >= 11:
        return fp16_onnx(onnx_path, onnx_path.with_name(onnx_path.stem + ".fp16.onnx"))
    return onnx_path


def _gpu_info() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"gpu": "unknown", "compute_capability": "unknown"}
    return {
        "gpu": torch.cuda.get_device_name(0),
        "compute_capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
    }


def _lint_for_build(src: Path, major: int, minor: int) -> list:
    """Lint ``src`` for the installed TensorRT ``major.minor``: its warnings; an ExportError on the first problem."""
    res = lint_onnx(src, f"{major}.{minor}")
    if not res.ok:
        p = res.problems[0]
        raise ExportError(
            f"{src}: TensorRT {major}.{minor} would reject this ONNX ({p['node']}, {p['op']}: "
            f"{p['problem']}; {len(res.problems)} problem(s) in all)"
        )
    return res.warnings


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    precision: str = "fp16",
    shapes: dict | None = None,
    int8_onnx: Path | None = None,
    timing_cache: Path | None = None,
    workspace_mb: int = 1024,
    *,
    lint: bool = True,
) -> dict:
    """Build a serialized engine with optimisation profiles and a reused timing cache; write a JSON sidecar.

    The file the builder reads is linted first for the installed TensorRT version (``lint=False`` skips it);
    FP32 builds clear TF32; every status TensorRT returns is checked.
    """
    import tensorrt as trt

    major, minor = trt_version()
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    timing_cache = Path(timing_cache or plan_path.with_name("timing.cache"))
    src = engine_source(onnx_path, precision, major, int8_onnx)
    warnings = _lint_for_build(src, major, minor) if lint else []
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(src)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"{src}: TensorRT could not parse the ONNX: {errs}")
    inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    unknown = sorted(set(shapes or {}) - set(inputs))
    if unknown:
        raise ExportError(
            f"{src}: optimisation profile names {', '.join(unknown)}, but the network's inputs are {', '.join(inputs)}"
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # TF32 is on by default in 10 and 11: FP32 would not be FP32
    elif major < 11:
        config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)  # explicit quantisation: the ONNX carries the Q/DQ nodes
    profile = builder.create_optimization_profile()
    for name, s in (shapes or {}).items():
        profile.set_shape(name, tuple(s["min"]), tuple(s["opt"]), tuple(s["max"]))
    if config.add_optimization_profile(profile) < 0:
        raise ExportError(f"{src}: TensorRT rejected the optimisation profile {shapes}")
    notes = []
    cache = config.create_timing_cache(read_bounded(timing_cache, MAX_ENGINE_BYTES) if timing_cache.exists() else b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        notes.append(f"{timing_cache} was made by another device or TensorRT version; started a new timing cache")
        log.warning(notes[-1])
        if not config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False):
            raise ExportError(f"{plan_path}: TensorRT refused a new, empty timing cache")
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise ExportError(f"{src}: TensorRT failed to build an engine (see the messages above)")
    atomic_write_bytes(plan_path, bytes(engine))
    atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    sidecar = {
        "tensorrt_version": trt.__version__,
        "precision": precision,
        "source_onnx": src.name,
        "tf32": precision != "fp32",
        **_gpu_info(),
        "profiles": shapes,
        "timing_cache": timing_cache.name,
        "lint_warnings": warnings,
        "notes": notes,
    }
    atomic_write_json(plan_path.with_suffix(plan_path.suffix + ".json"), sidecar)
    return {"path": plan_path.name, **sidecar}


def _fmt(shape) -> str:
    return "x".join(str(int(v)) for v in shape)


class TensorRTRunner(Runner):
    """Runs a serialized engine with named tensors and ``execute_async_v3`` (CUDA memory via torch).

    ``peak_memory_mb`` counts TensorRT's own device memory (engine, execution context, activations) and the I/O
    buffers: the drop in free device memory (``cudaMemGetInfo`` through ``torch.cuda.mem_get_info``) from before
    the engine is loaded to the lowest value seen after each run. It is device-wide, so run it alone on the GPU
    (the profiler runs one configuration per process).
    """

    backend = "tensorrt"
    device = "cuda"
    peak_memory_kind = "cuda_mem_get_info_delta"

    def __init__(self, engine_path: str | Path, *, backend=None, threads=None, device="cuda", precision=None):
        import tensorrt as trt
        import torch

        self.trt, self.torch = trt, torch
        self.path = Path(engine_path)
        self._free0 = self._free_bytes()
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(read_bounded(self.path, MAX_ENGINE_BYTES))
        if self.engine is None:
            raise ExportError(
                f"{self.path}: TensorRT could not load this engine (built by another TensorRT version "
                f"or for another GPU?); rebuild it on this machine"
            )
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise ExportError(f"{self.path}: TensorRT could not create an execution context (out of device memory?)")
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in self.names if n not in self.inputs]
        self._stream = None
        self._min_free = self._free_bytes()

    # -- device helpers (the only places that touch CUDA memory)
    def _free_bytes(self) -> int | None:
        torch = self.torch
        return int(torch.cuda.mem_get_info()[0]) if torch.cuda.is_available() else None

    @property
    def stream(self):
        if self._stream is None:
            self._stream = self.torch.cuda.Stream()
        return self._stream

    def _to_device(self, x, dtype):
        torch = self.torch
        inp = x if torch.is_tensor(x) else torch.from_numpy(x)
        return inp.to("cuda", dtype).contiguous()

    def _empty(self, shape, dtype):
        return self.torch.empty(shape, dtype=dtype, device="cuda")

    def _dtype(self, name):
        return self.torch.from_numpy(np.zeros(1, dtype=self.trt.nptype(self.engine.get_tensor_dtype(name)))).dtype

    def profile_range(self, name: str) -> tuple:
        """(min, opt, max) shapes of optimisation profile 0 for input ``name``."""
        mn, opt, mx = self.engine.get_tensor_profile_shape(name, 0)
        return tuple(mn), tuple(opt), tuple(mx)

    def _check_shape(self, name: str, shape: tuple) -> None:
        mn, _, mx = self.profile_range(name)
        if len(shape) != len(mn) or any(s < lo or s > hi for s, lo, hi in zip(shape, mn, mx)):
            raise UserError(
                f"{self.path}: input shape {_fmt(shape)} is outside the engine's optimisation profile "
                f"for {name!r} ({_fmt(mn)} .. {_fmt(mx)}); rebuild the engine with a profile that "
                f"covers it"
            )

    def run_device(self, x):
        name = self.inputs[0]
        shape = tuple(int(d) for d in x.shape)
        self._check_shape(name, shape)
        if not self.context.set_input_shape(name, shape):
            mn, _, mx = self.profile_range(name)
            raise UserError(
                f"{self.path}: TensorRT refused input shape {_fmt(shape)} for {name!r} (profile "
                f"{_fmt(mn)} .. {_fmt(mx)})"
            )
        inp = self._to_device(x, self._dtype(name))
        if not self.context.set_tensor_address(name, inp.data_ptr()):
            raise ExportError(f"{self.path}: TensorRT refused the address of input {name!r}")
        outs = {}
        for n in self.outputs:
            shape = tuple(self.context.get_tensor_shape(n))
            if any(d < 0 for d in shape):
                raise ExportError(f"{self.path}: output {n!r} has an unresolved shape {shape}")
            outs[n] = self._empty(shape, self._dtype(n))
            if not self.context.set_tensor_address(n, outs[n].data_ptr()):
                raise ExportError(f"{self.path}: TensorRT refused the address of output {n!r}")
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise ExportError(
                f"{self.path}: TensorRT failed to enqueue the inference (execute_async_v3 returned "
                f"False; see TensorRT's messages above)"
            )
        return outs[self.outputs[0]], inp

    def _sample_memory(self) -> None:
        free = self._free_bytes()
        if free is not None and (self._min_free is None or free < self._min_free):
            self._min_free = free

    def __call__(self, x):
        out, _ = self.run_device(x)
        self.stream.synchronize()
        self._sample_memory()
        return out.float().cpu().numpy()

    def sync(self):
        self.stream.synchronize()

    def time_once(self, x) -> float:
        t0 = time.perf_counter_ns()
        self(x)
        return (time.perf_counter_ns() - t0) / 1e6

    def time_device(self, x):
        torch = self.torch
        inp = torch.from_numpy(x).to("cuda")
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(self.stream)
        self.run_device(inp)
        end.record(self.stream)
        end.synchronize()
        self._sample_memory()
        return start.elapsed_time(end)

    def peak_memory_mb(self) -> float | None:
        """Device memory this runner holds at its peak, TensorRT's allocations included (see the class note)."""
        if self._free0 is None or self._min_free is None:
            return None
        return max(0, self._free0 - self._min_free) / 2**20


PARITY = {"fp32": {"max_abs": 1e-3}, "fp16": {"psnr_min": 35.0}, "int8": {"psnr_min": 25.0}}


def engine_parity(engine_path: Path, onnx_path: Path, inputs: list, precision: str) -> dict:
    """Run the same inputs through the engine and ONNX Runtime (the fp32 ONNX); compare with stated limits."""
    _check_precision(precision)
    runner = TensorRTRunner(engine_path)
    sess = ort_session(onnx_path)
    name = sess.get_inputs()[0].name
    cases = []
    for x in inputs:
        x = np.asarray(x, dtype=np.float32)
        ref = sess.run(None, {name: x})[0]
        got = runner(x)
        cases.append({"shape": list(x.shape), "max_abs": float(np.abs(ref - got).max()), "psnr": psnr(got, ref)})
    limit = PARITY[precision]
    worst_abs = max(c["max_abs"] for c in cases)
    worst_psnr = min(c["psnr"] for c in cases)
    passed = worst_abs <= limit["max_abs"] if "max_abs" in limit else worst_psnr >= limit["psnr_min"]
    return {
        "precision": precision,
        "limit": limit,
        "max_abs": worst_abs,
        "psnr_min": worst_psnr,
        "passed": passed,
        "cases": cases,
    }


def check_engine(engine_path: Path, onnx_path: Path, inputs: list, precision: str) -> dict:
    """:func:`engine_parity`, and on failure a ``.failed`` marker beside the engine and an ExportError."""
    par = engine_parity(engine_path, onnx_path, inputs, precision)
    marker = failed_marker(Path(engine_path))
    if not par["passed"]:
        msg = (
            f"{engine_path}: TensorRT output differs from ONNX Runtime beyond {par['limit']} (max abs "
            f"{par['max_abs']:.3g}, PSNR {par['psnr_min']:.1f} dB)"
        )
        atomic_write_text(marker, msg + "\n")
        raise ExportError(msg)
    marker.unlink(missing_ok=True)
    return par


# ------------------------------------------------------------------------------------------------ trtexec
def _major(version) -> int:
    if version not in (10, 11):
        raise ValueError("TensorRT version must be 10 or 11")
    return int(version)


def trtexec_command(
    onnx_name: str,
    version: int,
    precision: str,
    shapes: dict,
    engine_name: str = "student.plan",
    input_name: str = "input",
    *,
    data_transfers: bool = False,
) -> list[str]:
    """The trtexec argument list for TensorRT ``version`` (10: precision flags; 11: strongly typed ONNX).

    Timings exclude host<->device copies in both majors unless ``data_transfers`` (10 times them by default,
    11 does not). FP32 passes ``--noTF32``. Every flag is checked against what that major's trtexec parses
    (:data:`compressor.exporters.trt_rules.TRTEXEC_OPTIONS`).
    """
    major = _major(version)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}")
    s = shapes[input_name]
    cmd = [
        "trtexec",
        f"--onnx={onnx_name}",
        f"--saveEngine={engine_name}",
        f"--minShapes={input_name}:{_fmt(s['min'])}",
        f"--optShapes={input_name}:{_fmt(s['opt'])}",
        f"--maxShapes={input_name}:{_fmt(s['max'])}",
        f"--shapes={input_name}:{_fmt(s['opt'])}",
        "--timingCacheFile=timing.cache",
        "--exportTimes=trtexec_times.json",
        "--exportProfile=trtexec_profile.json",
        "--exportOutput=trtexec_output.json",
        "--warmUp=500",
        "--duration=10",
    ]
    if major == 10:
        cmd += ["--useCudaGraph", "--separateProfileRun"]  # 11: the default behaviour, and the flags are no-ops
        if not data_transfers:
            cmd.append("--noDataTransfers")
    elif data_transfers:
        cmd.append("--includeDataTransfers")
    if precision == "fp32":
        cmd.append("--noTF32")
    elif major == 10:
        cmd += ["--fp16"] if precision == "fp16" else ["--fp16", "--int8"]  # int8: explicit Q/DQ in the ONNX
    bad = [c for c in cmd[1:] if trt_rules.trtexec_accepts(c, major) != "yes"]
    if bad:
        raise ValueError(f"trtexec {major} does not accept {bad}")
    return cmd


def _script_header(major: int, precision: str, data_transfers: bool) -> list[str]:
    if major == 10:
        lines = [
            "# TensorRT 10.x. On a Jetson: JetPack 6.1 and 6.2 ship TensorRT 10.3 (JetPack 6.0 ships TensorRT 8.6,",
            "# which this script does not target).",
        ]
        transfers = (
            "# Timings include host<->device copies (TensorRT 10's default)."
            if data_transfers
            else "# Timings exclude host<->device copies (--noDataTransfers; TensorRT 10 includes them by default)."
        )
    else:
        lines = [
            "# TensorRT 11.x is strongly typed: the precision comes from the ONNX file, not from flags.",
            "# TensorRT 11.3 and newer do not support JetPack: on a Jetson, use the TensorRT 10 script.",
        ]
        transfers = (
            "# Timings include host<->device copies (--includeDataTransfers)."
            if data_transfers
            else "# Timings exclude host<->device copies (TensorRT 11's default; --includeDataTransfers adds them)."
        )
    lines.append(transfers)
    if precision == "fp32":
        lines.append("# FP32 is FP32: --noTF32 (TF32 is on by default).")
    return lines


def emit_trtexec_script(
    out_dir: Path,
    onnx_path: Path,
    version: int,
    precision: str,
    shapes: dict,
    int8_onnx: Path | None = None,
    *,
    data_transfers: bool = False,
) -> Path:
    """Write ``trtexec_trt{version}_{precision}.sh`` to run on the device next to the ONNX file(s).

    The ONNX the script builds from is linted for ``version`` first; a file TensorRT would reject (a CPU-flavour
    uint8 INT8 model, say) raises ExportError instead of producing a script that fails on the device.
    """
    major = _major(version)
    if precision == "int8" and int8_onnx is None:
        raise ExportError("--emit-trtexec with int8 needs the QDQ ONNX (export with --precision int8)")
    src = engine_source(Path(onnx_path), precision, major, int8_onnx)
    lint = lint_onnx(src, major)
    if not lint.ok:
        p = lint.problems[0]
        raise ExportError(
            f"{src}: TensorRT {major} would reject this ONNX ({p['node']}, {p['op']}: {p['problem']})"
            + (
                "; quantise for TensorRT (compress export --trt --precision int8)"
                if p["rule"].startswith(("qdq", "dq"))
                else ""
            )
        )
    prep = []
    if precision == "fp16" and major == 11:
        prep.append(f"# The FP16 precision comes from {src.name} (FP16 weights and compute, FP32 inputs/outputs).")
    engine = f"{Path(onnx_path).stem}.trt{major}.{precision}.plan"
    cmd = trtexec_command(src.name, major, precision, shapes, engine, data_transfers=data_transfers)
    script = Path(out_dir) / f"trtexec_trt{major}_{precision}.sh"
    lines = [
        "#!/usr/bin/env bash",
        f"# Generated by compressor for TensorRT {major}.x, {precision}.",
        *_script_header(major, precision, data_transfers),
        "# Run on the target from the folder holding the ONNX file.",
        "# Then: compress profile trtexec_times.json --backend trtexec-json  (imports the timings)",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        *prep,
        "if command -v nvpmodel >/dev/null; then nvpmodel -q || true; fi",
        " \\\n  ".join(shlex.quote(c) for c in cmd),
        "",
    ]
    atomic_write_text(script, "\n".join(lines))  # replaces a symlink left at that name, never writes through it
    script.chmod(0o755)
    return script


# ------------------------------------------------------------------------------------------------ the row


def default_profile(size: int, dynamic_hw: bool, mult: int, max_batch: int = 8, channels: int = 3) -> dict:
    """Optimisation profile (min/opt/max) for the dynamic axes of an NCHW image input."""
    lo = size if not dynamic_hw else max(mult, (size // 2) // mult * mult or mult)
    hi = size if not dynamic_hw else size * 2
    return {
        INPUT: {"min": [1, channels, lo, lo], "opt": [1, channels, size, size], "max": [max_batch, channels, hi, hi]}
    }


def lint_or_fail(path: Path, version: int) -> dict:
    """The lint of ``path`` for TensorRT ``version`` as a record entry; ExportError naming the first problems."""
    lint = lint_onnx(path, version)
    if not lint.ok:
        shown = "; ".join(f"{p['node']} ({p['op']}): {p['problem']}" for p in lint.problems[:3])
        more = f" and {len(lint.problems) - 3} more" if len(lint.problems) > 3 else ""
        raise ExportError(
            f"{path}: TensorRT {version} would reject this ONNX: {len(lint.problems)} problem(s): {shown}{more}"
        )
    return {"file": path.name, **lint.to_dict()}


def _engine(req: Request, src: Path, int8_onnx: Path | None, shapes: dict) -> dict:
    """Build the engine and check it against ONNX Runtime: the fields of its record."""
    built = build_engine(
        req.source, req.path, req.precision, shapes, int8_onnx, workspace_mb=req.option("workspace_mb", 1024)
    )
    samples = req.samples_array()
    par = check_engine(req.path, req.source, [s[None] for s in samples], req.precision)
    return {"parity": {**par, "against": "onnx fp32"}, **{k: v for k, v in built.items() if k != "path"}}


def export_engine(req: Request) -> list[dict]:
    """The TensorRT row's exporter: ``<stem>.trt-int8.onnx`` first for INT8, the lint of the file TensorRT reads,
    then the engine (where TensorRT is installed and ``build_engine``) and the trtexec scripts (``emit_trtexec``).
    Returns the records of the files written: the INT8 ONNX and the engine (``skipped`` with the reason where it
    was not built)."""
    t0 = time.perf_counter()
    recs, int8_onnx = [], None
    if req.precision == "int8":
        int8_onnx = req.source.with_name(req.path.name[: -len(".int8.plan")] + ".trt-int8.onnx")
        recs.append(export_int8(replace(req, path=int8_onnx), "tensorrt"))
    src = int8_onnx or req.source
    available, why = tensorrt_available() if req.option("build_engine", True) else (False, "")
    versions = sorted(set(req.option("trt_versions", (10,))) | ({trt_major()} if available else set()))
    lints = [lint_or_fail(src, v) for v in versions]
    main = str(trt_major() if available else versions[0])
    model = req.model
    mult, channels = size_multiple(model), input_channels(model, req.samples)
    shapes = default_profile(
        req.size, "hw" in req.option("dynamic", ()) and not req.static, mult, 1 if req.static else 8, channels
    )
    scripts = [
        emit_trtexec_script(req.path.parent, req.source, v, req.precision, shapes, int8_onnx).name
        for v in (req.option("trt_versions", (10,)) if req.option("emit_trtexec", False) else ())
    ]
    extra = dict(lints=lints, lint=next(x for x in lints if x["target"] == main), scripts=scripts)
    if not available:
        reason = why or "only the trtexec scripts were asked for (--trt builds the engine where TensorRT is installed)"
        return recs + [record(req.path, "tensorrt", req.precision, status="skipped", reason=reason, **extra)]
    fields = _engine(req, src, int8_onnx, shapes)
    return recs + [record(req.path, "tensorrt", req.precision, seconds=time.perf_counter() - t0, **extra, **fields)]


_GPU = "pip install 'compressor[trt]' (on a machine with an NVIDIA GPU)"

FORMAT = Format(
    "tensorrt",
    ".plan",
    ("fp32", "fp16", "int8"),
    export_engine,
    backends=(
        Backend(
            "tensorrt",
            "compressor.exporters.formats.tensorrt:TensorRTRunner",
            "engine",
            "cuda",
            ("fp32", "fp16", "int8"),
            ("tensorrt",),
            _GPU,
            plan=True,
            help="a TensorRT engine (.plan)",
        ),
        Backend(
            "trtexec-json",
            "compressor.exporters.profile:TrtexecTimes",
            "trtexec-json",
            "cuda",
            ("fp32", "fp16", "int8"),
            (),
            "",
            measured=False,
            help="import trtexec --exportTimes timings",
            make="a trtexec --exportTimes file",
        ),
    ),
    requires=("onnx",),  # the lint and the trtexec scripts need no TensorRT; the engine does (its record says so)
    extra=_GPU,
    calibrated=("int8",),
    source="onnx",
    source_required=True,
    in_recipe=False,  # the recipe's export.tensorrt section asks for it, with its precision and workspace
    order=30,
    help="TensorRT engine (lint and trtexec scripts everywhere; the engine where TensorRT is installed)",
)
