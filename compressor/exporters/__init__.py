"""Deployment: ONNX export with parity, INT8 quantisation, TensorRT, runtimes, profiling and reports."""

from .offline import no_telemetry

no_telemetry()  # before anything here imports OpenVINO or NNCF: their usage telemetry stays off
