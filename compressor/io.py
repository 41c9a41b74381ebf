"""File I/O of folders that may come from elsewhere: atomic writes, temporary names, bounded reads.

* Writes: a temporary file in the same folder, fsync, then rename. A crash or a full disk never leaves a
  half-written artifact in place of a good one.
* Temporary names (:func:`temp_file`, :func:`temp_dir`): every temporary file or folder any writer or exporter
  stages is created fresh and exclusive (``O_EXCL``/``mkdir``, a random name) inside the target's folder, named
  ``.~<pid>.<random>.<final name>``; a symlink or file already there is never followed or reused. The process id
  makes leftovers recognisable: the temporaries of a process that no longer runs (a ``kill -9``) are removed
  (:func:`remove_stale_temps`) the next time anything stages a file in that folder.
* Reads (:func:`read_bounded`): the one reader of every file the toolkit reads back from a folder (JSON, YAML,
  markers): regular files only (a FIFO, socket or device is one line, never a blocking open: ``O_NONBLOCK`` and
  an ``fstat`` check after opening) and at most ``limit`` bytes.
* Nothing here follows a symlink to write: a symlink at a target name is replaced by the rename, appends and locks
  open with ``O_NOFOLLOW``, :func:`own_folder` refuses a sub-folder that is a link, and :func:`confined` tells
  whether a file found in a folder really lies in it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterator, Optional

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
    try:
        fd, tmp = _mkstemp(path)
    except OSError as exc:
        raise DiskWriteError(f"{path}: write failed ({exc.strerror or exc}); earlier artifacts are intact") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if not isinstance(exc, OSError):
            raise
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


# ------------------------------------------------------------------------------------------------ temporary names

TEMP_PREFIX = ".~"  # .~<pid>.<8 random characters>.<final name>
_TEMP_RE = re.compile(r"^\.~(\d{1,10})\.[A-Za-z0-9_]{8}\.")


def _temp_prefix() -> str:
    return f"{TEMP_PREFIX}{os.getpid()}."


def _mkstemp(path: Path) -> tuple[int, str]:
    """An open descriptor and the name of a fresh temporary file beside ``path`` (``O_EXCL``, usual permissions)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(), suffix=f".{path.name}", dir=path.parent)
    os.chmod(tmp, _MODE)  # mkstemp creates 0600; artifacts get the usual permissions
    return fd, tmp


def temp_file(path: str | Path) -> Path:
    """A fresh, empty file created exclusively next to ``path`` under a random name that ends with ``path``'s name
    (so its suffix is what runtimes look at); the caller writes it and renames it over ``path`` (:func:`place`)
    or removes it. Nothing at that name existed before: no link is followed, no earlier file reused."""
    fd, tmp = _mkstemp(Path(path))
    os.close(fd)
    return Path(tmp)


def temp_dir(folder: str | Path) -> Path:
    """A fresh, empty folder created inside ``folder`` (``mkdir`` fails on anything already there; mode 0700),
    for exporters whose converters write several files by name (ncnn's .param/.bin, an OpenVINO IR, a Core ML
    package); move the checked files out with :func:`place` and remove it with :func:`remove_tree`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(folder)
    return Path(tempfile.mkdtemp(prefix=_temp_prefix(), suffix=".d", dir=folder))


def _alive(pid: int) -> bool:
    if pid <= 0:
        return True  # never ours to judge (0 and negatives name process groups)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # another user's process, or an unknowable one: left alone
    return True


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Remove the temporary files and folders (:func:`temp_file`, :func:`temp_dir`) that a process no longer
    running left in ``folder`` (a ``kill -9`` mid-export); links are removed, never followed. Returns them."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = _TEMP_RE.match(name)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            p = Path(folder) / name
            try:
                remove_tree(p)
            except OSError:
                continue
            removed.append(p)
    return removed


def remove_tree(path: str | Path) -> None:
    """Remove a file, a link (not what it points to) or a folder this toolkit wrote; absent is fine."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def staged(path: str | Path) -> Iterator[Path]:
    """A fresh temporary file beside ``path`` (:func:`temp_file`) for the ``with`` body to write and check; when
    the body finishes it is renamed over ``path``, when it raises it is removed and ``path`` stays as it was."""
    tmp = temp_file(path)
    try:
        yield tmp
        place(tmp, path)
    except BaseException:
        remove_tree(tmp)
        raise


