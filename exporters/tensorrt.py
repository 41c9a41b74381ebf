"""TensorRT: offline compatibility lint, engine build (TensorRT 10 and 11), runner, and trtexec scripts.

``tensorrt`` is imported lazily (``pip install 'compressor[trt]'`` on a machine with an NVIDIA GPU). On TensorRT
10, FP16/INT8 come from builder flags (INT8 from the QDQ ONNX, explicit quantisation). TensorRT 11 removed
those flags and the calibrators: networks are strongly typed, so FP16 comes from an FP16-converted ONNX and
INT8 from the QDQ ONNX. JetPack 6 (Jetson) ships TensorRT 10.

This path has not been run in this project's CI, which has no GPU; its tests skip there with the reason.
"""
from __future__ import annotations

import logging
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from compressor.errors import ExportError

from .backends import backend_available, ort_session

log = logging.getLogger(__name__)

# ONNX ops TensorRT's parser supports (both majors), from its ONNX operator support matrix, restricted to the
# ops image-to-image generators and their exports use, plus common helpers.
SUPPORTED_OPS = set("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu Clip
Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout Einsum
Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool
GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization HardSigmoid HardSwish Identity If
InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN MatMul Max
MaxPool Mean Min Mod Mul Neg NonZero Not OneHot Or Pad Pow PRelu QuantizeLinear RandomUniform RandomUniformLike
RandomNormal RandomNormalLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RoiAlign Round ScatterElements
ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt
Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Where Xor
""".split())
REMOVED_IN = {11: {"Upsample"}}  # deprecated ONNX ops rejected by the newer parser
SUPPORTED_OPS_10 = SUPPORTED_OPS | {"Upsample"}


@dataclass
class LintResult:
    target: str
    problems: list[dict] = field(default_factory=list)
    nodes: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"target": self.target, "nodes": self.nodes, "ok": self.ok, "problems": self.problems}

    def lines(self) -> list[str]:
        if self.ok:
            return [f"TensorRT {self.target} lint: {self.nodes} nodes, no problems"]
        return [f"TensorRT {self.target} lint: {len(self.problems)} problem(s) in {self.nodes} nodes"] + \
            [f"  {p['node']} ({p['op']}): {p['problem']}" for p in self.problems]


def _attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def lint_onnx(path_or_model, version: int = 10) -> LintResult:
    """Check every node against TensorRT's ONNX support for ``version`` (10 or 11), without TensorRT."""
    import onnx

    model = path_or_model if isinstance(path_or_model, onnx.ModelProto) else onnx.load(str(path_or_model))
    g = model.graph
    constants = {i.name for i in g.initializer}
    constants |= {o for n in g.node if n.op_type == "Constant" for o in n.output}
    res = LintResult(target=str(version), nodes=len(g.node))
    supported = SUPPORTED_OPS_10 if version == 10 else SUPPORTED_OPS

    def problem(node, text):
        res.problems.append({"node": node.name or node.output[0], "op": node.op_type, "problem": text})

    double = onnx.TensorProto.DOUBLE
    for t in list(g.input) + list(g.output):
        if t.type.tensor_type.elem_type == double:
            res.problems.append({"node": t.name, "op": "graph I/O", "problem": "float64 tensors are not supported"})
    for init in g.initializer:
        if init.data_type == double:
            res.problems.append({"node": init.name, "op": "initializer", "problem": "float64 tensors are not "
                                                                                     "supported"})
    for node in g.node:
        if node.domain not in ("", "ai.onnx"):
            problem(node, f"custom domain {node.domain!r} needs a TensorRT plugin")
            continue
        op = node.op_type
        if op not in supported:
            problem(node, f"op {op} is not supported by TensorRT {version}'s ONNX parser"
                          + (" (removed; use Resize)" if op == "Upsample" else ""))
            continue
        a = _attrs(node)
        if op == "Pad":
            mode = a.get("mode", b"constant")
            mode = mode.decode() if isinstance(mode, bytes) else mode
            if mode not in ("constant", "reflect", "edge", "wrap"):
                problem(node, f"Pad mode {mode!r} is not supported")
            if len(node.input) > 3 and node.input[3] and node.input[3] not in constants:
                problem(node, "Pad's axes input must be an initializer (a build-time constant)")
        elif op == "Resize":
            mode = a.get("mode", b"nearest")
            mode = mode.decode() if isinstance(mode, bytes) else mode
            ctm = a.get("coordinate_transformation_mode", b"half_pixel")
            ctm = ctm.decode() if isinstance(ctm, bytes) else ctm
            if mode not in ("nearest", "linear", "cubic"):
                problem(node, f"Resize mode {mode!r} is not supported")
            if ctm == "tf_crop_and_resize":
                problem(node, "Resize coordinate_transformation_mode 'tf_crop_and_resize' is not supported")
            if a.get("antialias", 0):
                problem(node, "Resize antialias=1 is not supported")
            if mode == "cubic" and ctm not in ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"):
                problem(node, f"cubic Resize with coordinate_transformation_mode {ctm!r} is not supported")
        elif op in ("QuantizeLinear", "DequantizeLinear"):
            zp = node.input[2] if len(node.input) > 2 else ""
            init = next((i for i in g.initializer if i.name == zp), None) if zp else None
            if init is not None:
                from onnx import numpy_helper

                arr = numpy_helper.to_array(init)
                if arr.dtype.name == "uint8":
                    problem(node, "uint8 Q/DQ is not supported: TensorRT needs symmetric int8 (quantise with "
                                  "target 'tensorrt')")
                elif arr.size and abs(arr.astype("int64")).max() != 0:
                    problem(node, "Q/DQ zero points must be 0 (symmetric quantisation)")
        elif op in ("Conv", "ConvTranspose") and node.input[1] not in constants and version == 10:
            pass  # dynamic weights are supported by both
        elif op == "Cast" and a.get("to") == double:
            problem(node, "Cast to float64 is not supported")
    return res


def tensorrt_available() -> tuple[bool, str]:
    return backend_available("tensorrt")


def trt_major() -> int:
    import tensorrt as trt

    return int(trt.__version__.split(".")[0])


def fp16_onnx(src: Path, dst: Path) -> Path:
    """An FP16 copy of an ONNX model with FP32 inputs and outputs (for TensorRT 11's strong typing)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
    return dst


def build_engine(onnx_path: Path, plan_path: Path, precision: str = "fp16", shapes: Optional[dict] = None,
                 int8_onnx: Optional[Path] = None, timing_cache: Optional[Path] = None,
                 workspace_mb: int = 1024) -> dict:
    """Build a serialized engine with optimisation profiles and a reused timing cache; write a JSON sidecar."""
    import tensorrt as trt

    from compressor.io import atomic_write_bytes, atomic_write_json

    major = trt_major()
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    timing_cache = Path(timing_cache or plan_path.with_name("timing.cache"))
    src = onnx_path
    if precision == "int8":
        if int8_onnx is None or not Path(int8_onnx).exists():
            raise ExportError("TensorRT INT8 needs the QDQ ONNX: export with --precision int8 first")
        src = Path(int8_onnx)
    elif precision == "fp16" and major >= 11:
        src = fp16_onnx(onnx_path, onnx_path.with_name(onnx_path.stem + ".fp16.onnx"))
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(src)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"{src}: TensorRT could not parse the ONNX: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if major < 11:
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    for name, s in (shapes or {}).items():
        profile.set_shape(name, tuple(s["min"]), tuple(s["opt"]), tuple(s["max"]))
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise ExportError(f"{src}: TensorRT failed to build an engine (see the messages above)")
    atomic_write_bytes(plan_path, bytes(engine))
    atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    import torch

    sidecar = {"tensorrt_version": trt.__version__, "precision": precision, "source_onnx": src.name,
               "gpu": torch.cuda.get_device_name(0),
               "compute_capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
               "profiles": shapes, "timing_cache": timing_cache.name}
    atomic_write_json(plan_path.with_suffix(plan_path.suffix + ".json"), sidecar)
    return {"path": plan_path.name, **sidecar}


class TensorRTRunner:
    """Runs a serialized engine with named tensors and ``execute_async_v3`` (CUDA memory via torch)."""

    backend = "tensorrt"
    device = "cuda"

    def __init__(self, engine_path: str | Path):
        import tensorrt as trt
        import torch

        self.trt, self.torch = trt, torch
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        self.context = self.engine.create_execution_context()
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in self.names if n not in self.inputs]
        self.stream = torch.cuda.Stream()

    def _dtype(self, name):
        return self.torch.from_numpy(np.zeros(1, dtype=self.trt.nptype(self.engine.get_tensor_dtype(name)))).dtype

    def run_device(self, x):
        torch = self.torch
        inp = x if torch.is_tensor(x) else torch.from_numpy(x)
        inp = inp.to("cuda", self._dtype(self.inputs[0])).contiguous()
        self.context.set_input_shape(self.inputs[0], tuple(inp.shape))
        self.context.set_tensor_address(self.inputs[0], inp.data_ptr())
        outs = {}
        for n in self.outputs:
            shape = tuple(self.context.get_tensor_shape(n))
            outs[n] = torch.empty(shape, dtype=self._dtype(n), device="cuda")
            self.context.set_tensor_address(n, outs[n].data_ptr())
        self.context.execute_async_v3(self.stream.cuda_stream)
        return outs[self.outputs[0]], inp

    def __call__(self, x):
        out, _ = self.run_device(x)
        self.stream.synchronize()
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
        return start.elapsed_time(end)

    def peak_memory_mb(self):
        return self.torch.cuda.max_memory_allocated() / 2**20


PARITY = {"fp32": {"max_abs": 1e-3}, "fp16": {"psnr_min": 35.0}, "int8": {"psnr_min": 25.0}}


def engine_parity(engine_path: Path, onnx_path: Path, inputs: list, precision: str) -> dict:
    """Run the same inputs through the engine and ONNX Runtime (the fp32 ONNX); compare with stated limits."""
    from .quantize import psnr

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
    return {"precision": precision, "limit": limit, "max_abs": worst_abs, "psnr_min": worst_psnr,
            "passed": passed, "cases": cases}


def check_engine(engine_path: Path, onnx_path: Path, inputs: list, precision: str) -> dict:
    """:func:`engine_parity`, and on failure a ``.failed`` marker beside the engine and an ExportError."""
    from .onnx import failed_marker

    par = engine_parity(engine_path, onnx_path, inputs, precision)
    marker = failed_marker(Path(engine_path))
    if not par["passed"]:
        msg = (f"{engine_path}: TensorRT output differs from ONNX Runtime beyond {par['limit']} (max abs "
               f"{par['max_abs']:.3g}, PSNR {par['psnr_min']:.1f} dB)")
        marker.write_text(msg + "\n")
        raise ExportError(msg)
    marker.unlink(missing_ok=True)
    return par


def _shape(s) -> str:
    return "x".join(str(int(v)) for v in s)


def trtexec_command(onnx_name: str, version: int, precision: str, shapes: dict, engine_name: str = "student.plan",
                    input_name: str = "input") -> list[str]:
    """The trtexec argument list for TensorRT ``version`` (10: precision flags; 11: strongly typed ONNX)."""
    if version not in (10, 11):
        raise ValueError("TensorRT version must be 10 or 11")
    s = shapes[input_name]
    cmd = ["trtexec", f"--onnx={onnx_name}", f"--saveEngine={engine_name}",
           f"--minShapes={input_name}:{_shape(s['min'])}", f"--optShapes={input_name}:{_shape(s['opt'])}",
           f"--maxShapes={input_name}:{_shape(s['max'])}", f"--shapes={input_name}:{_shape(s['opt'])}",
           "--useCudaGraph", "--separateProfileRun", "--timingCacheFile=timing.cache",
           "--exportTimes=trtexec_times.json", "--exportProfile=trtexec_profile.json",
           "--exportOutput=trtexec_output.json", "--warmUp=500", "--duration=10"]
    if version == 10:
        if precision == "fp16":
            cmd.append("--fp16")
        elif precision == "int8":
            cmd += ["--fp16", "--int8"]  # the ONNX carries Q/DQ nodes: explicit quantisation
    return cmd


def emit_trtexec_script(out_dir: Path, onnx_path: Path, version: int, precision: str, shapes: dict,
                        int8_onnx: Optional[Path] = None) -> Path:
    """Write ``trtexec_trt{version}_{precision}.sh`` to run on the device next to the ONNX file(s)."""
    src = Path(onnx_path).name
    prep = []
    if precision == "int8":
        if int8_onnx is None:
            raise ExportError("--emit-trtexec with int8 needs the QDQ ONNX (export with --precision int8)")
        src = Path(int8_onnx).name
    elif precision == "fp16" and version == 11:
        fp16_onnx(Path(onnx_path), Path(onnx_path).with_name(Path(onnx_path).stem + ".fp16.onnx"))
        src = Path(onnx_path).stem + ".fp16.onnx"
        prep.append("# TensorRT 11 is strongly typed: the FP16 precision comes from this FP16 ONNX.")
    engine = f"{Path(onnx_path).stem}.trt{version}.{precision}.plan"
    cmd = trtexec_command(src, version, precision, shapes, engine)
    script = Path(out_dir) / f"trtexec_trt{version}_{precision}.sh"
    lines = ["#!/usr/bin/env bash", f"# Generated by compressor for TensorRT {version}.x, {precision}.",
             "# Run on the target (e.g. a Jetson: JetPack 6 ships TensorRT 10) from the folder holding the ONNX.",
             "# Then: compress profile trtexec_times.json --backend trtexec-json  (imports the timings)",
             "set -euo pipefail", 'cd "$(dirname "$0")"', *prep,
             'if command -v nvpmodel >/dev/null; then nvpmodel -q || true; fi',
             " \\\n  ".join(shlex.quote(c) for c in cmd), ""]
    script.write_text("\n".join(lines))
    script.chmod(0o755)
    return script
