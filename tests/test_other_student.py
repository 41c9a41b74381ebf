"""A student of another architecture (``student.arch`` / ``student.import``), distilled through tap pairs whose maps
differ in size: the relation distance to the teacher falls as it does for a slimmed student, the pipeline trains,
exports with parity and reports it, and bad settings give one line."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from conftest import one_error_line, run_cli

from compressor.errors import RecipeError
from compressor.features import FeatureTaps, check_tap_pair, resolve_tap_pairs
from compressor.losses import common_size, srp_multi
from compressor.models import build_generator
from compressor.recipe import load_recipe
from compressor.slim import make_student, other_student, student_from_plan
from compressor.srp import SRPLoss, distill


def _relation_distance(teacher, student, pairs, x) -> float:
    t_taps, s_taps = resolve_tap_pairs(teacher, student, pairs)
    with torch.no_grad(), FeatureTaps(teacher, t_taps) as ft, FeatureTaps(student, s_taps) as fs:
        teacher(x)
        student(x)
        return float(srp_multi(ft.features, fs.features, list(pairs), normalize="rows"))


def _fall(teacher, student, layers, pairs, batches, held_out) -> float:
    before = _relation_distance(teacher, student, pairs, held_out)
    distill(teacher, student, batches, steps=30, lr=2e-3, kd_weight=1.0, srp_weight=50.0, layers=layers)
    return _relation_distance(teacher, student.eval(), pairs, held_out) / before


def test_common_size_pools_the_larger_map():
    a, b = torch.randn(2, 4, 32, 32), torch.randn(2, 7, 8, 8)
    pa, pb = common_size(a, b)
    assert pa.shape == (2, 4, 8, 8) and pb is b
    assert torch.allclose(pa, nn.functional.avg_pool2d(a, 4))  # area pooling at an integer ratio
    same = torch.randn(1, 2, 5, 5)
    assert common_size(same, same)[0] is same


def test_relation_distance_falls_for_a_student_of_another_family():
    """unet_128 -> resnet_6blocks, SRP on the two 'encoder' taps (1/16 against 1/4 of the image: 8² against 32²)
    and a pair of differently named taps; the held-out relation distance falls as it does for a width-0.5 student
    of the same teacher."""
    torch.manual_seed(0)
    teacher = build_generator("unet_128", ngf=8, norm="batch").eval()
    batches = [torch.rand(2, 3, 128, 128) * 2 - 1 for _ in range(4)]
    held_out = torch.rand(2, 3, 128, 128) * 2 - 1
    other = build_generator("resnet_6blocks", ngf=8, norm="batch")
    pairs = {"encoder": ("encoder", "encoder"), "mid->res_mid": ("mid", "res_mid")}
    t_taps, s_taps = resolve_tap_pairs(teacher, other, pairs)
    channels = check_tap_pair(teacher, other, t_taps, held_out[:1], student_taps=s_taps)
    assert channels == {"encoder": (64, 32), "mid->res_mid": (32, 32)}
    with torch.no_grad(), FeatureTaps(teacher, t_taps) as ft, FeatureTaps(other, s_taps) as fs:
        teacher(held_out)
        other(held_out)
    assert ft.features["encoder"].shape[-1] == 8 and fs.features["encoder"].shape[-1] == 32  # different sizes

    ratio_other = _fall(teacher, other, [("encoder", "encoder"), ("mid", "res_mid")], pairs, batches, held_out)
    torch.manual_seed(0)
    slim, _ = make_student(teacher, 0.5, "rebuild", "scratch")
    ratio_same = _fall(
        teacher, slim, ["encoder", "mid"], {"encoder": ("encoder",) * 2, "mid": ("mid",) * 2}, batches, held_out
    )
    assert ratio_other < 0.7, ratio_other
    assert ratio_same < 0.7, ratio_same


def test_srp_loss_takes_pairs_of_differently_named_taps():
    teacher = build_generator("unet_128", ngf=8)
    student = build_generator("resnet_6blocks", ngf=8)
    loss = SRPLoss(teacher, student, [("mid", "res_out")])
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        teacher(x)
    student(x)
    value = loss()
    value.backward()
    assert value.item() > 0 and student.model[1].weight.grad is not None
    loss.remove()


def test_other_student_must_return_the_teachers_shape():
    teacher = build_generator("resnet_6blocks", ngf=8, output_nc=3)
    with pytest.raises(Exception, match="must have the same shape"):
        other_student(
            teacher, {"arch": "resnet_6blocks", "kwargs": {"ngf": 4, "output_nc": 1}}, torch.randn(1, 3, 32, 32)
        )
    student, plan = other_student(teacher, {"arch": "resnet_9blocks", "kwargs": {"ngf": 4}}, torch.randn(1, 3, 32, 32))
    assert plan["method"] == "arch" and "width" not in plan
    rebuilt = student_from_plan(json.loads(json.dumps(plan)))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in student.state_dict().items()
    }


OTHER = """
name: other
seed: 0
device: cpu
data: {kind: synthetic, direction: BtoA, size: 128, batch_size: 2, synthetic: {train: 6, test: 3}}
teacher:
  arch: unet_128
  kwargs: {ngf: 8, norm: batch}
  train: {steps: 3}
