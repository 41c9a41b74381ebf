"""The backend table: one row and one Runner class per runtime.

Everything that needs to know about a backend (``compress profile --backend``, ``student.budget.backend``,
``profile.backends``, ``compress plan``, ``compress benchmark``, help texts) reads :data:`BACKENDS`. A row names its
Runner as ``"module:Class"``, imported only when the backend is used, so reading the table never imports torch,
ONNX Runtime or any other runtime (their thread pools interfere when they share a process).

A Runner takes NCHW float32 arrays in [-1, 1] and returns arrays: ``runner(x)``, ``runner.sync()``,
``runner.time_once(x)``. The PyTorch and ONNX Runtime runners live here; the others live in their format's module
(``exporters/tensorrt.py``, ``exporters/openvino.py``).

Adding a runtime: write its Runner (``__init__(artifact, *, backend, threads, device, precision)``), add one
:class:`Backend` row below, and, when it runs a new kind of file, an exporter row in ``exporters/export.py``.
"""

from __future__ import annotations

import importlib
import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

from .trt_rules import ort_tensorrt_problem


@dataclass(frozen=True)
class Backend:
    name: str  # what users type: --backend NAME, student.budget.backend, profile.backends
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


_ORT_CPU = ("CPUExecutionProvider",)
_ORT_CUDA = ("CUDAExecutionProvider", "CPUExecutionProvider")
_ORT_TRT = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_TORCH = "compressor.exporters.runtimes:TorchRunner"
_MOBILE = "pip install 'compressor[mobile]'"
_ORT = "compressor.exporters.runtimes:OrtRunner"

BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            "torch",
            _TORCH,
            "torch",
            "cpu",
            ("fp32", "fp16", "bf16"),
            ("torch",),
            "pip install torch",
            plan=True,
            devices=("cuda",),
            help="PyTorch eager (the reference)",
        ),
        Backend(
            "torch-compile",
            _TORCH,
            "torch",
            "cpu",
            ("fp32", "fp16", "bf16"),
            ("torch",),
            "pip install torch",
            plan=True,
            devices=("cuda",),
            options=(("compile", True),),
            help="PyTorch with torch.compile",
        ),
        Backend(
            "ort-cpu",
            _ORT,
            "onnx",
            "cpu",
            ("fp32", "int8"),
            ("onnxruntime",),
            "pip install onnxruntime",
            plan=True,
            variants=("int8",),
            options=(("providers", _ORT_CPU),),
            help="ONNX Runtime on the CPU",
        ),
        Backend(
            "ort-cuda",
            _ORT,
            "onnx",
            "cuda",
            ("fp32", "int8"),
            ("onnxruntime",),
            "pip install onnxruntime-gpu (on a machine with an NVIDIA GPU)",
            plan=True,
            variants=("int8",),
            options=(("providers", _ORT_CUDA),),
            help="ONNX Runtime, CUDA provider",
        ),
        Backend(
            "ort-trt",
            _ORT,
            "onnx",
            "cuda",
            ("fp32", "int8"),
            ("onnxruntime",),
            "pip install onnxruntime-gpu with TensorRT (on a machine with an NVIDIA GPU)",
            plan=True,
            variants=("int8",),
            options=(("providers", _ORT_TRT),),
            help="ONNX Runtime, TensorRT provider",
        ),
        Backend(
            "openvino",
            "compressor.exporters.openvino:OpenVINORunner",
            "openvino",
            "cpu",
            ("fp32", "fp16", "int8"),
            ("openvino",),
            "pip install 'compressor[openvino]'",
            plan=True,
            devices=("gpu", "npu"),
            variants=("fp16", "int8"),
            reads=("onnx",),
            help="OpenVINO (CPU; --device gpu|npu where present)",
        ),
        Backend(
            "tensorrt",
            "compressor.exporters.tensorrt:TensorRTRunner",
            "engine",
            "cuda",
            ("fp32", "fp16", "int8"),
            ("tensorrt",),
            "pip install 'compressor[trt]' (on a machine with an NVIDIA GPU)",
            plan=True,
            help="a TensorRT engine (.plan)",
        ),
        Backend(
            "executorch",
            "compressor.exporters.executorch:ExecuTorchRunner",
            "pte",
            "cpu",
            ("fp32", "int8"),
            ("executorch",),
            _MOBILE,
            variants=("int8",),
            help="ExecuTorch .pte, XNNPACK delegate (PyTorch's phone runtime)",
        ),
        Backend(
            "litert",
            "compressor.exporters.litert:LiteRTRunner",
            "tflite",
            "cpu",
            ("fp32", "fp16", "int8"),
            ("ai_edge_litert",),
            _MOBILE,
            variants=("fp16", "int8"),
            help="LiteRT (TensorFlow Lite) interpreter, XNNPACK delegate",
        ),
        Backend(
            "ncnn",
            "compressor.exporters.ncnn:NcnnRunner",
            "ncnn",
            "cpu",
            ("fp32", "fp16"),
            ("ncnn",),
            _MOBILE,
            variants=("fp16",),
            help="ncnn (.ncnn.param/.bin), its own CPU kernels",
        ),
        Backend(
            "coreml",
            "compressor.exporters.coreml:CoreMLRunner",
            "mlpackage",
            "cpu",
            ("fp16", "fp32", "int8"),
            ("coremltools",),
            _MOBILE + " (runs on macOS)",
            devices=("gpu", "ane"),
            variants=("fp32", "int8"),
            help="Core ML .mlpackage (macOS; --device gpu|ane)",
        ),
        Backend(
            "trtexec-json",
            "compressor.exporters.profile:TrtexecTimes",
            "trtexec-json",
            "cuda",
            ("fp32", "fp16", "int8"),
            (),
            "",
            measured=False,
            help="import trtexec --exportTimes timings",
        ),
    )
}


