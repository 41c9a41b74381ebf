"""One export flow: a model, a folder, an :class:`ExportSpec` and sample/calibration images in; one record per file
out (:mod:`compressor.exporters.records`), each written to ``export.json`` by the caller's journal as soon as its
file is in place.

The pipeline's export stage, ``compress export``, ``compress benchmark`` and the Python API (:func:`export`) all go
through :func:`export_files`. The spec says which files to write: ``jobs`` (exact ``(format, precision)`` pairs), or
``formats`` at ``precision``; :func:`plan_files` checks each pair against the format table once and puts the file a
format converts from (the FP32 ONNX for ONNX INT8 and TensorRT) before it. Every file is then one call of its row's
exporter with one :class:`~compressor.exporters.rows.Request`. A file that cannot be written here (its extra is not
installed, no calibration images) or that fails its check stops the export with one line, or, with
``keep_going``, becomes a ``skipped`` or ``failed`` record with the reason and the export goes on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn

from compressor.errors import ExportError, UserError
from compressor.models import input_channels, size_multiple

from .records import RecordFile, describe, record
from .rows import Format, Request
from .table import FORMATS, check_precision, get_format

log = logging.getLogger(__name__)

MAX_EXPORT_SIZE = 8192  # the largest side an export samples at (a 8192² float image is 800 MB)


@dataclass
class ExportSpec:
    """What to export: the one record behind the pipeline's export stage (filled from the recipe's ``export``
    section), ``compress export`` (from its options), ``compress benchmark`` and :func:`export`."""

    formats: tuple[str, ...] = ()  # formats to write (compress export --format); (): onnx
    precision: Optional[str] = None  # every format at this precision (None: each at its default)
    jobs: tuple[tuple[str, str], ...] = ()  # exact (format, precision) pairs, in order; wins over the two above
    name: str = "student"  # file stem: <name>.onnx, <name>.int8.onnx, ...
    size: Optional[int] = None  # the image size the model runs at (H = W); None: the samples'
    static: bool = False  # every file fixed-shape: batch 1 at size x size
    keep_going: bool = False  # a file that fails or cannot be written here is a record, and the export goes on
    optional: tuple[str, ...] = ()  # formats kept going on like that (the recipe's export.formats)
    rewrite_sources: bool = True  # False: reuse an existing file a format converts from (compress export --no-onnx)
    metadata: dict = field(default_factory=dict)
    # ONNX
    dynamic: list[str] = field(default_factory=lambda: ["batch"])
    opset: int = 18
    parity_tol: float = 1e-4
    slim: bool = False
    # OpenVINO INT8: NNCF accuracy control, largest PSNR drop (dB)
    max_drop: Optional[float] = None
    # TensorRT
    build_engine: bool = True  # build where TensorRT is installed (False: the lint and trtexec scripts alone)
    trt_versions: tuple[int, ...] = (10,)  # majors to lint for (and write trtexec scripts for)
    emit_trtexec: bool = False
    workspace_mb: int = 1024
    # compress export's inputs
    out: Optional[Path] = None  # output folder (default: next to the input)
    data: Optional[Path] = None  # images for parity and INT8 calibration
    calib_images: int = 32  # INT8 calibration images


# ------------------------------------------------------------------------------------------------ which files


def _is_source(fmt: Format, others: list[Format]) -> bool:
    return any(o.source == fmt.name and o is not fmt for o in others)


def _requested(spec: ExportSpec) -> list[tuple[Format, str]]:
    """The (format, precision) pairs the spec names, each checked against the table."""
    if spec.jobs:
        return [(get_format(f), p) for f, p in spec.jobs]
    asked = [get_format(f) for f in dict.fromkeys(spec.formats or ("onnx",))]
    pairs = []
    for fmt in asked:
        prec = spec.precision or fmt.precisions[0]
        if prec not in fmt.precisions and (not spec.formats or _is_source(fmt, asked)):
            prec = fmt.precisions[0]  # the file another format converts from, or the default format: as it is
        pairs.append((fmt, check_precision(fmt, prec)))
    return pairs


def plan_files(spec: ExportSpec) -> list[tuple[Format, str]]:
    """The files to write, in order: each requested pair (checked against the table), the file its format converts
    from first where it needs one (the FP32 ONNX before ONNX INT8 and TensorRT)."""
    out: list[tuple[Format, str]] = []
    for fmt, prec in _requested(spec):
        check_precision(fmt, prec)
        if fmt.needs_source(prec):
            src = FORMATS[fmt.source]
            if (src, src.precisions[0]) not in out:
                out.append((src, src.precisions[0]))
        if (fmt, prec) not in out:
            out.append((fmt, prec))
    return out


def needs_calibration(spec: ExportSpec) -> bool:
    """Whether a file the spec asks for is calibrated on images (INT8)."""
    return any(prec in fmt.calibrated for fmt, prec in plan_files(spec))


def check_files(spec: ExportSpec) -> list[tuple[Format, str]]:
    """:func:`plan_files`, and one line for a format whose extra is not installed: before anything is loaded."""
    files = plan_files(spec)
    for fmt, _ in files:
        if fmt.missing() and not _lenient(spec, fmt):
            raise UserError(f"--format {fmt.name}: {fmt.missing()[0]} is not installed: {fmt.extra}")
    return files


def _lenient(spec: ExportSpec, fmt: Format) -> bool:
    """Whether a failure of ``fmt`` is a record and not a stop."""
    return spec.keep_going or fmt.name in spec.optional


def _cannot(fmt: Format, prec: str, calibration, trained: bool = False) -> Optional[str]:
    """Why ``fmt`` cannot write ``prec`` here (its extra is missing, no calibration images; ``trained``: a
    quantisation-aware student, for a format that cannot take its trained scales), or None."""
    if fmt.missing():
        return f"{fmt.missing()[0]} is not installed: {fmt.extra}"
    if trained:
        return None if fmt.trained_int8 and prec == "int8" else f"{fmt.name} cannot take trained INT8 scales"
    if prec in fmt.calibrated and not calibration:
        return "no calibration images"
    return None


# ------------------------------------------------------------------------------------------------ the flow


class ExportRun:
    """One export under way: the model, the folder, the spec, the images, the records so far (:attr:`doc`) and the
    files written that others convert from. :meth:`write` writes one file; :func:`export_files` writes the spec's
    files in order, ``compress benchmark`` one format and precision at a time."""

    def __init__(
        self,
        model: nn.Module,
        out_dir: str | Path,
        spec: ExportSpec,
        samples: torch.Tensor,
        calibration: Optional[list[np.ndarray]] = None,
        *,
        journal: Optional[Callable[[dict], object]] = None,
        progress: Optional[Callable] = None,
    ):
        self.spec = replace(spec, size=spec.size or int(samples.shape[-1]))
        mult = size_multiple(model)
        if self.spec.size % mult:
            raise UserError(f"size: {self.spec.size} is not a multiple of {mult}, which this model needs")
        self.model = model.eval().cpu()
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.samples, self.calibration = samples, calibration
        self.journal, self.progress = journal, progress
        self.doc: dict = {"files": {}, "notes": []}
        self.written: dict[str, Path] = {}  # format name -> the file it wrote at its default precision

    def request(self, fmt: Format, prec: str, path: Path) -> Request:
        return Request(
            self.model,
            path,
            self.samples,
            precision=prec,
            size=self.spec.size,
            static=self.spec.static or fmt.static_only,
            calibration=self.calibration if prec in fmt.calibrated else None,
            metadata=dict(self.spec.metadata),
            source=self.written.get(fmt.source) if fmt.source else None,
            options=self.spec,
        )

    def write(self, fmt: Format, prec: str, step: tuple[int, int] = (0, 0)) -> list[dict]:
        """Write ``fmt`` at ``prec`` (``step``: its place among the files, for the progress line): its records,
        also added to :attr:`doc` and handed to the journal. An existing source file kept by
        ``rewrite_sources=False`` writes nothing ([])."""
        path = fmt.path(self.out, self.spec.name, prec)
        if self._reused(fmt, prec, path):
            return []
        if self.progress:
            doing = _doing(fmt, prec, path, getattr(self.model, "quantized", False))
            self.progress("export", step[0], step[1], {"doing": doing})
        recs = _write(self, fmt, prec, path)
        for rec in recs:
            self.doc["files"][rec["path"]] = rec
            if rec["status"] != "passed":
                verb = "skipped" if rec["status"] == "skipped" else "not written"
                self.doc["notes"].append(f"{rec['format']} {rec['precision']} {verb}: {rec.get('reason', '')}")
        if recs and recs[-1]["status"] == "passed" and prec == fmt.precisions[0]:
            self.written[fmt.name] = self.out / recs[-1]["path"]
        if self.journal:
            self.journal(self.doc)
        return recs

    def _reused(self, fmt: Format, prec: str, path: Path) -> bool:
        """``rewrite_sources=False`` (``--no-onnx``): an existing file that another format converts from is kept as
        it is (never a link's target) and converted from."""
        if self.spec.rewrite_sources or prec != fmt.precisions[0] or not (path.exists() or path.is_symlink()):
            return False
        if path.is_symlink():
            raise UserError(
                f"{path}: is a symlink; --no-onnx converts the folder's own {path.name}, never a link's target "
                f"(remove the link, or export without --no-onnx)"
            )
        self.written[fmt.name] = path
        return True


def _write(run: ExportRun, fmt: Format, prec: str, path: Path) -> list[dict]:
    """One file through its row's exporter: its records (failed or skipped ones with ``keep_going``)."""
    trained = getattr(run.model, "quantized", False)  # its INT8 is written from the model's own scales
    why = _cannot(fmt, prec, run.calibration, trained)
    if why is None and fmt.needs_source(prec) and fmt.source not in run.written and not trained:
        why = f"the {fmt.source} file it converts from was not written"
    lenient = _lenient(run.spec, fmt)
    if why is not None:
        if not lenient:
            if fmt.missing():
                raise UserError(f"--format {fmt.name}: {why}")
            raise UserError("INT8 needs calibration images (the recipe's data, or --data FOLDER)")
        return [record(path, fmt.name, prec, status="skipped", reason=why)]
    try:
        out = fmt.export(run.request(fmt, prec, path))
    except Exception as exc:  # a converter's own error, too: with keep_going, reported as the file's reason
        if not lenient or isinstance(exc, MemoryError):
            raise
        log.debug("export of %s %s failed", fmt.name, prec, exc_info=True)
        text = str(exc).splitlines()[0][:300] if str(exc) else ""
        reason = text if isinstance(exc, (ExportError, UserError)) else f"{type(exc).__name__}: {text}"
        return [record(path, fmt.name, prec, status="failed", reason=reason)]
    return out if isinstance(out, list) else [out]


def _doing(fmt: Format, prec: str, path: Path, trained: bool = False) -> str:
    """What the progress line says while ``path`` is written."""
    if trained:
        return f"{path.name} (trained INT8 scales, checked against the fake-quantised student)"
    against = f"the {fmt.source} file" if fmt.needs_source(prec) else "PyTorch"
    if fmt.static_only:
        return f"{path.name} ({fmt.name} {prec}, checked in its runtime against {against})"
    return f"{path.name} (parity against {against})"


def export_files(
    model: nn.Module,
    out_dir: str | Path,
    spec: ExportSpec,
    samples: torch.Tensor,
    calibration: Optional[list[np.ndarray]] = None,
    *,
    journal: Optional[Callable[[dict], object]] = None,
    progress: Optional[Callable] = None,
) -> dict:
    """Write the files ``spec`` asks for into ``out_dir``: ``{"files": {file name: record}, "notes": [...]}``.

    ``samples``: a few images (N, C, H, W) in [-1, 1] for the parity checks; ``calibration``: (1, C, H, W) arrays
    for INT8; ``journal(doc)`` is called each time a file is in place (:meth:`RecordFile.write` keeps export.json
    true that way); ``progress("export", step, total, {"doing": ...})`` hears of each file begun. Raises
    :class:`ExportError` on a parity or lint failure and :class:`UserError` on a request that cannot be met, unless
    ``spec.keep_going``."""
    files = plan_files(spec)
    run = ExportRun(model, out_dir, spec, samples, calibration, journal=journal, progress=progress)
    for k, (fmt, prec) in enumerate(files):
        run.write(fmt, prec, (k, len(files)))
    return run.doc


def trained_int8_formats(formats: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Of ``formats`` (with INT8 among their precisions): those whose INT8 takes a quantisation-aware student's
    trained scales, and those that calibrate their own (post-training quantisation) instead."""
    rows = [FORMATS[f] for f in dict.fromkeys(formats) if "int8" in FORMATS[f].precisions]
    return [f.name for f in rows if f.trained_int8], [f.name for f in rows if not f.trained_int8]


def export_trained(
    model: nn.Module,
    out_dir: str | Path,
    spec: ExportSpec,
    samples: torch.Tensor,
    *,
    fp32_onnx: Optional[Path] = None,
    journal: Optional[Callable[[dict], object]] = None,
    progress: Optional[Callable] = None,
) -> dict:
    """The INT8 files of a quantisation-aware student (``model.quantized``) from its trained scales, for the formats
    of ``spec.formats`` that take them: the QDQ ONNX first (checked against the fake-quantised model, and compared
    with ``fp32_onnx``), then the formats that convert from it (OpenVINO). Files are named ``<spec.name>.int8.*``;
    the other formats' INT8 stays post-training quantisation, said in a note."""
    trained, others = trained_int8_formats(("onnx",) + tuple(spec.formats))
    run = ExportRun(model, out_dir, spec, samples, None, journal=journal, progress=progress)
    if fp32_onnx is not None:
        run.written["onnx"] = Path(fp32_onnx)
    for k, name in enumerate(trained):
        recs = run.write(FORMATS[name], "int8", (k, len(trained)))
        if name == "onnx" and recs and recs[-1]["status"] == "passed":
            run.written["onnx"] = run.out / recs[-1]["path"]  # the file the others convert from
        elif name == "onnx":
            break
    if others:
        run.doc["notes"].append(
            f"{', '.join(others)} INT8: post-training quantisation (these formats cannot take trained scales yet)"
        )
    return run.doc


def export_file(fmt: str, model: nn.Module, path: str | Path, samples, **request) -> dict:
    """One file of format ``fmt`` at ``path`` through its row's exporter (``request``: the other
    :class:`~compressor.exporters.rows.Request` fields: ``precision``, ``size``, ``calibration``, ``metadata``,
    ``source``, ``options``, ``limits``; the precision defaults to the format's own); its record (the last one, for a
    format that writes several)."""
    row = get_format(fmt)
    request.setdefault("precision", row.precisions[0])
    out = row.export(Request(model, Path(path), samples, **request))
    return out[-1] if isinstance(out, list) else out


def record_lines(doc: dict, out_dir: Path) -> list[str]:
    """The printed lines for an export: each file's record in words, then each TensorRT lint and trtexec script,
    then the notes."""
    lines = []
    for rec in doc["files"].values():
        if rec["status"] == "passed":
            lines.append(f"wrote {out_dir / rec['path']} {describe(rec).split(' ', 1)[1]}")
        for lint in rec.get("lints") or []:
            lines.append(f"TensorRT {lint['target']} lint of {lint['file']}: {lint['nodes']} nodes, no problems")
        for script in rec.get("scripts") or []:
            lines.append(f"wrote {out_dir / script}")
    return lines + list(doc["notes"])


def export(
    model: nn.Module,
    out_dir: str | Path,
    formats: tuple[str, ...] = ("onnx",),
    *,
    precision: Optional[str] = None,
    samples: Optional[torch.Tensor] = None,
    calibration: Optional[list[np.ndarray]] = None,
    size: Optional[int] = None,
    keep_going: bool = False,
    **options,
) -> dict:
    """Export ``model`` to ``formats`` into ``out_dir`` and write ``export.json`` there: the Python API (the CLI's
    ``compress export`` goes through the same :func:`export_files`). ``samples``: images (N, C, H, W) in [-1, 1]
    for the parity checks (default: 3 seeded random images at ``size``, 256 unless given); ``calibration``:
    (1, C, H, W) arrays for INT8; ``options``: other :class:`ExportSpec` fields (``dynamic``, ``static``,
    ``metadata``, ``trt_versions``, ...). Returns the folder's export.json document."""
    if samples is None:
        size = size or max(256, size_multiple(model))
        g = torch.Generator().manual_seed(0)
        samples = torch.rand(3, input_channels(model), size, size, generator=g) * 2 - 1
    spec = ExportSpec(formats=tuple(formats), precision=precision, size=size, keep_going=keep_going, **options)
    records = RecordFile(out_dir)
    export_files(model, out_dir, spec, samples, calibration, journal=records.write)
    return records.doc
