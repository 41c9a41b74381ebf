"""The TensorRT path without TensorRT: INT8 for TensorRT, the lint's rule table, the builder and runner against a
fake ``tensorrt`` module that records calls, and the trtexec scripts flag by flag."""

import re
import sys
import types

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from compressor.errors import ExportError, UserError
from compressor.exporters import trt_rules
from compressor.exporters.formats.tensorrt import (
    TensorRTRunner,
    build_engine,
    emit_trtexec_script,
    trtexec_command,
)
from compressor.exporters.trt_lint import LintResult, lint_onnx

SHAPES = {"input": {"min": [1, 3, 16, 16], "opt": [1, 3, 16, 16], "max": [8, 3, 16, 16]}}


# ---------------------------------------------------------------------------------------------- models
class TinyConvNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = torch.nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        return torch.tanh(self.c2(torch.relu(self.c1(x))))


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    from compressor.exporters.formats.onnx import export_onnx

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "student.onnx"
    export_onnx(TinyConvNet().eval(), path, torch.zeros(1, 3, 16, 16))
    return path


def _calib(n=4):
    rng = np.random.default_rng(0)
    return [rng.uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32) for _ in range(n)]


@pytest.fixture(scope="module")
def int8_trt(tiny_onnx):
    from compressor.exporters.quantize import quantize_onnx

    return quantize_onnx(tiny_onnx, tiny_onnx.with_name("student.int8.onnx"), _calib(), target="tensorrt")


def _dq_input_types(path):
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    types_ = {i.name: i.data_type for i in model.graph.initializer}
    types_.update({v.name: v.type.tensor_type.elem_type for v in model.graph.value_info})
    return [types_.get(n.input[0]) for n in model.graph.node if n.op_type == "DequantizeLinear"]


def _model(nodes, inits=(), opset=19, out_type=TensorProto.FLOAT, extra_opsets=()):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("output", out_type, None)
    g = helper.make_graph(nodes, "g", [x], [y], list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])


def _rules(lint: LintResult, kind="problems"):
    return {p["rule"] for p in getattr(lint, kind)}


# ---------------------------------------------------------------------------------------------- INT8 for TensorRT
def test_tensorrt_int8_has_no_int32_dequantize_and_no_uint8(tiny_onnx, int8_trt):
    dq = _dq_input_types(int8_trt)
    assert dq and set(dq) == {TensorProto.INT8}, dq  # weights and activations, no INT32 bias
    model = onnx.load(str(int8_trt))
    zps = [numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith("zero_point")]
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)  # signed, symmetric
    per_channel = [
        n for n in model.graph.node if n.op_type == "DequantizeLinear" and any(a.name == "axis" for a in n.attribute)
    ]
    assert per_channel  # per-channel weights
    assert lint_onnx(int8_trt, 10).ok and lint_onnx(int8_trt, 11).ok


def test_lint_fails_a_model_quantised_with_quantize_bias(tiny_onnx, tmp_path):
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from compressor.exporters.quantize import _Reader

    out = tmp_path / "bias.onnx"
    quantize_static(
        str(tiny_onnx),
        str(out),
        _Reader("input", _calib()),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )  # QuantizeBias: default
    assert TensorProto.INT32 in _dq_input_types(out)
    lint = lint_onnx(out, 10)
    assert not lint.ok and _rules(lint) == {"dq-input-type"}
    assert all("INT32" in p["problem"] and "QuantizeBias" in p["problem"] for p in lint.problems)


def test_lint_fails_the_cpu_flavour_uint8(tiny_onnx, tmp_path):
    from compressor.exporters.quantize import quantize_onnx

    cpu = quantize_onnx(tiny_onnx, tmp_path / "cpu.onnx", _calib(), target="cpu")
    lint = lint_onnx(cpu, 11)
    assert not lint.ok and "qdq-uint8" in _rules(lint)


