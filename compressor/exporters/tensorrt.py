"""TensorRT: offline compatibility lint, engine build (TensorRT 10 and 11), runner, and trtexec scripts.

``tensorrt`` is imported lazily (``pip install 'compressor[trt]'`` on a machine with an NVIDIA GPU). On TensorRT
10, FP16/INT8 come from builder flags (INT8 from the QDQ ONNX, explicit quantisation). TensorRT 11 removed
those flags and the calibrators: networks are strongly typed, so FP16 comes from an FP16-converted ONNX and
INT8 from the QDQ ONNX. FP32 means FP32: TF32 (on by default in both majors) is cleared for FP32 builds.

Jetson: JetPack 6.1 and 6.2 ship TensorRT 10.3 (JetPack 6.0 ships TensorRT 8.6, which this module does not
target); TensorRT 11.3 and newer do not support JetPack, so a Jetson uses the TensorRT 10 path.

This path was written against the TensorRT 10 and 11 Python APIs and trtexec sources by reading them
(``exporters/trt_rules.py`` cites each line); it has not been run on a GPU in this project's CI, where its tests
use a fake ``tensorrt`` module that records calls.
"""

from __future__ import annotations

import logging
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from compressor.errors import ExportError, UserError
from compressor.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_bounded, staged

from . import trt_rules
from .runtimes import Runner, backend_available, ort_session
from .trt_rules import parse_version, rule

log = logging.getLogger(__name__)

MAX_ENGINE_BYTES = 16 << 30  # an engine or timing cache read back whole (a FIFO or device there is one line)

# Kept for callers of the old names: the ops the parser imports in TensorRT 10.0 and 11.0.
SUPPORTED_OPS = trt_rules.supported_ops(11)
SUPPORTED_OPS_10 = trt_rules.supported_ops(10)

_CTM_OK = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
_RESIZE_MODES = {"nearest", "linear", "cubic"}
_PAD_MODES = {"constant", "reflect", "edge", "wrap"}


@dataclass
class LintResult:
    target: str
    problems: list[dict] = field(default_factory=list)
    nodes: int = 0
    warnings: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {
            "target": self.target,
            "nodes": self.nodes,
            "ok": self.ok,
            "problems": self.problems,
            "warnings": self.warnings,
        }

    def lines(self) -> list[str]:
        warn = [f"  warning: {p['node']} ({p['op']}): {p['problem']}" for p in self.warnings]
        if self.ok:
            extra = f", {len(self.warnings)} warning(s)" if self.warnings else ""
            return [f"TensorRT {self.target} lint: {self.nodes} nodes, no problems{extra}"] + warn
        return (
            [f"TensorRT {self.target} lint: {len(self.problems)} problem(s) in {self.nodes} nodes"]
            + [f"  {p['node']} ({p['op']}): {p['problem']}" for p in self.problems]
            + warn
        )


def _attrs(node) -> dict:
    import onnx

    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _elem_types(model) -> dict:
    """Element type of every tensor name we can tell without running the model (shape inference where it works)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - inference is a help, not a requirement (models > 2 GiB, odd ops)
        inferred = model
    g = inferred.graph
    types = {}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in g.initializer:
        types[init.name] = init.data_type
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    types[n.output[0]] = a.t.data_type
    return types


@dataclass
class _LintContext:
    """What every check in one lint run shares: the target, the graph's facts and the result's lists."""

    version: tuple[int, int]
    target: str
    T: Any  # onnx.TensorProto (onnx is imported lazily)
    supported: set[str]  # the ops the target's parser imports
    constants: set[str]  # initializers and Constant outputs: build-time constants
    inits: dict  # name -> initializer
    types: dict  # tensor name -> element type, where it can be told
    quantized: set[int]  # the element types TensorRT quantizes to and dequantizes from
    problems: list[dict]
    warnings: list[dict]

    def add(self, where: list, node_name: str, op: str, rule_id: str, text: str) -> None:
        where.append({"node": node_name, "op": op, "problem": text, "rule": rule_id, "source": rule(rule_id).source})

    def problem(self, node, rule_id: str, text: str) -> None:
        self.add(self.problems, node.name or node.output[0], node.op_type, rule_id, text)

    def warning(self, node, rule_id: str, text: str) -> None:
        self.add(self.warnings, node.name or node.output[0], node.op_type, rule_id, text)

    def type_name(self, t):
        """The element type's ONNX name (the number where ONNX has none)."""
        return self.T.DataType.Name(t) if t in self.T.DataType.values() else t