student: {arch: resnet_6blocks, kwargs: {ngf: 8}}
distill:
  steps: 4
  checkpoint_every: 2
  log_every: 2
  sample_every: 4
  losses:
    srp: {weight: 5.0, pairs: [[encoder, encoder], [mid, res_mid]]}
    feat: {weight: 1.0, pairs: [[mid, res_out]]}
  discriminator: {ndf: 8, n_layers: 2}
evaluate: {metrics: [psnr], samples: 2}
export: {onnx: {dynamic: [batch]}}
profile: {backends: [ort-cpu], batch: [1], warmup: 1, iters: 2}
"""


def test_pipeline_distils_exports_and_reports_a_student_of_another_family(tmp_path):
    (tmp_path / "r.yaml").write_text(OTHER)
    res = run_cli([tmp_path / "r.yaml", "--out", tmp_path / "runs", "-q"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "runs" / "other"
    plan = json.loads((run / "student.json").read_text())
    assert plan["method"] == "arch" and plan["student"]["arch"] == "resnet_6blocks"
    export = json.loads((run / "export.json").read_text())
    assert export["files"]["student.onnx"]["parity"]["passed"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("G/srp" in r and "G/feat" in r for r in rows)
    assert "Student: a network of its own: resnet_6blocks" in (run / "report.md").read_text()


@pytest.mark.parametrize(
    "extra, needles",
    [
        ("student: {arch: resnet_6blocks, import: 'x.py:f'}", ("student", "not both")),
        ("student: {kwargs: {ngf: 8}}", ("student.kwargs", "only with")),
        ("student: {arch: resnet_7blocks}", ("student.arch", "unknown")),
        ("student: {arch: resnet_6blocks, kwargs: {nfg: 8}}", ("student.kwargs.nfg",)),
    ],
)
def test_bad_student_settings_are_refused(tmp_path, extra, needles):
    text = OTHER.replace("student: {arch: resnet_6blocks, kwargs: {ngf: 8}}", extra)
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(RecipeError) as exc:
        load_recipe(tmp_path / "r.yaml")
    assert all(n in str(exc.value) for n in needles), str(exc.value)


def test_a_width_beside_an_architecture_gives_one_line(tmp_path):
    text = OTHER.replace(
        "student: {arch: resnet_6blocks, kwargs: {ngf: 8}}", "student: {width: 0.5, arch: resnet_6blocks}"
    )
    (tmp_path / "r.yaml").write_text(text)
    res = run_cli(["validate", tmp_path / "r.yaml"], cwd=tmp_path)
    one_error_line(res.stderr, res.returncode, "student.width", "give one")


def test_a_tap_pair_naming_a_missing_module_gives_one_line(tmp_path):
    (tmp_path / "r.yaml").write_text(OTHER.replace("[mid, res_mid]", "[mid, res_middle]"))
    res = run_cli(["validate", tmp_path / "r.yaml"], cwd=tmp_path)
    one_error_line(res.stderr, res.returncode, "distill.losses.srp.pairs", "res_middle")


def test_layers_and_pairs_together_are_refused(tmp_path):
    (tmp_path / "r.yaml").write_text(OTHER.replace("srp: {weight: 5.0,", "srp: {weight: 5.0, layers: [encoder],"))
    with pytest.raises(RecipeError, match="pairs.*not both"):
        load_recipe(tmp_path / "r.yaml")


def test_a_student_of_the_wrong_output_shape_stops_before_distilling(tmp_path):
    text = OTHER.replace("kwargs: {ngf: 8}}", "kwargs: {ngf: 8, output_nc: 1}}")
    (tmp_path / "r.yaml").write_text(text)
    res = run_cli([tmp_path / "r.yaml", "--out", tmp_path / "runs", "-q"], cwd=tmp_path)
    one_error_line(res.stderr, res.returncode, "student.arch", "same shape")
    assert not (tmp_path / "runs" / "other" / "distill.json").exists()


def test_old_recipes_keep_their_digests():
    """student.arch/import/kwargs and the pairs are left out of the digests while unset."""
    from pathlib import Path

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml")
    dumped = recipe._hashed()
    assert "arch" not in dumped["student"] and "kwargs" not in dumped["student"]
    assert "pairs" not in dumped["distill"]["losses"]["srp"]


# ----------------------------------------------------------------------------------------- a teacher given as ONNX

ONNX_RECIPE = """
name: {name}
seed: 0
device: cpu
data: {{kind: synthetic, direction: BtoA, size: 128, batch_size: 2, synthetic: {{train: 6, test: 3}}}}
teacher: {teacher}
student: {{arch: resnet_6blocks, kwargs: {{ngf: 8}}}}
distill:
  steps: 2
  checkpoint_every: 2
  log_every: 1
  sample_every: 2
  losses: {{srp: {{weight: 5.0, pairs: [[{tap}, encoder]]}}}}
  discriminator: {{ndf: 8, n_layers: 2}}
