"""Checks of command-line values that typer's types do not cover: each raises one :class:`UserError` line naming
the flag, before anything is loaded, allocated or started."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterable, Optional

from .errors import UserError
from .remote import check_host

PRECISIONS = ("fp32", "fp16", "int8")
MIN_SIZE, MAX_SIZE = 8, 8192  # the recipe's data.size bounds
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d{1,2})?)$")


def check_device(device: str, flag: str = "--device") -> str:
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise UserError(f"{flag}: expected auto, cpu, cuda or cuda:N, got {str(device)[:40]!r}")
    return device


def check_precisions(values: Iterable[str], flag: str = "--precision") -> None:
    for v in values:
        if v not in PRECISIONS:
            raise UserError(f"{flag}: expected one of {', '.join(PRECISIONS)}, got {str(v)[:40]!r}")


def check_sizes(values: Iterable[int], flag: str = "--size") -> None:
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or not MIN_SIZE <= v <= MAX_SIZE:
            raise UserError(f"{flag}: {v!r} is outside {MIN_SIZE}..{MAX_SIZE} (the image size in pixels)")


def check_seconds(seconds: Optional[float], flag: str = "--seconds") -> None:
    if seconds is not None and (not math.isfinite(seconds) or not 0 < seconds <= 86400):
        raise UserError(f"{flag}: expected a positive number of seconds (at most a day), got {seconds!r}")


def check_profile_flags(precision: str, seconds: Optional[float], device: str, host: Optional[str]) -> None:
    """``compress profile``'s free-text flags."""
    check_precisions([p.strip() for p in precision.split(",") if p.strip()] or [precision])
    check_seconds(seconds)
    check_device(device)
    if host is not None:
        check_host(host)


def check_out_folder(out: Optional[Path], flag: str = "--out") -> None:
    """An output folder: absent (it is created) or a folder, not a file."""
    if out is not None and out.exists() and not out.is_dir():
        raise UserError(f"{flag}: {out} exists and is not a folder; choose a folder to write into")


def check_out_file(out: Path, flag: str = "--out") -> None:
    """An output file: its folder exists (or can be made) and it is not a folder."""
    if out.is_dir():
        raise UserError(f"{flag}: {out} is a folder; name a file")
    parent = out.parent
    if parent.exists() and not parent.is_dir():
        raise UserError(f"{flag}: {parent} is not a folder")


def check_existing(path: Optional[Path], flag: str) -> None:
    if path is not None and not path.exists():
        raise UserError(f"{flag}: {path} does not exist")
