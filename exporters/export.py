"""One export function for the pipeline's export stage and ``compress export``.

``export_model(model, out_dir, spec, samples, calibration) -> record``: a model, a folder, an
:class:`ExportSpec` and sample/calibration arrays in; ONNX (with parity against PyTorch), INT8 and TensorRT files
and one JSON-able record out. INT8 is produced for the target it will run on: ``<name>.int8.onnx`` (unsigned
activations, ONNX Runtime on the CPU) and ``<name>.trt-int8.onnx`` (symmetric signed INT8, TensorRT's explicit
quantisation). The TensorRT lint runs on every file TensorRT will read, and a failing lint stops the export.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

import compressor
from compressor.errors import ExportError, UserError
from compressor.io import atomic_write_json
from compressor.models import size_multiple

from .onnx import INPUT, export_checked, parity_inputs
from .quantize import compare_int8, quantize_onnx
from .tensorrt import build_engine, check_engine, emit_trtexec_script, lint_onnx, tensorrt_available, trt_major

log = logging.getLogger(__name__)

TRT_PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class ExportSpec:
    """What to export. The pipeline fills it from the recipe's ``export`` section, ``compress export`` from its
    options."""

    size: int  # the image size the model runs at (H = W)
    name: str = "student"  # file stem: <name>.onnx, <name>.int8.onnx, ...
    dynamic: list[str] = field(default_factory=lambda: ["batch"])
    opset: int = 18
    parity_tol: float = 1e-4
    slim: bool = False
    write_onnx: bool = True  # False: reuse an existing <name>.onnx
    int8: bool = False  # ONNX Runtime CPU INT8 (<name>.int8.onnx)
    tensorrt: bool = False  # lint for TensorRT; build an engine where TensorRT is installed
    precision: str = "fp32"  # TensorRT engine precision
    trt_versions: tuple[int, ...] = (10,)  # majors to lint for (and write trtexec scripts for)
    emit_trtexec: bool = False
    workspace_mb: int = 1024
    metadata: dict = field(default_factory=dict)

    @property
    def for_tensorrt(self) -> bool:
        return self.tensorrt or self.emit_trtexec


def default_profile(size: int, dynamic_hw: bool, mult: int, max_batch: int = 8, channels: int = 3) -> dict:
    """Optimisation profile (min/opt/max) for the dynamic axes of an NCHW image input."""
    lo = size if not dynamic_hw else max(mult, (size // 2) // mult * mult or mult)
    hi = size if not dynamic_hw else size * 2
    return {
        INPUT: {"min": [1, channels, lo, lo], "opt": [1, channels, size, size], "max": [max_batch, channels, hi, hi]}
    }


def input_channels(model: nn.Module, samples: Optional[torch.Tensor] = None) -> int:
    """Input channels: the samples' when given, else the model's config, else its first convolution's."""
    if samples is not None:
        return int(samples.shape[1])
    cfg = getattr(model, "config", None) or {}
    if "input_nc" in cfg:
        return int(cfg["input_nc"])
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            return int(m.in_channels)
    return 3


def export_metadata(model: nn.Module, spec: ExportSpec) -> dict:
    """The ONNX metadata: producer, size rule and the caller's extras (recipe hash, width)."""
    mult = size_multiple(model)
    return {
        "producer": "compressor",
        "toolkit_version": compressor.__version__,
        "size_rule": f"H and W multiples of {mult}" if "hw" in spec.dynamic else f"H = W = {spec.size}",
        "size_multiple": mult,
        "input_size": spec.size,
        **spec.metadata,
    }


def _lint_or_fail(path: Path, version: int) -> dict:
    lint = lint_onnx(path, version)
    rec = {"file": path.name, **lint.to_dict()}
    if not lint.ok:
        shown = "; ".join(f"{p['node']} ({p['op']}): {p['problem']}" for p in lint.problems[:3])
        more = f" and {len(lint.problems) - 3} more" if len(lint.problems) > 3 else ""
        raise ExportError(
            f"{path}: TensorRT {version} would reject this ONNX: {len(lint.problems)} problem(s): {shown}{more}"
        )
    return rec


