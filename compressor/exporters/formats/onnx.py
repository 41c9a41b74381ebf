"""ONNX: export, full checker, optional slimming, metadata, parity against PyTorch in ONNX Runtime, ONNX Runtime
INT8 (QDQ, from the FP32 file), and the format's row with its three ONNX Runtime backends (CPU, CUDA and TensorRT
execution providers; their Runner is :class:`compressor.exporters.runtimes.OrtRunner`).

torch's dynamo exporter writes one self-contained file (``external_data=False``; models under 2 GB). The batch
axis is always dynamic; H/W are dynamic on request, and the size rule (a multiple of the model's
``size_multiple``: 4 for ResNets, 2**num_downs for U-Nets) is recorded in the metadata, since the graph
accepts any size but only those give the same-size output.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
from torch.export import Dim

from compressor.errors import ExportError, UserError
from compressor.io import DiskWriteError, atomic_write_text, read_bounded, staged, temp_file
from compressor.lazy import onnx
from compressor.models import size_multiple
from compressor.version import __version__

from ..quantize import compare_int8, compare_outputs, quantize_onnx, unsigned_activations
from ..records import record
from ..rows import INPUT, OUTPUT, Backend, Format, Request
from ..runtimes import ORT_CPU, ORT_CUDA, ORT_TRT, ort_session

log = logging.getLogger(__name__)


def _quiet_export():
    @contextlib.contextmanager
    def cm():
        prev = logging.root.manager.disable
        logging.disable(logging.WARNING)
        buf = io.StringIO()
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
                warnings.simplefilter("ignore")
                yield
        finally:
            logging.disable(prev)

    return cm()


def _rename_dims(model_proto, names: dict[int, str]) -> None:
    """Give the symbolic input dims readable names, consistently across the graph."""
    dims = model_proto.graph.input[0].type.tensor_type.shape.dim
    mapping = {dims[i].dim_param: new for i, new in names.items() if i < len(dims) and dims[i].dim_param}
    if not mapping:
        return
    for vi in list(model_proto.graph.input) + list(model_proto.graph.output) + list(model_proto.graph.value_info):
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param in mapping:
                d.dim_param = mapping[d.dim_param]


def _os_error(exc: BaseException) -> Optional[OSError]:
    """The OSError (disk full, permissions) behind an exporter's exception, if there is one."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _staging(path: Path) -> Path:
    """A fresh, exclusively created temporary name next to ``path`` (nothing there is followed or overwritten)."""
    return temp_file(path)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    example: torch.Tensor,
    dynamic=("batch",),
    opset: int = 18,
    metadata: Optional[dict] = None,
    slim: bool = False,
) -> Path:
    """Export ``model`` to a single ONNX file with the named dynamic axes and metadata. The file is written under
    a temporary name, checked, then renamed over ``path``: a failed export leaves an earlier file as it was."""
    path = Path(path)
    tmp = _export_staged(model, path, example, dynamic, opset, metadata, slim)
    _place(tmp, path)
    return path


def _place(tmp: Path, path: Path) -> None:
    try:
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DiskWriteError(f"{path}: write failed ({exc.strerror or exc}); earlier artifacts are intact") from None


