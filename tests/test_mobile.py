"""Phone and board formats: each exporter's file runs in the format's own runtime and matches PyTorch.

Tiny models (ngf 8, one residual block, 32 px) keep these fast; a format whose runtime is not installed skips
with the ``pip install`` that adds it."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from compressor.errors import ExportError
from compressor.exporters import mobile
from compressor.exporters.export import ExportSpec, export_file, export_files
from compressor.exporters.mobile import CroppedConvTranspose2d, without_output_padding
from compressor.exporters.table import BACKENDS, FORMATS
from compressor.models.resnet import ResnetGenerator


def needs(*modules):
    gone = [m for m in modules if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(bool(gone), reason=f"{', '.join(gone)} not installed: pip install 'compressor[mobile]'")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = ResnetGenerator(3, 3, ngf=8, norm="instance", n_blocks=1).eval()
    samples = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    return model, samples


def test_output_padding_rewrite_is_exact():
    torch.manual_seed(0)
    ct = torch.nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
    x = torch.randn(1, 8, 9, 7)
    assert torch.allclose(CroppedConvTranspose2d(ct)(x), ct(x), atol=1e-6)
    model, n = without_output_padding(torch.nn.Sequential(ct, torch.nn.ConvTranspose2d(4, 4, 4, 2, 1)))
    assert n == 1 and isinstance(model[0], CroppedConvTranspose2d) and type(model[1]) is torch.nn.ConvTranspose2d


def test_parity_check_names_the_limit():
    ref = [np.zeros((1, 3, 4, 4), np.float32)]
    with pytest.raises(ExportError, match="max abs error 2.00e-03.*limit"):
        mobile.check("ncnn", "fp32", mobile.parity(ref, [ref[0] + 2e-3]))
    with pytest.raises(ExportError, match="PSNR"):
        mobile.check("litert", "int8", mobile.parity(ref, [ref[0] + 0.1]))
    assert mobile.check("litert", "int8", mobile.parity(ref, [ref[0] + 0.01]))["psnr_min"] == pytest.approx(46.0, 0.01)


def test_missing_extra_is_one_line(monkeypatch, tmp_path, tiny):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == "executorch" else real(m, *a))
    doc = export_files(tiny[0], tmp_path, ExportSpec(jobs=(("executorch", "fp32"),), keep_going=True), tiny[1])
    assert doc["notes"] == ["executorch fp32 skipped: executorch is not installed: pip install 'compressor[mobile]'"]
    assert doc["files"]["student.pte"]["status"] == "skipped" and not (tmp_path / "student.pte").exists()


@needs("executorch")
def test_executorch_fp32_parity(tmp_path, tiny):
    from compressor.exporters.formats.executorch import ExecuTorchRunner, read_metadata

    model, samples = tiny
    rec = export_file("executorch", model, tmp_path / "s.pte", samples, metadata={"width": 0.5})
    assert rec["path"] == "s.pte" and rec["parity"]["max_abs"] < 1e-3
    meta = read_metadata(tmp_path / "s.pte")
    assert meta["value_range"] == "[-1, 1]" and meta["input_size"] == "32" and meta["width"] == "0.5"
    out = ExecuTorchRunner(tmp_path / "s.pte", threads=1)(samples[:1].numpy())
    assert np.abs(out - model(samples[:1]).detach().numpy()).max() < 1e-3
    assert not list(tmp_path.glob(".tmp*"))


@needs("litert_torch", "ai_edge_litert")
def test_litert_fp32_parity_nhwc(tmp_path, tiny):
    from compressor.exporters.formats.litert import LiteRTRunner, read_metadata

    model, samples = tiny
    rec = export_file("litert", model, tmp_path / "s.tflite", samples)
    assert rec["parity"]["max_abs"] < 1e-3 and rec["layout"] == "NHWC"
    assert "output_padding" in rec["notes"][0]  # the ResNet's upsampling layers were rewritten
    runner = LiteRTRunner(tmp_path / "s.tflite", threads=1)
    assert runner.input_shape == (1, 32, 32, 3)  # what a phone's bitmap gives
    meta = read_metadata(tmp_path / "s.tflite")
    assert meta["layout"] == "NHWC" and json.loads(meta["input_shape"]) == [1, 32, 32, 3]


@needs("ncnn", "pnnx")
def test_ncnn_fp32_parity_and_failed_check_keeps_the_old_file(tmp_path, tiny):
    model, samples = tiny
    rec = export_file("ncnn", model, tmp_path / "s.ncnn.param", samples)
    assert rec["parity"]["max_abs"] < 1e-3 and (tmp_path / "s.ncnn.bin").is_file()
    before = (tmp_path / "s.ncnn.bin").read_bytes()
    other = ResnetGenerator(3, 3, ngf=8, norm="instance", n_blocks=1).eval()
    with pytest.raises(ExportError, match="max abs"):
        export_file("ncnn", other, tmp_path / "s.ncnn.param", samples, limits={"max_abs": 0.0})
    assert (tmp_path / "s.ncnn.bin").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.ncnn.bin", "s.ncnn.param"]


@needs("coremltools")
def test_coreml_converts_and_its_spec_checks(tmp_path, tiny):
    from compressor.exporters.formats.coreml import can_predict, validate

    model, samples = tiny
    rec = export_file("coreml", model, tmp_path / "s.mlpackage", samples, metadata={"width": 0.5})
    assert rec["path"] == "s.mlpackage" and rec["precision"] == "fp16"
    assert rec["spec"]["inputs"] == {"input": [1, 3, 32, 32]} and rec["spec"]["metadata"]["value_range"] == "[-1, 1]"
    with pytest.raises(ExportError, match="inputs"):
        validate(tmp_path / "s.mlpackage", (1, 3, 64, 64))
    if not can_predict():
        assert rec["parity"] == {"compared": False, "reason": rec["parity"]["reason"]}


@needs("coremltools")
def test_coreml_predict(tmp_path, tiny):
    from compressor.exporters.formats.coreml import NOT_MACOS, CoreMLRunner, can_predict

    if not can_predict():
        pytest.skip(NOT_MACOS)
    model, samples = tiny
    export_file("coreml", model, tmp_path / "s.mlpackage", samples, precision="fp32")
    out = CoreMLRunner(tmp_path / "s.fp32.mlpackage")(samples[:1].numpy())
    assert np.abs(out - model(samples[:1]).detach().numpy()).max() < 1e-3


def test_mobile_rows_declare_their_backend():
    for name, artifact in (("executorch", "pte"), ("litert", "tflite"), ("ncnn", "ncnn"), ("coreml", "mlpackage")):
        fmt = FORMATS[name]
        assert fmt.static_only and fmt.backend is BACKENDS[name] and BACKENDS[name].artifact == artifact
        assert fmt.export.__name__ == f"export_{name}" and BACKENDS[name].precisions == fmt.precisions
    assert FORMATS["coreml"].path("d", "student", "fp16").name == "student.mlpackage"
    assert FORMATS["ncnn"].path("d", "student", "fp16").name == "student.fp16.ncnn.param"
    from compressor.exporters.formats.ncnn import paths
    from compressor.exporters.mobile import variant_path

    assert variant_path(FORMATS["executorch"].path("d", "s", "int8"), "int8", ".pte").name == "s.int8.pte"
    assert variant_path(Path("d/s.pte"), "int8", ".pte").name == "s.int8.pte"
    assert paths(FORMATS["ncnn"].path("d", "s", "fp16"), "fp16")[1].name == "s.fp16.ncnn.bin"


def test_profile_host_takes_the_coreml_backend(tmp_path, monkeypatch):
    """A Mac times Core ML: ``compress profile --host user@mac --backend coreml`` reaches the remote path."""
    import compressor.app.cli as cli

    seen = {}

    def fake_remote(host, models, args, out, *rest):
        seen.update(host=host, models=models, args=args)
        doc = {"schema": "compressor.profile/1", "created": "", "environment": {}, "results": []}
        out.write_text(json.dumps(doc))
        return doc

    monkeypatch.setattr(cli, "remote_profile", fake_remote)
    model = tmp_path / "student.mlpackage"
    model.mkdir()
    out = tmp_path / "mac.json"
    code = cli.main(["profile", str(model), "--host", "me@mac", "--backend", "coreml", "--out", str(out)])
    assert (
        code in (0, None) and seen["host"] == "me@mac" and seen["args"][seen["args"].index("--backend") + 1] == "coreml"
    )


@needs("ncnn", "pnnx")
def test_export_stage_formats_go_on_after_a_refusal(tmp_path, tiny, monkeypatch):
    from dataclasses import replace

    from compressor.exporters import table

    def refuse(req):
        raise ExportError("litert fp32: error: failed to legalize operation 'mhlo.convolution'")

    monkeypatch.setitem(table.FORMATS, "litert", replace(table.FORMATS["litert"], export=refuse, requires=()))
    monkeypatch.chdir(tmp_path)  # a relative folder, as a run's is (pnnx works in a folder of its own)
    jobs = (("litert", "fp32"), ("litert", "int8"), ("ncnn", "fp32"))  # the stage's: each, and INT8 where it has one
    spec = ExportSpec(jobs=jobs, optional=("litert", "ncnn"), metadata={"width": 0.5})
    files = export_files(tiny[0], Path("run"), spec, tiny[1])
    assert files["files"]["student.tflite"]["status"] == "failed" and "mhlo.convolution" in files["notes"][0]
    assert files["files"]["student.ncnn.param"]["status"] == "passed"
    assert set(files["files"]) == {"student.tflite", "student.int8.tflite", "student.ncnn.param"}
    assert files["notes"][1] == "litert int8 skipped: no calibration images"  # ncnn has no int8
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["student.ncnn.bin", "student.ncnn.param"]


@needs("ncnn", "pnnx")
def test_ncnn_runs_a_model_whose_first_layer_works_in_place(tmp_path):
    """GAN Compression's generators clamp their input first; ncnn runs that Clip in place on the input blob."""

    class Clamped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return self.conv(x.clamp(-0.5, 0.5))

    rec = export_file("ncnn", Clamped().eval(), tmp_path / "m.ncnn.param", torch.rand(2, 3, 8, 8) * 2 - 1)
    assert rec["parity"]["max_abs"] < 1e-5
