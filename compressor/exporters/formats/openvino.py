"""OpenVINO: the IR exporter (FP32, FP16 weights, INT8 by NNCF post-training quantisation), the Runner and the row.

``openvino`` and ``nncf`` are imported lazily (``pip install 'compressor[openvino]'``). The IR is converted from
the ONNX file (``openvino.convert_model`` reads ONNX) or from the PyTorch model, checked against PyTorch on the
same inputs, and only then renamed into place: ``<stem>.xml``/``.bin`` (FP32), ``<stem>.fp16.xml`` (FP16
compressed weights), ``<stem>.int8.xml`` (INT8: NNCF ``quantize`` on calibration images, or
``quantize_with_accuracy_control`` when a largest PSNR drop is given).

Precision on the CPU: OpenVINO runs FP32 models in BF16 by default on CPUs with AVX-512 BF16 or AMX. The FP32 IR is
compiled with ``INFERENCE_PRECISION_HINT=f32`` so that FP32 means FP32; the FP16 and INT8 files run at the
device's default (the precision used is recorded as ``inference_precision``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from compressor.errors import ExportError, UserError
from compressor.io import remove_tree, temp_dir

from ..quantize import quantize_before_pad
from ..records import record
from ..rows import Backend, Format, Request, Runner

log = logging.getLogger(__name__)

# parity limits against PyTorch FP32 on the same inputs
PARITY = {"fp32": {"max_abs": 1e-3}, "fp16": {"psnr_min": 35.0}, "int8": {"psnr_min": 20.0}}  # INT8: catches a broken
# quantisation; its quality is reported (PSNR), and a random network is far harder to quantise than a trained one


def _properties(precision: str, threads: Optional[int], device: str) -> dict:
    import openvino.properties as props
    import openvino.properties.hint as hints

    cfg: dict = {hints.performance_mode: hints.PerformanceMode.LATENCY}
    if threads and device == "CPU":
        cfg[props.inference_num_threads] = int(threads)
    if precision == "fp32":
        import openvino as ov

        cfg[hints.inference_precision] = ov.Type.f32
    return cfg


def compile_ir(model: Any, precision: str = "fp32", threads: Optional[int] = None, device: str = "CPU"):
    """Compile an IR/ONNX path or an ``ov.Model`` for ``device`` with this module's precision rule."""
    import openvino as ov

    core = ov.Core()
    src = str(model) if isinstance(model, (str, Path)) else model
    return core.compile_model(src, device.upper(), _properties(precision, threads, device.upper()))


def ir_precision(path: str | Path) -> str:
    """``int8`` for an IR with FakeQuantize/FakeConvert nodes, ``fp16`` for FP16 constants, else ``fp32``."""
    import openvino as ov

    model = ov.Core().read_model(str(path))
    ops = {op.get_type_name() for op in model.get_ops()}
    if ops & {"FakeQuantize", "FakeConvert"}:
        return "int8"
    consts = [op for op in model.get_ops() if op.get_type_name() == "Constant"]
    if any(op.get_output_element_type(0) == ov.Type.f16 for op in consts):
        return "fp16"
    return "fp32"


class OpenVINORunner(Runner):
    """An IR (``.xml``) or an ONNX file compiled by OpenVINO; ``device`` cpu (default), gpu or npu."""

    @classmethod
    def unavailable(cls, row: Backend) -> str:
        return ""

    @classmethod
    def refuse(cls, row: Backend, precision: str, device: str) -> str:
        why = super().refuse(row, precision, device)
        if why:
            return why
        import openvino as ov

        have = [d.split(".")[0].lower() for d in ov.Core().available_devices]
        if device.lower() not in have:
            return f"OpenVINO has no {device.upper()} device here (it sees {', '.join(have) or 'none'})"
        return ""

    def __init__(
        self,
        artifact,
        *,
        backend: Optional[Backend] = None,
        threads: Optional[int] = None,
        device: str = "cpu",
        precision: str = "fp32",
    ):
        self.backend = backend.name if backend else "openvino"
        self.device = device.lower()
        self.path = Path(artifact)
        self.file_precision = ir_precision(self.path) if self.path.suffix == ".xml" else "fp32"
        self.compiled = compile_ir(self.path, self.file_precision, threads, device)
        self.request = self.compiled.create_infer_request()
        try:
            import openvino.properties.hint as hints

            self.inference_precision = str(self.compiled.get_property(hints.inference_precision))
        except Exception:  # noqa: BLE001 - not every device reports it
            self.inference_precision = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        return np.array(self.request.get_output_tensor(0).data, copy=True)