def export_model(
    model: nn.Module,
    out_dir: str | Path,
    spec: ExportSpec,
    samples: torch.Tensor,
    calibration: Optional[list[np.ndarray]] = None,
) -> dict:
    """Export ``model`` into ``out_dir`` as ``spec`` asks and return the export record.

    ``samples``: a few images (N, C, H, W) in [-1, 1] for parity checks; ``calibration``: (1, C, H, W) arrays for
    INT8. Raises :class:`ExportError` on a parity or lint failure, :class:`UserError` on a request that cannot be
    met (INT8 without calibration images, an unknown precision).
    """
    if spec.precision not in TRT_PRECISIONS:
        raise UserError(f"precision: expected one of {', '.join(TRT_PRECISIONS)}, got {spec.precision!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    dynamic = list(spec.dynamic)
    if "batch" not in dynamic:
        dynamic = ["batch"] + dynamic
    mult = size_multiple(model)
    if spec.size % mult:
        raise UserError(f"size: {spec.size} is not a multiple of {mult}, which this model needs")
    onnx_path = out / f"{spec.name}.onnx"
    rec: dict = {"onnx": {}, "notes": []}
    if spec.write_onnx or not onnx_path.exists():
        par = export_checked(
            model,
            onnx_path,
            parity_inputs(model, samples, spec.size, dynamic),
            dynamic,
            spec.opset,
            spec.parity_tol,
            export_metadata(model, spec),
            spec.slim,
        )
        rec["onnx"][spec.name] = {"path": onnx_path.name, "bytes": onnx_path.stat().st_size, "parity": par}

    trt_int8 = spec.for_tensorrt and (spec.precision == "int8" or spec.int8)
    if (spec.int8 or trt_int8) and not calibration:
        raise UserError("INT8 needs calibration images (the recipe's data, or --data FOLDER)")
    if spec.int8:
        path = out / f"{spec.name}.int8.onnx"
        quantize_onnx(onnx_path, path, calibration, "cpu")
        rec["int8"] = {
            **compare_int8(onnx_path, path, samples),
            "path": path.name,
            "calibration_images": len(calibration),
            "target": "cpu",
        }
    trt_int8_path = out / f"{spec.name}.trt-int8.onnx"
    if trt_int8:
        quantize_onnx(onnx_path, trt_int8_path, calibration, "tensorrt")
        rec["int8_tensorrt"] = {
            **compare_int8(onnx_path, trt_int8_path, samples),
            "path": trt_int8_path.name,
            "calibration_images": len(calibration),
            "target": "tensorrt",
        }
    if not spec.for_tensorrt:
        return rec

    # TensorRT: lint what it will read, then build (where installed) and write the trtexec scripts
    available, why = tensorrt_available() if spec.tensorrt else (False, "")
    versions = sorted(set(spec.trt_versions) | ({trt_major()} if available else set()))
    engine_src = trt_int8_path if spec.precision == "int8" else onnx_path
    sources = [engine_src] + ([trt_int8_path] if trt_int8 and engine_src != trt_int8_path else [])
    rec["tensorrt_lints"] = [_lint_or_fail(src, v) for src in sources for v in versions]
    main_version = trt_major() if available else versions[0]
    rec["tensorrt_lint"] = next(
        x for x in rec["tensorrt_lints"] if x["file"] == engine_src.name and x["target"] == str(main_version)
    )
    shapes = default_profile(spec.size, "hw" in dynamic, mult, channels=input_channels(model, samples))
    if spec.tensorrt:
        if available:
            plan = out / f"{spec.name}.plan"
            rec["tensorrt"] = build_engine(
                onnx_path,
                plan,
                spec.precision,
                shapes,
                trt_int8_path if spec.precision == "int8" else None,
                workspace_mb=spec.workspace_mb,
            )
            rec["tensorrt"]["parity"] = check_engine(
                plan, onnx_path, [s[None].numpy() for s in samples], spec.precision
            )
        else:
            note = f"TensorRT engine skipped: {why}"
            rec["notes"].append(note)
            log.warning(note)
    if spec.emit_trtexec:
        rec["trtexec"] = [
            emit_trtexec_script(
                out, onnx_path, v, spec.precision, shapes, trt_int8_path if spec.precision == "int8" else None
            ).name
            for v in spec.trt_versions
        ]
    return rec


def write_record(path: str | Path, record: dict) -> Path:
    """Write an export record as ``export.json`` (the file ``compress report`` merges)."""
    atomic_write_json(Path(path), record)
    return Path(path)
