"""One Runner interface over PyTorch, ONNX Runtime and TensorRT.

A runner takes NCHW float32 numpy arrays and returns numpy arrays. Heavy libraries are imported lazily, so an
ONNX Runtime process never loads torch (their thread pools interfere when they share a process).
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np

from .backends import BACKENDS, EXTRA, ONNX_BACKENDS, ORT_PROVIDERS, TORCH_BACKENDS, backend_available, ort_session  # noqa: F401
from .tensorrt import TensorRTRunner

__all__ = [
    "BACKENDS",
    "ONNX_BACKENDS",
    "TORCH_BACKENDS",
    "EXTRA",
    "ORT_PROVIDERS",
    "backend_available",
    "ort_session",
    "Runner",
    "TorchRunner",
    "OrtRunner",
    "make_runner",
]


class Runner:
    backend = ""
    device = "cpu"

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


class TorchRunner(Runner):
    def __init__(
        self, model, device: str = "cpu", precision: str = "fp32", compile: bool = False, threads: Optional[int] = None
    ):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.backend = "torch-compile" if compile else "torch"
        self.device = device
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        if self.dtype is None:
            raise ValueError(f"torch backend supports fp32/fp16/bf16, not {precision}")
        model = model.eval().to(device=device, dtype=self.dtype)
        self.model = torch.compile(model) if compile else model
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


class OrtRunner(Runner):
    def __init__(self, onnx_path: str, backend: str = "ort-cpu", threads: Optional[int] = None):
        self.sess = ort_session(onnx_path, threads, backend=backend)
        self.name = self.sess.get_inputs()[0].name
        self.backend = backend
        self.device = "cpu" if backend == "ort-cpu" else "cuda"

    def __call__(self, x):
        return self.sess.run(None, {self.name: x})[0]


def make_runner(
    backend: str,
    *,
    onnx_path=None,
    torch_model_loader=None,
    engine_path=None,
    device="cpu",
    precision="fp32",
    threads=None,
) -> Runner:
    if backend in TORCH_BACKENDS:
        return TorchRunner(
            torch_model_loader(),
            device=device,
            precision=precision,
            compile=backend == "torch-compile",
            threads=threads,
        )
    if backend in ONNX_BACKENDS:
        return OrtRunner(onnx_path, backend, threads)
    if backend == "tensorrt":
        return TensorRTRunner(engine_path)
    raise ValueError(f"backend {backend!r} has no runner")