def register(backend: Backend) -> Backend:
    """Add (or replace) a row: for runtimes that live outside this package."""
    BACKENDS[backend.name] = backend
    return backend


def backend_names(plan: bool = False) -> list[str]:
    return [n for n, b in BACKENDS.items() if b.plan or not plan]


def backend_help(plan: bool = False) -> str:
    """``torch, torch-compile, ort-cpu, ...``: for help texts and error messages."""
    return ", ".join(backend_names(plan))


def get_backend(name: str, key: str = "--backend", plan: bool = False) -> Backend:
    """The row for ``name``, or a ValueError naming ``key`` and the choices."""
    row = BACKENDS.get(name)
    if row is None or (plan and not row.plan):
        raise ValueError(f"{key}: unknown backend {name!r}; choose from {backend_help(plan)}")
    return row


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def backend_available(name: str) -> tuple[bool, str]:
    """(available, reason if not) for this machine: the row's modules, then its Runner's own check."""
    row = BACKENDS.get(name)
    if row is None:
        return False, f"unknown backend {name!r}; choose from {backend_help()}"
    missing = [m for m in row.requires if not _has(m)]
    if missing:
        return False, f"{missing[0]} is not installed: {row.extra}"
    why = row.load().unavailable(row)
    return (not why), why


def make_runner(
    name: str,
    artifact: Union[str, Path, Callable[[], Any]],
    *,
    threads: Optional[int] = None,
    device: Optional[str] = None,
    precision: str = "fp32",
) -> "Runner":
    """A Runner for backend ``name`` on ``artifact`` (a file, or for torch rows a function that builds the model)."""
    row = get_backend(name)
    return row.load()(artifact, backend=row, threads=threads, device=row.pick_device(device), precision=precision)


# ------------------------------------------------------------------------------------------------ runners


class Runner:
    """NCHW float32 in [-1, 1] in, numpy out. Subclasses set ``backend`` and ``device``."""

    backend = ""
    device = "cpu"
    file_precision: Optional[str] = None  # what the file holds, where the runner can tell

    @classmethod
    def unavailable(cls, row: Backend) -> str:
        """Why ``row`` cannot run on this machine beyond missing modules (a GPU provider, a device), or ""."""
        if row.device == "cuda" and not _cuda_available():
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


def _cuda_available() -> bool:
    if not _has("torch"):
        return False
    import torch

    return torch.cuda.is_available()


class TorchRunner(Runner):
    """A PyTorch module (``artifact``: the module, or a function that builds it in the worker)."""

    @classmethod
    def unavailable(cls, row: Backend) -> str:
        return ""

    @classmethod
    def refuse(cls, row: Backend, precision: str, device: str) -> str:
        why = super().refuse(row, precision, device)
        if not why and precision != "fp32" and not device.startswith("cuda"):
            why = f"{precision} in torch needs CUDA"
        return why

    def __init__(
        self,
        artifact,
        *,
        backend: Optional[Backend] = None,
        threads: Optional[int] = None,
        device: str = "cpu",
        precision: str = "fp32",
    ):
        import torch

        row = backend or BACKENDS["torch"]
        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.backend = row.name
        self.device = device
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        if self.dtype is None:
            raise ValueError(f"torch backend supports fp32/fp16/bf16, not {precision}")
        model = artifact() if callable(artifact) and not isinstance(artifact, torch.nn.Module) else artifact
        model = model.eval().to(device=device, dtype=self.dtype)
        self.model = torch.compile(model) if row.option("compile") else model
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()

    def __call__(self, x):
        torch = self.torch
        with torch.inference_mode():
            t = torch.from_numpy(x).to(self.device, self.dtype)
            return self.model(t).float().cpu().numpy()

    def sync(self):
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize()

    def time_device(self, x):
        torch = self.torch
        if not self.device.startswith("cuda"):
            return None
        t = torch.from_numpy(x).to(self.device, self.dtype)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.inference_mode():
            start.record()
            self.model(t)
            end.record()
        end.synchronize()
        return start.elapsed_time(end)

    def peak_memory_mb(self):
        if self.device.startswith("cuda"):
            return self.torch.cuda.max_memory_allocated() / 2**20
        return None


def ort_session(path: str | Path, threads: Optional[int] = None, providers=None, backend: str = "ort-cpu"):
    """An ONNX Runtime session: quiet, ``threads`` intra-op threads, the providers of ``backend``'s row."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    so.log_severity_level = 3
    providers = providers or list(BACKENDS[backend].option("providers", _ORT_CPU))
    return ort.InferenceSession(str(path), so, providers=providers)


class OrtRunner(Runner):
    """An ONNX file in ONNX Runtime, with the execution providers of the row."""

    @classmethod
    def unavailable(cls, row: Backend) -> str:
        import onnxruntime as ort

        providers = row.option("providers", _ORT_CPU)
        if providers[0] not in ort.get_available_providers():
            return f"ONNX Runtime has no {providers[0]} here ({row.extra})"
        if "TensorrtExecutionProvider" in providers:
            return ort_tensorrt_problem(ort.__version__)
        return ""

    def __init__(
        self,
        artifact,
        *,
        backend: Optional[Backend] = None,
        threads: Optional[int] = None,
        device: Optional[str] = None,
        precision: str = "fp32",
    ):
        row = backend or BACKENDS["ort-cpu"]
        self.sess = ort_session(artifact, threads, backend=row.name)
        self.name = self.sess.get_inputs()[0].name
        self.backend = row.name
        self.device = row.device

    def __call__(self, x):
        return self.sess.run(None, {self.name: x})[0]
