import json

import custom_archs
import numpy as np
import onnx
import pytest
import torch
from conftest import run_cli, tiny_recipe_text
from onnx import TensorProto, helper
from PIL import Image

import compressor.exporters.formats.tensorrt as trt_format
from compressor.errors import ExportError
from compressor.exporters.export import ExportSpec, export_files
from compressor.exporters.formats.onnx import export_checked, failed_marker, parity_inputs, read_metadata
from compressor.exporters.formats.tensorrt import (
    emit_trtexec_script,
    tensorrt_available,
    trt_major,
    trtexec_command,
)
from compressor.exporters.trt_lint import LintResult, lint_onnx
from compressor.models import build_generator
from compressor.slim import make_student, save_student

ZOO = [("resnet_9blocks", 64), ("resnet_6blocks", 64), ("unet_128", 128), ("unet_256", 256)]


@pytest.mark.parametrize("arch, size", ZOO)
def test_zoo_exports_pass_parity_and_lint(tmp_path, arch, size):
    model = build_generator(arch, ngf=8, norm="instance").eval()
    samples = torch.rand(3, 3, size, size) * 2 - 1
    inputs = parity_inputs(model, samples, size, ["batch", "hw"])
    assert [tuple(x.shape) for x in inputs][1][0] == 3 and inputs[2].shape[-1] != size
    res = export_checked(
        model, tmp_path / "m.onnx", inputs, ["batch", "hw"], 18, 1e-4, {"size_multiple": model.size_multiple}
    )
    assert res["passed"] and len(res["cases"]) == 3
    meta = read_metadata(tmp_path / "m.onnx")
    assert meta["value_range"] == [-1, 1] and meta["layout"] == "NCHW" and meta["size_multiple"] == model.size_multiple
    assert not (tmp_path / "m.onnx.data").exists()  # one self-contained file
    dims = [d.dim_param for d in onnx.load(tmp_path / "m.onnx").graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] == "batch" and dims[2] == "height"
    for v in (10, 11):
        assert lint_onnx(tmp_path / "m.onnx", v).ok


@pytest.mark.parametrize(
    "factory", [custom_archs.make_depthwise, custom_archs.make_pixelshuffle, custom_archs.make_attention_unet]
)
def test_custom_students_export_with_parity(tmp_path, factory):
    from compressor.slim import make_student

    teacher = factory().eval()
    x = torch.randn(1, 3, 32, 32)
    student, _ = make_student(teacher, 0.5, method="prune", example_input=x)
    inputs = [x, torch.randn(3, 3, 32, 32), torch.randn(2, 3, 48, 48)]
    assert export_checked(student, tmp_path / "s.onnx", inputs, ["batch", "hw"], 18, 1e-4, {})["passed"]
    assert lint_onnx(tmp_path / "s.onnx", 10).ok


def test_parity_failure_leaves_failed_marker(tmp_path):
    model = build_generator("resnet_6blocks", ngf=4, norm="instance").eval()
    path = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match="differs from PyTorch by"):
        export_checked(model, path, [torch.randn(1, 3, 32, 32)], ["batch"], 18, 1e-15, {})
    assert failed_marker(path).exists()
    from compressor.errors import UserError
    from compressor.exporters.formats.onnx import check_not_failed

    with pytest.raises(UserError, match="failed its checks"):
        check_not_failed(path)
    export_checked(model, path, [torch.randn(1, 3, 32, 32)], ["batch"], 18, 1e-4, {})
    assert not failed_marker(path).exists()