evaluate: {{metrics: [psnr], samples: 2}}
export: {{onnx: {{dynamic: [batch]}}}}
profile: {{backends: [ort-cpu], batch: [1], warmup: 1, iters: 2}}
"""
# unet_128's 'encoder' alias (model.model.1.model.3.model.3.model.2, an InstanceNorm at 1/16) in the ONNX graph
ENCODER_TENSOR = "/model/model/model.1/model/model.3/model/model.3/model/model.2/InstanceNormalization_output_0"


def _unet_teacher_files(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(3)
    t = build_generator("unet_128", ngf=8, norm="instance").eval()
    save_file({k: v.contiguous() for k, v in t.state_dict().items()}, str(tmp_path / "t.safetensors"))
    torch.onnx.export(
        t,
        torch.randn(1, 3, 128, 128),
        str(tmp_path / "t.onnx"),
        input_names=["image"],
        output_names=["out"],
        dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}, "out": {0: "n", 2: "h", 3: "w"}},
        dynamo=False,
    )
    import onnx

    names = {o for n in onnx.load(str(tmp_path / "t.onnx")).graph.node for o in n.output}
    assert ENCODER_TENSOR in names  # the exporter's scope names: module path, op type
    return ENCODER_TENSOR


def test_an_onnx_teacher_gives_the_losses_of_its_pytorch_original(tmp_path):
    """The same run with the teacher as its ONNX export: the step-0 losses within 1e-4 (KD, SRP through a tensor
    of the graph made an extra output, GAN, reconstruction), and the ONNX run goes through export, profile and the
    report."""
    tap = _unet_teacher_files(tmp_path)
    torch_teacher = "{arch: unet_128, kwargs: {ngf: 8, norm: instance}, checkpoint: t.safetensors}"
    (tmp_path / "a.yaml").write_text(ONNX_RECIPE.format(name="a", teacher=torch_teacher, tap="encoder"))
    (tmp_path / "b.yaml").write_text(ONNX_RECIPE.format(name="b", teacher="{onnx: t.onnx}", tap=f"'{tap}'"))
    ra = run_cli(
        [tmp_path / "a.yaml", "--out", tmp_path / "runs", "-q", "--only", "teacher,student,distill"], cwd=tmp_path
    )
    assert ra.returncode == 0, ra.stderr[-3000:]
    rb = run_cli([tmp_path / "b.yaml", "--out", tmp_path / "runs", "-q"], cwd=tmp_path)
    assert rb.returncode == 0, rb.stderr[-3000:]
    first = [json.loads((tmp_path / "runs" / n / "metrics.jsonl").read_text().splitlines()[0]) for n in "ab"]
    terms = [k for k in first[0] if k.startswith("G/")]
    assert {"G/kd", "G/srp", "G/recon", "G/gan"} <= set(terms)
    for k in terms:
        assert abs(first[0][k] - first[1][k]) <= 1e-4, (k, first[0][k], first[1][k])
    run = tmp_path / "runs" / "b"
    teacher_meta = json.loads((run / "teacher.json").read_text())
    a_meta = json.loads((tmp_path / "runs" / "a" / "teacher.json").read_text())
    assert abs(teacher_meta["params"] - a_meta["params"]) / a_meta["params"] < 0.01  # from the graph's initializers
    assert abs(teacher_meta["macs"] - a_meta["macs"]) / a_meta["macs"] < 0.02
    assert (run / "teacher.onnx").read_bytes() == (tmp_path / "t.onnx").read_bytes()
    assert "b/teacher" in (run / "report.md").read_text()


def test_an_onnx_teacher_that_does_not_take_an_image_gives_one_line(tmp_path):
    class Flat(nn.Module):
        def forward(self, x):
            return x * 2

    torch.onnx.export(Flat(), torch.randn(4, 10), str(tmp_path / "flat.onnx"), dynamo=False)
    (tmp_path / "r.yaml").write_text(ONNX_RECIPE.format(name="r", teacher="{onnx: flat.onnx}", tap="x"))
    res = run_cli([tmp_path / "r.yaml", "--out", tmp_path / "runs", "-q"], cwd=tmp_path)
    one_error_line(res.stderr, res.returncode, "teacher", "flat.onnx", "one float image")


def test_an_onnx_teacher_tap_that_is_no_tensor_gives_one_line(tmp_path):
    _unet_teacher_files(tmp_path)
    (tmp_path / "r.yaml").write_text(ONNX_RECIPE.format(name="r", teacher="{onnx: t.onnx}", tap="encoderr"))
    res = run_cli([tmp_path / "r.yaml", "--out", tmp_path / "runs", "-q"], cwd=tmp_path)
    one_error_line(res.stderr, res.returncode, "distill.losses.srp.pairs", "no tensor named 'encoderr'")


def test_an_onnx_teacher_cannot_be_slimmed(tmp_path):
    text = ONNX_RECIPE.format(name="r", teacher="{onnx: t.onnx}", tap="x").replace(
        "student: {arch: resnet_6blocks, kwargs: {ngf: 8}}", "student: {width: 0.5}"
    )
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(RecipeError, match="teacher.onnx.*student.arch"):
        load_recipe(tmp_path / "r.yaml", check_paths=False)