# ---------------------------------------------------------------------------------------------- lint rules
def test_every_rule_cites_a_source():
    rules = trt_rules.RULES + trt_rules.OP_SUPPORT
    assert len({r.id for r in rules}) == len(rules)
    url = re.compile(r"^https://(github\.com/(onnx/onnx-tensorrt|NVIDIA/TensorRT)/|docs\.nvidia\.com/)")
    for r in rules:
        assert url.match(r.source), r
        assert r.text and r.op and r.since >= (10, 0) and r.severity in ("error", "warning", "supported")
        if "onnx-tensorrt/blob/" in r.source:
            assert re.search(r"/blob/[0-9a-f]{40}/.+#L\d+", r.source), r  # a pinned commit and a line
    for o in trt_rules.OPSET_RANGES:
        assert url.match(o.source)
    for o in trt_rules.TRTEXEC_OPTIONS.values():
        assert set(o.accepted) == {10, 11} and all(url.match(s) for s in o.sources.values()), o


def test_op_table_fixes():
    ops10, ops11 = trt_rules.supported_ops(10), trt_rules.supported_ops(11)
    for op in (
        "CastLike",
        "Mish",
        "LpNormalization",
        "MeanVarianceNormalization",
        "Hardmax",
        "Scatter",
        "LSTM",
        "GRU",
        "RNN",
        "Scan",
        "Upsample",
    ):
        assert op in ops10 and op in ops11, op
    assert "DeformConv" not in ops10 and "DeformConv" in trt_rules.supported_ops("10.1")
    assert "Swish" not in trt_rules.supported_ops("10.16") and "Swish" in ops11


def test_upsample_is_supported_in_both_majors():
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])
    up = helper.make_node("Upsample", ["input", "scales"], ["output"], mode="nearest", name="up")
    for v in (10, 11, "11.1"):
        assert lint_onnx(_model([up], [scales], opset=9), v).ok


def test_opset_range_per_version():
    m = _model([helper.make_node("Relu", ["input"], ["output"])], opset=21)
    lint = lint_onnx(m, 10)
    assert not lint.ok and _rules(lint) == {"opset-range"} and "9-20" in lint.problems[0]["problem"]
    assert not lint_onnx(m, "10.14").ok
    assert lint_onnx(m, "10.15").ok and lint_onnx(m, 11).ok and lint_onnx(m, "11.1").ok
    m25 = _model([helper.make_node("Relu", ["input"], ["output"])], opset=25)
    assert not lint_onnx(m25, "11.1").ok and lint_onnx(m25, "11.5").ok
    assert not lint_onnx(_model([helper.make_node("Relu", ["input"], ["output"])], opset=8), 11).ok
    with pytest.raises(ValueError):
        lint_onnx(m, 9)


def test_resize_rules():
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])
    sym = helper.make_node(
        "Resize",
        ["input", "", "scales"],
        ["output"],
        mode="linear",
        coordinate_transformation_mode="half_pixel_symmetric",
        name="sym",
    )
    lint = lint_onnx(_model([sym], [scales]), 10)
    assert _rules(lint) == {"resize-ctm"} and "half_pixel_symmetric" in lint.problems[0]["problem"]
    sizes = helper.make_tensor("sizes", TensorProto.INT64, [4], [1, 3, 16, 16])
    keep = helper.make_node(
        "Resize", ["input", "", "", "sizes"], ["output"], keep_aspect_ratio_policy="not_larger", name="keep"
    )
    assert _rules(lint_onnx(_model([keep], [sizes]), 11)) == {"resize-aspect"}
    ok = helper.make_node(
        "Resize",
        ["input", "", "scales"],
        ["output"],
        mode="nearest",
        coordinate_transformation_mode="asymmetric",
        nearest_mode="floor",
    )
    assert lint_onnx(_model([ok], [scales]), 10).ok


def test_float64_is_a_warning_not_an_error():
    w = helper.make_tensor("w", TensorProto.DOUBLE, [1], [2.0])
    nodes = [
        helper.make_node("Cast", ["input"], ["x64"], to=TensorProto.DOUBLE, name="to64"),
        helper.make_node("Mul", ["x64", "w"], ["m"]),
        helper.make_node("Cast", ["m"], ["output"], to=TensorProto.FLOAT),
    ]
    lint = lint_onnx(_model(nodes, [w]), 10)
    assert lint.ok and _rules(lint, "warnings") == {"double", "cast-double"}
    assert any("warning" in line for line in lint.lines()) and lint.to_dict()["warnings"]


