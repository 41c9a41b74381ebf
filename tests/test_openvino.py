"""OpenVINO: IR export with parity (fp32, fp16 weights, NNCF INT8), static shapes, the runner, profile rows."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("openvino", reason="the [openvino] extra (openvino, nncf) is not installed")
pytest.importorskip("nncf", reason="the [openvino] extra (openvino, nncf) is not installed")

from compressor.errors import ExportError  # noqa: E402
from compressor.exporters.export import export_file  # noqa: E402
from compressor.exporters.formats import openvino as ov_export  # noqa: E402
from compressor.exporters.table import BACKENDS, FORMATS, find_artifacts, make_runner  # noqa: E402
from compressor.models import build_generator  # noqa: E402
from compressor.slim import make_student  # noqa: E402

SIZE = 32


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    teacher = build_generator("resnet_6blocks", ngf=8, norm="instance")
    student, _ = make_student(teacher, 0.5, "rebuild", "scratch")
    g = torch.Generator().manual_seed(1)
    samples = (torch.rand(3, 3, SIZE, SIZE, generator=g) * 2 - 1).numpy()
    d = tmp_path_factory.mktemp("ov")
    onnx = d / "student.onnx"
    export_file("onnx", student.eval(), onnx, samples, size=SIZE)
    return student.eval(), samples, d, onnx


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_ir_parity_against_pytorch(tiny, precision):
    model, samples, d, onnx = tiny
    path = FORMATS["openvino"].path(d, "student", precision)
    cal = [samples[i : i + 1] for i in range(3)] if precision == "int8" else None
    rec = export_file("openvino", model, path, samples, precision=precision, calibration=cal, source=onnx)
    assert path.exists() and path.with_suffix(".bin").exists() and rec["bytes"] > 0
    par = rec["parity"]
    assert par["against"] == "pytorch" and par["cases"] == 3
    if precision == "fp32":
        assert par["max_abs"] < 1e-3
    else:
        assert par["psnr_min"] >= ov_export.PARITY[precision]["psnr_min"]
    runner = make_runner("openvino", path, threads=1)
    assert runner.file_precision == precision
    with torch.inference_mode():
        ref = model(torch.from_numpy(samples[:1])).numpy()
    assert ov_export.psnr(ref, runner(samples[:1])) >= (60 if precision == "fp32" else 25)
    kind = "openvino" if precision == "fp32" else f"{precision}-openvino"
    assert find_artifacts(d, "student")[kind] == str(path)


def test_static_files_and_failed_parity_keeps_the_good_file(tiny, monkeypatch):
    import onnx
    import openvino as ov

    model, samples, d, _ = tiny
    static_onnx = d / "static.onnx"
    export_file("onnx", model, static_onnx, samples, static=True, size=SIZE)
    dims = onnx.load(str(static_onnx)).graph.input[0].type.tensor_type.shape.dim
    assert [x.dim_value for x in dims] == [1, 3, SIZE, SIZE]
    path = d / "static.xml"
    rec = ov_export.export_openvino(model, path, samples, static=True, size=SIZE, onnx_path=static_onnx)
    assert rec["static"]
    shape = ov.Core().read_model(str(path)).inputs[0].get_partial_shape()
    assert shape.is_static and list(shape.to_shape()) == [1, 3, SIZE, SIZE]
    before = path.read_bytes()
    monkeypatch.setitem(ov_export.PARITY, "fp32", {"max_abs": 0.0})  # nothing can pass
    with pytest.raises(ExportError, match="differs from PyTorch"):
        ov_export.export_openvino(model, path, samples, static=True, size=SIZE, onnx_path=static_onnx)
    assert path.read_bytes() == before and not list(d.glob(".ov-*"))


def test_profile_openvino_row_merges_into_report(tiny, tmp_path):
    from compressor.exporters.profile import profile_models
    from compressor.exporters.report import write_report

    model, samples, d, onnx = tiny
    doc = profile_models([str(onnx)], ["openvino"], [1], [SIZE], warmup=1, iters=3, threads=1)
    rows = {r["backend"]: r for r in doc["results"]}
    assert rows["openvino"]["status"] == "ok" and rows["openvino"]["latency_ms"]["p50"] > 0
    assert doc["environment"]["openvino_version"]
    out = tmp_path / "profile.json"
    out.write_text(json.dumps(doc))
    md, _ = write_report([out], [], tmp_path / "rep", "ov")
    assert "openvino" in md.read_text()


def test_unknown_device_is_refused_with_the_devices_seen():
    row = BACKENDS["openvino"]
    why = row.load().refuse(row, "fp32", "npu")
    assert "OpenVINO has no NPU device here" in why or why == ""  # a machine with an NPU runs it
    assert row.pick_device("GPU") == "gpu" and row.pick_device("cuda") == "cpu"
    assert np.isfinite(ov_export.psnr(np.zeros(4), np.full(4, 0.1)))
