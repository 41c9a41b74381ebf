
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import custom_archs
from compressor.errors import ExportError
from compressor.models import build_generator
from exporters.onnx import export_checked, failed_marker, parity_inputs, read_metadata
from exporters.tensorrt import emit_trtexec_script, lint_onnx, tensorrt_available, trtexec_command
from conftest import run_cli

ZOO = [("resnet_9blocks", 64), ("resnet_6blocks", 64), ("unet_128", 128), ("unet_256", 256)]


@pytest.mark.parametrize("arch, size", ZOO)
def test_zoo_exports_pass_parity_and_lint(tmp_path, arch, size):
    model = build_generator(arch, ngf=8, norm="instance").eval()
    samples = torch.rand(3, 3, size, size) * 2 - 1
    inputs = parity_inputs(model, samples, size, ["batch", "hw"])
    assert [tuple(x.shape) for x in inputs][1][0] == 3 and inputs[2].shape[-1] != size
    res = export_checked(model, tmp_path / "m.onnx", inputs, ["batch", "hw"], 18, 1e-4,
                         {"size_multiple": model.size_multiple})
    assert res["passed"] and len(res["cases"]) == 3
    meta = read_metadata(tmp_path / "m.onnx")
    assert meta["value_range"] == [-1, 1] and meta["layout"] == "NCHW" and meta["size_multiple"] == model.size_multiple
    assert not (tmp_path / "m.onnx.data").exists()  # one self-contained file
    dims = [d.dim_param for d in onnx.load(tmp_path / "m.onnx").graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] == "batch" and dims[2] == "height"
    for v in (10, 11):
        assert lint_onnx(tmp_path / "m.onnx", v).ok


@pytest.mark.parametrize("factory", [custom_archs.make_depthwise, custom_archs.make_pixelshuffle,
                                     custom_archs.make_attention_unet])
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
    from exporters.onnx import check_not_failed

    with pytest.raises(UserError, match="failed its checks"):
        check_not_failed(path)
    export_checked(model, path, [torch.randn(1, 3, 32, 32)], ["batch"], 18, 1e-4, {})
    assert not failed_marker(path).exists()


def test_int8_unet_student_psnr(tmp_path):
    from compressor.data import SyntheticPairedDataset
    from compressor.slim import make_student
    from exporters.onnx import export_onnx
    from exporters.quantize import compare_int8, quantize_onnx

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
    quantize_onnx(tmp_path / "s.onnx", tmp_path / "s8t.onnx", [ds[i]["input"][None].numpy() for i in range(3, 6)],
                  target="tensorrt")
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
    from exporters.onnx import export_onnx

    export_onnx(model, tmp_path / "student.onnx", torch.zeros(1, 3, 64, 64))
    s11 = emit_trtexec_script(tmp_path, tmp_path / "student.onnx", 11, "fp16", shapes)
    text = s11.read_text()
    assert "student.fp16.onnx" in text and "--fp16" not in text and (tmp_path / "student.fp16.onnx").exists()
    fp16 = onnx.load(tmp_path / "student.fp16.onnx")
    assert fp16.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # keeps fp32 I/O
    s10 = emit_trtexec_script(tmp_path, tmp_path / "student.onnx", 10, "fp16", shapes)
    assert "--fp16" in s10.read_text() and s10.stat().st_mode & 0o111


def test_export_cli_on_a_run(tmp_path, tiny_recipe):
    out = tmp_path / "runs"
    res = run_cli([tiny_recipe, "--out", out, "--quiet", "--only", "teacher,student,distill"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    res = run_cli(["export", out / "tiny", "--precision", "int8", "--trt", "--emit-trtexec", "--trt-version", "11",
                   "--dynamic", "batch,hw", "--out", tmp_path / "exp"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "parity" in res.stdout and "PSNR vs FP32" in res.stdout and "lint" in res.stdout
    ok, why = tensorrt_available()
    if not ok:
        assert "TensorRT engine skipped" in res.stdout
    assert (tmp_path / "exp" / "student.int8.onnx").exists()
    assert (tmp_path / "exp" / "trtexec_trt11_int8.sh").exists()


def test_tensorrt_engine_build(tmp_path):
    ok, why = tensorrt_available()
    if not ok:
        pytest.skip(f"TensorRT engine build needs TensorRT and a CUDA GPU: {why}")
    from exporters.onnx import export_onnx
    from exporters.tensorrt import TensorRTRunner, build_engine

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
    res = export_checked(model, tmp_path / "m.onnx", [torch.randn(1, 3, 128, 128), torch.randn(3, 3, 128, 128)],
                         ["batch"], 18, 1e-4, {"k": "v"}, slim=True)
    assert res["passed"] and read_metadata(tmp_path / "m.onnx")["k"] == "v"


def test_engine_parity_failure_marks_the_engine(tmp_path, monkeypatch):
    import exporters.tensorrt as trt_mod

    plan = tmp_path / "student.plan"
    plan.write_bytes(b"engine")
    verdict = {"passed": False}
    monkeypatch.setattr(trt_mod, "engine_parity", lambda *a, **k: {
        "passed": verdict["passed"], "limit": {"psnr_min": 35.0}, "max_abs": 0.5, "psnr_min": 20.0})
    with pytest.raises(ExportError, match="differs from ONNX Runtime"):
        trt_mod.check_engine(plan, tmp_path / "s.onnx", [], "fp16")
    assert failed_marker(plan).exists()
    verdict["passed"] = True
    trt_mod.check_engine(plan, tmp_path / "s.onnx", [], "fp16")
    assert not failed_marker(plan).exists()
