"""Checks of command-line values that typer's types do not cover: each raises one :class:`UserError` line naming
the flag, before anything is loaded, allocated or started. The ``compress`` commands only call them: ``profile``'s
flags are one :class:`ProfileRequest`, ``export``'s one :class:`compressor.exporters.export.ExportSpec` (:func:`check_export_flags`)."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

from ..errors import UserError
from ..exporters.export import ExportSpec, check_files
from ..exporters.table import get_backend
from ..remote import check_host

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


MAX_REMOTE_THREADS = 1024  # another machine's cores are not known here


def max_threads() -> int:
    """The most intra-op threads a local measurement may ask for: 4× this machine's cores (at most 1024)."""
    return min(MAX_REMOTE_THREADS, 4 * (os.cpu_count() or 1))


def check_threads(threads: Optional[int], flag: str = "--threads", remote: bool = False, what: str = "threads") -> None:
    """Threads for a measurement (or training ``what="processes"``): None (all cores) or 1 to :func:`max_threads`
    (1024 on another machine)."""
    limit = MAX_REMOTE_THREADS if remote else max_threads()
    if threads is not None and not 1 <= threads <= limit:
        where = "for another machine" if remote else f"4× this machine's {os.cpu_count() or 1} cores"
        raise UserError(f"{flag}: expected 1 to {limit} {what} ({where}), got {threads}")


def check_finite(value: Optional[float], flag: str) -> None:
    """A number given on the command line is finite (``1e309`` parses as infinity)."""
    if value is not None and not math.isfinite(value):
        raise UserError(f"{flag}: expected a finite number, got {value!r}")


def check_profile_flags(precision: str, seconds: Optional[float], device: str, host: Optional[str]) -> None:
    """``compress profile``'s free-text flags."""
    check_precisions([p.strip() for p in precision.split(",") if p.strip()] or [precision])
    check_seconds(seconds)
    check_device(device)
    if host is not None:
        check_host(host)


def _check_creatable(folder: Path, flag: str) -> None:
    """``folder`` exists as a folder, or can be made: its nearest existing ancestor is a folder this user may
    write (a file on the way, ``a/file/sub``, is one line, not a traceback from ``mkdir``)."""
    if folder.is_dir():
        return
    if folder.exists() or folder.is_symlink():
        raise UserError(f"{flag}: {folder} exists and is not a folder")
    base = folder.parent
    while not (base.exists() or base.is_symlink()) and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise UserError(f"{flag}: {base} is not a folder, so {folder} cannot be created")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(f"{flag}: cannot create {folder}: {base} is not writable")


def check_out_folder(out: Optional[Path], flag: str = "--out") -> None:
    """An output folder: a folder, or absent and creatable (it is created), not a file."""
    if out is not None and out.exists() and not out.is_dir():
        raise UserError(f"{flag}: {out} exists and is not a folder; choose a folder to write into")
    if out is not None:
        _check_creatable(Path(out), flag)


def make_out_folder(out: Path, flag: str = "--out") -> Path:
    """:func:`check_out_folder`, then create it; a ``mkdir`` that fails all the same is one line."""
    check_out_folder(out, flag)
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{flag}: cannot create {out} ({exc.strerror or exc})") from None
    return Path(out)


def check_out_file(out: Path, flag: str = "--out") -> None:
    """An output file: its folder exists (or can be made) and it is not a folder."""
    if out.is_dir():
        raise UserError(f"{flag}: {out} is a folder; name a file")
    parent = out.parent
    if parent.exists() and not parent.is_dir():
        raise UserError(f"{flag}: {parent} is not a folder")
    _check_creatable(parent, flag)


def check_existing(path: Optional[Path], flag: str) -> None:
    if path is not None and not path.exists():
        raise UserError(f"{flag}: {path} does not exist")


def check_folder(path: Optional[Path], flag: str) -> None:
    """A folder the command reads: when given, it is one."""
    if path is not None and not path.is_dir():
        raise UserError(f"{flag}: {path} is not a folder")


def csv_list(value: Optional[str], cast: Callable = str) -> list:
    """``"a, b,,c"`` -> ``["a", "b", "c"]`` (each through ``cast``); empty or None: ``[]``."""
    if not value:
        return []
    try:
        return [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"cannot parse {value!r} as a comma-separated list of {cast.__name__}") from None


def parse_numbers(value: str, flag: str, cast: Callable, lo: float, hi: float) -> list:
    """``"0.5,0.25"`` -> ``[0.5, 0.25]``: finite numbers in (``lo``, ``hi``] for floats, [``lo``, ``hi``] for ints,
    anything else one line naming the flag."""
    try:
        vals = [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag}: cannot parse {value[:60]!r} as comma-separated {cast.__name__} values") from None
    low_ok = (lambda v: v > lo) if cast is float else (lambda v: v >= lo)
    bad = [v for v in vals if not (low_ok(v) and v <= hi)]
    if bad or not vals:
        raise UserError(
            f"{flag}: expected values in {'(' if cast is float else '['}{lo:g}, {hi:g}], got {value[:60]!r}"
        )
    return vals