def test_int8_unet_student_psnr(tmp_path):
    from compressor.data import SyntheticPairedDataset
    from compressor.exporters.formats.onnx import export_onnx
    from compressor.exporters.quantize import compare_int8, quantize_onnx
    from compressor.slim import make_student

    torch.manual_seed(0)
    teacher = build_generator("unet_256", ngf=64, norm="batch", init="kaiming").eval()
    student, _ = make_student(teacher, 0.25, method="rebuild", init="scratch")
    from compressor.models import init_weights

    init_weights(student.eval(), "kaiming")
    ds = SyntheticPairedDataset(12, 256, 0, "BtoA")
    x = torch.stack([ds[i]["input"] for i in range(3)])
    with torch.no_grad():
        assert student(x).std() > 0.2  # a non-trivial output, so the PSNR means something
    export_onnx(student, tmp_path / "s.onnx", x[:1])
    quantize_onnx(tmp_path / "s.onnx", tmp_path / "s8.onnx", [ds[i]["input"][None].numpy() for i in range(3, 12)])
    res = compare_int8(tmp_path / "s.onnx", tmp_path / "s8.onnx", x, iters=3)
    assert res["psnr_vs_fp32"] >= 30, res
    ops = {n.op_type for n in onnx.load(tmp_path / "s8.onnx").graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # the CPU flavour uses uint8 activations, which TensorRT rejects; the tensorrt flavour passes the lint
    assert not lint_onnx(tmp_path / "s8.onnx", 10).ok
    quantize_onnx(
        tmp_path / "s.onnx",
        tmp_path / "s8t.onnx",
        [ds[i]["input"][None].numpy() for i in range(3, 6)],
        target="tensorrt",
    )
    assert lint_onnx(tmp_path / "s8t.onnx", 10).ok


def _model(nodes, inits, name="bad"):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, None)
    g = helper.make_graph(nodes, name, [x], [y], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])


def test_lint_flags_unsupported_combinations():
    pads = helper.make_tensor("pads", TensorProto.INT64, [4], [0, 0, 1, 1])
    axes_node = helper.make_node("Shape", ["input"], ["axes_dyn"], start=2, name="dyn_axes")
    pad = helper.make_node("Pad", ["input", "pads", "", "axes_dyn"], ["p"], mode="reflect", name="pad_dynamic_axes")
    resize = helper.make_node("Resize", ["p", "", "scales"], ["r"], mode="linear", antialias=1, name="resize_aa")
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])
    custom = helper.make_node("MyOp", ["r"], ["output"], domain="com.example", name="custom")
    lint = lint_onnx(_model([axes_node, pad, resize, custom], [pads, scales]), 10)
    problems = {p["node"]: p["problem"] for p in lint.problems}
    assert "axes input must be an initializer" in problems["pad_dynamic_axes"]
    assert "antialias" in problems["resize_aa"]
    assert "plugin" in problems["custom"]
    up = helper.make_node("Upsample", ["input", "scales"], ["output"], mode="nearest", name="old_upsample")
    assert lint_onnx(_model([up], [scales]), 10).ok is True
    assert lint_onnx(_model([up], [scales]), 11).ok is True  # the 11.x parser still imports Upsample
    assert any("custom" in l for l in lint.lines())


def test_trtexec_command_lines_for_both_majors(tmp_path):
    shapes = {"input": {"min": [1, 3, 128, 128], "opt": [1, 3, 256, 256], "max": [8, 3, 512, 512]}}
    t10 = trtexec_command("student.onnx", 10, "fp16", shapes)
    assert "--fp16" in t10 and "--minShapes=input:1x3x128x128" in t10 and "--maxShapes=input:8x3x512x512" in t10
    for flag in ("--useCudaGraph", "--exportTimes=trtexec_times.json", "--exportProfile=trtexec_profile.json"):
        assert flag in t10
    t11 = trtexec_command("student.fp16.onnx", 11, "fp16", shapes)
    assert not any(f in t11 for f in ("--fp16", "--int8", "--best", "--stronglyTyped"))
    assert "--int8" in trtexec_command("student.int8.onnx", 10, "int8", shapes)
    model = build_generator("resnet_6blocks", ngf=4, norm="instance").eval()
    from compressor.exporters.formats.onnx import export_onnx

    export_onnx(model, tmp_path / "student.onnx", torch.zeros(1, 3, 64, 64))
    s11 = emit_trtexec_script(tmp_path, tmp_path / "student.onnx", 11, "fp16", shapes)
    text = s11.read_text()
    assert "student.fp16.onnx" in text and "--fp16" not in text and (tmp_path / "student.fp16.onnx").exists()
    fp16 = onnx.load(tmp_path / "student.fp16.onnx")
    assert fp16.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # keeps fp32 I/O
    s10 = emit_trtexec_script(tmp_path, tmp_path / "student.onnx", 10, "fp16", shapes)
    assert "--fp16" in s10.read_text() and s10.stat().st_mode & 0o111