def test_pad_axes_rule_is_version_ranged_and_quantize_default_is_uint8():
    pads = helper.make_tensor("pads", TensorProto.INT64, [4], [0, 0, 1, 1])
    nodes = [
        helper.make_node("Shape", ["input"], ["axes_dyn"], start=2, name="dyn_axes"),
        helper.make_node("Pad", ["input", "pads", "", "axes_dyn"], ["output"], mode="reflect", name="pad"),
    ]
    assert _rules(lint_onnx(_model(nodes, [pads]), 10)) == {"pad-axes"}
    assert lint_onnx(_model(nodes, [pads]), "10.15").ok
    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    q = helper.make_node("QuantizeLinear", ["input", "s"], ["q"], name="q_no_zp")  # ONNX default: UINT8 output
    dq = helper.make_node("DequantizeLinear", ["q", "s"], ["output"], name="dq")
    lint = lint_onnx(_model([q, dq], [scale]), 10)
    assert {p["node"] for p in lint.problems} == {"q_no_zp", "dq"} and _rules(lint) == {"qdq-uint8"}


def test_unsupported_and_custom_ops_name_their_source():
    nodes = [
        helper.make_node("Swish", ["input"], ["s"], name="swish"),
        helper.make_node("MyOp", ["s"], ["output"], domain="com.example", name="custom"),
    ]
    lint = lint_onnx(_model(nodes, opset=24, extra_opsets=[helper.make_opsetid("com.example", 1)]), "10.15")
    msgs = {p["node"]: p for p in lint.problems}
    assert "supported from TensorRT 11.0" in msgs["swish"]["problem"] and "plugin" in msgs["custom"]["problem"]
    assert all(p["source"].startswith("https://") for p in lint.problems)
    assert lint_onnx(_model(nodes[:1] + [helper.make_node("Relu", ["s"], ["output"])], opset=24), 11).ok


# ---------------------------------------------------------------------------------------------- fake tensorrt
class FakeTRT:
    """Enough of ``tensorrt`` 10/11 to drive build_engine and TensorRTRunner; every call lands in ``calls``."""

    def __init__(
        self, version="10.3.0", cache_ok=(True,), set_shape_ok=True, address_ok=True, execute_ok=True, max_batch=8
    ):
        self.calls = []
        self.cache_ok = list(cache_ok)
        calls, fake = self.calls, self
        mod = types.ModuleType("tensorrt")
        mod.__version__ = version
        mod.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda s, level=None: None})
        mod.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
        flags = {"TF32": "TF32"} if version.startswith("11") else {"TF32": "TF32", "FP16": "FP16", "INT8": "INT8"}
        mod.BuilderFlag = types.SimpleNamespace(**flags)  # 11 has no FP16/INT8 flags: using them raises
        mod.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
        mod.nptype = lambda dt: np.float32

        class Rec:
            def __init__(self, kind):
                self.kind = kind

            def __getattr__(self, name):
                def f(*a, **k):
                    calls.append((self.kind, name, a))

                return f

        class Cache:
            def serialize(self):
                return b"cache"

        class Config(Rec):
            def add_optimization_profile(self, p):
                calls.append(("config", "add_optimization_profile", ()))
                return 0

            def create_timing_cache(self, data):
                calls.append(("config", "create_timing_cache", (data,)))
                return Cache()

            def set_timing_cache(self, cache, ignore_mismatch):
                ok = fake.cache_ok.pop(0) if fake.cache_ok else True
                calls.append(("config", "set_timing_cache", (ignore_mismatch, ok)))
                return ok

            def get_timing_cache(self):
                return Cache()

        class Network:
            num_inputs = 1

            def get_input(self, i):
                return types.SimpleNamespace(name="input")

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                calls.append(("builder", "create_network", (flags,)))
                return Network()

            def create_builder_config(self):
                return Config("config")

            def create_optimization_profile(self):
                return Rec("profile")

            def build_serialized_network(self, network, config):
                calls.append(("builder", "build_serialized_network", ()))
                return b"plan"

        class OnnxParser:
            num_errors = 0

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                calls.append(("parser", "parse_from_file", (path,)))
                return True

        mn, mx = (1, 3, 16, 16), (max_batch, 3, 16, 16)

        class Context:
            def __init__(self):
                self.shape = None

            def set_input_shape(self, name, shape):
                calls.append(("context", "set_input_shape", (name, shape)))
                self.shape = shape
                return set_shape_ok

            def get_tensor_shape(self, name):
                return self.shape

            def set_tensor_address(self, name, ptr):
                calls.append(("context", "set_tensor_address", (name,)))
                return address_ok

            def execute_async_v3(self, stream):
                calls.append(("context", "execute_async_v3", (stream,)))
                return execute_ok

        class Engine:
            num_io_tensors = 2

            def get_tensor_name(self, i):
                return ["input", "output"][i]

            def get_tensor_mode(self, name):
                return "INPUT" if name == "input" else "OUTPUT"

            def get_tensor_dtype(self, name):
                return "FLOAT"

            def get_tensor_profile_shape(self, name, index):
                return [mn, mn, mx]

            def create_execution_context(self):
                return Context()

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data):
                return Engine()

        mod.Builder, mod.OnnxParser, mod.Runtime = Builder, OnnxParser, Runtime
        self.module = mod

    def names(self, kind):
        return [(c[1], c[2]) for c in self.calls if c[0] == kind]