# ------------------------------------------------------------------------------------------------ export


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 2.0) -> float:
    """PSNR (dB) of ``b`` against ``a`` for images in [-1, 1] (peak-to-peak 2)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(peak**2 / mse))


def compare(reference: list[np.ndarray], outputs: list[np.ndarray]) -> dict:
    """max abs error and the lowest PSNR over paired outputs."""
    max_abs = max(float(np.abs(r - o).max()) for r, o in zip(reference, outputs))
    vals = [psnr(r, o) for r, o in zip(reference, outputs)]
    return {"max_abs": max_abs, "psnr_min": min(vals), "psnr_mean": float(np.mean(vals)), "cases": len(vals)}


def _check(par: dict, precision: str, what: str) -> None:
    lim = PARITY[precision]
    if "max_abs" in lim and par["max_abs"] > lim["max_abs"]:
        raise ExportError(
            f"{what}: OpenVINO {precision} differs from PyTorch by {par['max_abs']:.2e} (limit {lim['max_abs']})"
        )
    if "psnr_min" in lim and par["psnr_min"] < lim["psnr_min"]:
        raise ExportError(
            f"{what}: OpenVINO {precision} PSNR against PyTorch is {par['psnr_min']:.1f} dB (limit {lim['psnr_min']})"
        )


def _rename_ir(tmp_xml: Path, final_xml: Path) -> None:
    """Move an IR pair into place (.bin first: a reader finds the .xml only when both are there)."""
    os.replace(tmp_xml.with_suffix(".bin"), final_xml.with_suffix(".bin"))
    os.replace(tmp_xml, final_xml)


def convert(source: Any, example: Optional[np.ndarray] = None, static_shape: Optional[tuple] = None):
    """An ``ov.Model`` from an ONNX path or a torch module (``example``: an input for tracing)."""
    import openvino as ov

    kwargs: dict = {}
    if not isinstance(source, (str, Path)):
        import torch

        kwargs["example_input"] = torch.from_numpy(example)
    if static_shape is not None:
        kwargs["input"] = [list(static_shape)]
    try:
        return ov.convert_model(str(source) if isinstance(source, (str, Path)) else source, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the converter raises many types
        msg = str(exc).strip().splitlines()
        raise ExportError(
            f"OpenVINO could not convert the model: {msg[0][:200] if msg else type(exc).__name__}"
        ) from None


def export_openvino(
    model: Any,
    out_path: str | Path,
    samples: np.ndarray,
    *,
    precision: str = "fp32",
    static: bool = False,
    size: Optional[int] = None,
    calibration: Optional[list[np.ndarray]] = None,
    metadata: Optional[dict] = None,
    onnx_path: Optional[str | Path] = None,
    reference: Optional[Callable[[np.ndarray], np.ndarray]] = None,
    max_drop: Optional[float] = None,
    targets: Optional[list[np.ndarray]] = None,
    trained: bool = False,
) -> dict:
    """Write the OpenVINO IR of ``model`` at ``out_path`` (``.xml``; ``.bin`` beside it) and return its record.

    ``model``: a torch module (converted with ``openvino.convert_model``; also the parity reference) or None with
    ``onnx_path`` and ``reference``. ``samples``: (N, C, H, W) float32 in [-1, 1], the parity inputs.
    ``precision``: fp32, fp16 (compressed weights) or int8 (NNCF post-training quantisation of the FP32 IR on
    ``calibration``; with ``max_drop`` (dB of PSNR against FP32), NNCF's accuracy-controlled quantisation, which
    keeps the layers that cost most in floating point). ``trained``: a quantisation-aware student's INT8, read
    from its QDQ file ``onnx_path`` as it is (Q/DQ pairs become FakeQuantize nodes). Raises :class:`ExportError` when parity fails; the file is
    renamed into place only after the checks pass.
    """
    import openvino as ov

    if precision not in PARITY:
        raise UserError(f"precision: OpenVINO exports fp32, fp16 or int8, not {precision!r}")
    t0 = time.perf_counter()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    samples = np.asarray(samples, dtype=np.float32)
    n, c, h, w = samples.shape
    shape = (1, c, size or h, size or w) if static else None
    if reference is None:
        if model is None:
            raise UserError("OpenVINO export needs the PyTorch model (or a reference function) for parity")
        reference = _torch_reference(model)
    ref_out = [reference(samples[i : i + 1]) for i in range(n)]

    source = onnx_path if onnx_path is not None else model
    fp32_model = convert(source, samples[:1], shape)
    if static:
        fp32_model.reshape({fp32_model.inputs[0]: ov.PartialShape(list(shape))})
    for k, v in (metadata or {}).items():
        fp32_model.set_rt_info(str(v), ["model_info", "compressor", str(k)])
    fp32_model.set_rt_info("[-1, 1]", ["model_info", "compressor", "value_range"])
    fp32_model.set_rt_info(str(size or h), ["model_info", "compressor", "input_size"])

    record: dict = {"path": out_path.name, "precision": precision, "static": bool(static)}
    tmp_dir = temp_dir(out_path.parent)  # fresh and exclusive: the IR pair is written by name inside it
    try:
        tmp_xml = tmp_dir / out_path.name
        if precision == "int8" and trained:  # the QDQ file's FakeQuantize nodes as they are
            _save_trained(fp32_model, tmp_xml, record)
        elif precision == "int8":
            if not calibration:
                raise UserError("OpenVINO INT8 needs calibration images (--data FOLDER, or export a run)")
            q = quantize(fp32_model, calibration, samples, ref_out, max_drop, targets)
            record.update(q.pop("record"))
            ov.save_model(q["model"], tmp_xml, compress_to_fp16=False)
        else:
            ov.save_model(fp32_model, tmp_xml, compress_to_fp16=precision == "fp16")
        runner = compile_ir(tmp_xml, precision if precision == "fp32" else "default")
        req = runner.create_infer_request()
        outs = []
        for i in range(n):
            req.infer({0: samples[i : i + 1]})
            outs.append(np.array(req.get_output_tensor(0).data, copy=True))
        par = compare(ref_out, outs)
        record["parity"] = {**par, "limit": PARITY[precision], "against": "pytorch"}
        _check(par, precision, str(out_path))
        _rename_ir(tmp_xml, out_path)
    finally:
        remove_tree(tmp_dir)
    record["bytes"] = out_path.stat().st_size + out_path.with_suffix(".bin").stat().st_size
    record["seconds"] = round(time.perf_counter() - t0, 2)
    return record


def _pads_on_int8(qdq: Path, folder: Path) -> Path:
    """A copy of a QDQ file with each convolution's input quantised before its padding too
    (:func:`~compressor.exporters.quantize.quantize_before_pad`: the same values), so that OpenVINO pads INT8 data
    as it does in NNCF's files; ONNX Runtime runs the file as it is written."""
    import onnx

    proto = onnx.load(str(qdq))
    quantize_before_pad(proto)
    out = folder / qdq.name
    onnx.save(proto, str(out))
    return out