def _lint_context(model, v: tuple[int, int], res: LintResult, T) -> _LintContext:
    g = model.graph
    return _LintContext(
        version=v,
        target=res.target,
        T=T,
        supported=trt_rules.supported_ops(v),
        constants={i.name for i in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output},
        inits={i.name: i for i in g.initializer},
        types=_elem_types(model),
        quantized={T.INT8, T.FLOAT8E4M3FN, T.INT4} | ({T.FLOAT4E2M1} if v >= (10, 15) else set()),
        problems=res.problems,
        warnings=res.warnings,
    )


def _lint_opset(model, ctx: _LintContext) -> None:
    rng = trt_rules.opset_range(ctx.version)
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and not rng.low <= imp.version <= rng.high:
            ctx.problems.append(
                {
                    "node": "model",
                    "op": "opset",
                    "rule": "opset-range",
                    "source": rng.source,
                    "problem": f"ONNX opset {imp.version} is outside {rng.low}-{rng.high}, the range "
                    f"TensorRT {ctx.target} supports; export with --opset {min(18, rng.high)}",
                }
            )


def _lint_float64(graph, ctx: _LintContext) -> None:
    for t in list(graph.input) + list(graph.output):
        if t.type.tensor_type.elem_type == ctx.T.DOUBLE:
            ctx.add(ctx.warnings, t.name, "graph I/O", "double", "float64 tensor: TensorRT casts DOUBLE down to FLOAT")
    for init in graph.initializer:
        if init.data_type == ctx.T.DOUBLE:
            ctx.add(
                ctx.warnings,
                init.name,
                "initializer",
                "double",
                "float64 initializer: TensorRT casts DOUBLE down to FLOAT, clamping to +-FLT_MAX",
            )


def _op_supported(node, ctx: _LintContext) -> bool:
    """The op-support rules, for every node: False (and a problem) where the target's parser cannot import it."""
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        ctx.problem(node, "custom-domain", f"custom domain {node.domain!r}: needs a registered TensorRT plugin")
        return False
    if op not in ctx.supported:
        later = [r for r in trt_rules.OP_SUPPORT if r.op == op and r.since > ctx.version]
        hint = f" (supported from TensorRT {later[0].since[0]}.{later[0].since[1]})" if later else ""
        ctx.problem(
            node,
            "custom-domain",
            f"op {op} has no importer in TensorRT {ctx.target}'s ONNX parser{hint}; it would need a plugin",
        )
        return False
    return True


def _check_pad(node, a: dict, ctx: _LintContext) -> None:
    mode = a.get("mode", "constant")
    if mode not in _PAD_MODES:
        ctx.problem(node, "pad-mode", f"Pad mode {mode!r} is not supported")
    axes = node.input[3] if len(node.input) > 3 else ""
    if rule("pad-axes").applies(ctx.version) and axes and axes not in ctx.constants:
        ctx.problem(node, "pad-axes", "Pad's axes input must be an initializer (a build-time constant)")


def _check_resize(node, a: dict, ctx: _LintContext) -> None:
    mode = a.get("mode", "nearest")
    ctm = a.get("coordinate_transformation_mode", "half_pixel")
    if mode not in _RESIZE_MODES:
        ctx.problem(node, "resize-mode", f"Resize mode {mode!r} is not supported")
    if ctm not in _CTM_OK:
        ctx.problem(node, "resize-ctm", f"Resize coordinate_transformation_mode {ctm!r} is not supported")
    if a.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        ctx.problem(
            node,
            "resize-aspect",
            f"Resize keep_aspect_ratio_policy {a['keep_aspect_ratio_policy']!r} is not supported (only 'stretch')",
        )
    if a.get("antialias", 0):
        ctx.problem(node, "resize-antialias", "Resize antialias=1 is not supported")


def _zero_point(node) -> str:
    return node.input[2] if len(node.input) > 2 else ""