TRT_INT8_EXPORT = (
    "export: {onnx: {dynamic: [batch]}, int8: {enabled: true, calib_images: 4}, tensorrt: {precision: int8}}"
)


def test_export_stage_and_cli_agree_and_lint_the_tensorrt_int8_file(tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(tiny_recipe_text().replace("export: {onnx: {dynamic: [batch]}}", TRT_INT8_EXPORT))
    out = tmp_path / "runs"
    res = run_cli([recipe, "--out", out, "--quiet", "--only", "teacher,student,distill,export"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    run = out / "tiny"
    files = json.loads((run / "export.json").read_text())["files"]
    # INT8 for each target: ONNX Runtime's CPU file (uint8 activations) and TensorRT's (symmetric int8)
    assert files["student.int8.onnx"]["precision"] == "int8" and files["student.int8.onnx"]["target"] == "cpu"
    assert (
        files["student.trt-int8.onnx"]["target"] == "tensorrt" and files["student.trt-int8.onnx"]["status"] == "passed"
    )
    assert not lint_onnx(run / "student.int8.onnx", 10).ok  # the CPU file is not for TensorRT
    # the lint ran on the file TensorRT reads, for both majors, and passed
    engine = files["student.int8.plan"]
    assert {(x["file"], x["target"], x["ok"]) for x in engine["lints"]} == {
        ("student.trt-int8.onnx", "10", True),
        ("student.trt-int8.onnx", "11", True),
    }
    assert engine["lint"]["file"] == "student.trt-int8.onnx"
    for v in (10, 11):
        script = (run / f"trtexec_trt{v}_int8.sh").read_text()
        assert "--onnx=student.trt-int8.onnx" in script and "student.int8.onnx" not in script
    if not tensorrt_available()[0]:
        assert engine["status"] == "skipped" and "tensorrt is not installed" in engine["reason"]
    # compress export on the same run: the same ONNX, byte for byte, and its own export.json
    res = run_cli(
        [
            "export",
            run,
            "--precision",
            "int8",
            "--trt",
            "--emit-trtexec",
            "--trt-version",
            "11",
            "--out",
            tmp_path / "exp",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    exp = tmp_path / "exp"
    assert (exp / "student.onnx").read_bytes() == (run / "student.onnx").read_bytes()
    assert "against PyTorch" in res.stdout and "against onnx fp32" in res.stdout
    assert "lint of student.trt-int8.onnx" in res.stdout
    assert "--onnx=student.trt-int8.onnx" in (exp / "trtexec_trt11_int8.sh").read_text()
    assert json.loads((exp / "export.json").read_text())["files"]["student.int8.plan"]["lint"]["target"] == (
        str(trt_major()) if tensorrt_available()[0] else "11"
    )


def test_failing_lint_stops_the_export_and_channels_come_from_the_model(tmp_path, monkeypatch):
    model = build_generator("resnet_6blocks", input_nc=1, output_nc=1, ngf=4, norm="instance", init=None)
    samples = torch.rand(2, 1, 32, 32) * 2 - 1
    spec = ExportSpec(formats=("tensorrt",), size=32, build_engine=False, emit_trtexec=True, trt_versions=(10,))
    engine = export_files(model, tmp_path, spec, samples)["files"]["student.plan"]
    assert engine["lint"]["ok"] and engine["scripts"] == ["trtexec_trt10_fp32.sh"]
    assert "--optShapes=input:1x1x32x32" in (tmp_path / "trtexec_trt10_fp32.sh").read_text()  # one channel
    bad = LintResult(target="10", nodes=1, problems=[{"node": "n0", "op": "Foo", "problem": "op Foo is not supported"}])
    monkeypatch.setattr(trt_format, "lint_onnx", lambda path, version: bad)
    (tmp_path / "trtexec_trt10_fp32.sh").unlink()
    with pytest.raises(ExportError, match="student.onnx: TensorRT 10 would reject.*op Foo"):
        export_files(model, tmp_path, spec, samples)
    assert not (tmp_path / "trtexec_trt10_fp32.sh").exists()  # nothing is written for a file that fails


def _paired_folder(root, n=3, size=32):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, 2 * size, 3), dtype=np.uint8)).save(root / split / f"{i}.png")


def test_evaluate_export_profile_report_chain(tmp_path):
    """compress evaluate STUDENT --data, export, profile and report *.json: one report holding them all."""
    teacher = build_generator("resnet_6blocks", ngf=8, norm="instance")
    student, plan = make_student(teacher, 0.5, "rebuild", "scratch")
    save_student(student, plan, tmp_path / "student")
    _paired_folder(tmp_path / "data")
    s = tmp_path / "student"
    for args in (
        [
            "evaluate",
            s,
            "--data",
            tmp_path / "data",
            "--size",
            "32",
            "--metrics",
            "psnr,ssim",
            "--device",
            "cpu",
            "--quiet",
        ],
        ["export", s, "--size", "32", "--data", tmp_path / "data" / "test", "--quiet"],
        [
            "profile",
            s,
            "--backend",
            "ort-cpu",
            "--size",
            "32",
            "--warmup",
            "1",
            "--iters",
            "3",
            "--out",
            s / "profile.json",
            "--quiet",
        ],
        ["report", s / "eval.json", s / "export.json", s / "profile.json", "--out", tmp_path / "rep"],
    ):
        res = run_cli(args, cwd=tmp_path)
        assert res.returncode == 0, (args[0], res.stderr[-2000:])
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Teacher against student" in md and "| PSNR, dB (higher is better) |" in md  # eval.json (student only)
    assert "## Export" in md and "student.onnx" in md  # export.json
    assert "## Latency" in md and "ort-cpu" in md  # profile.json


def test_tensorrt_engine_build(tmp_path):
    ok, why = tensorrt_available()
    if not ok:
        pytest.skip(f"TensorRT engine build needs TensorRT and a CUDA GPU: {why}")
    from compressor.exporters.formats.onnx import export_onnx
    from compressor.exporters.formats.tensorrt import TensorRTRunner, build_engine

    model = build_generator("resnet_6blocks", ngf=8, norm="instance").eval()
    export_onnx(model, tmp_path / "s.onnx", torch.zeros(1, 3, 64, 64))
    shapes = {"input": {"min": [1, 3, 64, 64], "opt": [1, 3, 64, 64], "max": [4, 3, 64, 64]}}
    info = build_engine(tmp_path / "s.onnx", tmp_path / "s.plan", "fp32", shapes)
    assert (tmp_path / "s.plan.json").exists() and info["precision"] == "fp32"
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 64, 64)).astype(np.float32)
    out = TensorRTRunner(tmp_path / "s.plan")(x)
    with torch.no_grad():
        assert np.abs(out - model(torch.from_numpy(x)).numpy()).max() < 1e-3


