"""LiteRT (``.tflite``, formerly TensorFlow Lite): converted with ``litert-torch``, run with ``ai-edge-litert``.

The file takes and returns NHWC images (what an Android bitmap gives; ``litert_torch.to_channel_last_io``), batch 1
at the export size; the runner transposes the toolkit's NCHW arrays to whatever the file's input shape asks, so
NCHW files made elsewhere run too. Precisions:

* ``fp32``: as converted.
* ``fp16``: FP16 weights, dequantised at load (``ai-edge-quantizer``'s float casting of the conv weights);
  XNNPACK computes in FP32 on a CPU without FP16 arithmetic.
* ``int8``: the converter's own quantisation path: PT2E with ``litert_torch``'s quantizer (symmetric, per-channel
  weights, static activations calibrated on images), INT8 input and output with the scales in the file (the
  runner quantises and dequantises). Ops the quantizer leaves out (transposed convolutions) stay in float.

litert-torch 0.10 refuses ``ConvTranspose2d`` with ``output_padding`` (its MLIR legalisation of
``mhlo.convolution`` fails; litert-torch issue #316): the exporter converts an equivalent model in which each such
layer is a padding-0 transposed convolution and a crop (:class:`exporters.mobile.CroppedConvTranspose2d`), and the
record says so. The metadata (value range, input size, layout, ...) is stored in the flatbuffer's ``metadata``
entries as UTF-8 strings (:func:`read_metadata`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from compressor.io import read_bounded

from ..mobile import StaticExport, need, static_format, without_output_padding
from ..rows import Request, Runner

log = logging.getLogger(__name__)

META_PREFIX = "compressor."
MAX_TFLITE_BYTES = 4 << 30  # a FlatBuffer is read whole; a FIFO or device at its name is one line


def _nhwc(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))


def _convert(model: nn.Module, x: torch.Tensor, precision: str, calibration: list[np.ndarray]) -> bytes:
    import litert_torch

    net = litert_torch.to_channel_last_io(model, args=[0], outputs=[0]).eval()
    xs = _nhwc(x.numpy())
    if precision != "int8":
        return bytes(litert_torch.convert(net, (xs,)).model_content())
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    graph = prepare_pt2e(torch.export.export(net, (xs,)).module(), quantizer)
    with torch.no_grad():
        for c in calibration:
            graph(_nhwc(c))
    graph = convert_pt2e(graph, fold_quantize=False)
    return bytes(litert_torch.convert(graph, (xs,), quant_config=QuantConfig(pt2e_quantizer=quantizer)).model_content())


def _fp16_weights(flat: bytes) -> bytes:
    """FP16 copies of the convolution and dense weights, dequantised when the interpreter loads the file."""
    from ai_edge_quantizer import qtyping, quantizer

    q = quantizer.Quantizer(bytearray(flat))
    op = qtyping.TFLOperationName
    config = qtyping.OpQuantizationConfig(
        weight_tensor_config=qtyping.TensorQuantizationConfig(num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
        compute_precision=qtyping.ComputePrecision.FLOAT,
        explicit_dequantize=True,
    )
    for name in (op.CONV_2D, op.DEPTHWISE_CONV_2D, op.CONV_2D_TRANSPOSE, op.FULLY_CONNECTED):
        q.update_quantization_recipe(
            regex=".*", operation_name=name, op_config=config, algorithm_key=quantizer.AlgorithmName.FLOAT_CASTING
        )
    return bytes(q.quantize(enable_progress_report=False).quantized_model)


def _with_metadata(flat: bytes, metadata: dict) -> bytes:
    """The flatbuffer with ``compressor.<key>`` metadata entries (UTF-8 strings in their own buffers)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flat))
    model.metadata = [m for m in (model.metadata or []) if not m.name.decode().startswith(META_PREFIX)]
    for key, value in metadata.items():
        buf = schema.BufferT()
        buf.data = np.frombuffer(value.encode(), dtype=np.uint8)
        model.buffers.append(buf)
        entry = schema.MetadataT()
        entry.name = (META_PREFIX + key).encode()
        entry.buffer = len(model.buffers) - 1
        model.metadata.append(entry)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def read_metadata(path: str | Path) -> dict:
    """The ``compressor.*`` metadata of a ``.tflite`` file written by :func:`export_litert`."""
    from ai_edge_litert import schema_py_generated as schema

    buf = read_bounded(path, MAX_TFLITE_BYTES)
    model = schema.Model.GetRootAs(buf, 0)
    out = {}
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        name = entry.Name().decode()
        if name.startswith(META_PREFIX):
            out[name[len(META_PREFIX) :]] = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes().decode()
    return out


