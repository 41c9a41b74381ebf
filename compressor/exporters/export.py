"""One export function for the pipeline's export stage and ``compress export``.

``export_model(model, out_dir, spec, samples, calibration) -> record``: a model, a folder, an
:class:`ExportSpec` and sample/calibration arrays in; ONNX (with parity against PyTorch), INT8 and TensorRT files
and one JSON-able record out. INT8 is produced for the target it will run on: ``<name>.int8.onnx`` (unsigned
activations, ONNX Runtime on the CPU) and ``<name>.trt-int8.onnx`` (symmetric signed INT8, TensorRT's explicit
quantisation). The TensorRT lint runs on every file TensorRT will read, and a failing lint stops the export.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn

from compressor.data import FolderDataset
from compressor.errors import ExportError, UserError
from compressor.io import staged
from compressor.models import apply_state_dict, build_generator, input_channels, load_state_dict_file, size_multiple
from compressor.slim import load_student
from compressor.version import __version__

from . import openvino as ov_export
from .onnx import INPUT, export_checked, parity_inputs
from .quantize import compare_int8, quantize_onnx
from .records import RecordFile
from .runtimes import BACKENDS
from .tensorrt import build_engine, check_engine, emit_trtexec_script, lint_onnx, tensorrt_available, trt_major

log = logging.getLogger(__name__)

TRT_PRECISIONS = ("fp32", "fp16", "int8")


MAX_EXPORT_SIZE = 8192  # the largest side an export samples at (a 8192² float image is 800 MB)


@dataclass
class ExportSpec:
    """What to export: the one record behind the pipeline's export stage (filled from the recipe's ``export``
    section) and ``compress export`` (filled from its options)."""

    size: Optional[int] = None  # the image size the model runs at (H = W); None: the run's, or 256
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
    static: bool = False  # every file fixed-shape: batch 1 at size x size
    formats: tuple[str, ...] = ("onnx",)  # rows of FORMATS to write (compress export --format)
    max_drop: Optional[float] = None  # OpenVINO INT8: NNCF accuracy control, largest PSNR drop (dB)
    out: Optional[Path] = None  # compress export --out (default: next to the input)
    data: Optional[Path] = None  # images for parity and INT8 calibration (compress export --data)
    calib_images: int = 32  # INT8 calibration images

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


def export_metadata(model: nn.Module, spec: ExportSpec) -> dict:
    """The ONNX metadata: producer, size rule and the caller's extras (recipe hash, width)."""
    mult = size_multiple(model)
    return {
        "producer": "compressor",
        "toolkit_version": __version__,
        "size_rule": f"H and W multiples of {mult}"
        if "hw" in spec.dynamic and not spec.static
        else f"H = W = {spec.size}" + (", batch 1" if spec.static else ""),
        "value_range": "[-1, 1]",
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
    journal: Optional[Callable[[dict], object]] = None,
) -> dict:
    """Export ``model`` into ``out_dir`` as ``spec`` asks and return the export record.

    ``samples``: a few images (N, C, H, W) in [-1, 1] for parity checks; ``calibration``: (1, C, H, W) arrays for
    INT8; ``journal(record)`` is called each time a file is in place (:meth:`exporters.records.RecordFile.write`
    keeps export.json true that way). Raises :class:`ExportError` on a parity or lint failure, :class:`UserError` on a request that cannot be
    met (INT8 without calibration images, an unknown precision).
    """
    if spec.precision not in TRT_PRECISIONS:
        raise UserError(f"precision: expected one of {', '.join(TRT_PRECISIONS)}, got {spec.precision!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    dynamic = [] if spec.static else list(spec.dynamic)
    if "batch" not in dynamic and not spec.static:
        dynamic = ["batch"] + dynamic
    mult = size_multiple(model)
    if spec.size % mult:
        raise UserError(f"size: {spec.size} is not a multiple of {mult}, which this model needs")
    onnx_path = out / f"{spec.name}.onnx"
    if not spec.write_onnx and onnx_path.is_symlink():
        raise UserError(
            f"{onnx_path}: is a symlink; --no-onnx converts the folder's own {onnx_path.name}, never a link's "
            f"target (remove the link, or export without --no-onnx)"
        )
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
    journal = journal or (lambda _: None)
    journal(rec)

    trt_int8 = spec.for_tensorrt and (spec.precision == "int8" or spec.int8)
    if (spec.int8 or trt_int8) and not calibration:
        raise UserError("INT8 needs calibration images (the recipe's data, or --data FOLDER)")
    trt_int8_path = out / f"{spec.name}.trt-int8.onnx"
    if spec.int8:
        _int8_file(rec, onnx_path, out / f"{spec.name}.int8.onnx", "cpu", samples, calibration)
        journal(rec)
    if trt_int8:
        _int8_file(rec, onnx_path, trt_int8_path, "tensorrt", samples, calibration)
        journal(rec)
    if spec.for_tensorrt:
        _tensorrt_files(rec, model, out, spec, samples, onnx_path, trt_int8_path, trt_int8, dynamic)
        journal(rec)
    return rec


def _int8_file(
    rec: dict, onnx_path: Path, path: Path, target: str, samples: torch.Tensor, calibration: list[np.ndarray]
) -> None:
    """Quantise ``onnx_path`` to ``path`` for ``target`` ("cpu" or "tensorrt") and record it with its comparison
    against FP32 under ``int8`` (cpu) or ``int8_tensorrt``."""
    with staged(path) as tmp:  # compared under a temporary name: the file and its record appear together
        quantize_onnx(onnx_path, tmp, calibration, target)
        cmp = compare_int8(onnx_path, tmp, samples)
    rec["int8" if target == "cpu" else "int8_tensorrt"] = {
        **cmp,
        "path": path.name,
        "calibration_images": len(calibration),
        "target": target,
    }


def _tensorrt_files(
    rec: dict,
    model: nn.Module,
    out: Path,
    spec: ExportSpec,
    samples: torch.Tensor,
    onnx_path: Path,
    trt_int8_path: Path,
    trt_int8: bool,
    dynamic: list[str],
) -> None:
    """TensorRT: lint what it will read, then build (where installed) and write the trtexec scripts."""
    available, why = tensorrt_available() if spec.tensorrt else (False, "")
    versions = sorted(set(spec.trt_versions) | ({trt_major()} if available else set()))
    engine_src = trt_int8_path if spec.precision == "int8" else onnx_path
    sources = [engine_src] + ([trt_int8_path] if trt_int8 and engine_src != trt_int8_path else [])
    rec["tensorrt_lints"] = [_lint_or_fail(src, v) for src in sources for v in versions]
    main_version = trt_major() if available else versions[0]
    rec["tensorrt_lint"] = next(
        x for x in rec["tensorrt_lints"] if x["file"] == engine_src.name and x["target"] == str(main_version)
    )
    shapes = default_profile(
        spec.size,
        "hw" in dynamic,
        size_multiple(model),
        max_batch=1 if spec.static else 8,
        channels=input_channels(model, samples),
    )
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


# ------------------------------------------------------------------------------------------------ formats
#
# One row per file format (ultralytics' export_formats() shape): its name, file suffix, exporter, the backend
# that runs it, its precisions, and whether it is fixed-shape only. Every exporter has the signature
#   export_<fmt>(model, out_path, samples, *, precision, static, size, calibration, metadata, **options) -> record
# and returns {path, bytes, precision, parity: {...}, seconds}; it raises ExportError (one line) when parity fails.


@dataclass(frozen=True)
class Format:
    name: str  # compress export --format NAME
    suffix: str  # file suffix; other precisions add ".<precision>" before it
    exporter: Callable[..., dict]
    backend: str  # the row of exporters.runtimes.BACKENDS that runs the file
    precisions: tuple[str, ...]
    requires: tuple[str, ...] = ()  # modules the exporter needs
    extra: str = ""  # what to pip install for it
    static_only: bool = False
    calibrated: tuple[str, ...] = ("int8",)  # precisions that need calibration images

    def path(self, out_dir: str | Path, stem: str, precision: str) -> Path:
        """``<stem><suffix>`` at fp32 (the torch row: its only precision), else ``<stem>.<precision><suffix>``."""
        tag = "" if precision == self.precisions[0] else f".{precision}"
        return Path(out_dir) / f"{stem}{tag}{self.suffix}"

    def missing(self) -> list[str]:
        return [m for m in self.requires if importlib.util.find_spec(m) is None]


def _np(samples) -> np.ndarray:
    return samples.numpy() if isinstance(samples, torch.Tensor) else np.asarray(samples, dtype=np.float32)


def export_torch(
    model, out_path, samples, *, precision="fp32", static=False, size=None, calibration=None, metadata=None, **_
) -> dict:
    """The PyTorch reference: the weights as safetensors (an existing file, e.g. a student folder's, is kept)."""
    from safetensors.torch import save_file

    t0 = time.perf_counter()
    out_path = Path(out_path)
    if not out_path.exists():
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        with staged(out_path) as tmp:
            save_file(state, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})
    return {
        "path": out_path.name,
        "bytes": out_path.stat().st_size,
        "precision": "fp32",
        "parity": {"max_abs": 0.0, "against": "itself"},
        "seconds": round(time.perf_counter() - t0, 2),
    }


