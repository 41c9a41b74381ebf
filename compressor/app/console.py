"""What a person sees in the terminal: progress bars on a terminal, a plain heartbeat line in logs and pipes,
aligned tables, and the closing summary of a run.

On a terminal each stage gets a rich progress bar (step, loss, ETA). When stderr is not a terminal (CI, nohup, a
notebook cell, ``| tee``) bars would be noise, and silence is worse: a :class:`Heartbeat` prints one plain line at
least every 30 s and at every 10% of a stage, with the step, loss, rate and ETA.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Optional, TextIO

from .. import schemas
from ..errors import UserError
from ..exporters.report import METRICS, SMALL_FID_N, SMALL_N_NOTE, change_text, metric_text, sig
from ..exporters.report import headline as report_headline

log = logging.getLogger("compressor")


# ------------------------------------------------------------------------------------------------ formatting


def duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    m, s = divmod(seconds, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


# A progress report may say what the stage does now: ``progress(stage, step, total, {"doing": "openvino int8"})``
# (total 0: steps not known yet). The first report of a stage starts its clock: stages report step 0 as they begin.
DOING = "doing"
# Reports at step 0 are shown once their stage has run this long (a timer checks 4 times a second, so a stage says
# what it does within 2 s); a mistake found at once is then one error line, not a progress line and an error.
FIRST_AFTER = 1.75
TICK = 0.25


def _numbers(losses: Optional[dict]) -> dict:
    """The numeric entries of a progress report (losses, gradient shares); ``doing`` is text."""
    return {k: v for k, v in (losses or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _loss(losses: dict) -> Optional[float]:
    main = {k: v for k, v in _numbers(losses).items() if not k.endswith("/disc") and ":" not in k}
    return sum(main.values()) if main else None


def _shares(losses: dict) -> str:
    """``grad share G/recon 80%, G/kd 12%, …``: each generator term's share of the gradient norm (last log step)."""
    shares = {k.split(":", 1)[1]: v for k, v in _numbers(losses).items() if k.startswith("share:")}
    if not shares:
        return ""
    return "grad share " + " ".join(f"{k.split('/')[-1]} {100 * v:.2g}%" for k, v in shares.items())


def _doing(losses: Optional[dict]) -> Optional[str]:
    value = (losses or {}).get(DOING)
    return value if isinstance(value, str) and value else None


# ------------------------------------------------------------------------------------------------ heartbeat