def ablate_students(value: Optional[str]) -> tuple:
    """``compress ablate --widths``: each entry a width in (0, 1] or a file of per-layer widths (a ``plan.json``,
    checked to exist; kept as an absolute path); one line naming the flag otherwise."""
    out: list = []
    for item in (v.strip() for v in (value or "").split(",")):
        if not item:
            continue
        try:
            out += parse_numbers(item, "--widths", float, 0.0, 1.0)
            continue
        except UserError:
            if not item.endswith(".json") and not Path(item).exists():
                raise
        path = Path(item).expanduser()
        if not path.is_file():
            raise UserError(f"--widths: {item}: file not found (a plan.json of per-layer widths, or a width)")
        out.append(str(path.resolve()))
    return tuple(out)


def check_run_device(device: Optional[str]) -> None:
    """``compress run --device``: auto, cpu or cuda; None keeps the recipe's."""
    if device not in (None, "auto", "cpu", "cuda"):
        raise UserError(f"--device: expected auto, cpu or cuda, got {device!r}")


def check_evaluate_flags(device: str, data: Optional[Path], inception_weights: Optional[Path]) -> None:
    """``compress evaluate``'s flags that every target takes."""
    check_device(device)
    check_existing(data, "--data")
    check_existing(inception_weights, "--inception-weights")


def check_student_evaluation(target: Path, data: Optional[Path], kind: str, direction: str, size: int) -> None:
    """``compress evaluate`` of a folder that is not a run folder: a student folder, with the data to evaluate on."""
    if not (target / "student.json").exists():
        raise UserError(f"{target}: neither a run folder (recipe.resolved.yaml) nor a student folder (student.json)")
    if data is None:
        raise UserError(f"{target}: a student folder needs --data (the dataset root with a test split)")
    if kind not in ("paired", "folder") or direction not in ("AtoB", "BtoA"):
        raise UserError("--kind must be paired or folder; --direction AtoB or BtoA")
    check_sizes([size])


@dataclass(frozen=True)
class ProfileRequest:
    """``compress profile``'s measurement flags as given (comma-separated lists as text): :meth:`check` checks
    them, the properties parse them, :meth:`remote_args` repeats them for ``compress profile`` on a ``--host``."""

    backend: str = "torch,ort-cpu"
    batch: str = "1"
    size: str = "256"
    precision: str = "fp32"
    warmup: int = 10
    iters: int = 50
    seconds: Optional[float] = None
    threads: Optional[int] = None
    device: str = "cpu"
    host: Optional[str] = None
    out: Path = Path("profile.json")
    force: bool = False  # overwrite an existing out file

    @property
    def backends(self) -> list[str]:
        return csv_list(self.backend)

    @property
    def batches(self) -> list[int]:
        return csv_list(self.batch, int)

    @property
    def sizes(self) -> list[int]:
        return csv_list(self.size, int)

    @property
    def precisions(self) -> list[str]:
        return csv_list(self.precision)

    def check(self) -> ProfileRequest:
        """One ``error: --flag: ...`` line for the first bad value, in the order of the command's options."""
        parsed = (("--batch", self.batch, self.batches), ("--size", self.size, self.sizes))
        for flag, text, values in parsed:
            if not values or any(v < 1 for v in values):
                raise UserError(f"{flag}: expected positive integers, got {text!r}")
        check_sizes(self.sizes)
        if any(b > 4096 for b in self.batches):
            raise UserError(f"--batch: at most 4096, got {self.batch!r}")
        check_out_file(self.out)
        if self.out.exists() and not self.force:
            raise UserError(f"--out: {self.out} exists; pass --force to overwrite it or choose another file")
        for b in self.backends:
            try:
                get_backend(b)
            except ValueError as exc:
                raise UserError(str(exc)) from None
        check_profile_flags(self.precision, self.seconds, self.device, self.host)
        check_threads(self.threads, remote=self.host is not None)
        return self

    def profile_kwargs(self) -> dict:
        """The measurement flags as :func:`exporters.profile.profile_models` takes them."""
        return dict(
            backends=self.backends,
            batches=self.batches,
            sizes=self.sizes,
            precisions=self.precisions,
            warmup=self.warmup,
            iters=self.iters,
            seconds=self.seconds,
            threads=self.threads,
            device=self.device,
        )

    def remote_args(self) -> list[str]:
        """The measurement flags for ``compress profile`` on the ``--host`` machine."""
        args = ["--backend", self.backend, "--batch", self.batch, "--size", self.size, "--precision", self.precision]
        args += ["--warmup", str(self.warmup), "--iters", str(self.iters)]
        return args + (["--threads", str(self.threads)] if self.threads else [])


def check_export_flags(spec: ExportSpec) -> ExportSpec:
    """``compress export``'s checks of the values its options filled in: one ``error: --flag: ...`` line for the
    first bad one."""
    if spec.precision is not None and spec.precision not in PRECISIONS:
        raise UserError(f"--precision: expected fp32, fp16 or int8, got {spec.precision!r}")
    for v in spec.trt_versions:
        if v not in (10, 11):
            raise UserError(f"--trt-version: expected 10 or 11, got {v}")
    if spec.size is not None:
        check_sizes([spec.size])
    check_finite(spec.max_drop, "--max-drop")
    check_out_folder(spec.out)
    check_existing(spec.data, "--data")
    bad = [d for d in spec.dynamic if d not in ("batch", "hw")]
    if bad:
        raise UserError(f"--dynamic: unknown axis {bad[0]!r} (batch, hw)")
    check_files(spec)  # each format and its precision against the format table; a missing extra
    return spec