ONNX_INT8_PSNR_MIN = 20.0  # ONNX Runtime INT8 against FP32 (dB): below it the export fails


def export_onnx_file(
    model,
    out_path,
    samples,
    *,
    precision="fp32",
    static=False,
    size=None,
    calibration=None,
    metadata=None,
    dynamic=("batch",),
    opset=18,
    parity_tol=1e-4,
    slim=False,
    **_,
) -> dict:
    """ONNX (fp32, parity against PyTorch) or ONNX Runtime CPU INT8 (QDQ from ``calibration``; the FP32 file
    beside it is written first when absent)."""
    t0 = time.perf_counter()
    out_path = Path(out_path)
    samples_t = torch.from_numpy(_np(samples))
    size = size or int(samples_t.shape[-1])
    dyn = [] if static else (["batch"] + [d for d in dynamic if d != "batch"])
    meta = {"producer": "compressor", "input_size": size, "value_range": "[-1, 1]", **(metadata or {})}
    if precision == "fp32":
        par = export_checked(
            model, out_path, parity_inputs(model, samples_t, size, dyn), dyn, opset, parity_tol, meta, slim
        )
        return {
            "path": out_path.name,
            "bytes": out_path.stat().st_size,
            "precision": "fp32",
            "static": bool(static),
            "parity": {"max_abs": par["max_abs"], "against": "pytorch"},
            "seconds": round(time.perf_counter() - t0, 2),
        }
    if precision != "int8":
        raise UserError(f"precision: ONNX exports fp32 or int8 (fp16 is TensorRT's), not {precision!r}")
    if not calibration:
        raise UserError("INT8 needs calibration images (the recipe's data, or --data FOLDER)")
    fp32 = out_path.with_name(out_path.name.replace(".int8.onnx", ".onnx"))
    if not fp32.exists():
        export_onnx_file(
            model, fp32, samples, static=static, size=size, metadata=metadata, dynamic=dynamic, opset=opset
        )
    with staged(out_path) as tmp:
        quantize_onnx(fp32, tmp, calibration, "cpu")
        cmp = compare_int8(fp32, tmp, samples_t)
        if cmp["psnr_min"] < ONNX_INT8_PSNR_MIN:
            raise ExportError(
                f"{out_path}: INT8 PSNR against FP32 is {cmp['psnr_min']:.1f} dB (limit {ONNX_INT8_PSNR_MIN})"
            )
    return {
        "path": out_path.name,
        "bytes": out_path.stat().st_size,
        "precision": "int8",
        "static": bool(static),
        "calibration_images": len(calibration),
        "parity": {"psnr_min": cmp["psnr_min"], "psnr_mean": cmp["psnr_vs_fp32"], "against": "onnx fp32"},
        "seconds": round(time.perf_counter() - t0, 2),
    }


