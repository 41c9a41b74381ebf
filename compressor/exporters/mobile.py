"""What the phone and board formats share: the row shape (:func:`static_format`), the course of an export
(:class:`StaticExport`: parity against PyTorch, file names, metadata, safe writes), and the ``ConvTranspose2d``
rewrite LiteRT needs.

Each format lives in its own module of ``formats/`` (``executorch``, ``litert``, ``ncnn``, ``coreml``) with one
exporter, ``export_<fmt>(request) -> record``, one Runner and its row. An exporter writes to a temporary name, runs
the file in the format's own runtime on the sample images, compares with PyTorch and renames only after the check
passes: a failed export never replaces a good file. The temporary name is fresh and exclusive
(:func:`compressor.io.temp_file`, :func:`compressor.io.temp_dir`).

Mobile formats are static: batch 1 and the export size (H = W), recorded in the artifact's metadata where the
format has metadata, with the value range at the file's edges ([-1, 1]) and the teacher's native range.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from compressor.errors import ExportError, UserError, require
from compressor.io import staged
from compressor.models import input_channels
from compressor.version import __version__

from .records import record as file_record
from .rows import Backend, Format, Request

FP32_MAX_ABS = 1e-3  # FP32 artifact vs PyTorch, max abs over [-1, 1] images
MIN_PSNR = 30.0  # FP16 / INT8 artifact vs PyTorch FP32, dB (peak-to-peak 2)
EXTRA = "pip install 'compressor[mobile]'"

Images = Union[torch.Tensor, Sequence[np.ndarray], np.ndarray]


def need(module: str, purpose: str):
    """Import an optional runtime or converter, or raise one line naming the extra that adds it."""
    return require(module, "mobile", purpose)


def variant_path(out_path: Path, precision: str, suffix: str, default: str = "fp32") -> Path:
    """``student.pte`` -> ``student.int8.pte`` (the format's ``default`` precision keeps the plain name)."""
    out_path = Path(out_path)
    name = out_path.name[: -len(suffix)] if out_path.name.endswith(suffix) else out_path.stem
    if name.endswith(f".{precision}"):  # already tagged (the export formats table's file name)
        name = name[: -len(precision) - 1]
    return out_path.with_name(f"{name}{'' if precision == default else '.' + precision}{suffix}")


def as_batches(images: Optional[Images]) -> list[np.ndarray]:
    """(1, C, H, W) float32 arrays from a tensor (N, C, H, W), an array, or a list of arrays."""
    if images is None:
        return []
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if isinstance(images, np.ndarray):
        images = [images[i : i + 1] for i in range(images.shape[0])] if images.ndim == 4 else [images[None]]
    return [np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape((1,) + tuple(x.shape[-3:]))) for x in images]


def prepare(model: nn.Module, samples: Images, size: Optional[int]) -> tuple[nn.Module, list[np.ndarray], int]:
    """The model in eval mode on the CPU, the samples as batch-1 arrays, and the (static) size."""
    batches = as_batches(samples)
    if not batches:
        raise UserError("export: sample images are needed for the parity check")
    h, w = batches[0].shape[-2:]
    if h != w:
        raise UserError(f"export: mobile formats take square images (H = W); samples are {h}x{w}")
    if size is not None and size != h:
        raise UserError(f"--size: {size} differs from the sample images' size {h}")
    return model.eval().cpu(), batches, int(h)


def torch_outputs(model: nn.Module, batches: list[np.ndarray]) -> list[np.ndarray]:
    with torch.inference_mode():
        return [model(torch.from_numpy(x)).float().numpy() for x in batches]


