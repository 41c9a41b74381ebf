"""One Runner interface over PyTorch, ONNX Runtime and TensorRT.

A runner takes NCHW float32 numpy arrays and returns numpy arrays. Heavy libraries are imported lazily, so an
ONNX Runtime process never loads torch (their thread pools interfere when they share a process).
"""
from __future__ import annotations

import importlib.util
import time
from typing import Optional

import numpy as np

from .trt_rules import ort_tensorrt_problem

BACKENDS = ["torch", "torch-compile", "ort-cpu", "ort-cuda", "ort-trt", "tensorrt", "trtexec-json"]
ONNX_BACKENDS = {"ort-cpu", "ort-cuda", "ort-trt"}
TORCH_BACKENDS = {"torch", "torch-compile"}
EXTRA = {"ort-cpu": "onnxruntime", "ort-cuda": "onnxruntime-gpu", "ort-trt": "onnxruntime-gpu with TensorRT",
         "tensorrt": "compressor[trt]", "torch": "torch", "torch-compile": "torch"}


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _cuda_available() -> bool:
    if not _has("torch"):
        return False
    import torch

    return torch.cuda.is_available()


def backend_available(backend: str) -> tuple[bool, str]:
    """(available, reason if not) for this machine."""
    if backend not in BACKENDS:
        return False, f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}"
    if backend in TORCH_BACKENDS:
        return (True, "") if _has("torch") else (False, "torch is not installed")
    if backend in ONNX_BACKENDS:
        if not _has("onnxruntime"):
            return False, "onnxruntime is not installed: pip install onnxruntime"
        import onnxruntime as ort

        want = {"ort-cpu": "CPUExecutionProvider", "ort-cuda": "CUDAExecutionProvider",
                "ort-trt": "TensorrtExecutionProvider"}[backend]
        if want not in ort.get_available_providers():
            return False, f"ONNX Runtime has no {want} here (install {EXTRA[backend]} on a GPU machine)"
        if backend == "ort-trt" and (why := ort_tensorrt_problem(ort.__version__)):
            return False, why
        return True, ""
    if backend == "tensorrt":
        if not _has("tensorrt"):
            return False, "TensorRT is not installed: pip install 'compressor[trt]' on a machine with an NVIDIA GPU"
        if not _cuda_available():
            return False, "TensorRT needs a CUDA GPU, and none is visible"
        return True, ""
    return True, ""  # trtexec-json imports files


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
    def __init__(self, model, device: str = "cpu", precision: str = "fp32", compile: bool = False,
                 threads: Optional[int] = None):
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
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = threads
        providers = {"ort-cpu": ["CPUExecutionProvider"],
                     "ort-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
                     "ort-trt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]}[backend]
        self.sess = ort.InferenceSession(str(onnx_path), so, providers=providers)
        self.name = self.sess.get_inputs()[0].name
        self.backend = backend
        self.device = "cpu" if backend == "ort-cpu" else "cuda"

    def __call__(self, x):
        return self.sess.run(None, {self.name: x})[0]


def make_runner(backend: str, *, onnx_path=None, torch_model_loader=None, engine_path=None, device="cpu",
                precision="fp32", threads=None) -> Runner:
    if backend in TORCH_BACKENDS:
        return TorchRunner(torch_model_loader(), device=device, precision=precision,
                           compile=backend == "torch-compile", threads=threads)
    if backend in ONNX_BACKENDS:
        return OrtRunner(onnx_path, backend, threads)
    if backend == "tensorrt":
        from .tensorrt import TensorRTRunner

        return TensorRTRunner(engine_path)
    raise ValueError(f"backend {backend!r} has no runner")