class Heartbeat:
    """Plain progress lines for logs and pipes.

    ``update(stage, step, total, losses)`` is fed by the pipeline's progress callback; ``tick()`` is called about
    once a second (by a timer thread, or a test with a fake clock). A line is written when a stage starts, when
    what it does changes (``losses["doing"]``), at every ``every_frac`` of it, when it finishes, and whenever
    ``every_s`` seconds passed without a line, even when no step has finished (a slow first step, a stage that
    reports no steps). Elapsed time counts from the stage's first report; the rate from its first finished step.
    """

    def __init__(
        self,
        write: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
        every_s: float = 30.0,
        every_frac: float = 0.1,
        first_after: float = FIRST_AFTER,
    ):
        self.write, self.clock, self.every_s, self.every_frac = write, clock, every_s, every_frac
        self.first_after = first_after
        self.held = False  # the stage's first line waits: a step that fails at once shows only its error line
        self.lock = threading.Lock()
        now = clock()
        self.last_line = now
        self.idle_since = now  # start of the current stretch with no reported stage
        self.after: Optional[str] = None  # the last stage that finished
        self.stage: Optional[str] = None
        self.doing: Optional[str] = None
        self.doing_at = 0  # the step at which the stage said what it does
        self.step = self.total = 0
        self.losses: dict = {}
        self.t0 = now  # first report of the current stage
        self.rate_from: Optional[tuple[float, int]] = None  # (time, step) of its first finished step
        self.next_frac = every_frac
        self.last_step_at = now

    def _rate(self, now: float) -> Optional[float]:
        if self.rate_from is None:
            return None
        t, step = self.rate_from
        done = self.step - step
        return done / (now - t) if now > t and done > 0 else None

    def _line(self, now: float) -> str:
        if self.stage is None:
            since = f"since {self.after} finished" if self.after else "since start"
            return f"[{duration(now - self.idle_since)} {since}] working…"
        dt = now - self.t0
        if self.total and self.step >= self.total and now > self.last_step_at:
            what = self.doing if self.doing and self.doing_at >= self.total else "finishing the stage"
            return f"{self.stage}: all {self.total} steps done, {what}, elapsed {duration(dt)}"
        if not self.total:
            parts = [f"{self.stage}: {self.doing or 'working'}"]
        else:
            parts = [f"{self.stage}: step {self.step}/{self.total} ({100 * self.step / self.total:.0f}%)"]
            parts += [self.doing] if self.doing else []
        loss = _loss(self.losses)
        if loss is not None:
            parts.append(f"loss {loss:.4g}")
        if _shares(self.losses):
            parts.append(_shares(self.losses))
        rate = self._rate(now)
        if rate:
            parts.append(f"{sig(rate)} step/s" if rate >= 1 else f"{sig(1 / rate)} s/step")
            if self.step < self.total:
                parts.append(f"ETA {duration((self.total - self.step) / rate)}")
        parts.append(f"elapsed {duration(dt)}")
        return ", ".join(parts)

    def _emit(self, now: float) -> None:
        self.last_line, self.held = now, False
        self.write(self._line(now))

    def update(self, stage: str, step: int, total: int, losses: Optional[dict] = None) -> None:
        with self.lock:
            now = self.clock()
            self.last_step_at = now
            doing = _doing(losses)
            if stage != self.stage:
                self.stage, self.t0, self.doing, self.doing_at = stage, now, doing, step
                self.rate_from = (now, step) if step > 0 else None
                self.next_frac = self.every_frac
                self.step, self.total, self.losses = step, total, _numbers(losses)
                if step > 0 or self.first_after <= 0:
                    self._emit(now)
                else:  # what it does is said by tick() once it has run first_after seconds
                    self.held = True
                return
            if self.held and step == 0 and now - self.t0 < self.first_after:
                self.doing = _doing(losses) or self.doing
                self.total, self.losses = total, _numbers(losses)
                return
            if self.rate_from is None and step > 0:
                self.rate_from = (now, step)
            changed = doing is not None and doing != self.doing
            if doing is not None:
                self.doing, self.doing_at = doing, step
            self.step, self.total, self.losses = step, total, _numbers(losses)
            frac = step / total if total else 0.0
            crossed = bool(total) and frac + 1e-9 >= self.next_frac
            if crossed:
                while self.next_frac <= frac + 1e-9:
                    self.next_frac += self.every_frac
            if self.held or changed or crossed or (total and step >= total) or now - self.last_line >= self.every_s:
                self._emit(now)

    def tick(self) -> None:
        with self.lock:
            now = self.clock()
            if (self.held and now - self.t0 >= self.first_after) or now - self.last_line >= self.every_s:
                self._emit(now)

    def stage_done(self, stage: str) -> None:
        """The pipeline finished ``stage``; until the next report the heartbeat says how long since."""
        with self.lock:
            now = self.clock()
            self.stage, self.after, self.doing, self.held = None, stage, None, False
            self.idle_since = self.last_line = now


_SIGINT = threading.Event()


def _on_sigint(signum, frame) -> None:
    _SIGINT.set()
    raise KeyboardInterrupt


def watch_interrupts() -> None:
    """Remember a Ctrl-C (SIGINT) as well as raising KeyboardInterrupt, as Python's own handler does: a library
    that catches it and raises something else (a C extension's import turns it into "ImportError: initialization
    failed") cannot make the command go on or end as if nothing happened. Main thread only, and only over
    Python's default handler (a training run installs its own while it trains)."""
    _SIGINT.clear()
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ):
        signal.signal(signal.SIGINT, _on_sigint)


def interrupted() -> bool:
    """Whether Ctrl-C was pressed since :func:`watch_interrupts`."""
    return _SIGINT.is_set()


