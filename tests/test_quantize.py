"""INT8 for ONNX Runtime's CPU provider: what gets quantised, and what stays in float."""

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import numpy_helper

from compressor.exporters.formats.onnx import export_onnx, ort_session
from compressor.exporters.quantize import CPU_OP_TYPES, CPU_VARIANTS, CpuInt8, psnr, quantize_onnx


class _Gen(nn.Module):
    """A small pix2pix-shaped generator: reflect pad, 7x7 stem, InstanceNorm, strided conv, ConvTranspose, Tanh."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.ReflectionPad2d(3),
            nn.Conv2d(3, 8, 7),
            nn.InstanceNorm2d(8, affine=True),
            nn.ReLU(True),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.InstanceNorm2d(16, affine=True),
            nn.ReLU(True),
            nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1),
            nn.InstanceNorm2d(8, affine=True),
            nn.ReLU(True),
            nn.ReflectionPad2d(3),
            nn.Conv2d(8, 3, 7),
            nn.Tanh(),
        )

    def forward(self, x):
        return self.net(x)


def _smooth(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=g) * 2 - 1
    return nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("q") / "g.onnx"
    export_onnx(_Gen().eval(), path, torch.zeros(1, 3, 32, 32))
    return path


def _calib():
    return [x[None].numpy() for x in _smooth(8, 1)]


def _consumers(graph):
    out = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def _stray_qdq(graph) -> list[str]:
    """Q/DQ pairs whose tensor neither comes from nor goes to an op with an INT8 kernel: pure overhead."""
    users = _consumers(graph)
    producer = {o: n for n in graph.node for o in n.output}
    stray = []
    for q in (n for n in graph.node if n.op_type == "QuantizeLinear"):
        src = producer.get(q.input[0])
        dqs = [u for u in users.get(q.output[0], []) if u.op_type == "DequantizeLinear"]
        dst = {u.op_type for d in dqs for u in users.get(d.output[0], [])}
        if not (src is not None and src.op_type in CPU_OP_TYPES) and not (dst & set(CPU_OP_TYPES)):
            stray.append(q.name)
    return stray


def test_cpu_int8_quantises_only_ops_with_int8_kernels(fp32, tmp_path):
    q = quantize_onnx(fp32, tmp_path / "g8.onnx", _calib(), "cpu")
    g = onnx.load(q).graph
    assert any(n.op_type == "DequantizeLinear" for n in g.node), "nothing was quantised"
    assert _stray_qdq(g) == []
    # ConvTranspose has no INT8 CPU kernel: its weight stays float
    inits = {i.name for i in g.initializer}
    convt = [n for n in g.node if n.op_type == "ConvTranspose"]
    assert convt and all(n.input[1] in inits for n in convt)
    zps = [i for i in g.initializer if i.name.endswith("_zero_point")]
    act = [z for z in zps if z.data_type == onnx.TensorProto.UINT8]
    assert act, "U8S8: unsigned activations"
    # quantising every op type puts Q/DQ around the norms, ReLUs and pads: the check above can fail
    every = quantize_onnx(fp32, tmp_path / "all.onnx", _calib(), "cpu", cpu=CPU_VARIANTS["qdq-all-ops"])
    assert len(_stray_qdq(onnx.load(every).graph)) >= 3


def test_cpu_int8_output_close_to_fp32(fp32, tmp_path):
    q = quantize_onnx(fp32, tmp_path / "g8.onnx", _calib(), "cpu")
    s32, s8 = ort_session(fp32), ort_session(q)
    vals = [
        psnr(s32.run(None, {"input": x[None].numpy()})[0], s8.run(None, {"input": x[None].numpy()})[0])
        for x in _smooth(4, 2)
    ]
    assert min(vals) >= 30, vals


@pytest.mark.parametrize("name", sorted(CPU_VARIANTS))
def test_every_cpu_variant_builds_and_runs(fp32, tmp_path, name):
    opt = CPU_VARIANTS[name]
    q = quantize_onnx(fp32, tmp_path / f"{name}.onnx", _calib()[:3], "cpu", cpu=opt)
    ops = {n.op_type for n in onnx.load(q).graph.node}
    if opt.format == "qoperator":
        assert "QLinearConv" in ops and "DequantizeLinear" in ops  # back to float before the norms
    else:
        assert "QuantizeLinear" in ops and "QLinearConv" not in ops
    out = ort_session(q).run(None, {"input": _smooth(1, 3).numpy()})[0]
    assert out.shape == (1, 3, 32, 32) and np.isfinite(out).all()
    assert opt.describe()


def test_tensorrt_int8_stays_symmetric_signed(fp32, tmp_path):
    q = quantize_onnx(fp32, tmp_path / "t8.onnx", _calib()[:3], "tensorrt", cpu=CpuInt8(activations="u8"))
    g = onnx.load(q).graph
    inits = {i.name: i for i in g.initializer}
    zps = [
        inits[n.input[2]]
        for n in g.node
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] in inits
    ]
    zps = [z for z in zps if z.data_type != onnx.TensorProto.INT32]  # biases are int32 in both targets
    assert zps and all(z.data_type == onnx.TensorProto.INT8 and not numpy_helper.to_array(z).any() for z in zps)