@pytest.fixture
def fake_trt(monkeypatch):
    def install(**kw):
        fake = FakeTRT(**kw)
        monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
        return fake

    return install


def test_fp32_build_clears_tf32_and_sets_no_precision_flag(fake_trt, tiny_onnx, tmp_path):
    for version in ("10.3.0", "11.1.0"):
        fake = fake_trt(version=version)
        info = build_engine(tiny_onnx, tmp_path / f"{version}.plan", "fp32", SHAPES)
        cfg = fake.names("config")
        assert ("clear_flag", ("TF32",)) in cfg and not [c for c in cfg if c[0] == "set_flag"]
        assert info["tf32"] is False and info["source_onnx"] == "student.onnx"
        assert ("set_shape", ("input", (1, 3, 16, 16), (1, 3, 16, 16), (8, 3, 16, 16))) in fake.names("profile")


def test_fp16_and_int8_flags_per_major(fake_trt, tiny_onnx, int8_trt, tmp_path):
    fake = fake_trt(version="10.3.0")
    build_engine(tiny_onnx, tmp_path / "a.plan", "fp16", SHAPES)
    assert [c for c in fake.names("config") if c[0] in ("set_flag", "clear_flag")] == [("set_flag", ("FP16",))]
    fake = fake_trt(version="10.3.0")
    build_engine(tiny_onnx, tmp_path / "b.plan", "int8", SHAPES, int8_onnx=int8_trt)
    assert ("set_flag", ("INT8",)) in fake.names("config")
    assert fake.names("parser")[0][1][0].endswith("student.int8.onnx")
    fake = fake_trt(version="11.1.0")  # strongly typed: the FP16 ONNX, no flags
    info = build_engine(tiny_onnx, tmp_path / "c.plan", "fp16", SHAPES)
    assert not [c for c in fake.names("config") if c[0] in ("set_flag", "clear_flag")]
    assert info["source_onnx"] == "student.fp16.onnx" and fake.names("parser")[0][1][0].endswith(".fp16.onnx")


def test_build_lints_the_file_it_reads_for_the_installed_version(fake_trt, tiny_onnx, tmp_path):
    from compressor.exporters.quantize import quantize_onnx

    cpu = quantize_onnx(tiny_onnx, tmp_path / "cpu.int8.onnx", _calib(), target="cpu")
    fake = fake_trt(version="10.8.0")
    with pytest.raises(ExportError, match=r"cpu\.int8\.onnx: TensorRT 10\.8 would reject .*(INT32|UINT8)"):
        build_engine(tiny_onnx, tmp_path / "x.plan", "int8", SHAPES, int8_onnx=cpu)
    assert not fake.names("parser")  # stopped before the parser


def test_timing_cache_status_is_checked(fake_trt, tiny_onnx, tmp_path):
    (tmp_path / "timing.cache").write_bytes(b"from another gpu")
    fake = fake_trt(cache_ok=(False, True))
    info = build_engine(tiny_onnx, tmp_path / "s.plan", "fp32", SHAPES)
    assert "another device" in info["notes"][0]
    assert [c[1][0] for c in fake.names("config") if c[0] == "create_timing_cache"] == [b"from another gpu", b""]
    fake_trt(cache_ok=(False, False))
    with pytest.raises(ExportError, match="timing cache"):
        build_engine(tiny_onnx, tmp_path / "s.plan", "fp32", SHAPES)


def test_profile_names_must_match_the_network(fake_trt, tiny_onnx, tmp_path):
    fake_trt()
    with pytest.raises(ExportError, match="network's inputs are input"):
        build_engine(tiny_onnx, tmp_path / "s.plan", "fp32", {"images": SHAPES["input"]})