class Progress:
    """The progress callback ``progress(stage, step, total, losses)`` for the CLI: rich bars on a terminal, a
    :class:`Heartbeat` (with a timer thread) when stderr is not one, nothing with ``quiet``."""

    def __init__(self, quiet: bool, stream: Optional[TextIO] = None, every_s: float = 30.0, tty: Optional[bool] = None):
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.bar = None
        self.tasks: dict = {}
        self.pending: dict = {}  # terminal: stage -> (time, step-0 report) not shown yet
        self.heartbeat: Optional[Heartbeat] = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        if not quiet and not self.tty:
            self.heartbeat = Heartbeat(self._write, every_s=every_s)

    def _write(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def __enter__(self):
        if not self.quiet:
            self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
            self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(TICK):
            if self.heartbeat is not None:
                self.heartbeat.tick()
            for stage, (t, report) in list(self.pending.items()):
                if time.monotonic() - t >= FIRST_AFTER and self.pending.pop(stage, None):
                    self._show(stage, *report)

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        self.bar = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=Console(file=self.stream),
            transient=False,
        )
        self.bar.__enter__()

    def __call__(self, stage: str, step: int, total: int, losses: dict) -> None:
        if interrupted() and threading.current_thread() is threading.main_thread():
            raise KeyboardInterrupt  # a Ctrl-C that a library turned into something else stops the work here
        if self.quiet:
            return
        if self.heartbeat is not None:
            self.heartbeat.update(stage, step, total, losses)
            return
        if stage not in self.tasks and step == 0:
            t = self.pending[stage][0] if stage in self.pending else time.monotonic()
            self.pending[stage] = (t, (step, total, losses))
            return
        self.pending.pop(stage, None)
        self._show(stage, step, total, losses)

    def _show(self, stage: str, step: int, total: int, losses: dict) -> None:
        with self._lock:  # the caller's thread, or the timer's for a report that waited
            if self.bar is None:
                self._start_bar()
            if stage not in self.tasks:
                self.tasks[stage] = self.bar.add_task(stage, total=total or None, info="")
            loss = _loss(losses)
            info = "" if loss is None else f"loss {loss:.3f}"
            if _shares(losses):
                info += f" ({_shares(losses)})"
            what = {"description": f"{stage}: {_doing(losses)}"} if _doing(losses) else {}
            self.bar.update(self.tasks[stage], completed=step, total=total or None, info=info, **what)

    def stage_done(self, stage: str) -> None:
        self.pending.pop(stage, None)
        if self.heartbeat is not None:
            self.heartbeat.stage_done(stage)
        elif self.bar is not None and stage in self.tasks:  # a bar without steps stops pulsing
            task = next((t for t in self.bar.tasks if t.id == self.tasks[stage]), None)
            total = task.total if task is not None and task.total else 1
            self.bar.update(self.tasks[stage], total=total, completed=total)

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.bar is not None:
            self.bar.__exit__(*exc)


# ------------------------------------------------------------------------------------------------ tables

_UNITS = {
    "params": "params",
    "macs": "macs",
    "psnr": "psnr (dB, higher is better)",
    "psnr_vs_teacher": "psnr_vs_teacher (dB, higher is better)",
}


def eval_table(res: dict, title: Optional[str] = None):
    """A rich Table of an eval.json document (teacher and/or student columns, change where both exist)."""
    from rich.table import Table

    roles = [r for r in ("teacher", "student") if isinstance(res.get(r), dict)]
    table = Table(title=title, show_edge=False, header_style="bold")
    table.add_column("metric")
    for r in roles:
        table.add_column(r, justify="right")
    both = len(roles) == 2
    if both:
        table.add_column("change", justify="right")
    for key, _label, _, better in METRICS:
        vals = [res[r].get(key) for r in roles]
        if all(v is None for v in vals):
            continue
        row = [_UNITS.get(key, f"{key} ({better} is better)")]
        row += [metric_text(key, v) for v in vals]
        if both:
            row.append(change_text(key, *vals))
        table.add_row(*row)
    n = res.get("n_images") or next((res[r].get("n_images") for r in roles if res[r].get("n_images")), None)
    has_fid = any(k in res[r] for r in roles for k in ("fid", "kid"))
    if has_fid and isinstance(n, int) and n < SMALL_FID_N:
        table.caption = f"FID/KID: n = {n}: {SMALL_N_NOTE}"
    return table