def export_openvino_ir(
    model, out_path, samples, *, precision="fp32", static=False, size=None, calibration=None, metadata=None, **options
) -> dict:
    """OpenVINO IR (see :func:`exporters.openvino.export_openvino`): from ``onnx_path`` where given, else from the
    PyTorch model."""
    return ov_export.export_openvino(
        model,
        out_path,
        _np(samples),
        precision=precision,
        static=static,
        size=size,
        calibration=calibration,
        metadata=metadata,
        onnx_path=options.get("onnx_path"),
        max_drop=options.get("max_drop"),
        targets=options.get("targets"),
    )


def export_tensorrt_engine(
    model, out_path, samples, *, precision="fp32", static=False, size=None, calibration=None, metadata=None, **_
) -> dict:
    """A TensorRT engine through :func:`export_model` (ONNX, lint, build, parity against ONNX Runtime)."""
    t0 = time.perf_counter()
    out_path = Path(out_path)
    samples_t = torch.from_numpy(_np(samples))
    spec = ExportSpec(
        size=size or int(samples_t.shape[-1]),
        name=out_path.name[: -len(".plan")],
        static=static,
        tensorrt=True,
        precision=precision,
        metadata=dict(metadata or {}),
    )
    rec = export_model(model, out_path.parent, spec, samples_t, calibration)
    if "tensorrt" not in rec:
        raise ExportError("; ".join(rec["notes"]) or "TensorRT engine not built")
    built = out_path.parent / rec["tensorrt"]["path"]
    if built != out_path:
        os.replace(built, out_path)
    return {
        "path": out_path.name,
        "bytes": out_path.stat().st_size,
        "precision": precision,
        "static": bool(static),
        "parity": {**rec["tensorrt"]["parity"], "against": "onnx fp32"},
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _mobile(name: str) -> Callable[..., dict]:
    """The exporter of a phone/board format (``exporters/<name>.py``: ``export_<name>``), imported when called;
    options meant for other formats (``onnx_path``, ``max_drop``) are dropped."""

    def export(model, out_path, samples, *, precision, static=True, size=None, calibration=None, metadata=None, **_):
        import importlib

        fn = getattr(importlib.import_module(f"compressor.exporters.{name}"), f"export_{name}")
        return fn(
            model, out_path, _np(samples), precision=precision, size=size, calibration=calibration, metadata=metadata
        )

    export.__name__ = f"export_{name}"
    return export


_MOBILE = "pip install 'compressor[mobile]'"

FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("torch", ".safetensors", export_torch, "torch", ("fp32",), ("torch",), "pip install torch"),
        Format("onnx", ".onnx", export_onnx_file, "ort-cpu", ("fp32", "int8"), ("onnx",), "pip install onnx"),
        Format(
            "openvino",
            ".xml",
            export_openvino_ir,
            "openvino",
            ("fp32", "fp16", "int8"),
            ("openvino", "nncf"),
            "pip install 'compressor[openvino]'",
        ),
        Format(
            "tensorrt",
            ".plan",
            export_tensorrt_engine,
            "tensorrt",
            ("fp32", "fp16", "int8"),
            ("tensorrt",),
            "pip install 'compressor[trt]' (on a machine with an NVIDIA GPU)",
        ),
        # phone and board formats: batch 1 at one size (exporters/mobile.py has what they share)
        Format(
            "executorch",
            ".pte",
            _mobile("executorch"),
            "executorch",
            ("fp32", "int8"),
            ("executorch",),
            _MOBILE,
            static_only=True,
        ),
        Format(
            "litert",
            ".tflite",
            _mobile("litert"),
            "litert",
            ("fp32", "fp16", "int8"),
            ("litert_torch", "ai_edge_litert"),
            _MOBILE,
            static_only=True,
        ),
        Format(
            "ncnn",
            ".ncnn.param",
            _mobile("ncnn"),
            "ncnn",
            ("fp32", "fp16"),
            ("ncnn", "pnnx"),
            _MOBILE,
            static_only=True,
        ),
        Format(
            "coreml",
            ".mlpackage",
            _mobile("coreml"),
            "coreml",
            ("fp16", "fp32", "int8"),
            ("coremltools",),
            _MOBILE,
            static_only=True,
            calibrated=(),  # 8-bit weights: no activations to calibrate
        ),
    )
}


