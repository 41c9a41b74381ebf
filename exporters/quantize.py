"""INT8 (static QDQ) quantisation with ONNX Runtime's tools and calibration images from the recipe's data.

Weights are quantised per channel. ``target="cpu"`` uses unsigned activations (fastest in ONNX Runtime on
x86); ``target="tensorrt"`` uses symmetric signed INT8 for activations and weights, which TensorRT's explicit
quantisation expects.
"""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from .backends import ort_session

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


def quantize_onnx(fp32: str | Path, out: str | Path, calibration: list[np.ndarray], target: str = "cpu") -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .onnx import INPUT

    fp32, out = Path(fp32), Path(out)
    with tempfile.TemporaryDirectory() as td:
        pre = Path(td) / "pre.onnx"
        try:
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=False)
        except Exception as exc:  # noqa: BLE001 - pre-processing is an optimisation
            log.debug("quant_pre_process failed (%s); quantising the model as exported", exc)
            pre = fp32
        act = QuantType.QUInt8 if target == "cpu" else QuantType.QInt8
        quantize_static(str(pre), str(out), _Reader(INPUT, calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=act, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": target != "cpu", "WeightSymmetric": True,
                                       **TENSORRT_EXTRA_OPTIONS.get(target, {})})
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
        x = images[i:i + 1].numpy()
        vals.append(psnr(s32.run(None, {name: x})[0], s8.run(None, {name: x})[0]))
    x = images[:1].numpy()
    lat32, lat8 = time_session(s32, x, iters), time_session(s8, x, iters)
    return {"psnr_vs_fp32": float(np.mean(vals)), "psnr_min": float(np.min(vals)), "latency_ms_fp32": lat32,
            "latency_ms_int8": lat8, "latency_ratio_int8_over_fp32": lat8 / lat32}