def print_table(table, file: Optional[TextIO] = None) -> None:
    from rich.console import Console

    Console(file=file or sys.stdout, width=max(100, 80), soft_wrap=False).print(table)


# ------------------------------------------------------------------------------------------------ closing summary


def headline(run_root: Path) -> Optional[str]:
    """One line: params ×, MACs ×, latency × per backend, quality kept; None without eval.json or profile.json."""
    ev_path, prof_path = run_root / "eval.json", run_root / "profile.json"
    try:
        ev = schemas.read_json(ev_path) if ev_path.exists() else None
        prof = schemas.read_json(prof_path) if prof_path.exists() else None
    except (OSError, UserError):
        return None
    return report_headline(ev, [prof] if prof else [])


def closing_summary(run_root: Path) -> list[str]:
    """The last lines of a run: the run folder, the headline, and both report paths."""
    lines = [f"run folder: {run_root}"]
    head = headline(run_root)
    if head:
        lines.append(f"student vs teacher: {head}")
    md, page = run_root / "report.md", run_root / "report.html"
    if md.exists() or page.exists():
        lines.append(f"report: {md}" + (f" and {page}" if page.exists() else ""))
    return lines


# ------------------------------------------------------------------------------------------------ converter noise

MAX_CAPTURED = 1 << 20  # the converters' messages kept for a look afterwards (the last MiB)


class Captured:
    """What :func:`captured_output` caught: the lines, and the stream to the real stderr for progress lines."""

    def __init__(self, stderr: TextIO):
        self.stderr = stderr
        self.text = ""

    @property
    def lines(self) -> int:
        return len([line for line in self.text.splitlines() if line.strip()])


@contextlib.contextmanager
def captured_output() -> Iterator[Captured]:
    """Everything written to this process's stdout and stderr in the ``with`` body, at the file-descriptor level
    (Python warnings, C++ libraries' logs, absl, converters' progress bars, child processes), is caught instead of
    shown; ``captured.stderr`` still reaches the terminal (for progress lines). After the body ``captured.text``
    holds the last :data:`MAX_CAPTURED` bytes."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    real_err = os.fdopen(os.dup(saved[1]), "w", buffering=1, encoding="utf-8", errors="replace")
    sink = tempfile.TemporaryFile()
    captured = Captured(real_err)
    try:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        yield captured
    finally:
        with contextlib.suppress(ValueError, OSError):
            sys.stdout.flush()
            sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        size = sink.seek(0, os.SEEK_END)
        sink.seek(max(0, size - MAX_CAPTURED))
        captured.text = sink.read().decode("utf-8", "replace")
        sink.close()
        real_err.close()


# ------------------------------------------------------------------------------------------------ log filters

_AXIS_WARNING = re.compile(r"Axis -?\d+ is out-of-range for weight '.*' with rank \d+")


class QuantizationNoiseFilter(logging.Filter):
    """onnxruntime's INT8 quantiser warns ``Axis 1 is out-of-range for weight 'val_20' with rank 1`` once per
    one-dimensional weight (biases, norm scales) when per-channel quantisation is on: such a weight has no
    channel axis, so it is quantised per tensor, which is the right thing. The filter drops these lines and
    counts them; :meth:`explain` logs one explanatory line instead."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is not ours to judge
            return True
        if _AXIS_WARNING.search(msg):
            self.count += 1
            return False
        return True

    def explain(self) -> None:
        if self.count:
            log.info(
                "INT8: %d one-dimensional weights (biases, norm scales) quantised per tensor, not per "
                "channel; onnxruntime's 'Axis 1 is out-of-range' warnings about them were hidden",
                self.count,
            )
            self.count = 0


QUANT_FILTER = QuantizationNoiseFilter()


def install_log_filters() -> None:
    """Attach :data:`QUANT_FILTER` to the root logger (onnxruntime's quantiser logs with ``logging.warning``)."""
    root = logging.getLogger()
    if QUANT_FILTER not in root.filters:
        root.addFilter(QUANT_FILTER)