def psnr(ref: np.ndarray, out: np.ndarray) -> float:
    """PSNR in dB of two images in [-1, 1] (peak-to-peak 2)."""
    mse = float(np.mean((ref.astype(np.float64) - out.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(4.0 / mse))


def parity(refs: list[np.ndarray], outs: list[np.ndarray]) -> dict:
    """Max abs error and the worst image's PSNR of ``outs`` against ``refs``."""
    for r, o in zip(refs, outs):
        if r.shape != o.shape:
            raise ExportError(f"the runtime returned shape {tuple(o.shape)}, PyTorch {tuple(r.shape)}")
    psnrs = [psnr(r, o) for r, o in zip(refs, outs)]
    return {
        "max_abs": float(max(np.abs(r.astype(np.float64) - o).max() for r, o in zip(refs, outs))),
        "mean_abs": float(np.mean([np.abs(r.astype(np.float64) - o).mean() for r, o in zip(refs, outs)])),
        "psnr_min": min(psnrs),
        "images": len(refs),
    }


def check(fmt: str, precision: str, par: dict, max_abs: float = FP32_MAX_ABS, min_psnr: float = MIN_PSNR) -> dict:
    """Add the limit to ``par`` and raise :class:`ExportError` (one line) when the artifact misses it."""
    if precision == "fp32":
        par["limit"] = f"max abs <= {max_abs:g}"
        ok = par["max_abs"] <= max_abs
        got = f"max abs error {par['max_abs']:.2e}"
    else:
        par["limit"] = f"PSNR >= {min_psnr:g} dB"
        ok = par["psnr_min"] >= min_psnr
        got = f"PSNR {par['psnr_min']:.1f} dB"
    if not ok or not np.isfinite(par["max_abs"]):
        raise ExportError(
            f"{fmt} {precision}: {got} against PyTorch misses the limit ({par['limit']}); file not written"
        )
    return par


def artifact_metadata(model: nn.Module, size: int, precision: str, layout: str, extra: Optional[dict]) -> dict:
    """String metadata every artifact carries where its format has metadata. ``extra``: the run's entries
    (recipe hash, width, the network's native ``network_input_range`` / ``network_output_range``)."""
    meta = {
        "producer": "compressor",
        "toolkit_version": __version__,
        "input_size": str(size),
        "input_shape": json.dumps(
            [1, input_channels(model), size, size] if layout == "NCHW" else [1, size, size, input_channels(model)]
        ),
        "layout": layout,
        "value_range": "[-1, 1]",
        "precision": precision,
        "static": "true",
    }
    for k, v in (extra or {}).items():
        meta[str(k)] = v if isinstance(v, str) else json.dumps(v)
    return meta


class StaticExport:
    """One phone or board file being written, as every static format's exporter goes about it: its runtime and
    converter importable (else one line naming the extra), ``precision`` one it writes, the model on the CPU, the
    samples as batch-1 arrays at one size, the PyTorch outputs to compare with, the file's name and metadata; then
    :meth:`write` (temporary name, check, rename) and :meth:`record`."""

    def __init__(self, req: Request, fmt: Format, modules: Sequence[str], layout: str = "NCHW"):
        for module in modules:
            need(module, f"the {fmt.name} export")
        if req.precision not in fmt.precisions:
            raise ValueError(f"{fmt.name} exports {', '.join(fmt.precisions)}, not {req.precision}")
        self.t0 = time.perf_counter()
        self.fmt, self.precision, self.layout = fmt.name, req.precision, layout
        self.model, self.batches, self.size = prepare(req.model, req.samples, req.size)
        self.path = variant_path(req.path, req.precision, fmt.suffix, default=fmt.precisions[0])
        self.meta = artifact_metadata(self.model, self.size, req.precision, layout, req.metadata)
        self.calibration = as_batches(req.calibration)
        self.limits = {"max_abs": FP32_MAX_ABS, "min_psnr": MIN_PSNR, **req.limits}
        if req.precision in fmt.calibrated:
            if not self.calibration:
                raise ValueError(f"{fmt.name} {req.precision} needs calibration images")
            self.meta["calibration_images"] = str(len(self.calibration))
        self._refs: Optional[list[np.ndarray]] = None

    @property
    def refs(self) -> list[np.ndarray]:
        """PyTorch's outputs on the samples (computed once)."""
        if self._refs is None:
            self._refs = torch_outputs(self.model, self.batches)
        return self._refs

    @property
    def example(self) -> torch.Tensor:
        return torch.from_numpy(self.batches[0])

    def converted(self, convert: Callable[[], object]):
        """``convert()``, a converter's own exception turned into one ExportError line."""
        try:
            return convert()
        except Exception as exc:  # noqa: BLE001 - torch.export and the converters raise many types
            raise ExportError(f"{self.fmt} {self.precision}: {first_line(exc)}") from None

    def check(self, outputs: list[np.ndarray], precision: Optional[str] = None) -> dict:
        """The parity of ``outputs`` against PyTorch, with its limit; ExportError when they miss it."""
        return check(self.fmt, precision or self.precision, parity(self.refs, outputs), **self.limits)

    def write(self, write: Callable[[Path], None], run: Callable[[Path], list[np.ndarray]]) -> dict:
        """``write(tmp)``; ``run(tmp)`` -> outputs; check; move into place; the parity."""
        return checked_write(self.fmt, self.path, self.precision, write, run, self.refs, **self.limits)

    def run_batches(self, runner) -> list[np.ndarray]:
        return [runner(b) for b in self.batches]

    def record(self, par: dict, **extra) -> dict:
        """The file's record: its parity against PyTorch, shape, layout and metadata."""
        c = input_channels(self.model)
        shape = [1, c, self.size, self.size] if self.layout == "NCHW" else [1, self.size, self.size, c]
        return file_record(
            self.path,
            self.fmt,
            self.precision,
            parity=par if par.get("compared") is False else {**par, "against": par.get("against", "pytorch")},
            seconds=time.perf_counter() - self.t0,
            input_shape=shape,
            layout=self.layout,
            metadata=self.meta,
            **extra,
        )


def static_format(
    name: str,
    suffix: str,
    precisions: tuple[str, ...],
    export: Callable[[Request], dict],
    runner: str,
    *,
    artifact: str,
    requires: tuple[str, ...],
    runs_with: tuple[str, ...],
    order: int,
    help: str,
    variants: Optional[tuple[str, ...]] = None,
    devices: tuple[str, ...] = (),
    runs_on: str = "",
    calibrated: tuple[str, ...] = ("int8",),
) -> Format:
    """The row of a phone or board format: batch 1 at one size, ``pip install 'compressor[mobile]'``, and one
    backend of the same name running its files (``artifact``: their kind) with ``runner`` (``"module:Class"``; it needs
    ``runs_with``)."""
    backend = Backend(
        name,
        runner,
        artifact,
        "cpu",
        precisions,
        runs_with,
        EXTRA + runs_on,
        devices=devices,
        variants=precisions[1:] if variants is None else variants,
        help=help,
    )
    return Format(
        name,
        suffix,
        precisions,
        export,
        backends=(backend,),
        requires=requires,
        extra=EXTRA,
        static_only=True,
        calibrated=calibrated,
        order=order,
        help=help,
    )


def checked_write(
    fmt: str,
    path: Path,
    precision: str,
    write: Callable[[Path], None],
    run: Callable[[Path], list[np.ndarray]],
    refs: list[np.ndarray],
    max_abs: float = FP32_MAX_ABS,
    min_psnr: float = MIN_PSNR,
) -> dict:
    """``write(tmp)``; ``run(tmp)`` -> outputs; check against ``refs``; move into place; return the parity.
    ``tmp`` is a fresh file made for this export (:func:`compressor.io.staged`), never a name found there."""
    with staged(path) as tmp:
        write(tmp)
        par = check(fmt, precision, parity(refs, run(tmp)), max_abs, min_psnr)
    return par


# ------------------------------------------------------------------------------------------------ rewrites


class CroppedConvTranspose2d(nn.Module):
    """``ConvTranspose2d(padding=p, output_padding=op)`` as ``ConvTranspose2d(padding=0)`` and a crop: the same
    numbers, in a form converters that refuse ``output_padding`` (LiteRT's MLIR legalisation) accept."""

    def __init__(self, ct: nn.ConvTranspose2d):
        super().__init__()
        self.conv = nn.ConvTranspose2d(
            ct.in_channels,
            ct.out_channels,
            ct.kernel_size,
            ct.stride,
            padding=0,
            output_padding=0,
            groups=ct.groups,
            bias=ct.bias is not None,
            dilation=ct.dilation,
        )
        self.conv.load_state_dict(ct.state_dict())
        self.pad = tuple(ct.padding)
        self.out_pad = tuple(ct.output_padding)

    def forward(self, x):
        y = self.conv(x)
        (ph, pw), (oh, ow) = self.pad, self.out_pad
        return y[:, :, ph : y.shape[2] - ph + oh, pw : y.shape[3] - pw + ow]


def without_output_padding(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` with every ``ConvTranspose2d`` that has ``output_padding`` replaced by
    :class:`CroppedConvTranspose2d`; and how many were replaced (0: the model itself is returned)."""
    names = [
        n
        for n, m in model.named_modules()
        if type(m) is nn.ConvTranspose2d and any(m.output_padding) and m.padding_mode == "zeros"
    ]
    if not names:
        return model, 0
    model = copy.deepcopy(model)
    for name in names:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, leaf, CroppedConvTranspose2d(getattr(parent, leaf)))
    return model.eval(), len(names)


def first_line(exc: BaseException, limit: int = 240) -> str:
    """The informative line of a converter's exception (MLIR diagnostics put it after the location)."""
    text = str(exc).strip() or type(exc).__name__
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    for l in lines:
        if "error:" in l:
            return l[l.index("error:") :][:limit]
    return lines[0][:limit] if lines else type(exc).__name__
