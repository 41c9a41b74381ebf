"""``export.json``: the record of every file an export wrote into a folder, kept true while files come and go.

A folder's ``export.json`` is shared by every export into it: the pipeline's export stage, ``compress export`` with
other formats or precisions, a re-export. :class:`RecordFile` keeps it true:

* an export adds to the earlier records (:func:`merge_records`): ``compress export RUN --format openvino`` keeps the
  pipeline's ONNX parity records, and a failed record does not displace a passing one whose file is still there;
* each record is written as soon as its file is in place (files are staged, checked and renamed first), so a
  ``kill -9`` between two files leaves every finished file recorded;
* a record whose file is not there (an interrupted export, a file removed by hand) is dropped
  (:func:`reconcile`): ``export.json`` never claims a file that is not in its folder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from compressor.errors import UserError
from compressor.io import atomic_write_json
from compressor.schemas import ExportDoc, read_json

log = logging.getLogger(__name__)

RECORD = "export.json"
SINGLE_FILE_KEYS = ("int8", "int8_tensorrt", "tensorrt")  # one record each, naming its file under "path"
KEYED = ("onnx", "formats")  # records by name ("student") or format and precision ("openvino:int8")


def _there(folder: Path, name: Any) -> bool:
    """Whether the file (or package folder) a record names by its bare name is in ``folder``."""
    return isinstance(name, str) and bool(name) and name == Path(name).name and (folder / name).exists()


def reconcile(doc: dict, folder: str | Path) -> dict:
    """``doc`` less every record of a file that is not in ``folder``; failed format records (no file) stay."""
    folder = Path(folder)
    out = dict(doc)
    out["onnx"] = {k: v for k, v in (doc.get("onnx") or {}).items() if _there(folder, (v or {}).get("path"))}
    for key in SINGLE_FILE_KEYS:
        if key in out and not _there(folder, (out[key] or {}).get("path")):
            del out[key]
    if "formats" in out:
        out["formats"] = {
            k: v
            for k, v in (out["formats"] if isinstance(out["formats"], dict) else {}).items()
            if isinstance(v, dict) and (v.get("status") == "failed" or _there(folder, v.get("path")))
        }
    if "tensorrt_lints" in out:
        out["tensorrt_lints"] = [x for x in out["tensorrt_lints"] or [] if _there(folder, (x or {}).get("file"))]
    if "tensorrt_lint" in out and not _there(folder, (out["tensorrt_lint"] or {}).get("file")):
        del out["tensorrt_lint"]
    if "trtexec" in out:
        out["trtexec"] = [n for n in out["trtexec"] or [] if _there(folder, n)]
    return out


def merge_records(old: dict, new: dict) -> dict:
    """``new`` (this export's records) over ``old`` (the folder's earlier ones): a record of the same file or
    format replaces the earlier one, except that a failed one leaves a passing one in place (its file was kept);
    notes are this export's first, then the earlier ones not repeated."""
    out = dict(old)
    for key, value in new.items():
        if key in KEYED:
            merged = dict(old.get(key) or {})
            for name, rec in (value or {}).items():
                earlier = merged.get(name) or {}
                if (rec or {}).get("status") == "failed" and earlier and earlier.get("status") != "failed":
                    continue
                merged[name] = rec
            out[key] = merged
        elif key == "notes":
            out["notes"] = list(dict.fromkeys(list(value or []) + list(old.get("notes") or [])))
        else:
            out[key] = value
    out.setdefault("onnx", {})
    out.setdefault("notes", [])
    return out


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
            return read_json(self.path, ExportDoc)
        except UserError as exc:
            log.warning("%s; written anew", exc)
            return {}

    def write(self, record: dict) -> dict:
        """Merge ``record`` (this export's, so far) in and write ``export.json``; the document written."""
        self.doc = reconcile(merge_records(self.doc, record), self.folder)
        atomic_write_json(self.path, self.doc)
        return self.doc
