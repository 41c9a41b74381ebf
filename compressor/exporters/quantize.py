"""INT8 (static) quantisation with ONNX Runtime's tools and calibration images from the recipe's data.

``target="cpu"`` quantises only the ops that have INT8 kernels in ONNX Runtime's CPU provider (Conv, MatMul,
Gemm: :data:`CPU_OP_TYPES`), so no Q/DQ pair sits around an op that stays in float (ConvTranspose,
InstanceNorm, Pad, Tanh, Resize...), with unsigned activations and signed weights (U8S8: the x86 kernels'
native form, ``vpmaddubsw`` on AVX2, ``vpdpbusd`` on AVX512-VNNI / AVX-VNNI). :class:`CpuInt8` holds the choices
(QDQ or QOperator, U8S8 or S8S8, per-channel, symmetric activations, calibration method, 7-bit weights where
the CPU lacks VNNI: without it, per-channel 8-bit weights saturate the int16 sums and cost 10+ dB of PSNR);
``tools/bench_export.py --variants`` measures them side by side. ``target="tensorrt"`` uses symmetric signed
INT8 for activations and weights, which TensorRT's explicit quantisation expects.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch

from compressor.io import atomic_write_bytes

from .rows import INPUT
from .runtimes import ort_session

log = logging.getLogger(__name__)


# TensorRT dequantizes only INT8/FP8/INT4 inputs: ONNX Runtime's default QuantizeBias=True turns each conv bias
# into an INT32 initializer + DequantizeLinear, which TensorRT's parser rejects; the bias stays FP32 instead.
TENSORRT_EXTRA_OPTIONS = {"tensorrt": {"QuantizeBias": False}}


class _Reader:
    def __init__(self, name: str, batches: Iterable[np.ndarray]):
        self.name, self.it = name, iter(list(batches))

    def get_next(self):
        x = next(self.it, None)
        return None if x is None else {self.name: x}

    def rewind(self):  # pragma: no cover - part of the reader protocol
        pass


# ConvTranspose is left out: ONNX Runtime's CPU provider has no INT8 ConvTranspose kernel, so quantising it only
# wraps a float ConvTranspose in DequantizeLinear/QuantizeLinear (seen in the profiler: tools/bench_export.py)
CPU_OP_TYPES = ("Conv", "MatMul", "Gemm")


@dataclass(frozen=True)
class CpuInt8:
    """How ``quantize_onnx(target="cpu")`` quantises; the defaults were picked by ``tools/bench_export.py``."""

    format: str = "qdq"  # qdq | qoperator
    activations: str = "u8"  # u8 (U8S8) | s8 (S8S8)
    per_channel: bool = True
    symmetric_activations: bool = False
    calibration: str = "minmax"  # minmax | entropy | percentile
    op_types: tuple[str, ...] = CPU_OP_TYPES
    # 7-bit weights: x86 without VNNI multiplies u8 x s8 with vpmaddubsw, whose int16 pair sums saturate on
    # full-range weights; None: on where the CPU lacks VNNI (see cpu_has_vnni)
    reduce_range: Optional[bool] = None

    def describe(self) -> str:
        return (
            f"{self.format.upper()} {'U8S8' if self.activations == 'u8' else 'S8S8'} "
            f"{'per-channel' if self.per_channel else 'per-tensor'}"
            f"{' symmetric' if self.symmetric_activations else ''} {self.calibration}"
            f"{' 7-bit-weights' if self.resolved_reduce_range() else ''} [{','.join(self.op_types) or 'all ops'}]"
        )

    def resolved_reduce_range(self) -> bool:
        return (not cpu_has_vnni()) if self.reduce_range is None else self.reduce_range


def cpu_has_vnni() -> bool:
    """True where INT8 dot products need no int16 intermediate (AVX512-VNNI, AVX-VNNI, AMX) or on non-x86 CPUs."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return True  # not Linux: no saturation workaround
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    if "avx2" not in flags:
        return True  # ARM and others: their INT8 kernels do not saturate this way
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)


