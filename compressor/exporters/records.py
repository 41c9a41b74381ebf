"""One record per exported file, and ``export.json``: every file an export wrote into a folder, kept true while files
come and go.

A record (:func:`record`) has one shape whatever the format: ``format``, ``precision``, ``path`` (the file's name in
its folder), ``bytes`` (on disk, with its companion files), ``parity`` (the figures of its check against PyTorch,
or against the file it was converted from: ``against`` says which), ``status`` (``passed``, ``failed``, ``skipped``)
and ``reason`` (why it failed or was skipped), plus what its format adds (an INT8 file's calibration images, a
TensorRT engine's lints and trtexec scripts). The export flow writes them, ``compress report`` shows them,
``compress benchmark`` adds its own measurements to them, and :func:`describe` says one in words for all three.

``export.json`` holds ``{"schema", "files": {file name: record}, "notes": [...]}`` and is shared by every export
into its folder (the pipeline's export stage, ``compress export`` with other formats or precisions, a
re-export). :class:`RecordFile` keeps it true:

* an export adds to the earlier records (:func:`merge_records`): ``compress export RUN --format openvino`` keeps the
  pipeline's ONNX records, and a failed record does not displace a passing one whose file is still there;
* each record is written as soon as its file is in place (files are staged, checked and renamed first), so a
  ``kill -9`` between two files leaves every finished file recorded;
* a passing record whose file is not there (an interrupted export, a file removed by hand) is dropped
  (:func:`reconcile`): ``export.json`` never claims a file that is not in its folder.

An ``export.json`` written before records had one shape (``onnx``, ``int8``, ``formats`` sections) is read as
records (:func:`upgrade`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Optional

from compressor.errors import UserError
from compressor.io import atomic_write_json
from compressor.schemas import ExportDoc, read_json, validate

log = logging.getLogger(__name__)

RECORD = "export.json"
SCHEMA = "compressor.export/2"
STATUSES = ("passed", "failed", "skipped")
COMPANIONS = {".xml": ".bin", ".param": ".bin"}  # files that travel with a format's file (OpenVINO IR, ncnn)


def size_on_disk(path: str | Path) -> Optional[int]:
    """Bytes of an exported file with its companion files (an IR's .bin, ncnn's .bin beside its .param), or of
    every file in a package folder (Core ML's .mlpackage); None when it is not there."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    if not path.is_file():
        return None
    total = path.stat().st_size
    companion = COMPANIONS.get(path.suffix)
    if companion and path.with_suffix(companion).is_file():
        total += path.with_suffix(companion).stat().st_size
    return total


def record(
    path: str | Path,
    format: str,
    precision: str,
    *,
    parity: Optional[dict] = None,
    status: str = "passed",
    reason: Optional[str] = None,
    seconds: Optional[float] = None,
    **extra: Any,
) -> dict:
    """The record of one exported file (see the module docstring); ``bytes`` is measured here, for a file that is
    there."""
    path = Path(path)
    rec = {
        "format": format,
        "precision": precision,
        "path": path.name,
        "bytes": size_on_disk(path) if status == "passed" else None,
        "parity": dict(parity or {}),
        "status": status,
    }
    if reason:
        rec["reason"] = reason
    if seconds is not None:
        rec["seconds"] = round(seconds, 2)
    return {**rec, **extra}


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def parity_text(parity: dict) -> str:
    """A record's parity in words: ``max abs error 1.2e-06 against PyTorch over 2 input shapes (limit max abs ≤
    0.0001)``; ``not compared: <why>`` where the file could not be run here."""
    if not parity:
        return ""
    if parity.get("compared") is False:
        return f"not compared: {parity.get('reason', '')}".rstrip(": ")
    parts = []
    if _num(parity.get("max_abs")):
        parts.append(f"max abs error {parity['max_abs']:.2e}")
    if parity.get("psnr_min") is not None:
        psnr = parity["psnr_min"]
        parts.append(f"PSNR {psnr:.1f} dB" if _num(psnr) else "PSNR ∞")
    if not parts:
        return ""
    against = parity.get("against", "pytorch")
    text = f"{', '.join(parts)} against {'PyTorch' if against == 'pytorch' else against}"
    if isinstance(parity.get("cases"), list):
        text += f" over {len(parity['cases'])} input shapes"
    limit = parity.get("limit", parity.get("tolerance"))
    return text + (f" (limit {_limit_text(limit)})" if limit is not None else "")


def _limit_text(limit: Any) -> str:
    if isinstance(limit, str):
        return limit
    if isinstance(limit, dict):
        words = {"max_abs": "max abs ≤ {:g}", "psnr_min": "PSNR ≥ {:g} dB"}
        return ", ".join(words.get(k, k + " {}").format(v) for k, v in limit.items())
    return f"max abs ≤ {limit:g}" if _num(limit) else str(limit)


def describe(rec: dict) -> str:
    """One record in words: ``student.int8.onnx (onnx int8, 0.31 MiB): PSNR 41.2 dB against onnx fp32 - passed``."""
    size = f", {rec['bytes'] / 2**20:.2f} MiB" if _num(rec.get("bytes")) else ""
    head = f"{rec.get('path', '?')} ({rec.get('format', '?')} {rec.get('precision', '?')}{size})"
    status = rec.get("status", "passed")
    par = parity_text(rec.get("parity") or {})
    if status != "passed":
        return f"{head}: {status}" + (f": {rec['reason']}" if rec.get("reason") else "")
    return f"{head}: {par} - passed" if par else f"{head}: passed"


# ------------------------------------------------------------------------------------------------ export.json


def _there(folder: Path, name: Any) -> bool:
    """Whether the file (or package folder) a record names by its bare name is in ``folder``."""
    return isinstance(name, str) and bool(name) and name == Path(name).name and (folder / name).exists()


def reconcile(doc: dict, folder: str | Path) -> dict:
    """``doc`` less every passing record of a file that is not in ``folder`` (failed and skipped records, which
    claim no file, stay), and less the lints and scripts of files that are gone."""
    folder = Path(folder)
    files = {}
    for key, rec in (doc.get("files") or {}).items():
        if not isinstance(rec, dict):
            continue
        if rec.get("status") == "passed" and not _there(folder, rec.get("path")):
            continue
        rec = dict(rec)
        if "lints" in rec:
            rec["lints"] = [x for x in rec["lints"] or [] if _there(folder, (x or {}).get("file"))]
        if "scripts" in rec:
            rec["scripts"] = [n for n in rec["scripts"] or [] if _there(folder, n)]
        files[key] = rec
    return {**doc, "files": files}


def merge_records(old: dict, new: dict) -> dict:
    """``new`` (this export's records) over ``old`` (the folder's earlier ones): a record of the same file replaces
    the earlier one, except that a failed or skipped one leaves a passing one in place (its file was kept); notes
    are this export's first, then the earlier ones not repeated."""
    files = dict(old.get("files") or {})
    for key, rec in (new.get("files") or {}).items():
        earlier = files.get(key) or {}
        if (rec or {}).get("status") != "passed" and earlier.get("status") == "passed":
            continue
        files[key] = rec
    notes = list(dict.fromkeys(list(new.get("notes") or []) + list(old.get("notes") or [])))
    return {"schema": SCHEMA, "files": files, "notes": notes}


def upgrade(doc: dict) -> dict:
    """An ``export.json`` of the earlier layout (``onnx``, ``int8``, ``int8_tensorrt``, ``formats`` sections) as
    records; a document of this layout is returned as it is."""
    if "files" in doc or "onnx" not in doc:
        return doc
    files: dict[str, dict] = {}
    for info in (doc.get("onnx") or {}).values():
        files[info["path"]] = {"format": "onnx", "precision": "fp32", "status": "passed", **info}
    for key in ("int8", "int8_tensorrt"):
        q = doc.get(key)
        if isinstance(q, dict) and q.get("path"):
            par = {"psnr_min": q.get("psnr_min", q.get("psnr_vs_fp32")), "against": "onnx fp32"}
            files[q["path"]] = {"format": "onnx", "precision": "int8", "status": "passed", "parity": par, **q}
    for key, rec in (doc.get("formats") or {}).items():
        if isinstance(rec, dict) and rec.get("path"):
            fmt, _, prec = key.partition(":")
            status = "passed" if rec.get("status", "ok") == "ok" else rec.get("status")
            files[rec["path"]] = {"format": fmt, "precision": prec, **rec, "status": status}
    return {"schema": SCHEMA, "files": files, "notes": list(doc.get("notes") or [])}


def read_export_doc(path: str | Path) -> dict:
    """An ``export.json`` as records (the earlier layout upgraded), checked; one UserError line otherwise."""
    doc = upgrade(read_json(path))
    validate(doc, ExportDoc, str(path))
    return doc


class RecordFile:
    """A folder's ``export.json`` during one export: :meth:`write` merges a record in and writes the file."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / RECORD
        self.doc = reconcile(self._earlier(), self.folder)

    def _earlier(self) -> dict:
        if not self.path.exists() and not self.path.is_symlink():
            return {}
        if self.path.is_symlink():  # another place's record is not this folder's; the write replaces the link
            log.warning("%s: is a symlink; not this folder's record, written anew", self.path)
            return {}
        try:
            return read_export_doc(self.path)
        except UserError as exc:
            log.warning("%s; written anew", exc)
            return {}

    def write(self, records: dict) -> dict:
        """Merge ``records`` (this export's, so far: ``{"files", "notes"}``) in and write ``export.json``; the
        document written."""
        self.doc = reconcile(merge_records(self.doc, records), self.folder)
        atomic_write_json(self.path, self.doc)
        return self.doc