def test_onnxslim_option_keeps_parity(tmp_path):
    pytest.importorskip("onnxslim")
    model = build_generator("unet_128", ngf=4, norm="batch").eval()
    res = export_checked(
        model,
        tmp_path / "m.onnx",
        [torch.randn(1, 3, 128, 128), torch.randn(3, 3, 128, 128)],
        ["batch"],
        18,
        1e-4,
        {"k": "v"},
        slim=True,
    )
    assert res["passed"] and read_metadata(tmp_path / "m.onnx")["k"] == "v"


def test_engine_parity_failure_marks_the_engine(tmp_path, monkeypatch):
    import compressor.exporters.formats.tensorrt as trt_mod

    plan = tmp_path / "student.plan"
    plan.write_bytes(b"engine")
    verdict = {"passed": False}
    monkeypatch.setattr(
        trt_mod,
        "engine_parity",
        lambda *a, **k: {"passed": verdict["passed"], "limit": {"psnr_min": 35.0}, "max_abs": 0.5, "psnr_min": 20.0},
    )
    with pytest.raises(ExportError, match="differs from ONNX Runtime"):
        trt_mod.check_engine(plan, tmp_path / "s.onnx", [], "fp16")
    assert failed_marker(plan).exists()
    verdict["passed"] = True
    trt_mod.check_engine(plan, tmp_path / "s.onnx", [], "fp16")
    assert not failed_marker(plan).exists()