# the variants tools/bench_export.py --variants measures
CPU_VARIANTS: dict[str, CpuInt8] = {
    "default": CpuInt8(),
    "qdq-all-ops": CpuInt8(op_types=()),
    "with-convtranspose": CpuInt8(op_types=CPU_OP_TYPES + ("ConvTranspose",)),
    "per-tensor": CpuInt8(per_channel=False),
    "8bit-weights": CpuInt8(reduce_range=False),
    "per-tensor-8bit-weights": CpuInt8(per_channel=False, reduce_range=False),
    "s8s8-symmetric": CpuInt8(activations="s8", symmetric_activations=True),
    "qoperator": CpuInt8(format="qoperator"),
    "qoperator-per-tensor": CpuInt8(format="qoperator", per_channel=False),
    "percentile": CpuInt8(calibration="percentile"),
    "entropy": CpuInt8(calibration="entropy"),
}


def _quantize_cpu(pre: Path, out: Path, calibration: list[np.ndarray], opt: CpuInt8) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[opt.calibration]
    quantize_static(
        str(pre),
        str(out),
        _Reader(INPUT, calibration),
        quant_format=QuantFormat.QDQ if opt.format == "qdq" else QuantFormat.QOperator,
        op_types_to_quantize=list(opt.op_types) or None,
        per_channel=opt.per_channel,
        activation_type=QuantType.QUInt8 if opt.activations == "u8" else QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=method,
        reduce_range=opt.resolved_reduce_range(),
        extra_options={
            "ActivationSymmetric": opt.symmetric_activations,
            "WeightSymmetric": True,
            "CalibPercentile": 99.999,
        },
    )


def quantize_onnx(
    fp32: str | Path, out: str | Path, calibration: list[np.ndarray], target: str = "cpu", cpu: Optional[CpuInt8] = None
) -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32, out = Path(fp32), Path(out)
    with tempfile.TemporaryDirectory() as td:
        pre = Path(td) / "pre.onnx"
        try:
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=False)
        except Exception as exc:  # noqa: BLE001 - pre-processing is an optimisation
            log.debug("quant_pre_process failed (%s); quantising the model as exported", exc)
            pre = fp32
        staged = Path(td) / "quantized.onnx"  # renamed into place: never written through a symlink at ``out``
        if target == "cpu":
            _quantize_cpu(pre, staged, calibration, cpu or CpuInt8())
            return _place(staged, out)
        act = QuantType.QUInt8 if target == "cpu" else QuantType.QInt8
        quantize_static(
            str(pre),
            str(staged),
            _Reader(INPUT, calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=act,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={
                "ActivationSymmetric": target != "cpu",
                "WeightSymmetric": True,
                **TENSORRT_EXTRA_OPTIONS.get(target, {}),
            },
        )
        return _place(staged, out)


def _place(staged: Path, out: Path) -> Path:
    atomic_write_bytes(out, staged.read_bytes())
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two images in [-1, 1] (peak-to-peak 2)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(4.0 / mse)


def time_session(sess, x: np.ndarray, iters: int = 10) -> float:
    name = sess.get_inputs()[0].name
    sess.run(None, {name: x})
    t = []
    for _ in range(iters):
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        t.append(time.perf_counter() - t0)
    return float(np.median(t)) * 1000


def compare_int8(fp32: Path, int8: Path, images: torch.Tensor, iters: int = 10) -> dict:
    """PSNR of INT8 against FP32 output, and the median latency of both (ms) in ONNX Runtime on the CPU."""
    s32, s8 = ort_session(fp32), ort_session(int8)
    name = s32.get_inputs()[0].name
    vals = []
    for i in range(len(images)):
        x = images[i : i + 1].numpy()
        vals.append(psnr(s32.run(None, {name: x})[0], s8.run(None, {name: x})[0]))
    x = images[:1].numpy()
    lat32, lat8 = time_session(s32, x, iters), time_session(s8, x, iters)
    return {
        "psnr_vs_fp32": float(np.mean(vals)),
        "psnr_min": float(np.min(vals)),
        "latency_ms_fp32": lat32,
        "latency_ms_int8": lat8,
        "latency_ratio_int8_over_fp32": lat8 / lat32,
    }


def unsigned_activations(proto) -> int:
    """Rewrite a QDQ model's signed per-tensor activation quantisation (INT8, zero point z) as unsigned (UINT8,
    zero point z + 128): the same values exactly, in the U8S8 form ONNX Runtime's x86 INT8 kernels take natively.
    Weights stay signed. Returns the quantize/dequantize pairs rewritten (0: left as it was, e.g. zero points that
    are not initializers)."""
    import onnx
    from onnx import numpy_helper

    g = proto.graph
    init = {i.name: i for i in g.initializer}
    qdq = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]
    weight_zps = {n.input[2] for n in qdq if n.op_type == "DequantizeLinear" and n.input[0] in init}
    acts = [n for n in qdq if not (n.op_type == "DequantizeLinear" and n.input[0] in init)]
    if any(n.input[2] not in init for n in acts):
        return 0
    done: dict[str, str] = {}
    for n in acts:
        zp = n.input[2]
        arr = numpy_helper.to_array(init[zp])
        if arr.dtype != np.int8 or arr.size != 1:
            continue
        if zp not in done:
            new = numpy_helper.from_array((arr.astype(np.int16) + 128).astype(np.uint8), f"{zp}__u8")
            g.initializer.append(new)
            done[zp] = new.name
        n.input[2] = done[zp]
    for zp in set(done) - weight_zps:  # an unsigned copy replaced every use
        if not any(zp in n.input for n in g.node):
            g.initializer.remove(init[zp])
    del g.value_info[:]  # the Q outputs' element types changed: let the runtime infer them again
    onnx.checker.check_model(proto)
    return len(done)