def _save_trained(model, xml: Path, record: dict) -> None:
    """The IR of a quantisation-aware student's INT8 ONNX: its Q/DQ pairs read as FakeQuantize nodes, nothing
    calibrated again."""
    import openvino as ov

    record.update(method="trained scales (quantisation-aware distillation)", quantization="qad")
    ov.save_model(model, xml, compress_to_fp16=False)


def _torch_reference(model) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    model = model.eval().cpu()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).float().numpy()

    return run


def quantize(
    fp32_model,
    calibration: list[np.ndarray],
    samples: np.ndarray,
    fp32_out: list[np.ndarray],
    max_drop: Optional[float] = None,
    targets: Optional[list[np.ndarray]] = None,
) -> dict:
    """NNCF post-training INT8 of an ``ov.Model``: ``{"model", "record"}``.

    With ``max_drop`` (dB), NNCF's accuracy-controlled mode: the validation metric is the mean PSNR of the model's
    output on ``samples`` against ``targets`` (the teacher's outputs for a run; else the FP32 outputs, where the
    FP32 model's own PSNR is capped at 60 dB), and NNCF keeps in floating point the layers that cost most until the
    INT8 model is within ``max_drop`` dB of the FP32 one."""
    import nncf

    calib = nncf.Dataset([np.asarray(x, dtype=np.float32) for x in calibration])
    preset = nncf.QuantizationPreset.MIXED  # asymmetric activations: generators' outputs are not centred
    t0 = time.perf_counter()
    rec: dict = {"calibration_images": len(calibration), "method": "nncf.quantize", "preset": "mixed"}
    if max_drop is None:
        q = nncf.quantize(fp32_model, calib, preset=preset, subset_size=len(calibration))
    else:
        targets = targets if targets is not None else fp32_out
        val = nncf.Dataset([(samples[i : i + 1], targets[i]) for i in range(len(samples))])

        def validate(compiled, items) -> float:
            req = compiled.create_infer_request()
            vals = []
            for x, ref in items:
                req.infer({0: x})
                vals.append(min(60.0, psnr(ref, np.array(req.get_output_tensor(0).data))))
            return float(np.mean(vals))

        q = nncf.quantize_with_accuracy_control(
            fp32_model,
            calib,
            val,
            validation_fn=validate,
            max_drop=float(max_drop),
            drop_type=nncf.DropType.ABSOLUTE,
            preset=preset,
            subset_size=len(calibration),
        )
        rec.update(method="nncf.quantize_with_accuracy_control", max_drop_db=float(max_drop))
    rec["quantize_seconds"] = round(time.perf_counter() - t0, 2)
    return {"model": q, "record": rec}


