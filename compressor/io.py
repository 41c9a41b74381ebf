"""Atomic file writes: a temporary file in the same folder, fsync, then rename. A crash or a full disk never
leaves a half-written artifact in place of a good one.

Folders may come from elsewhere, so nothing here follows a symlink: the temporary file is created with
``O_EXCL`` (``mkstemp``) and renamed over the name (a symlink there is replaced, never written through), appends
and locks open with ``O_NOFOLLOW``, and :func:`confined` tells whether a file found in a folder really lies in it.
"""

from __future__ import annotations

import errno
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Optional

import torch

from .errors import UserError


def _default_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_MODE = _default_mode()
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def default_mode() -> int:
    """The permissions a new artifact gets (0666 less the umask)."""
    return _MODE


class DiskWriteError(UserError):
    """Writing an artifact failed (disk full, permissions); earlier artifacts are intact."""


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, _MODE)  # mkstemp creates 0600; artifacts get the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise DiskWriteError(f"{path}: write failed ({exc.strerror or exc}); earlier artifacts are intact") from None
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=1, default=str) + "\n")


def atomic_torch_save(obj, path: str | Path) -> Path:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def append_line(path: str | Path, line: str) -> Path:
    """Append one line to a log (``metrics.jsonl``) as a single ``write``: the line is there whole or not at all.
    A short write (disk full) is cut back to the previous end; any failure is :class:`DiskWriteError`."""
    path = Path(path)
    data = (line.rstrip("\n") + "\n").encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | NOFOLLOW, _MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(f"{path}: is a symlink; compressor does not write through links in a run folder") from None
        raise DiskWriteError(f"{path}: cannot append ({exc.strerror or exc}); earlier lines are intact") from None
    try:
        start = os.fstat(fd).st_size
        try:
            written = os.write(fd, data)
        except OSError as exc:
            written, err = -1, exc
        else:
            err = None
        if written != len(data):
            try:
                os.ftruncate(fd, start)  # no half line left behind
            except OSError:
                pass
            reason = (err.strerror or str(err)) if err else "short write (disk full?)"
            raise DiskWriteError(f"{path}: append failed ({reason}); earlier lines are intact")
    finally:
        os.close(fd)
    return path


def confined(path: str | Path, root: str | Path) -> Optional[Path]:
    """``path`` resolved, when it is a regular file that lies inside ``root`` after every symlink is followed;
    else None. Files a folder from elsewhere points to (a symlink to ``~/.ssh/id_rsa``, ``../../secret``) are
    not read."""
    try:
        real = Path(path).resolve(strict=True)
        base = Path(root).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not real.is_file() or not real.is_relative_to(base):
        return None
    return real
