"""Figures measured where they belong: each profiling child's own peak memory, precision read from the model
file, and the INT8 export's per-tensor fallback warnings counted instead of printed."""

import logging
import sys

import numpy as np
import pytest
import torch

from compressor.exporters.profile import profile_models
from compressor.exporters.timing import onnx_precision

TINY = "resnet_6blocks:ngf=4,norm=instance"
LARGE = "resnet_9blocks:ngf=64,norm=instance"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the child's high-water mark is read from /proc")
def test_each_child_reports_its_own_peak_memory():
    doc = profile_models([TINY, LARGE], ["torch"], [1], [64], warmup=1, iters=2, threads=1)
    rows = {r["model"]: r for r in doc["results"]}
    assert all(r["status"] == "ok" and r["peak_memory_kind"] == "rss_hwm" for r in rows.values()), rows
    tiny, large = rows[TINY]["peak_memory_mb"], rows[LARGE]["peak_memory_mb"]
    # resnet_9blocks at ngf=64 holds 11.4 M parameters (43 MiB in fp32) the tiny one has not
    assert large - tiny > 30, (tiny, large)
    assert rows[TINY]["start_memory_mb"] < tiny
    lat = rows[TINY]["latency_ms"]
    assert lat["throughput_ips"] == pytest.approx(1000 / lat["p50"]) and lat["throughput_basis"] == "p50"
    assert lat["p10"] <= lat["p50"] <= lat["p90"]


def test_int8_onnx_is_labelled_int8_and_its_warnings_are_explained(tmp_path, caplog):
    from compressor.app import console
    from compressor.exporters.formats.onnx import export_onnx
    from compressor.exporters.quantize import CpuInt8, quantize_onnx
    from compressor.models import build_generator

    fp32, int8 = tmp_path / "m.onnx", tmp_path / "m.int8.onnx"
    export_onnx(build_generator("resnet_6blocks", ngf=4, norm="instance"), fp32, torch.zeros(1, 3, 32, 32))
    console.install_log_filters()
    console.QUANT_FILTER.count = 0
    rng = np.random.default_rng(0)
    quantize_onnx(fp32, int8, [rng.uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32) for _ in range(2)])
    assert onnx_precision(str(fp32)) == "fp32" and onnx_precision(str(int8)) == "int8"
    assert onnx_precision(str(tmp_path / "missing.onnx")) is None
    # the CPU quantiser touches only Conv/MatMul/Gemm, so onnxruntime finds no 1-D weights to warn about
    assert console.QUANT_FILTER.count == 0
    # quantising norm scales too (every op type) brings the warnings back: hidden, counted, explained once
    quantize_onnx(
        fp32, tmp_path / "all.onnx", [rng.uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)], cpu=CpuInt8(op_types=())
    )
    hidden = console.QUANT_FILTER.count
    with caplog.at_level(logging.INFO, logger="compressor"):
        console.QUANT_FILTER.explain()
    assert hidden > 0  # onnxruntime 1.32 warns once per 1-D weight (norm scales, biases)
    assert f"{hidden} one-dimensional weights" in caplog.text
    doc = profile_models([str(int8)], ["ort-cpu"], [1], [32], warmup=1, iters=2, threads=1)
    row = doc["results"][0]
    assert row["status"] == "ok" and row["precision"] == "int8", row
