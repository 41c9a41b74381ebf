"""The shape of the format table's rows, and of what runs a file.

* :class:`Format`: one file format (ultralytics' ``export_formats()`` shape): its name, suffix, precisions (the
  first is its default, which keeps the plain file name), what to install for it, its exporter, the format it
  converts from, and the :class:`Backend` rows that run its files. Every format module
  (``compressor/exporters/formats/<name>.py``) declares one ``FORMAT``; :mod:`compressor.exporters.table` gathers
  them.
* :class:`Request`: one file to write, as every exporter takes it: ``FORMAT.export(request)`` returns the file's
  record (:func:`compressor.exporters.records.record`), or a list of records when it writes more than one file.
* :class:`Backend`: one way to run a format's files (``compress profile --backend NAME``): its Runner class as
  ``"module:Class"`` (imported only when the backend is used), its device, precisions and settings.
* :class:`Runner`: NCHW float32 arrays in [-1, 1] in, arrays out: ``runner(x)``, ``runner.sync()``,
  ``runner.time_once(x)``.

This module imports no runtime, no torch and no other module of the package: a timing worker
(:mod:`compressor.exporters.timing`) rebuilds its Backend from the data it is sent (:meth:`Backend.to_data`) and
imports only its Runner's module, so an ONNX Runtime measurement never loads torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

PRECISIONS = ("fp32", "fp16", "int8")  # every precision a format may offer (bf16: the torch backends only)
INPUT, OUTPUT = "input", "output"  # the names of every exported file's input and output


def has_module(module: str) -> bool:
    """Whether ``module`` can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@dataclass(frozen=True)
class Backend:
    """One way to run a format's files: ``--backend NAME``, ``profile.backends``, ``student.budget.backend``."""

    name: str  # what users type
    runner: str  # "module:Class" of its Runner, imported lazily
    artifact: str  # the kind of file it runs: torch | onnx | openvino | engine | trtexec-json | ...
    device: str  # cpu | cuda: where it runs unless the user picks another of ``devices``
    precisions: tuple[str, ...]  # precisions it can run
    requires: tuple[str, ...]  # importable modules that must be present
    extra: str  # the install line shown when it is missing
    plan: bool = False  # compress plan may time candidate widths with it
    devices: tuple[str, ...] = ()  # other devices --device may pick (passed through to the runtime)
    variants: tuple[str, ...] = ()  # precisions that run from their own file (<stem>.int8.onnx): kind "int8-onnx"
    reads: tuple[str, ...] = ()  # other kinds of file it can run at fp32 (OpenVINO reads ONNX)
    measured: bool = True  # False: the artifact holds timings made elsewhere (trtexec --exportTimes)
    options: tuple[tuple[str, Any], ...] = ()  # runner options (ONNX Runtime providers)
    help: str = ""  # one line for --help and the docs
    make: str = ""  # how to get the file it runs, where an export does not write it

    def artifact_for(self, precision: str) -> str:
        """The kind of file this backend runs at ``precision``: ``int8-onnx`` for ONNX Runtime INT8, ..."""
        return f"{precision}-{self.artifact}" if precision in self.variants else self.artifact

    def all_devices(self) -> tuple[str, ...]:
        return (self.device,) + tuple(d for d in self.devices if d != self.device)

    def pick_device(self, asked: Optional[str]) -> str:
        """The device a run uses: ``asked`` when this backend can run there, else its own."""
        asked = (asked or "").lower()
        return asked if asked in self.all_devices() else self.device

    def option(self, key: str, default=None):
        return dict(self.options).get(key, default)

    def load(self) -> type:
        """The Runner class (imports its module)."""
        module, _, cls = self.runner.partition(":")
        return getattr(importlib.import_module(module), cls)

    def available(self) -> tuple[bool, str]:
        """(available, reason if not) on this machine: the row's modules, then its Runner's own check."""
        missing = [m for m in self.requires if not has_module(m)]
        if missing:
            return False, f"{missing[0]} is not installed: {self.extra}"
        why = self.load().unavailable(self)
        return (not why), why

    def make_runner(
        self,
        artifact: Union[str, Path, Callable[[], Any]],
        *,
        threads: Optional[int] = None,
        device: Optional[str] = None,
        precision: str = "fp32",
    ) -> Runner:
        """A Runner on ``artifact`` (a file, or for torch rows a function that builds the model)."""
        return self.load()(
            artifact, backend=self, threads=threads, device=self.pick_device(device), precision=precision
        )

    def to_data(self) -> dict:
        """The row as JSON data, for a timing worker (:meth:`from_data` rebuilds it)."""
        return asdict(self)

    @classmethod
    def from_data(cls, data: dict) -> Backend:
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        fixed["options"] = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in fixed.get("options", ()))
        return cls(**fixed)