def int8_share(path: str | Path) -> float:
    """Share of the weight bytes a ``.tflite`` holds as INT8 (the rest stayed in float)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(read_bounded(path, MAX_TFLITE_BYTES), 0)
    graph = model.Subgraphs(0)
    total = int8 = 0
    for i in range(graph.TensorsLength()):
        t = graph.Tensors(i)
        n = model.Buffers(t.Buffer()).DataLength() if t.Buffer() < model.BuffersLength() else 0
        total += n
        if t.Type() == schema.TensorType.INT8:
            int8 += n
    return int8 / total if total else 0.0


def export_litert(req: Request) -> dict:
    """Write ``<stem>.tflite`` (``<stem>.fp16.tflite``, ``<stem>.int8.tflite``), checked in the LiteRT interpreter
    (XNNPACK) against PyTorch on the samples. Raises ExportError when the check fails."""
    job = StaticExport(req, FORMAT, ("litert_torch", "ai_edge_litert"), layout="NHWC")
    net, rewritten = without_output_padding(job.model)
    notes = []
    if rewritten:
        notes.append(
            f"{rewritten} ConvTranspose2d with output_padding converted as padding-0 ConvTranspose2d + crop "
            "(litert-torch refuses output_padding: litert-torch#316)"
        )

    def convert() -> bytes:
        flat = _convert(net, job.example, req.precision, job.calibration)
        return _fp16_weights(flat) if req.precision == "fp16" else flat

    flat = _with_metadata(job.converted(convert), job.meta)
    par = job.write(lambda tmp: tmp.write_bytes(flat), lambda tmp: job.run_batches(LiteRTRunner(tmp)))
    extra = {"int8_weight_share": round(int8_share(job.path), 3)} if req.precision == "int8" else {}
    return job.record(par, notes=notes, **extra)


class LiteRTRunner(Runner):
    """A ``.tflite`` in the LiteRT interpreter with its XNNPACK delegate (``threads``: its thread count). NCHW
    float arrays in [-1, 1] in and out, whatever the file's layout and input type (INT8 files are fed through
    their own scale and zero point)."""

    @classmethod
    def unavailable(cls, row=None) -> str:
        return ""

    def __init__(self, artifact, *, backend=None, threads: Optional[int] = None, device: str = "cpu", precision="fp32"):
        need("ai_edge_litert", "the litert backend")
        from ai_edge_litert.interpreter import Interpreter

        self.backend = "litert"
        self.device = "cpu"
        self.path = Path(artifact)
        self.interp = Interpreter(model_path=str(self.path), num_threads=threads or None)
        self.interp.allocate_tensors()
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]
        self.input_shape = tuple(int(d) for d in self.inp["shape"])

    @staticmethod
    def _quant(detail: dict) -> tuple[float, int]:
        scale, zero = detail.get("quantization", (0.0, 0))
        return float(scale), int(zero)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if tuple(x.shape) == self.input_shape:
            nhwc = False
        elif tuple(x.transpose(0, 2, 3, 1).shape) == self.input_shape:
            nhwc, x = True, x.transpose(0, 2, 3, 1)
        else:
            raise ValueError(f"{self.path.name} takes {self.input_shape} (static), not {tuple(x.shape)} (NCHW)")
        dtype = self.inp["dtype"]
        if dtype != np.float32:
            scale, zero = self._quant(self.inp)
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale) + zero, info.min, info.max)
        self.interp.set_tensor(self.inp["index"], np.ascontiguousarray(x.astype(dtype)))
        self.interp.invoke()
        y = self.interp.get_tensor(self.out["index"])
        if y.dtype != np.float32:
            scale, zero = self._quant(self.out)
            y = (y.astype(np.float32) - zero) * scale
        return np.ascontiguousarray(y.transpose(0, 3, 1, 2)) if nhwc else y


FORMAT = static_format(
    "litert",
    ".tflite",
    ("fp32", "fp16", "int8"),
    export_litert,
    "compressor.exporters.formats.litert:LiteRTRunner",
    artifact="tflite",
    requires=("litert_torch", "ai_edge_litert"),
    runs_with=("ai_edge_litert",),
    order=50,
    help="LiteRT (TensorFlow Lite) interpreter, XNNPACK delegate",
)
