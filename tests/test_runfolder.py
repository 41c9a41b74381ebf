"""The run folder, the pre-flight checks, the one path rule and the stages' use of the run's device."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_recipe_text

import compressor.app.stages as stages
from compressor.app.preflight import preflight
from compressor.data import batch_keys, input_key, target_key
from compressor.errors import RecipeError
from compressor.models import build_generator, load_teacher, spec_of_model, teacher_spec
from compressor.recipe import TeacherSpec, parse_recipe
from compressor.runfolder import RunDir, is_run_folder, load_run_recipe, profile_refs

NET = """
import torch.nn as nn

def make(ch=3):
    return nn.Sequential(nn.Conv2d(ch, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, ch, 3, padding=1), nn.Tanh())
"""


def test_input_keys_per_data_kind():
    assert [input_key(k) for k in ("paired", "unpaired", "folder", "synthetic")] == ["input", "A", "input", "input"]
    assert [target_key(k) for k in ("paired", "unpaired", "folder", "synthetic")] == ["target", "B", None, "target"]
    assert batch_keys("folder") == ("input",) and batch_keys("unpaired") == ("A", "B")


def test_teacher_paths_follow_the_recipe_rule(tmp_path, monkeypatch):
    """Recipe folder first, then the current folder, for the teacher's code and its checkpoint alike: a recipe
    that validates does not fail at the teacher stage."""
    recipe_dir, cwd = tmp_path / "recipes", tmp_path / "work"
    recipe_dir.mkdir()
    cwd.mkdir()
    (cwd / "nets.py").write_text(NET)
    monkeypatch.chdir(cwd)
    spec = TeacherSpec.model_validate({"import": "nets.py:make"})
    net = load_teacher(spec, recipe_dir)  # nets.py is beside the user, not beside the recipe
    torch.save(net.state_dict(), cwd / "t.pth")
    spec = TeacherSpec.model_validate({"import": "nets.py:make", "checkpoint": "t.pth"})
    loaded = load_teacher(spec, recipe_dir)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), loaded.state_dict().values()))
    # the saved spec holds the absolute file, so the run folder rebuilds it from anywhere
    saved = teacher_spec(spec, recipe_dir)
    assert saved["import"] == f"{cwd / 'nets.py'}:make"
    # a file beside the recipe wins over one in the current folder
    (recipe_dir / "nets.py").write_text(NET.replace("nn.Tanh()", "nn.Sigmoid()"))
    assert isinstance(
        load_teacher(TeacherSpec.model_validate({"import": "nets.py:make"}), recipe_dir)[-1], torch.nn.Sigmoid
    )


def test_teacher_spec_keeps_every_generator_argument():
    spec = teacher_spec(TeacherSpec.model_validate({"arch": "resnet_6blocks", "kwargs": {"ngf": 8}}))
    assert spec == {
        "arch": "resnet_6blocks",
        "kwargs": {"input_nc": 3, "output_nc": 3, "ngf": 8, "norm": "batch", "use_dropout": False},
    }
    assert spec == spec_of_model(build_generator("resnet_6blocks", ngf=8, init=None))


@pytest.mark.parametrize(
    "change, key",
    [
        ("arch: resnet_6blocks", "teacher.arch"),
        ("kwargs: {ngf: 8, norm: instance}", "teacher.kwargs"),
        ("backends: [ort-cpu]", "profile.backends"),
    ],
)
def test_preflight_checks_what_the_schema_cannot(change, key):
    bad = {
        "arch: resnet_6blocks": "arch: resnet_7blocks",
        "kwargs: {ngf: 8, norm: instance}": "kwargs: {ngf: 8, norm: instance, widht: 2}",
        "backends: [ort-cpu]": "backends: [ort-gpu]",
    }[change]
    with pytest.raises(RecipeError, match=key):  # the zoo's kwargs are data: the schema catches them already
        preflight(parse_recipe(tiny_recipe_text().replace(change, bad)))
    preflight(parse_recipe(tiny_recipe_text()))


def _fake_run(tmp_path, recipe_dir):
    run = RunDir(tmp_path / "runs" / "tiny")
    run.root.mkdir(parents=True)
    (recipe_dir / "tiny.yaml").write_text(tiny_recipe_text())
    run.recipe.write_text(parse_recipe(tiny_recipe_text()).to_yaml())
    run.run_json.write_text(json.dumps({"recipe_source": str(recipe_dir / "tiny.yaml"), "name": "tiny"}))
    spec = teacher_spec(TeacherSpec.model_validate({"arch": "resnet_6blocks", "kwargs": {"ngf": 4}}))
    run.teacher_json.write_text(json.dumps({"spec": spec}))
    return run


def test_run_folder_recipe_resolves_against_the_original_recipe(tmp_path):
    recipe_dir = tmp_path / "recipes"
    recipe_dir.mkdir()
    run = _fake_run(tmp_path, recipe_dir)
    assert is_run_folder(run.root) and not is_run_folder(tmp_path) and not is_run_folder(run.teacher_json)
    recipe = load_run_recipe(run)
    assert recipe.base_dir == recipe_dir and recipe.resolve_path("x.pth") == recipe_dir / "x.pth"
    assert load_run_recipe(run, ["data.size=64"]).data.size == 64


def test_profile_stage_times_torch_on_the_runs_device(tmp_path, monkeypatch):
    recipe_dir = tmp_path / "recipes"
    recipe_dir.mkdir()
    run = _fake_run(tmp_path, recipe_dir)
    seen = {}

    def fake_profile(refs, backends, batches, sizes, **kw):
        seen.update(refs=refs, device=kw["device"])
        return {"schema": "compressor.profile/1", "results": []}

    monkeypatch.setattr(stages, "profile_models", fake_profile)
    ctx = stages.Context(load_run_recipe(run), run, torch.device("cuda"))  # device: auto resolved on a GPU box
    stages.stage_profile(ctx)
    assert seen["device"] == "cuda"
    assert [r["role"] for r in seen["refs"]] == ["teacher", "student"] == [r["role"] for r in profile_refs(run)]
    assert seen["refs"][0]["torch"]["type"] == "saved_teacher"