def int8_ir(onnx_path: str | Path, xml: str | Path, calibration: list[np.ndarray]) -> dict:
    """NNCF's post-training INT8 IR of an FP32 ONNX file, as the export makes it (:func:`quantize`, the mixed
    preset) but without its parity check: for timing a file whose accuracy nobody reads (a latency plan's
    candidates). Returns the quantisation record."""
    import openvino as ov

    xml = Path(xml)
    with contextlib.redirect_stdout(io.StringIO()):  # NNCF's progress bars: a plan quantises a hundred of these
        q = quantize(convert(onnx_path), calibration, np.zeros(0, np.float32), [])
    tmp = xml.with_name(f".{xml.stem}.tmp.xml")
    ov.save_model(q["model"], str(tmp), compress_to_fp16=False)
    _rename_ir(tmp, xml)
    return q["record"]


def export_ir(req: Request) -> dict:
    """The row's exporter: :func:`export_openvino` from the FP32 ONNX file this export wrote (``req.source``, unless
    the files are static), else from the PyTorch model. A quantisation-aware student's INT8 is read from its own
    INT8 ONNX file (``req.source``: the QDQ file of its trained scales)."""
    if getattr(req.model, "quantized", False):
        if req.precision != "int8" or req.source is None:
            raise UserError("a quantisation-aware student exports to OpenVINO as INT8, from its INT8 ONNX file")
        folder = temp_dir(req.path.parent)
        try:
            rec = export_openvino(
                req.model,
                req.path,
                req.samples_array(),
                precision="int8",
                static=req.static,
                size=req.size,
                metadata=req.metadata,
                onnx_path=_pads_on_int8(req.source, folder),
                trained=True,
            )
        finally:
            remove_tree(folder)
        keep = {k: v for k, v in rec.items() if k not in ("path", "bytes", "precision", "parity", "seconds")}
        return record(req.path, "openvino", "int8", parity=rec["parity"], seconds=rec["seconds"], **keep)
    rec = export_openvino(
        req.model,
        req.path,
        req.samples_array(),
        precision=req.precision,
        static=req.static,
        size=req.size,
        calibration=req.calibration,
        metadata=req.metadata,
        onnx_path=None if req.static else req.source,
        max_drop=req.option("max_drop"),
    )
    keep = {k: v for k, v in rec.items() if k not in ("path", "bytes", "precision", "parity", "seconds")}
    return record(req.path, "openvino", req.precision, parity=rec["parity"], seconds=rec["seconds"], **keep)


_EXTRA = "pip install 'compressor[openvino]'"

FORMAT = Format(
    "openvino",
    ".xml",
    ("fp32", "fp16", "int8"),
    export_ir,
    trained_int8=True,
    backends=(
        Backend(
            "openvino",
            "compressor.exporters.formats.openvino:OpenVINORunner",
            "openvino",
            "cpu",
            ("fp32", "fp16", "int8"),
            ("openvino",),
            _EXTRA,
            plan=True,
            devices=("gpu", "npu"),
            variants=("fp16", "int8"),
            reads=("onnx",),
            help="OpenVINO (CPU; --device gpu|npu where present)",
        ),
    ),
    requires=("openvino", "nncf"),
    extra=_EXTRA,
    source="onnx",
    order=20,
    help="OpenVINO IR (FP16 weights; INT8 by NNCF, --max-drop for its accuracy control)",
)
