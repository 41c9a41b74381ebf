"""The runners several backends share: PyTorch (eager and ``torch.compile``) and ONNX Runtime (its CPU, CUDA and
TensorRT execution providers), and the one ONNX Runtime session set-up.

They live apart from their formats' modules (``formats/pytorch.py`` and ``formats/onnx.py`` declare the rows that
name them) because a timing worker imports its Runner's module and nothing else: an ONNX Runtime measurement must
not load torch (their thread pools interfere when they share a process), so this module imports neither at the
top. Every other format keeps its Runner beside its exporter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .rows import Backend, Runner
from .trt_rules import ort_tensorrt_problem

ORT_CPU = ("CPUExecutionProvider",)
ORT_CUDA = ("CUDAExecutionProvider", "CPUExecutionProvider")
ORT_TRT = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


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

        row = backend
        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.backend = row.name if row else "torch"
        self.device = device
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        if self.dtype is None:
            raise ValueError(f"torch backend supports fp32/fp16/bf16, not {precision}")
        model = artifact() if callable(artifact) and not isinstance(artifact, torch.nn.Module) else artifact
        model = model.eval().to(device=device, dtype=self.dtype)
        self.model = torch.compile(model) if row is not None and row.option("compile") else model
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


def ort_session(path: str | Path, threads: Optional[int] = None, providers=None):
    """An ONNX Runtime session: quiet, ``threads`` intra-op threads, ``providers`` (default: the CPU's)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    so.log_severity_level = 3
    providers = list(providers or ORT_CPU)
    return ort.InferenceSession(str(path), so, providers=providers)


class OrtRunner(Runner):
    """An ONNX file in ONNX Runtime, with the execution providers of the row."""

    @classmethod
    def unavailable(cls, row: Backend) -> str:
        import onnxruntime as ort

        providers = row.option("providers", ORT_CPU)
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
        self.sess = ort_session(artifact, threads, backend.option("providers") if backend else None)
        self.name = self.sess.get_inputs()[0].name
        self.backend = backend.name if backend else "ort-cpu"
        self.device = backend.device if backend else "cpu"

    def __call__(self, x):
        return self.sess.run(None, {self.name: x})[0]
