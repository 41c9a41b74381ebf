"""compress benchmark on a tiny student folder: one row per format and precision, a report section."""

import json

import numpy as np
from PIL import Image

from compressor.app.cli import main
from compressor.exporters import table
from compressor.exporters.formats.pytorch import export_torch
from compressor.exporters.report import write_report
from compressor.exporters.rows import Backend, Format
from compressor.models import build_generator
from compressor.slim import make_student, save_student


def test_benchmark_student_folder(tmp_path, monkeypatch, capsys):
    teacher = build_generator("resnet_6blocks", ngf=8, norm="instance")
    student, plan = make_student(teacher, 0.5, "rebuild", "scratch")
    s = tmp_path / "student"
    save_student(student, plan, s)
    data = tmp_path / "images"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(data / f"{i}.png")
    # a format whose runtime is absent is listed as not installed, with its pip line
    runtime = Backend("ghost", "x:Y", "ghost", "cpu", ("fp32",), ("no_such_runtime_xyz",), "pip install ghost")
    ghost = Format("ghost", ".ghost", ("fp32",), export_torch, backends=(runtime,), extra="pip install ghost")
    monkeypatch.setitem(table.FORMATS, "ghost", ghost)
    args = ["benchmark", s, "--size", "32", "--data", data, "--images", "2", "--calib-images", "2"]
    args += ["--iters", "2", "--warmup", "0", "--threads", "1", "--format", "torch,onnx,ghost", "--quiet"]
    assert main([str(a) for a in args]) == 0
    out = capsys.readouterr().out
    doc = json.loads((s / "benchmark.json").read_text())
    rows = {(r["format"], r["precision"]): r for r in doc["rows"]}
    assert set(rows) == {("torch", "fp32"), ("onnx", "fp32"), ("onnx", "int8"), ("ghost", "fp32")}
    assert "student (PyTorch)" in doc["reference"]
    for key in (("torch", "fp32"), ("onnx", "fp32"), ("onnx", "int8")):
        r = rows[key]
        assert r["status"] == "passed", r
        assert r["bytes"] > 0 and r["p50_ms"] > 0 and r["ips"] > 0 and 0 < r["ssim"] <= 1.0001
    assert rows[("onnx", "fp32")]["psnr"] > 60 and 20 < rows[("onnx", "int8")]["psnr"] < 80
    ghost_row = rows[("ghost", "fp32")]
    assert ghost_row["status"] == "not installed" and "pip install ghost" in ghost_row["install"]
    assert "not installed (pip install ghost)" in out and "int8" in out and "p50 ms" in out
    assert (s / "benchmark" / "student.int8.onnx").exists()
    md, _ = write_report([s / "benchmark.json"], [], tmp_path / "rep", "bench")
    text = md.read_text()
    assert "## Every format" in text and "| onnx | int8 |" in text and "not installed (`pip install ghost`)" in text


def test_benchmark_refuses_unknown_format_and_folder(tmp_path, capsys):
    assert main(["benchmark", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