def export_other_formats(
    model: nn.Module,
    out_dir: str | Path,
    formats: list[str],
    samples,
    calibration: Optional[list[np.ndarray]] = None,
    *,
    int8: bool = False,
    static: bool = False,
    size: Optional[int] = None,
    metadata: Optional[dict] = None,
    stem: str = "student",
    journal: Optional[Callable[[dict], object]] = None,
    progress: Optional[Callable] = None,
) -> dict:
    """The export stage's formats beside ONNX (``export.formats``): each at its default precision, and INT8 too
    where ``int8`` and the format has it. Returns ``{"formats": {"<fmt>:<precision>": record}, "notes": [...]}``;
    a format whose extra is missing is one note naming the ``pip install`` that adds it, and one a converter
    refuses (or whose file misses its parity limit) is a failed record with the one-line reason, so one refusal
    does not stop the others. ``progress("export", step, total, {"doing": ...})`` hears of each file begun."""
    out: dict = {"formats": {}, "notes": []}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    jobs = []
    for name in dict.fromkeys(formats):
        fmt = FORMATS[name]
        if fmt.missing():
            out["notes"].append(f"{name} skipped: {fmt.missing()[0]} is not installed: {fmt.extra}")
            continue
        with_int8 = int8 and "int8" in fmt.precisions[1:]
        jobs += [(name, fmt, prec) for prec in [fmt.precisions[0]] + (["int8"] if with_int8 else [])]
    for k, (name, fmt, prec) in enumerate(jobs):
        key = f"{name}:{prec}"
        path = fmt.path(out_dir, stem, prec)
        if prec in fmt.calibrated and not calibration:
            out["notes"].append(f"{name} {prec} skipped: no calibration images")
            continue
        if progress:
            progress("export", k, len(jobs), {"doing": f"{path.name} ({name} {prec}, checked in its runtime)"})
        try:
            out["formats"][key] = {
                "status": "ok",
                **fmt.exporter(
                    model,
                    path,
                    samples,
                    precision=prec,
                    static=static or fmt.static_only,
                    size=size,
                    calibration=calibration if prec in fmt.calibrated else None,
                    metadata=metadata,
                ),
            }
        except ExportError as exc:
            out["formats"][key] = {"status": "failed", "path": path.name, "precision": prec, "reason": str(exc)}
            out["notes"].append(f"{name} {prec} not written: {exc}")
            log.warning("%s %s not written: %s", name, prec, exc)
        if journal:
            journal(out)
    return out