class CpuRunner(TensorRTRunner):
    """The runner with host tensors in place of CUDA ones (the fake engine never reads them)."""

    def _to_device(self, x, dtype):
        return (x if torch.is_tensor(x) else torch.from_numpy(x)).to(dtype)

    def _empty(self, shape, dtype):
        return torch.zeros(shape, dtype=dtype)

    @property
    def stream(self):
        return types.SimpleNamespace(cuda_stream=0, synchronize=lambda: None)


def test_runner_shape_outside_profile_names_the_range(fake_trt, tmp_path):
    plan = tmp_path / "s.plan"
    plan.write_bytes(b"plan")
    fake = fake_trt(max_batch=8)
    runner = CpuRunner(plan)
    out = runner(np.zeros((2, 3, 16, 16), np.float32))
    assert out.shape == (2, 3, 16, 16)
    with pytest.raises(UserError, match=r"16x3x16x16 is outside .*\(1x3x16x16 \.\. 8x3x16x16\)"):
        runner(np.zeros((16, 3, 16, 16), np.float32))
    with pytest.raises(UserError, match="outside"):
        runner(np.zeros((1, 3, 32, 32), np.float32))
    assert [c for c in fake.names("context") if c[0] == "set_input_shape"] == [
        ("set_input_shape", ("input", (2, 3, 16, 16)))
    ]  # the bad shapes never reached TensorRT
    assert runner.peak_memory_mb() is None  # no CUDA here: no figure rather than a torch-only one


@pytest.mark.parametrize(
    "which, err, match",
    [
        ("set_shape_ok", UserError, "refused input shape 2x3x16x16 .* 1x3x16x16 .. 8x3x16x16"),
        ("address_ok", ExportError, "refused the address of input"),
        ("execute_ok", ExportError, "execute_async_v3 returned False"),
    ],
)
def test_runner_checks_every_status(fake_trt, tmp_path, which, err, match):
    plan = tmp_path / "s.plan"
    plan.write_bytes(b"plan")
    fake_trt(**{which: False})
    with pytest.raises(err, match=match):
        CpuRunner(plan)(np.zeros((2, 3, 16, 16), np.float32))


def test_runner_peak_memory_counts_tensorrt_allocations(fake_trt, tmp_path, monkeypatch):
    plan = tmp_path / "s.plan"
    plan.write_bytes(b"plan")
    fake_trt()
    free = iter([1000 << 20, 700 << 20, 650 << 20])  # before load, after context, after a run
    monkeypatch.setattr(CpuRunner, "_free_bytes", lambda self: next(free))
    runner = CpuRunner(plan)
    runner(np.zeros((1, 3, 16, 16), np.float32))
    assert runner.peak_memory_mb() == 350 and runner.peak_memory_kind == "cuda_mem_get_info_delta"


# ---------------------------------------------------------------------------------------------- trtexec
_BASE = [
    "--minShapes=input:1x3x16x16",
    "--optShapes=input:1x3x16x16",
    "--maxShapes=input:8x3x16x16",
    "--shapes=input:1x3x16x16",
    "--timingCacheFile=timing.cache",
    "--exportTimes=trtexec_times.json",
    "--exportProfile=trtexec_profile.json",
    "--exportOutput=trtexec_output.json",
    "--warmUp=500",
    "--duration=10",
]
_T10 = ["--useCudaGraph", "--separateProfileRun", "--noDataTransfers"]
SNAPSHOTS = {
    (10, "fp32"): ["--onnx=student.onnx", "--saveEngine=student.trt10.fp32.plan", *_BASE, *_T10, "--noTF32"],
    (10, "fp16"): ["--onnx=student.onnx", "--saveEngine=student.trt10.fp16.plan", *_BASE, *_T10, "--fp16"],
    (10, "int8"): [
        "--onnx=student.int8.onnx",
        "--saveEngine=student.trt10.int8.plan",
        *_BASE,
        *_T10,
        "--fp16",
        "--int8",
    ],
    (11, "fp32"): ["--onnx=student.onnx", "--saveEngine=student.trt11.fp32.plan", *_BASE, "--noTF32"],
    (11, "fp16"): ["--onnx=student.fp16.onnx", "--saveEngine=student.trt11.fp16.plan", *_BASE],
    (11, "int8"): ["--onnx=student.int8.onnx", "--saveEngine=student.trt11.int8.plan", *_BASE],
}