def compare_outputs(model: torch.nn.Module, path: Path, images: torch.Tensor) -> dict:
    """PSNR of ONNX Runtime running ``path`` against ``model`` (PyTorch) on each image: the mean and the least."""
    sess = ort_session(path)
    name = sess.get_inputs()[0].name
    vals = []
    for x in images:
        with torch.no_grad():
            ref = model(x[None].float()).numpy()
        vals.append(psnr(ref, sess.run(None, {name: x[None].numpy().astype(np.float32)})[0]))
    return {"psnr_mean": float(np.mean(vals)), "psnr_min": float(np.min(vals))}


def quantize_before_pad(proto) -> int:
    """Where a ``Pad`` feeds a per-tensor ``QuantizeLinear`` (``Pad -> Q -> DQ -> Conv``, as PT2E writes a convolution's
    input), quantise its input too (``Q -> DQ -> Pad -> Q -> DQ``): the same values exactly (reflect and edge padding
    copy values already on the grid, constant padding adds zeros, which the zero point represents exactly), but the
    padding runs on INT8 data in the runtimes that move dequantisation through data-movement ops (OpenVINO runs it in
    u8, as it does for NNCF's files). Returns the pads rewritten."""
    from onnx import helper

    g = proto.graph
    init = {i.name for i in g.initializer}
    users: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    done = 0
    for pad in [n for n in g.node if n.op_type == "Pad"]:
        after = users.get(pad.output[0], [])
        if len(after) != 1 or after[0].op_type != "QuantizeLinear" or not set(after[0].input[1:]) <= init:
            continue
        mode = next((a.s.decode() for a in pad.attribute if a.name == "mode"), "constant")
        if mode == "constant" and len(pad.input) > 2 and pad.input[2]:
            continue  # a constant other than the default 0 may not be on the grid
        q = after[0]
        x = pad.input[0]
        qn, dqn = f"{pad.name or pad.output[0]}__q", f"{pad.name or pad.output[0]}__dq"
        g.node.insert(
            list(g.node).index(pad),
            helper.make_node("QuantizeLinear", [x, *q.input[1:]], [qn + "_out"], name=qn),
        )
        g.node.insert(
            list(g.node).index(pad),
            helper.make_node("DequantizeLinear", [qn + "_out", *q.input[1:]], [dqn + "_out"], name=dqn),
        )
        pad.input[0] = dqn + "_out"
        done += 1
    return done
