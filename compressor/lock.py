"""One writer per run folder: an OS file lock on ``runs/<name>/.lock``.

The lock is ``fcntl.flock`` on an open file, so the kernel releases it when the holder exits or dies (even on
SIGKILL); a stale ``.lock`` file left behind never blocks anybody. The holder's PID is written into the file so a
second writer can name it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path
from typing import Iterator

from .errors import UserError

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, a warning in the docs
    fcntl = None

LOCK_NAME = ".lock"


class RunLocked(UserError):
    """Another process writes this run folder."""


def _holder(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd) as f:
            pid = f.read(32).strip()
    except (OSError, UnicodeDecodeError):
        return "another process"
    return f"process {pid}" if pid.isdigit() else "another process"


@contextlib.contextmanager
def run_lock(root: str | Path) -> Iterator[Path]:
    """Hold the run folder's lock for the ``with`` body; raise :class:`RunLocked` at once if another process has
    it. Re-entrant within one process (a nested ``run_lock`` on the same folder is a no-op)."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise UserError(
            f"{root}: exists and is not a folder (the run folder goes there); move it or choose another name or --out"
        )
    path = root / LOCK_NAME
    key = str(path.resolve()) if root.exists() else str(path)
    if key in _HELD or fcntl is None:
        yield path
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(
                f"{path}: is a symlink; compressor does not write through links in a run folder (remove it)"
            ) from None
        raise UserError(f"{root}: cannot create the run folder's lock ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
            raise UserError(
                f"{path}: not a plain file of this folder (a hard link or a device); compressor does not write "
                f"through it (remove it)"
            )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(
                f"{root} is in use by {_holder(path)} (another compress writes this run folder); "
                f"wait for it to finish or stop it"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:  # a full disk: the lock holds all the same, only the holder's PID is not recorded
            pass
        key = str(path.resolve())
        _HELD.add(key)
        try:
            yield path
        finally:
            _HELD.discard(key)
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
    finally:
        os.close(fd)  # closing the descriptor releases the flock


_HELD: set[str] = set()
