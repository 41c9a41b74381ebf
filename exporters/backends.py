"""The backend table and the one ONNX Runtime session set-up.

A leaf module: it imports nothing from the toolkit, so the runners (``runtimes``), the TensorRT code and the
ONNX export can all read it. Heavy libraries are imported lazily, so an ONNX Runtime process never loads torch.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

from .trt_rules import ort_tensorrt_problem

BACKENDS = ["torch", "torch-compile", "ort-cpu", "ort-cuda", "ort-trt", "tensorrt", "trtexec-json"]
ONNX_BACKENDS = {"ort-cpu", "ort-cuda", "ort-trt"}
TORCH_BACKENDS = {"torch", "torch-compile"}
EXTRA = {
    "ort-cpu": "onnxruntime",
    "ort-cuda": "onnxruntime-gpu",
    "ort-trt": "onnxruntime-gpu with TensorRT",
    "tensorrt": "compressor[trt]",
    "torch": "torch",
    "torch-compile": "torch",
}
ORT_PROVIDERS = {
    "ort-cpu": ["CPUExecutionProvider"],
    "ort-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "ort-trt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


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

        want = ORT_PROVIDERS[backend][0]
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


def ort_session(path: str | Path, threads: Optional[int] = None, providers=None, backend: str = "ort-cpu"):
    """An ONNX Runtime session: quiet, ``threads`` intra-op threads, the providers of ``backend``."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=providers or ORT_PROVIDERS[backend])