def place(tmp: str | Path, path: str | Path) -> None:
    """Move a checked temporary file or folder over ``path``. A link at ``path`` is replaced, never followed;
    where a folder is on either side (an ``.mlpackage``), the earlier entry is moved into a fresh temporary folder
    first (put back if the move fails) and removed after."""
    tmp, path = Path(tmp), Path(path)
    folder_involved = tmp.is_dir() or (path.is_dir() and not path.is_symlink())
    if not folder_involved or not (path.exists() or path.is_symlink()):
        os.replace(tmp, path)
        return
    aside = temp_dir(path.parent)
    try:
        os.replace(path, aside / path.name)
        try:
            os.replace(tmp, path)
        except OSError:
            os.replace(aside / path.name, path)
            raise
    finally:
        remove_tree(aside)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's content, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def own_folder(path: str | Path, create: bool = True) -> Path:
    """``path`` as a real folder (created when absent and ``create``). A symlink there (to a folder elsewhere) or a
    file is one :class:`~compressor.errors.UserError` line naming it: nothing is read, written or deleted through
    a link."""
    path = Path(path)
    refuse_link(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: is a file, not a folder (move it away)")
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def refuse_link(path: str | Path) -> None:
    """One UserError line when ``path`` is a symlink: a run folder's sub-folders and the artifacts it trusts as
    its own are never links (their content would be another place's, and writes and deletes would land there)."""
    if Path(path).is_symlink():
        raise UserError(
            f"{path}: is a symlink; compressor does not read, write or delete through links in a run folder, nor "
            f"trust what they point to as the run's own (remove the link; the run makes a real one)"
        )


# ------------------------------------------------------------------------------------------------ bounded reads

MAX_READ_BYTES = 16 << 20  # JSON and YAML a folder holds; larger files name their own bound


def read_bounded(path: str | Path, limit: int = MAX_READ_BYTES, head: bool = False) -> bytes:
    """The bytes of the regular file at ``path``, at most ``limit`` of them; one UserError line naming the file
    otherwise: not found, a folder, a FIFO/socket/device (never a blocking open: the check is made before and,
    with ``O_NONBLOCK``, after opening), larger than ``limit`` (``head``: its first ``limit`` bytes instead), or
    unreadable."""
    path = Path(path)
    try:
        os.stat(path)  # FileNotFoundError below
        refuse_special(path)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # replaced between the check and the open
            raise NotRegularFile(_not_regular(path, mode))
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    if total > limit and head:
        return b"".join(chunks)[:limit]
    if total > limit:
        raise UserError(f"{path}: larger than {_size_text(limit)} (not a file compressor wrote)")
    return b"".join(chunks)


class NotRegularFile(UserError):
    """A folder, FIFO, socket or device where a file is read: refused, never opened for a blocking read."""


def refuse_special(path: str | Path) -> None:
    """One :class:`NotRegularFile` line when something other than a regular file (a FIFO, socket, device or
    folder) is at ``path``; nothing there, or a plain file, passes. Nothing is opened."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode):
        raise NotRegularFile(_not_regular(Path(path), mode))


def _not_regular(path: Path, mode: int) -> str:
    if stat.S_ISDIR(mode):
        return f"{path}: is a folder, not a file"
    return f"{path}: not a regular file (a FIFO, socket or device); compressor reads only plain files"


def _size_text(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB" if n >= 1 << 10 else f"{n} bytes"


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