def format_help() -> str:
    return ", ".join(FORMATS)


def find_artifacts(folder: str | Path, stem: str) -> dict[str, str]:
    """The exported files of ``stem`` in ``folder``, by the kind of file a backend runs (``onnx``,
    ``int8-onnx``, ``openvino``, ``int8-openvino``, ...): what ``compress profile`` times."""
    found = {}
    for fmt in FORMATS.values():
        row = BACKENDS.get(fmt.backend)
        if row is None:
            continue
        for prec in fmt.precisions:
            path = fmt.path(folder, stem, prec)
            if path.exists() and row.artifact != "torch":  # a file, or a package folder (.mlpackage)
                found[row.artifact_for(prec)] = str(path)
    return found


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


def _command_formats(spec: ExportSpec) -> list[str]:
    """The formats ``compress export`` was asked for (``onnx`` by default), each checked against the spec."""
    formats = list(dict.fromkeys(spec.formats or ("onnx",)))
    for f in formats:
        if f not in FORMATS:
            raise UserError(f"--format: unknown format {f!r}; choose from {format_help()}")
        fmt = FORMATS[f]
        if spec.precision not in fmt.precisions and f not in ("onnx", "tensorrt"):
            raise UserError(f"--precision: {f} exports {', '.join(fmt.precisions)}, not {spec.precision}")
        if fmt.missing():
            raise UserError(f"--format {f}: {fmt.missing()[0]} is not installed: {fmt.extra}")
    return formats


def _export_format(
    f: str,
    model: nn.Module,
    out_dir: Path,
    spec: ExportSpec,
    samples: torch.Tensor,
    calibration: Optional[list[np.ndarray]],
    onnx_flow: bool,
) -> tuple[dict, str]:
    """Export one non-ONNX format of the export formats table: its record and the line that reports it."""
    fmt = FORMATS[f]
    path = fmt.path(out_dir, spec.name, spec.precision)
    onnx_fp32 = out_dir / f"{spec.name}.onnx"
    res = fmt.exporter(
        model,
        path,
        samples,
        precision=spec.precision,
        static=spec.static,
        size=spec.size,
        calibration=calibration if spec.precision in fmt.calibrated else None,
        metadata=export_metadata(model, spec),
        onnx_path=onnx_fp32 if onnx_flow and onnx_fp32.exists() and not spec.static else None,
        max_drop=spec.max_drop,
    )
    par = res.get("parity", {})
    what = ", ".join(
        x
        for x in (
            f"max abs error {par['max_abs']:.2e}" if "max_abs" in par else "",
            f"PSNR {par['psnr_min']:.1f} dB" if "psnr_min" in par else "",
        )
        if x
    )
    how = f", {res['method']}, {res['calibration_images']} calibration images" if "method" in res else ""
    return res, f"wrote {path} ({f} {spec.precision}{how}; against {par.get('against', 'pytorch')}: {what})"


