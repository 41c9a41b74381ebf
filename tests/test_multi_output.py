"""Teachers that return several tensors (a tuple, a dict): ``teacher.output`` names the one the student learns."""

import json
import shutil

import onnx
import published_nets as P
import pytest
import torch
from conftest import ROOT

from compressor.errors import RecipeError
from compressor.models import check_output, with_ranges

RECIPE = """
name: multi
seed: 0
device: cpu
data: {{kind: synthetic, size: 32, batch_size: 2, synthetic: {{train: 4, test: 2}}}}
teacher:
  import: "nets.py:{factory}"
  checkpoint: teacher.pth
{declared}
student: {{width: 0.5, method: prune{student}}}
distill:
  steps: 2
  checkpoint_every: 2
  log_every: 1
  sample_every: 2
  losses: {{gan: {{weight: 0}}, recon: {{weight: 0}}, kd: {{weight: 10.0}}, srp: {{weight: 1.0, layers: [{tap}]}}}}
evaluate: {{metrics: [psnr], samples: 2, max_images: 2}}
export: {{onnx: {{dynamic: [batch]}}}}
"""
STAGES = "teacher,student,distill,evaluate,export"  # the profile stage times ONNX files like any other


def _setup(tmp_path, factory, declared, tap, student=""):
    shutil.copy(ROOT / "tests" / "published_nets.py", tmp_path / "nets.py")
    import published_nets as P

    torch.manual_seed(0)
    torch.save(getattr(P, factory)().state_dict(), tmp_path / "teacher.pth")  # the published layout: a state_dict
    lines = "\n".join(f"  {k}: {v}" for k, v in declared.items())
    (tmp_path / "r.yaml").write_text(RECIPE.format(factory=factory, declared=lines, tap=tap, student=student))
    return tmp_path / "r.yaml"


def test_several_outputs_without_teacher_output_is_one_line():
    with pytest.raises(RecipeError) as e:
        check_output(P.make_zero_dce(), torch.rand(1, 3, 16, 16))
    msg = str(e.value)
    assert msg.startswith("teacher.output: the teacher returns a tuple of 3 (0: Tensor[1, 3, 16, 16], ")
    assert "2: Tensor[1, 24, 16, 16]" in msg and "teacher.output: INDEX or KEY" in msg and "\n" not in msg
    with pytest.raises(RecipeError, match=r"returns a dict of 2 \(out: Tensor\[1, 3, 16, 16\], aux: a list of 1"):
        check_output(P.DeepSupervisedUNet(), torch.rand(1, 3, 16, 16))
    with pytest.raises(RecipeError, match=r"teacher.output: 'aux.1' names nothing"):  # a wrong key, one line too
        check_output(with_ranges(P.DeepSupervisedUNet(), {"output": "aux.1"}), torch.rand(1, 3, 16, 16))
    # the ranges apply to the named tensor alone; the network inside still returns everything
    net = P.make_zero_dce(8).eval()
    wrapped = with_ranges(net, {"output": "1", "input_range": [0, 1], "output_range": [0, 1]})
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(wrapped(x), net((x + 1) / 2)[1] * 2 - 1)
        assert with_ranges(P.DeepSupervisedUNet(), {"output": "aux.0"})(x).shape == (1, 3, 8, 8)


def test_student_outputs_named_slims_the_other_heads_all_keeps_them():
    from compressor.slim import make_student

    x = torch.rand(1, 3, 32, 32) * 2 - 1
    shapes = {}
    for outputs in ("named", "all"):
        torch.manual_seed(0)
        teacher = with_ranges(P.DeepSupervisedUNet(), {"output": "out"}).eval()
        student, _ = make_student(teacher, 0.5, "prune", example_input=x, outputs=outputs)
        with torch.no_grad():
            full = student.model(x)
            assert torch.equal(student(x), full["out"]) and full["out"].shape == (1, 3, 32, 32)
        shapes[outputs] = tuple(full["aux"][0].shape)
    assert shapes == {"named": (1, 1, 16, 16), "all": (1, 3, 16, 16)}


def _run_in_process(recipe_path, out, stages=STAGES):
    """The pipeline `compress run` runs, in this process (a CLI process costs the suite its imports again)."""
    from compressor.app.pipeline import RunOptions, run_pipeline
    from compressor.recipe import load_recipe

    recipe = load_recipe(recipe_path)
    return run_pipeline(recipe, out, RunOptions(recipe_path=recipe_path, only=stages.split(","), force=True))


def test_tuple_teacher_runs_end_to_end_with_teacher_output(tmp_path):
    """A Zero-DCE curve-estimation net returning (image_1, image, curves) in [0, 1]: without teacher.output the run
    stops at the teacher stage with one error line; with it, the pipeline trains, evaluates and exports a student,
    and the ONNX file has the named output only."""
    declared = {"input_range": "[0, 1]", "output_range": "[0, 1]"}
    recipe = _setup(tmp_path, "make_zero_dce", declared, "e_conv4")
    with pytest.raises(RecipeError) as e:
        _run_in_process(recipe, tmp_path / "runs")
    assert str(e.value).startswith("teacher.output: the teacher returns a tuple of 3 (0: Tensor[1, 3, 32, 32]")

    recipe = _setup(tmp_path, "make_zero_dce", {**declared, "output": 1}, "e_conv4")
    _run_in_process(recipe, tmp_path / "runs")
    run = tmp_path / "runs" / "multi"
    plan = json.loads((run / "student.json").read_text())
    assert plan["teacher"]["output"] == "1" and plan["teacher"]["input_range"] == [0.0, 1.0]
    model = onnx.load(str(run / "student.onnx"))
    assert len(model.graph.output) == 1
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["network_output"] == "1" and meta["network_output_range"] == "[0.0, 1.0]"
    assert json.loads((run / "eval.json").read_text())["student"]["psnr_vs_teacher"] > 0


def test_dict_teacher_runs_end_to_end_and_keeps_every_output(tmp_path):
    """A deep-supervision net returning {"out": image, "aux": [coarse image]}, with student.outputs: all: the
    student learns "out", and the network inside it still returns the teacher's whole structure and shapes."""
    recipe = _setup(tmp_path, "DeepSupervisedUNet", {"output": "out"}, "enc2", ", outputs: all")
    _run_in_process(recipe, tmp_path / "runs", "teacher,student,distill,export")  # evaluate: the tuple test
    from compressor.slim import load_student

    student = load_student(tmp_path / "runs" / "multi", allow_import=True)
    assert student.student_plan["outputs"] == "all"
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        full = student.model(x)
        assert student(x).shape == (1, 3, 32, 32)
    assert full["out"].shape == (1, 3, 32, 32) and full["aux"][0].shape == (1, 3, 16, 16)
    assert student.model.enc2[0].out_channels == 16  # the inner layers are slimmed
    assert len(onnx.load(str(tmp_path / "runs" / "multi" / "student.onnx")).graph.output) == 1