def _export_staged(
    model: nn.Module,
    path: Path,
    example: torch.Tensor,
    dynamic,
    opset: int,
    metadata: Optional[dict],
    slim: bool,
) -> Path:
    """Export and check into a temporary file next to ``path``; returns it (the caller renames or removes it)."""
    model = model.eval().cpu()
    axes = {0: Dim("batch", min=1, max=4096)} if "batch" in dynamic else {}
    if "hw" in dynamic:
        axes.update({2: Dim.DYNAMIC, 3: Dim.DYNAMIC})
    tmp = _staging(path)
    try:
        with _quiet_export():
            torch.onnx.export(
                model,
                (example.cpu(),),
                str(tmp),
                dynamo=True,
                external_data=False,
                dynamic_shapes=(axes,) if axes else None,
                input_names=[INPUT],
                output_names=[OUTPUT],
                opset_version=opset,
            )
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types
        tmp.unlink(missing_ok=True)
        disk = _os_error(exc)
        if disk is not None:
            raise DiskWriteError(
                f"{path}: write failed ({disk.strerror or disk}); earlier artifacts are intact"
            ) from None
        raise ExportError(
            f"{path}: torch.onnx.export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        ) from None
    try:
        proto = onnx.load(str(tmp))
        _rename_dims(proto, {0: "batch", 2: "height", 3: "width"})
        meta = {"layout": "NCHW", "value_range": "[-1, 1]", "dtype": "float32", **(metadata or {})}
        del proto.metadata_props[:]
        for k, v in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = str(k), v if isinstance(v, str) else json.dumps(v)
        if slim:
            try:
                import onnxslim

                proto = onnxslim.slim(proto)
            except ImportError:
                raise UserError("export.onnx.slim needs onnxslim: pip install onnxslim") from None
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DiskWriteError(f"{path}: write failed ({exc.strerror or exc}); earlier artifacts are intact") from None
    except onnx.checker.ValidationError as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"{path}: the ONNX checker rejects the export ({str(exc).splitlines()[0][:200]})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def read_metadata(path: str | Path) -> dict:
    proto = onnx.load(str(path), load_external_data=False)
    out = {}
    for p in proto.metadata_props:
        try:
            out[p.key] = json.loads(p.value)
        except json.JSONDecodeError:
            out[p.key] = p.value
    return out


FLAT = 1e-3  # an input whose every channel spans less than this is flat (a constant colour)


def _flat(x: torch.Tensor) -> bool:
    """Whether every image of ``x`` is constant per channel. Instance normalisation divides such an input by
    sqrt(eps) (~316 times), so rounding noise, not the export, decides the difference there."""
    flat = x.flatten(2)
    return bool(((flat.amax(-1) - flat.amin(-1)) < FLAT).all())


def parity(model: nn.Module, onnx_path: str | Path, inputs: list[torch.Tensor], tol: float = 1e-4) -> dict:
    """Polygraphy-style comparison: the same inputs through PyTorch and ONNX Runtime, max abs error each.

    Flat inputs (every channel one colour) are not judged, with a note: through instance normalisation they
    compare rounding noise amplified ~300 times. Where every input is flat, a seeded random image of the same
    shape stands in, so the export is still compared."""
    sess = ort_session(onnx_path)
    model = model.eval().cpu()
    cases, notes = [], []
    judged = [x for x in inputs if not _flat(x)]
    if len(judged) < len(inputs):
        notes.append(
            f"{len(inputs) - len(judged)} flat parity input(s) (constant per channel) not judged: instance "
            f"normalisation amplifies rounding noise there"
        )
    if not judged:
        g = torch.Generator().manual_seed(0)
        judged = [torch.rand(inputs[0].shape, generator=g) * 2 - 1]
        notes.append("a seeded random image of the same shape compared instead")
    for x in judged:
        with torch.no_grad():
            ref = model(x).numpy()
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        err = float(np.abs(ref - got).max()) if ref.shape == got.shape else float("inf")
        if err != err:  # NaN on either side
            err = float("inf")
        cases.append({"shape": list(x.shape), "max_abs": err, "passed": err <= tol})
    worst = max(c["max_abs"] for c in cases)
    out = {"tolerance": tol, "max_abs": worst, "passed": worst <= tol, "cases": cases}
    if notes:
        out["notes"] = notes
    return out


def failed_marker(path: Path) -> Path:
    return path.with_name(path.name + ".failed")


def check_not_failed(path: Path) -> None:
    marker = failed_marker(Path(path))
    if marker.exists() or marker.is_symlink():
        try:  # a marker from elsewhere may be anything: a plain file's first KiB at most
            text = read_bounded(marker, 1024, head=True).decode("utf-8", "replace").strip()
        except UserError:
            text = ""
        first = "".join(c for c in (text.splitlines() or [""])[0] if c.isprintable()).strip()
        reason = first[:200] or "unknown"
        raise UserError(f"{path}: this export failed its checks ({reason}); re-export before using it")


def rejected_path(path: Path) -> Path:
    """Where an export that failed its checks is kept for inspection (``student.rejected.onnx``)."""
    return path.with_name(f"{path.stem}.rejected{path.suffix}")


def export_checked(
    model: nn.Module,
    path: Path,
    inputs: list[torch.Tensor],
    dynamic,
    opset: int,
    tol: float,
    metadata: dict,
    slim: bool = False,
) -> dict:
    """Export, check and compare under a temporary name; only an export that passed replaces ``path``.

    On a parity failure the candidate is kept as ``<stem>.rejected.onnx`` and ExportError is raised; an earlier
    ``path`` stays as it was (and usable). Without an earlier file a ``.failed`` marker records the failure."""
    path = Path(path)
    marker = failed_marker(path)
    tmp = _export_staged(model, path, inputs[0], dynamic, opset, metadata, slim)
    try:
        result = parity(model, tmp, inputs, tol)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if not result["passed"]:
        bad = max(result["cases"], key=lambda c: c["max_abs"])
        rejected = rejected_path(path)
        _place(tmp, rejected)
        kept = "; the earlier file is kept" if path.exists() else ""
        msg = (
            f"{path}: ONNX Runtime differs from PyTorch by {result['max_abs']:.3g} (tolerance {tol:g}) at input "
            f"shape {bad['shape']} (the export is kept as {rejected.name}{kept})"
        )
        if not path.exists():
            atomic_write_text(marker, msg + "\n")
        raise ExportError(msg)
    _place(tmp, path)
    marker.unlink(missing_ok=True)
    rejected_path(path).unlink(missing_ok=True)
    return result


def parity_inputs(model: nn.Module, samples: torch.Tensor, size: int, dynamic) -> list[torch.Tensor]:
    """Real samples, plus a second batch size (3) and, with dynamic H/W, a second valid size."""
    c = samples.shape[1]
    g = torch.Generator().manual_seed(0)
    inputs = [samples[:1]]
    if "batch" in dynamic:
        third = samples[:3] if len(samples) >= 3 else torch.rand(3, c, size, size, generator=g) * 2 - 1
        inputs.append(third)
    if "hw" in dynamic:
        m = size_multiple(model)
        other = size + m if size + m <= 2 * size else size * 2
        other = max(m, (other // m) * m)
        inputs.append(torch.rand(2, c, other, other, generator=g) * 2 - 1)
    return inputs


# ------------------------------------------------------------------------------------------------ the row


def dynamic_axes(req: Request) -> list[str]:
    """The dynamic axes of the file: none when static, else the batch and those asked for (``hw``)."""
    if req.static:
        return []
    return ["batch"] + [d for d in req.option("dynamic", ("batch",)) if d != "batch"]


def export_metadata(model: nn.Module, req: Request) -> dict:
    """The ONNX metadata: producer, size rule and the caller's extras (recipe hash, width)."""
    mult = size_multiple(model)
    return {
        "producer": "compressor",
        "toolkit_version": __version__,
        "size_rule": f"H and W multiples of {mult}"
        if "hw" in dynamic_axes(req)
        else f"H = W = {req.size}" + (", batch 1" if req.static else ""),
        "value_range": "[-1, 1]",
        "size_multiple": mult,
        "input_size": req.size,
        **req.metadata,
    }


ONNX_INT8_PSNR_MIN = 20.0  # ONNX Runtime INT8 against FP32 (dB): below it the export fails


def export_fp32(req: Request) -> dict:
    """The FP32 file, with parity against PyTorch over several batch sizes (and sizes, with dynamic H/W)."""
    model = req.model.eval().cpu()
    samples = torch.from_numpy(req.samples_array())
    dyn = dynamic_axes(req)
    par = export_checked(
        model,
        req.path,
        parity_inputs(model, samples, req.size, dyn),
        dyn,
        req.option("opset", 18),
        req.option("parity_tol", 1e-4),
        export_metadata(model, req),
        req.option("slim", False),
    )
    return record(req.path, "onnx", "fp32", parity={**par, "against": "pytorch"}, static=bool(req.static))


def export_int8(req: Request, target: str = "cpu") -> dict:
    """INT8 (QDQ) of the FP32 file ``req.source`` for ``target``: ONNX Runtime on the CPU (unsigned activations) or
    TensorRT (symmetric signed INT8), compared with the FP32 file on the samples; ExportError below
    :data:`ONNX_INT8_PSNR_MIN`."""
    if not req.calibration:
        raise UserError("INT8 needs calibration images (the recipe's data, or --data FOLDER)")
    with staged(req.path) as tmp:  # compared under a temporary name: the file and its record appear together
        quantize_onnx(req.source, tmp, req.calibration, target)
        cmp = compare_int8(req.source, tmp, torch.from_numpy(req.samples_array()))
        if cmp["psnr_min"] < ONNX_INT8_PSNR_MIN:
            raise ExportError(
                f"{req.path}: INT8 PSNR against FP32 is {cmp['psnr_min']:.1f} dB (limit {ONNX_INT8_PSNR_MIN})"
            )
    par = {
        "psnr_min": cmp["psnr_min"],
        "psnr_mean": cmp["psnr_vs_fp32"],
        "limit": {"psnr_min": ONNX_INT8_PSNR_MIN},
        "against": "onnx fp32",
    }
    latency = {k: cmp[k] for k in ("latency_ms_fp32", "latency_ms_int8", "latency_ratio_int8_over_fp32")}
    return record(
        req.path, "onnx", "int8", parity=par, calibration_images=len(req.calibration), target=target, **latency
    )


# ONNX Runtime's INT8 kernels against the fake-quantised PyTorch model they were converted from (dB): the same
# quantisation steps, so the two differ only by rounding inside the integer kernels
QAD_PSNR_MIN = 30.0


def export_trained_int8(req: Request) -> dict:
    """INT8 (QDQ) of a quantisation-aware student (``req.model.quantized``): its trained scales and zero points as
    they are, no calibration; activations written as UINT8 (the same values, ONNX Runtime's U8S8 kernels); checked
    in ONNX Runtime against the fake-quantised model, and against the FP32 file ``req.source`` where there is
    one."""
    qmodel = req.model.eval()
    samples = torch.from_numpy(req.samples_array())
    dyn = dynamic_axes(req)
    meta = {**export_metadata(qmodel, req), "quantization": "trained (quantisation-aware distillation)"}
    tmp = _export_staged(qmodel.convert(), req.path, samples[:1], dyn, req.option("opset", 18), meta, False)
    try:
        proto = onnx.load(str(tmp))
        rewritten = unsigned_activations(proto)
        onnx.save(proto, str(tmp))
        cmp = compare_outputs(qmodel, tmp, samples)
        vs_fp32 = compare_int8(req.source, tmp, samples) if req.source is not None else {}
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if cmp["psnr_min"] < QAD_PSNR_MIN:
        tmp.unlink(missing_ok=True)
        raise ExportError(
            f"{req.path}: ONNX Runtime INT8 differs from the fake-quantised student: PSNR {cmp['psnr_min']:.1f} dB "
            f"(limit {QAD_PSNR_MIN})"
        )
    _place(tmp, req.path)
    par = {**cmp, "limit": {"psnr_min": QAD_PSNR_MIN}, "against": "pytorch fake-quantised"}
    extra = {k: vs_fp32[k] for k in ("psnr_vs_fp32", "latency_ms_fp32", "latency_ms_int8") if k in vs_fp32}
    return record(
        req.path,
        "onnx",
        "int8",
        parity=par,
        quantization="qad",
        unsigned_activations=rewritten,
        target="cpu",
        **extra,
    )


def export_file(req: Request) -> dict:
    """The ONNX row's exporter: FP32 from the model, INT8 from the FP32 file (or, for a quantisation-aware
    student, from its trained scales)."""
    if req.precision == "fp32":
        return export_fp32(req)
    return export_trained_int8(req) if getattr(req.model, "quantized", False) else export_int8(req)


_ORT = "compressor.exporters.runtimes:OrtRunner"
_GPU = "(on a machine with an NVIDIA GPU)"


def _ort(name: str, device: str, providers: tuple, extra: str, help: str) -> Backend:
    return Backend(
        name,
        _ORT,
        "onnx",
        device,
        ("fp32", "int8"),
        ("onnxruntime",),
        extra,
        plan=True,
        variants=("int8",),
        options=(("providers", providers),),
        help=help,
    )


FORMAT = Format(
    "onnx",
    ".onnx",
    ("fp32", "int8"),
    export_file,
    trained_int8=True,
    backends=(
        _ort("ort-cpu", "cpu", ORT_CPU, "pip install onnxruntime", "ONNX Runtime on the CPU"),
        _ort("ort-cuda", "cuda", ORT_CUDA, f"pip install onnxruntime-gpu {_GPU}", "ONNX Runtime, CUDA provider"),
        _ort(
            "ort-trt",
            "cuda",
            ORT_TRT,
            f"pip install onnxruntime-gpu with TensorRT {_GPU}",
            "ONNX Runtime, TensorRT provider",
        ),
    ),
    requires=("onnx",),
    extra="pip install onnx",
    source="onnx",
    source_required=True,
    order=10,
    help="ONNX (parity against PyTorch in ONNX Runtime); INT8: QDQ for ONNX Runtime on the CPU",
)
