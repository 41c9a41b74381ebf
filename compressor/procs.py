"""Child processes die with their parent.

* :func:`start_group` starts a child in its own process group (``start_new_session``) and registers it: on normal
  exit, SIGTERM, SIGHUP or SIGINT of the parent the whole group is terminated (SIGTERM, then SIGKILL after a grace
  period).
* A SIGKILLed parent runs no handler, so children also watch their parent: :func:`die_with_parent` asks Linux
  for ``PR_SET_PDEATHSIG`` (through ctypes) and, elsewhere or as a backstop, starts a daemon thread that polls
  ``os.getppid()``. :func:`start_group` installs it in the child before ``exec`` (``preexec_fn``); workers
  (``compressor.app.worker``, the timing worker) call it again at start-up, since torchrun's own children are not
  started by us.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Optional, Sequence

PR_SET_PDEATHSIG = 1
_children: list[subprocess.Popen] = []
_installed = False
ENV_PARENT = "COMPRESSOR_PARENT_PID"
STOP_ENV = "COMPRESSOR_STOP_FILE"  # workers stop (with a checkpoint) after the step in which this file appears


def set_pdeathsig(sig: int = signal.SIGTERM) -> bool:
    """Linux: have the kernel send ``sig`` to this process when its parent thread dies. False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _poll_parent(parent: int, interval: float) -> None:
    direct = os.getppid()  # torchrun, for its workers; ``parent`` may be further up (compress)
    while True:
        time.sleep(interval)
        if os.getppid() != direct or not _alive(parent):  # reparented: the direct parent died
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(2 * interval)
            os._exit(143)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def die_with_parent(parent: Optional[int] = None, interval: float = 0.5) -> None:
    """Make this process exit when ``parent`` (default: the parent named by ``COMPRESSOR_PARENT_PID``, else the
    current parent) dies: PR_SET_PDEATHSIG where available, plus a polling thread."""
    if parent is None:
        env = os.environ.get(ENV_PARENT, "")
        parent = int(env) if env.isdigit() else os.getppid()
    set_pdeathsig(signal.SIGTERM)
    if parent <= 1 or not _alive(parent):
        os._exit(143)  # the parent is already gone
    threading.Thread(target=_poll_parent, args=(parent, interval), daemon=True, name="parent-watch").start()


def _preexec() -> None:  # runs in the child between fork and exec
    set_pdeathsig(signal.SIGTERM)


def terminate_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the child's process group, SIGKILL it after ``grace`` seconds."""
    if proc.poll() is not None:
        _signal_group(proc.pid, signal.SIGKILL)  # grandchildren may outlive their leader
        return
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(proc.pid, signal.SIGKILL)
    try:
        proc.wait(1.0)
    except subprocess.TimeoutExpired:  # pragma: no cover - an unkillable process
        pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _cleanup() -> None:
    for p in list(_children):
        terminate_group(p, grace=2.0)
    _children.clear()


def _on_signal(signum, frame) -> None:
    _cleanup()
    prev = _previous.get(signum)
    if callable(prev):
        prev(signum, frame)
    elif signum == signal.SIGINT:
        raise KeyboardInterrupt
    else:
        raise SystemExit(128 + signum)


_previous: dict[int, object] = {}


def _install() -> None:
    global _installed
    if _installed:
        return
    atexit.register(_cleanup)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            try:
                prev = signal.getsignal(sig)
                if prev in (signal.SIG_DFL, None):
                    _previous[sig] = None
                    signal.signal(sig, _on_signal)
            except (ValueError, OSError):  # pragma: no cover
                pass
    _installed = True


def start_group(cmd: Sequence[str], env: Optional[dict] = None, **kwargs) -> subprocess.Popen:
    """Start ``cmd`` in its own process group, tied to this process's life (see the module docstring)."""
    _install()
    env = dict(os.environ if env is None else env)
    env[ENV_PARENT] = str(os.getpid())
    proc = subprocess.Popen(
        list(cmd),
        env=env,
        start_new_session=True,
        preexec_fn=_preexec if sys.platform.startswith("linux") else None,
        **kwargs,
    )
    _children.append(proc)
    return proc


def release(proc: subprocess.Popen) -> None:
    """Forget a finished child (its group is still killed, in case grandchildren linger)."""
    if proc in _children:
        _children.remove(proc)
    if proc.poll() is not None:
        _signal_group(proc.pid, signal.SIGKILL)


def run_group(
    cmd: Sequence[str],
    env: Optional[dict] = None,
    timeout: Optional[float] = None,
    *,
    stop_file: Optional[str | os.PathLike] = None,
    grace: float = 30.0,
    **kwargs,
) -> subprocess.CompletedProcess:
    """``subprocess.run`` in an own process group that dies with this process; on KeyboardInterrupt or a timeout
    the whole group is terminated before the exception propagates.

    On Ctrl-C the children first get ``grace`` seconds to checkpoint: they are sent SIGINT, or, with ``stop_file``
    (workers that stop cleanly on request, see :func:`run_group_stoppable`), the file is created. A second Ctrl-C or
    the end of the grace period terminates the group."""
    proc = start_group(cmd, env=env, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except KeyboardInterrupt:
        try:
            if stop_file is None:
                _signal_group(proc.pid, signal.SIGINT)
            else:
                with open(stop_file, "w"):
                    pass
            proc.wait(grace)
        except (subprocess.TimeoutExpired, KeyboardInterrupt, OSError):
            pass
        terminate_group(proc)
        release(proc)
        raise
    except BaseException:
        terminate_group(proc)
        release(proc)
        raise
    release(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_group_stoppable(
    cmd: Sequence[str], stop_file: str | os.PathLike, env: Optional[dict] = None, grace: float = 120.0, **kwargs
) -> subprocess.CompletedProcess:
    """:func:`run_group` for workers that stop cleanly on request: on Ctrl-C (KeyboardInterrupt) the file
    ``stop_file`` (passed to the children as ``COMPRESSOR_STOP_FILE``) is created and the children get ``grace``
    seconds to write their checkpoint and exit; a second Ctrl-C or the end of the grace period terminates the
    group. The KeyboardInterrupt is raised again once the children are gone."""
    env = dict(os.environ if env is None else env)
    env[STOP_ENV] = str(stop_file)
    return run_group(cmd, env=env, stop_file=stop_file, grace=grace, **kwargs)
