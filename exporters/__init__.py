"""Deployment: ONNX export with parity, INT8 quantisation, TensorRT, runtimes, profiling and reports."""
