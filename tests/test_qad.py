"""Quantisation-aware distillation (``distill.quantize``): the fake-quantised student trains, resumes bit for bit,
and its INT8 exports carry its trained scales (ONNX Runtime and OpenVINO compute what the fake-quantised model
computes)."""

import copy
import functools
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import one_error_line, run_cli, tiny_recipe_text

qat = pytest.importorskip("compressor.qat")
if qat.missing():
    pytest.skip(f"quantisation-aware training: {qat.missing()}", allow_module_level=True)

from compressor.errors import Interrupted  # noqa: E402
from compressor.exporters.export import ExportSpec, export_file, export_trained  # noqa: E402
from compressor.exporters.quantize import psnr  # noqa: E402
from compressor.models import build_generator  # noqa: E402
from compressor.recipe import LossesSpec  # noqa: E402
from compressor.train import Direction, Trainer, TrainSetup, seed_everything  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _student(seed=0):
    torch.manual_seed(seed)
    return build_generator("resnet_6blocks", ngf=8, norm="instance").eval()


def _images(n, size=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


@functools.lru_cache(maxsize=None)
def _prepared(seed: int):
    net = _student(seed)
    return net, qat.quantize_student(net, _images(2), [x[None] for x in _images(6, seed=2)], ["model.10"])


def _quantised(seed=0):
    """A fresh copy of the seed's student and its calibrated fake-quantised version (exported once per session)."""
    return copy.deepcopy(_prepared(seed))


def test_the_int8_exports_compute_what_the_fake_quantised_student_computes(tmp_path):
    """ONNX Runtime and OpenVINO run the QDQ file written from the trained scales; each is within quantisation
    tolerance of the fake-quantised PyTorch forward on images it never saw."""
    pytest.importorskip("openvino")
    net, q = _quantised()
    q.eval()
    x = _images(3, seed=5)
    doc = export_trained(
        q, tmp_path, ExportSpec(name="student.qad", size=32, formats=("onnx", "openvino")), x, fp32_onnx=None
    )
    files = doc["files"]
    assert files["student.qad.int8.onnx"]["status"] == "passed", doc
    assert files["student.qad.int8.xml"]["status"] == "passed", doc
    import onnxruntime as ort
    import openvino as ov

    with torch.no_grad():
        ref = q(x).numpy()
    sess = ort.InferenceSession(str(tmp_path / "student.qad.int8.onnx"), providers=["CPUExecutionProvider"])
    got_ort = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    compiled = ov.Core().compile_model(str(tmp_path / "student.qad.int8.xml"), "CPU")
    got_ov = np.concatenate([compiled(x[i : i + 1].numpy())[0] for i in range(3)])
    assert psnr(ref, got_ort) > 30, psnr(ref, got_ort)
    assert psnr(ref, got_ov) > 30, psnr(ref, got_ov)
    with torch.no_grad():
        assert psnr(net(x).numpy(), got_ort) < 80  # it is INT8: not the FP32 student's output


def test_the_onnx_file_holds_the_trained_scales_not_a_fresh_calibration(tmp_path):
    """Move one quantiser's observed range (as training does, before the ranges are held): the exported file carries
    the scale of that range, and the weights are INT8 initializers with unsigned (U8S8) activations."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    _, q = _quantised()
    q.observers(False)
    fq = next(
        m
        for n, m in q.graph.named_modules()
        if n.startswith("activation_post_process") and getattr(m, "scale", torch.zeros(2)).numel() == 1
    )
    obs = fq.activation_post_process
    obs.min_val.mul_(3.0), obs.max_val.mul_(3.0)  # as if training had moved the range
    scale = float(fq.calculate_qparams()[0].item())
    q.eval()
    x = _images(2, seed=5)
    rec = export_file("onnx", q, tmp_path / "q.int8.onnx", x, precision="int8", size=32)
    assert rec["quantization"] == "qad" and rec["unsigned_activations"] > 0
    model = onnx.load(str(tmp_path / "q.int8.onnx"))
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    scales = [
        float(init[n.input[1]].reshape(-1)[0])
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and n.input[1] in init and init[n.input[1]].size == 1
    ]
    assert any(abs(s - scale) <= 1e-6 * scale for s in scales), (scale, scales[:8])
    weights = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in init]
    assert weights and all(init[n.input[0]].dtype == np.int8 for n in weights)
    acts = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[2] in init]
    assert acts and all(init[n.input[2]].dtype == np.uint8 for n in acts)


def test_calibration_takes_the_range_of_every_image_not_the_first():
    """A narrow first image then a wide one: every quantiser's range is the union of the ranges each image gives
    alone, as min-max PTQ sets it (the QAT observers' moving average would keep the first image's narrow range and
    clip the rest)."""
    net = _student(3)
    narrow, wide = _images(1, seed=7) * 0.05, _images(1, seed=8)

    def ranges(images):
        q = qat.prepare(net, _images(2), [])
        qat.calibrate(q, images)
        return {k: v for k, v in q.state_dict().items() if k.endswith(("min_val", "max_val")) and v.numel() == 1}

    both, a, b = ranges([narrow, wide]), ranges([narrow]), ranges([wide])
    assert both
    for k, v in both.items():
        union = torch.minimum(a[k], b[k]) if k.endswith("min_val") else torch.maximum(a[k], b[k])
        assert torch.equal(v, union), k
    assert sum(not torch.equal(both[k], a[k]) for k in both) >= 10  # the wide image did widen them


class _Pairs(torch.utils.data.Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, i):
        x = torch.from_numpy(np.random.rand(3, 32, 32).astype(np.float32)) * 2 - 1
        return {"input": x, "target": torch.tanh(x.flip(2) + random.random()), "index": i % 6}


def _qad_trainer(out, progress=None):
    seed_everything(0)
    teacher, q = _student(1), _quantised(0)[1]
    losses = LossesSpec.model_validate(
        {"srp": {"weight": 1.0}, "recon": {"weight": 10}, "kd": {"weight": 1}, "gan": {"weight": 0}}
    )

    def hold(step):
        if step >= 4 and q.observing():
            q.observers(False)

    setup = TrainSetup(
        kind="paired",
        directions=[Direction("G", q, teacher, "input", "target")],
        dataset=_Pairs(),
        losses=losses,
        steps=6,
        batch_size=2,
        seed=3,
        taps={"enc": "model.10"},
        srp_layers=["enc"],
        checkpoint_every=100,
        log_every=1,
        sample_every=1000,
        before_step=hold,
    )
    return Trainer(setup, out, torch.device("cpu"), progress)


def test_an_interrupted_quantised_phase_resumes_bit_identically(tmp_path):
    full = _qad_trainer(tmp_path / "full")
    full.fit()
    part = _qad_trainer(tmp_path / "part", progress=lambda step, total, _: setattr(part, "_stop", step == 3))
    with pytest.raises(Interrupted):
        part.fit()
    assert part.s.directions[0].student.observing()  # stopped before the ranges were held
    seed_everything(12345)
    random.random(), np.random.rand(5), torch.rand(3)  # a new process: every generator elsewhere
    resumed = _qad_trainer(tmp_path / "part")
    resumed.fit(resume=True)
    a, b = full.s.directions[0].student.state_dict(), resumed.s.directions[0].student.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not resumed.s.directions[0].student.observing()  # held from step 4 on, in both
    moved = [k for k in a if k.endswith(".scale") and not torch.equal(a[k], _quantised(0)[1].state_dict()[k])]
    assert moved  # the observers did move the ranges before they were held


def _recipe(tmp_path, quantize="{steps: 3, calib_images: 4}", formats="[onnx, openvino]"):
    text = tiny_recipe_text().replace(
        "  discriminator: {ndf: 8, n_layers: 2}", f"  discriminator: {{ndf: 8, n_layers: 2}}\n  quantize: {quantize}"
    )
    text = text.replace(
        "export: {onnx: {dynamic: [batch]}}",
        f"export: {{onnx: {{dynamic: [batch]}}, int8: {{enabled: true, calib_images: 4}}, formats: {formats}}}",
    )
    p = tmp_path / "tiny.yaml"
    p.write_text(text)
    return p


@pytest.mark.slow
def test_the_pipeline_trains_exports_and_benchmarks_the_quantised_student(tmp_path):
    pytest.importorskip("openvino")
    recipe = _recipe(tmp_path)
    res = run_cli([recipe, "--out", tmp_path / "runs"], timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "runs" / "tiny"
    meta = json.loads((run / "quantize.json").read_text())
    assert meta["step"] == 3 and meta["taps"] and (run / "quantize" / "checkpoints").is_dir()
    files = json.loads((run / "export.json").read_text())["files"]
    assert files["student.qad.int8.onnx"]["quantization"] == "qad"
    assert files["student.qad.int8.xml"]["status"] == "passed"
    assert files["student.int8.onnx"]["status"] == "passed"  # the calibrated one is still there, beside it
    report = (run / "report.md").read_text()
    assert "## Loss terms: the quantised phase" in report and "`student.qad.int8.onnx`" in report
    # quantize.steps changed: the quantised phase's checkpoints are of another configuration (distill's are not)
    args = [recipe, "--out", tmp_path / "runs", "--set", "distill.quantize.steps=4"]
    res = run_cli(args)
    one_error_line(res.stderr, res.returncode, "quantize/checkpoints", skip_warnings=True)
    res = run_cli(args + ["--force", "--only", "quantize,export"], timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((run / "quantize.json").read_text())["step"] == 4
    res = run_cli(["benchmark", run, "--format", "onnx,openvino", "--images", "2"], timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads((run / "benchmark.json").read_text())["rows"]
    int8 = {(r["format"], r.get("quantization")): r for r in rows if r["precision"] == "int8"}
    for key in [("onnx", "ptq"), ("onnx", "qad"), ("openvino", "ptq"), ("openvino", "qad")]:
        assert int8[key]["status"] == "passed", int8[key]
        assert "psnr_vs_fp32" in int8[key] and "p50_ms" in int8[key]
    assert "int8 qad" in res.stdout and "int8 ptq" in res.stdout
    # compress export of the run, standalone: the trained INT8 file beside the calibrated one
    out = tmp_path / "exported"
    res = run_cli(
        ["export", run, "--format", "onnx", "--precision", "int8", "--calib-images", "4", "--out", out], timeout=900
    )
    assert res.returncode == 0, res.stderr[-3000:]
    files = json.loads((out / "export.json").read_text())["files"]
    assert files["student.int8.onnx"]["status"] == "passed"
    assert (
        files["student.qad.int8.onnx"]["status"] == "passed" and files["student.qad.int8.onnx"]["quantization"] == "qad"
    )
    assert "student.qad.int8.onnx" in res.stdout


def test_the_benchmark_table_says_which_int8_rows_are_trained_and_why_others_are_not():
    from compressor.exporters.report.tables import benchmark_table

    rows = [
        {"format": "onnx", "precision": "fp32", "status": "passed", "psnr": 30.0},
        {"format": "onnx", "precision": "int8", "quantization": "ptq", "status": "passed", "psnr_vs_fp32": 45.5},
        {
            "format": "litert",
            "precision": "int8",
            "quantization": "ptq",
            "status": "passed",
            "psnr_vs_fp32": 33.0,
            "note": "litert cannot take trained INT8 scales yet: post-training quantisation",
        },
        {"format": "onnx", "precision": "int8", "quantization": "qad", "status": "passed", "psnr_vs_fp32": 37.3},
    ]
    text = "\n".join(benchmark_table({"rows": rows}))
    assert "vs FP32 dB" in text and "int8 qad" in text and "int8 ptq" in text
    assert "passed (litert cannot take trained INT8 scales yet" in text
    assert "45.5" in text and "37.3" in text


@pytest.mark.parametrize(
    "quantize, needle",
    [
        ("{precision: int4, steps: 3}", "distill.quantize.precision"),
        ("{steps: 0}", "distill.quantize.steps"),
        ("{steps: 3, freeze_at: 2}", "distill.quantize.freeze_at"),
        ("{steps: 3, precision: fp16}", "distill.quantize.precision"),
    ],
)
def test_bad_quantize_settings_give_one_error_line(tmp_path, quantize, needle):
    res = run_cli(["validate", _recipe(tmp_path, quantize)])
    one_error_line(res.stderr, res.returncode, needle)


def test_quantize_on_the_teacher_stage_is_one_error_line(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text(tiny_recipe_text().replace("train: {steps: 6}", "train: {steps: 6, quantize: {steps: 3}}"))
    res = run_cli(["validate", p])
    one_error_line(res.stderr, res.returncode, "teacher.train.quantize")


def test_a_recipe_without_quantize_keeps_its_stage_digests(tmp_path):
    """The quantize stage is new: a recipe that does not ask for it has the digests it had before it existed."""
    from compressor.app.context import Context, RunOptions
    from compressor.app.pipeline import stage_digest
    from compressor.recipe import load_recipe
    from compressor.runfolder import RunDir

    plain = load_recipe(_recipe(tmp_path, "null"))
    with_q = load_recipe(_recipe(tmp_path, "{steps: 3}"))
    ctx = lambda r: Context(r, RunDir(tmp_path / "runs" / r.name), torch.device("cpu"), RunOptions())  # noqa: E731
    a, b = ctx(plain), ctx(with_q)
    assert stage_digest(a, "distill") == stage_digest(b, "distill")  # quantize is its own stage's business
    assert stage_digest(a, "evaluate") == stage_digest(b, "evaluate")
    assert stage_digest(a, "export") != stage_digest(b, "export")  # the export takes the trained scales
    assert plain.section_hash("distill") == with_q.section_hash("distill")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