def _uint8_problem(node, ctx: _LintContext) -> None:
    ctx.problem(
        node,
        "qdq-uint8",
        f"UINT8 {node.op_type} is not supported: TensorRT needs symmetric signed INT8 (quantise with target 'tensorrt')",
    )


def _check_zero_point(node, ctx: _LintContext) -> None:
    from onnx import numpy_helper

    zp = _zero_point(node)
    if zp in ctx.inits:
        arr = numpy_helper.to_array(ctx.inits[zp])
        if arr.dtype.kind in "iu" and arr.size and abs(arr.astype("int64")).max() != 0:
            ctx.problem(node, "qdq-zero-point", "Q/DQ zero points must be 0 (symmetric quantisation)")


def _check_quantize(node, a: dict, ctx: _LintContext) -> None:
    zp = _zero_point(node)
    if a.get("output_dtype"):
        out_t = a["output_dtype"]
    elif zp:
        out_t = ctx.inits[zp].data_type if zp in ctx.inits else ctx.types.get(zp)
    else:
        out_t = ctx.T.UINT8  # the ONNX default without a zero point or output_dtype
    if out_t == ctx.T.UINT8:
        _uint8_problem(node, ctx)
    elif out_t is not None and out_t not in ctx.quantized:
        ctx.problem(
            node,
            "qdq-quantized-type",
            f"QuantizeLinear to {ctx.type_name(out_t)} is not supported (INT8, FP8, INT4 only)",
        )
    _check_zero_point(node, ctx)


def _check_dequantize(node, a: dict, ctx: _LintContext) -> None:
    t = ctx.types.get(node.input[0])
    if t == ctx.T.UINT8:
        _uint8_problem(node, ctx)
    elif t is not None and t not in ctx.quantized:
        fp4 = "/FP4" if ctx.version >= (10, 15) else ""
        bias = " (a quantised bias: quantise with QuantizeBias off)" if t == ctx.T.INT32 else ""
        ctx.problem(
            node,
            "dq-input-type",
            f"DequantizeLinear of {node.input[0]} ({ctx.type_name(t)}) is not supported: TensorRT dequantizes only "
            f"INT8/FP8/INT4{fp4}{bias}",
        )
    _check_zero_point(node, ctx)


def _check_cast(node, a: dict, ctx: _LintContext) -> None:
    if a.get("to") == ctx.T.DOUBLE:
        ctx.warning(node, "cast-double", "Cast to float64 becomes a cast to FLOAT in TensorRT")


# The checks per op family, run on every node the op-support pass lets through (with the node's attributes).
_NODE_CHECKS: dict[str, Callable[[Any, dict, _LintContext], None]] = {
    "Pad": _check_pad,
    "Resize": _check_resize,
    "QuantizeLinear": _check_quantize,
    "DequantizeLinear": _check_dequantize,
    "Cast": _check_cast,
}


def lint_onnx(path_or_model, version: int | str | tuple = 10) -> LintResult:
    """Check every node against TensorRT's ONNX support for ``version`` without TensorRT.

    ``version`` is a major (10, 11: that major's first release, the conservative choice) or ``"MAJOR.MINOR"``
    (``"10.15"``). The rules are the data in :mod:`exporters.trt_rules`; each problem names its rule and source.
    """
    import onnx

    v = parse_version(version)
    model = path_or_model if isinstance(path_or_model, onnx.ModelProto) else onnx.load(str(path_or_model))
    g = model.graph
    res = LintResult(target=str(version) if not isinstance(version, tuple) else f"{v[0]}.{v[1]}", nodes=len(g.node))
    ctx = _lint_context(model, v, res, onnx.TensorProto)
    _lint_opset(model, ctx)
    _lint_float64(g, ctx)
    for node in g.node:
        if not _op_supported(node, ctx):
            continue
        a = _attrs(node)
        check = _NODE_CHECKS.get(node.op_type)
        if check is not None:
            check(node, a, ctx)
    return res


def tensorrt_available() -> tuple[bool, str]:
    return backend_available("tensorrt")


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
    from .quantize import psnr

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
    from .onnx import failed_marker

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
    (:data:`exporters.trt_rules.TRTEXEC_OPTIONS`).
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