@pytest.mark.parametrize("major, precision", sorted(SNAPSHOTS))
def test_trtexec_scripts_snapshot(tiny_onnx, int8_trt, major, precision):
    out = tiny_onnx.parent
    script = emit_trtexec_script(out, tiny_onnx, major, precision, SHAPES, int8_trt if precision == "int8" else None)
    text = script.read_text()
    cmd = text[text.index("trtexec ") :].replace("\\\n", " ").split()
    assert cmd[0] == "trtexec" and cmd[1:] == SNAPSHOTS[(major, precision)]
    for flag in cmd[1:]:  # every flag is one this major's trtexec parses and acts on
        assert trt_rules.trtexec_accepts(flag, major) == "yes", flag
        for release in ["10.0", "10.16"] if major == 10 else ["11.1"]:
            assert flag.split("=")[0][2:] in trt_rules.TRTEXEC_PARSED[release], (flag, release)
    if major == 10:
        assert "JetPack 6.1 and 6.2 ship TensorRT 10.3" in text and "JetPack 6.0 ships TensorRT 8.6" in text
        assert "exclude host<->device copies (--noDataTransfers" in text
    else:
        assert "TensorRT 11.3 and newer do not support JetPack" in text
        assert "exclude host<->device copies (TensorRT 11's default" in text
    assert ("--noTF32" in text) == (precision == "fp32")
    assert script.stat().st_mode & 0o111


def test_trtexec_option_table_agrees_with_the_parsed_option_sets():
    for flag, opt in trt_rules.TRTEXEC_OPTIONS.items():
        for major, status in opt.accepted.items():
            for release in ["10.0", "10.16"] if major == 10 else ["11.1"]:
                assert (status != "no") == (flag[2:] in trt_rules.TRTEXEC_PARSED[release]), (flag, release)
    assert {"fp16", "int8", "best", "calib"}.isdisjoint(trt_rules.TRTEXEC_PARSED["11.1"])


def test_trtexec_11_drops_noop_and_removed_flags():
    for flag in ("--useCudaGraph", "--separateProfileRun", "--noDataTransfers", "--stronglyTyped"):
        assert trt_rules.trtexec_accepts(flag, 11) == "no-op"
    for flag in ("--fp16", "--int8"):
        assert trt_rules.trtexec_accepts(flag, 11) == "no"
    with_copies = trtexec_command("s.onnx", 11, "fp16", SHAPES, data_transfers=True)
    assert "--includeDataTransfers" in with_copies
    assert "--noDataTransfers" not in trtexec_command("s.onnx", 10, "fp16", SHAPES, data_transfers=True)
    with pytest.raises(ValueError):
        trtexec_command("s.onnx", 12, "fp16", SHAPES)


def test_trtexec_script_refuses_a_cpu_int8_model(tiny_onnx, tmp_path):
    from compressor.exporters.quantize import quantize_onnx

    cpu = quantize_onnx(tiny_onnx, tmp_path / "student.int8.onnx", _calib(), target="cpu")
    with pytest.raises(ExportError, match="would reject.*compress export --trt --precision int8"):
        emit_trtexec_script(tmp_path, tiny_onnx, 10, "int8", SHAPES, cpu)
    assert not (tmp_path / "trtexec_trt10_int8.sh").exists()


# ---------------------------------------------------------------------------------------------- ort-trt
def test_ort_trt_needs_onnxruntime_1_27_for_tensorrt_11(monkeypatch):
    import onnxruntime as ort

    from compressor.exporters.table import backend_available

    assert "1.27" in trt_rules.ort_tensorrt_problem("1.26.1", (11, 1))
    assert trt_rules.ort_tensorrt_problem("1.27.0", (11, 1)) == ""
    assert trt_rules.ort_tensorrt_problem("1.20.0", (10, 3)) == ""
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(trt_rules, "installed_tensorrt_version", lambda: (11, 1))
    monkeypatch.setattr(ort, "__version__", "1.26.0")
    ok, why = backend_available("ort-trt")
    assert not ok and "needs ONNX Runtime >= 1.27" in why and "TensorRT 11.1" in why
    monkeypatch.setattr(ort, "__version__", "1.27.1")
    assert backend_available("ort-trt") == (True, "")