@dataclass
class Request:
    """One file to write: what every format's exporter takes.

    ``samples``: (N, C, H, W) float32 in [-1, 1], the parity inputs; ``calibration``: (1, C, H, W) arrays for the
    precisions that are calibrated; ``source``: the file of :attr:`Format.source` this export wrote (an exporter
    that converts from it reads it; None: there is none, convert from ``model``); ``options``: the export's
    settings (:class:`compressor.exporters.export.ExportSpec`: ``dynamic``, ``opset``, ``parity_tol``, ``slim``,
    ``max_drop``, ``trt_versions``, ``emit_trtexec``, ``build_engine``, ``workspace_mb``), read by the formats that
    use them; ``limits``: parity limits that replace a format's own (``max_abs``, ``min_psnr``)."""

    model: Any
    path: Path
    samples: Any
    precision: str = "fp32"
    size: Optional[int] = None
    static: bool = False
    calibration: Optional[list[np.ndarray]] = None
    metadata: dict = field(default_factory=dict)
    source: Optional[Path] = None
    options: Any = None
    limits: dict = field(default_factory=dict)

    def option(self, key: str, default=None):
        return getattr(self.options, key, default) if self.options is not None else default

    def samples_array(self) -> np.ndarray:
        """The samples as one float32 array (N, C, H, W)."""
        s = self.samples
        s = s.detach().cpu().numpy() if hasattr(s, "detach") else s
        return np.asarray(s, dtype=np.float32)


@dataclass(frozen=True)
class Format:
    """One file format. ``export(request) -> record | [records]`` writes the file (checked against PyTorch in the
    format's own runtime before it replaces a file) and raises ``ExportError`` (one line) when the check fails."""

    name: str  # compress export --format NAME, export.formats
    suffix: str  # file suffix; other precisions than the first add ".<precision>" before it
    precisions: tuple[str, ...]
    export: Callable[[Request], Union[dict, list]]
    backends: tuple[Backend, ...] = ()  # the first runs its files in compress benchmark
    requires: tuple[str, ...] = ()  # modules the exporter needs
    extra: str = ""  # what to pip install for it
    static_only: bool = False  # batch 1 at one size
    calibrated: tuple[str, ...] = ("int8",)  # precisions that need calibration images
    # INT8 that takes a quantisation-aware student's trained scales (Request.model.quantized) instead of calibrating
    trained_int8: bool = False
    source: Optional[str] = None  # the format (at its default precision) this one converts from
    source_required: bool = False  # True: written first when the export did not ask for it
    in_recipe: bool = True  # listed in the recipe's export.formats
    order: int = 100  # place in the table (tables, help texts, compress benchmark)
    help: str = ""

    @property
    def backend(self) -> Optional[Backend]:
        """The backend that runs its files by default (compress benchmark), or None."""
        return self.backends[0] if self.backends else None

    def path(self, out_dir: str | Path, stem: str, precision: str) -> Path:
        """``<stem><suffix>`` at the default precision, else ``<stem>.<precision><suffix>``."""
        tag = "" if precision == self.precisions[0] else f".{precision}"
        return Path(out_dir) / f"{stem}{tag}{self.suffix}"

    def missing(self) -> list[str]:
        """The modules its exporter needs that are not installed here."""
        return [m for m in self.requires if not has_module(m)]

    def needs_source(self, precision: str) -> bool:
        """Whether ``precision`` is converted from another file, which must then be written first: the source
        format's own default precision (ONNX INT8 from the FP32 ONNX) or another format's (TensorRT from ONNX)."""
        return self.source_required and not (self.source == self.name and precision == self.precisions[0])

    def make_hint(self, precision: str) -> str:
        """The command that writes its file at ``precision``."""
        return f"compress export --format {self.name} --precision {precision}"


class Runner:
    """NCHW float32 in [-1, 1] in, numpy out. Subclasses set ``backend`` and ``device``."""

    backend = ""
    device = "cpu"
    file_precision: Optional[str] = None  # what the file holds, where the runner can tell

    @classmethod
    def unavailable(cls, row: Backend) -> str:
        """Why ``row`` cannot run on this machine beyond missing modules (a GPU provider, a device), or ""."""
        if row.device == "cuda" and not cuda_available():
            return f"{row.name} needs a CUDA GPU, and none is visible"
        return ""

    @classmethod
    def refuse(cls, row: Backend, precision: str, device: str) -> str:
        """Why this runner will not run ``precision`` on ``device``, or ""."""
        if precision not in row.precisions:
            return f"{row.name} runs {', '.join(row.precisions)}, not {precision}"
        return ""

    def __call__(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def sync(self) -> None:
        pass

    def time_once(self, x) -> float:
        """Milliseconds for one inference including host<->device copies."""
        t0 = time.perf_counter_ns()
        self(x)
        self.sync()
        return (time.perf_counter_ns() - t0) / 1e6

    def time_device(self, x) -> Optional[float]:
        """Milliseconds of device compute alone (CUDA events), or None on the CPU."""
        return None

    def peak_memory_mb(self) -> Optional[float]:
        return None


def cuda_available() -> bool:
    if not has_module("torch"):
        return False
    import torch

    return torch.cuda.is_available()