def _onnx_extras(spec: ExportSpec) -> str:
    """What ``export_model`` writes beside the ONNX file, for the progress line."""
    extras = (["INT8"] if spec.int8 else []) + (["TensorRT"] if spec.for_tensorrt else [])
    return f" and {', '.join(extras)}" if extras else ""


def _record_lines(rec: dict, out_dir: Path, precision: str) -> list[str]:
    """The printed lines for what :func:`export_model` wrote: ONNX files, INT8 files, lints and the engine."""
    lines = []
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
        lines.append(f"wrote {out_dir / res['path']} (TensorRT {res['tensorrt_version']}, {precision}, {res['gpu']})")
        lines.append(
            f"TensorRT vs ONNX Runtime: max abs {par['max_abs']:.2e}, PSNR {par['psnr_min']:.1f} dB "
            f"(limit {par['limit']}) - passed"
        )
    return lines


def export_command(
    model: nn.Module,
    out_dir: Path,
    spec: ExportSpec,
    samples: Optional[torch.Tensor] = None,
    calibration: Optional[list[np.ndarray]] = None,
    progress: Optional[Callable] = None,
) -> dict:
    """``compress export``: export ``model`` as ``spec`` asks (images from ``spec.data`` where given, INT8 for
    ``precision int8``); write ``export.json``; return the record with printable ``lines``. ``progress("export",
    step, total, {"doing": ...})`` hears of each file begun."""
    mult = size_multiple(model)
    size = spec.size or max(256, mult)
    if not 1 <= size <= MAX_EXPORT_SIZE:
        raise UserError(f"--size: {size} is outside 1..{MAX_EXPORT_SIZE}")
    if size % mult:
        raise UserError(f"--size: {size} is not a multiple of {mult}, which this model needs")
    lines = []
    if samples is None and spec.data is not None:
        samples = folder_images(spec.data, size, 3)
    if samples is None:
        in_nc = input_channels(model)
        samples = torch.rand(3, in_nc, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
        lines.append("note: no images given (--data); parity uses random inputs")
    int8 = spec.precision == "int8"
    if int8 and not calibration:
        if spec.data is None:
            raise UserError("--precision int8 needs calibration images: pass --data FOLDER (or export a run)")
        calibration = [x[None].numpy() for x in folder_images(spec.data, size, spec.calib_images)]
    width = (getattr(model, "student_plan", None) or {}).get("width", 1.0)
    spec = replace(
        spec,
        size=size,
        int8=spec.int8 or int8,
        metadata=spec.metadata or {"recipe_hash": "", "width": width},
    )
    out_dir = Path(out_dir)
    formats = _command_formats(spec)
    if "tensorrt" in formats:
        spec = replace(spec, tensorrt=True)
    onnx_flow = "onnx" in formats or spec.for_tensorrt
    records = RecordFile(out_dir)  # earlier records kept; each new one written once its file is in place
    others = [f for f in formats if f not in ("onnx", "tensorrt")]  # those export_model does not write
    steps = int(onnx_flow) + len(others)
    if onnx_flow and progress:
        progress("export", 0, steps, {"doing": f"{spec.name}.onnx{_onnx_extras(spec)} (parity against PyTorch)"})
    rec = {"onnx": {}, "notes": []}
    if onnx_flow:
        rec = export_model(model, out_dir, spec, samples, calibration, journal=records.write)
    fmt_lines = []
    for k, f in enumerate(others):
        if progress:
            where = FORMATS[f].path(out_dir, spec.name, spec.precision).name
            progress("export", int(onnx_flow) + k, steps, {"doing": f"{where} ({f} {spec.precision})"})
        res, line = _export_format(f, model, out_dir, spec, samples, calibration, onnx_flow)
        rec.setdefault("formats", {})[f"{f}:{spec.precision}"] = res
        records.write(rec)
        fmt_lines.append(line)
    lines.extend(_record_lines(rec, out_dir, spec.precision))
    lines.extend(fmt_lines)
    lines.extend(rec["notes"])
    for script in rec.get("trtexec", []):
        lines.append(f"wrote {out_dir / script}")
    records.write(rec)
    lines.append(f"wrote {records.path}")
    return {**rec, "lines": lines}
