"""``compress export``: the options of the command, and a thin caller of :func:`exporters.export.export_model`.

A run folder is opened by :func:`compressor.stages.export_target` (it knows the run's recipe and data); student
folders and bare checkpoints are opened here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from compressor.data import FolderDataset
from compressor.errors import UserError
from compressor.models import apply_state_dict, build_generator, load_state_dict_file, size_multiple
from compressor.slim import load_student

from .export import ExportSpec, export_model, input_channels, write_record

log = logging.getLogger(__name__)


MAX_EXPORT_SIZE = 8192  # the largest side an export samples at (a 8192² float image is 800 MB)


@dataclass
class ExportOptions:
    """The options of ``compress export``."""

    onnx: bool = True
    trt: bool = False
    precision: str = "fp32"
    dynamic: tuple[str, ...] = ("batch",)
    opset: int = 18
    size: Optional[int] = None
    out: Optional[Path] = None
    emit_trtexec: bool = False
    trt_version: int = 10
    data: Optional[Path] = None
    calib_images: int = 32


def load_target(target: Path, arch: Optional[str], trust: bool) -> tuple[nn.Module, Path]:
    """(model, default output folder) for a student folder or a bare checkpoint."""
    target = Path(target)
    if target.is_dir() and (target / "student.json").exists():
        return load_student(target), target
    if target.is_file() and target.suffix in (".pth", ".pt", ".safetensors"):
        if not arch:
            raise UserError(f"{target}: a bare checkpoint needs --arch (a zoo name) to rebuild its architecture")
        build_generator(arch, init=None)  # an unknown zoo name fails here, before the file is read
        state = load_state_dict_file(target, trust=trust, key="export")
        norm_guess = "instance" if not any(k.endswith("running_mean") for k in state) else "batch"
        model = build_generator(arch, init=None, norm=norm_guess)
        apply_state_dict(model, state, source=str(target), key="export")
        return model.eval(), target.parent
    if not target.exists():
        raise UserError(f"{target}: not found")
    raise UserError(f"{target}: not a run folder, a student folder (student.json) or a .pth/.safetensors file")


def folder_images(data: Path, size: int, n: int) -> torch.Tensor:
    ds = FolderDataset(Path(data), size=size, train=False, max_items=n)
    if len(ds) == 0:
        raise UserError(f"--data: no images in {data}")
    return torch.stack([ds[i]["input"] for i in range(min(n, len(ds)))])


def export_command(
    model: nn.Module,
    out_dir: Path,
    options: ExportOptions,
    samples: Optional[torch.Tensor] = None,
    calibration: Optional[list[np.ndarray]] = None,
    metadata: Optional[dict] = None,
    parity_tol: float = 1e-4,
) -> dict:
    """Export ``model`` as the options ask; write ``export.json``; return the record with printable ``lines``."""
    mult = size_multiple(model)
    size = options.size or max(256, mult)
    if not 1 <= size <= MAX_EXPORT_SIZE:
        raise UserError(f"--size: {size} is outside 1..{MAX_EXPORT_SIZE}")
    if size % mult:
        raise UserError(f"--size: {size} is not a multiple of {mult}, which this model needs")
    lines = []
    if samples is None and options.data is not None:
        samples = folder_images(options.data, size, 3)
    if samples is None:
        in_nc = input_channels(model)
        samples = torch.rand(3, in_nc, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
        lines.append("note: no images given (--data); parity uses random inputs")
    int8 = options.precision == "int8"
    if int8 and calibration is None:
        if options.data is None:
            raise UserError("--precision int8 needs calibration images: pass --data FOLDER (or export a run)")
        calibration = [x[None].numpy() for x in folder_images(options.data, size, options.calib_images)]
    width = (getattr(model, "student_plan", None) or {}).get("width", 1.0)
    spec = ExportSpec(
        size=size,
        dynamic=list(options.dynamic),
        opset=options.opset,
        parity_tol=parity_tol,
        write_onnx=options.onnx,
        int8=int8,
        tensorrt=options.trt,
        precision=options.precision,
        trt_versions=(options.trt_version,),
        emit_trtexec=options.emit_trtexec,
        metadata=metadata if metadata is not None else {"recipe_hash": "", "width": width},
    )
    out_dir = Path(out_dir)
    rec = export_model(model, out_dir, spec, samples, calibration)
    for info in rec["onnx"].values():
        par = info["parity"]
        lines.append(
            f"wrote {out_dir / info['path']} (parity: max abs error {par['max_abs']:.2e} over "
            f"{len(par['cases'])} input shapes)"
        )
    for key in ("int8", "int8_tensorrt"):
        if key in rec:
            q = rec[key]
            lines.append(
                f"wrote {out_dir / q['path']} ({q['target']} INT8, {q['calibration_images']} calibration "
                f"images): PSNR vs FP32 {q['psnr_vs_fp32']:.1f} dB; latency {q['latency_ms_int8']:.2f} ms "
                f"vs {q['latency_ms_fp32']:.2f} ms FP32"
            )
    for lint in rec.get("tensorrt_lints", []):
        lines.append(f"TensorRT {lint['target']} lint of {lint['file']}: {lint['nodes']} nodes, no problems")
    if "tensorrt" in rec:
        res, par = rec["tensorrt"], rec["tensorrt"]["parity"]
        lines.append(
            f"wrote {out_dir / res['path']} (TensorRT {res['tensorrt_version']}, {options.precision}, {res['gpu']})"
        )
        lines.append(
            f"TensorRT vs ONNX Runtime: max abs {par['max_abs']:.2e}, PSNR {par['psnr_min']:.1f} dB "
            f"(limit {par['limit']}) - passed"
        )
    lines.extend(rec["notes"])
    for script in rec.get("trtexec", []):
        lines.append(f"wrote {out_dir / script}")
    path = write_record(out_dir / "export.json", rec)
    lines.append(f"wrote {path}")
    return {**rec, "lines": lines}
