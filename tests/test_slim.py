import subprocess
import sys

import custom_archs
import pytest
import torch
from conftest import ROOT

from compressor.complexity import profile_model
from compressor.models import build_generator
from compressor.slim import load_student, make_student, save_student

CUSTOM = [
    ("custom_archs:make_depthwise", custom_archs.make_depthwise),
    ("custom_archs:make_pixelshuffle", custom_archs.make_pixelshuffle),
    ("custom_archs:make_attention_unet", custom_archs.make_attention_unet),
]


@pytest.mark.parametrize("import_path, factory", CUSTOM)
def test_prune_custom_architectures(tmp_path, import_path, factory):
    from compressor.exporters.formats.onnx import export_checked

    teacher = factory().eval()
    teacher.compressor_spec = {"import": import_path, "kwargs": {}}
    x = torch.randn(1, 3, 32, 32)
    student, plan = make_student(teacher, 0.5, method="prune", example_input=x)
    assert plan["method"] == "prune" and plan["history"]
    out = student(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 3, 32, 32)
    # the output layer keeps its channels; MACs fall to about a quarter
    ct, cs = profile_model(teacher, (1, 3, 32, 32))["macs"], profile_model(student, (1, 3, 32, 32))["macs"]
    assert 0.25 * 0.85 <= cs / ct <= 0.25 * 1.15, cs / ct
    # no stale InstanceNorm num_features: each one's num_features is the channel count it really receives
    seen, hooks = {}, []
    for name, m in student.named_modules():
        if isinstance(m, torch.nn.InstanceNorm2d):
            hooks.append(
                m.register_forward_pre_hook(
                    lambda mod, inp, name=name: seen.__setitem__(name, (mod.num_features, inp[0].shape[1]))
                )
            )
    with torch.no_grad():
        student(x)
    for h in hooks:
        h.remove()
    stale = {n: v for n, v in seen.items() if v[0] != v[1]}
    assert not stale, stale
    with pytest.warns(None) if False else _no_warnings():
        student(x)
    save_student(student, plan, tmp_path / "s")
    export_checked(student, tmp_path / "s" / "student.onnx", [x, torch.randn(3, 3, 32, 32)], ["batch"], 18, 1e-4, {})
    # round trip in a fresh process, without the teacher's weights
    code = (
        f"import sys, torch; sys.path.insert(0, {str(ROOT / 'tests')!r}); "
        f"from compressor.slim import load_student; m = load_student({str(tmp_path / 's')!r}, allow_import=True); "
        f"torch.manual_seed(1); x = torch.randn(2, 3, 32, 32); torch.save(m(x).detach(), {str(tmp_path / 'o.pt')!r})"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    torch.manual_seed(1)
    x2 = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(torch.load(tmp_path / "o.pt"), student.eval()(x2), atol=1e-6)


class _no_warnings:
    def __enter__(self):
        import warnings

        self.cm = warnings.catch_warnings(record=True)
        self.rec = self.cm.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc):
        self.cm.__exit__(*exc)
        msgs = [str(w.message) for w in self.rec if "num_features" in str(w.message)]
        assert not msgs, msgs


@pytest.mark.parametrize("arch, norm, size", [("resnet_9blocks", "instance", 64), ("unet_256", "batch", 256)])
def test_prune_and_rebuild_give_identical_shapes(arch, norm, size):
    teacher = build_generator(arch, ngf=32, norm=norm).eval()
    x = torch.randn(1, 3, size, size)
    pruned, _ = make_student(teacher, 0.25, method="prune", example_input=x)
    rebuilt, plan = make_student(teacher, 0.25, method="rebuild", init="scratch", example_input=x)
    assert plan["ngf"] == 8
    assert {k: v.shape for k, v in pruned.state_dict().items()} == {k: v.shape for k, v in rebuilt.state_dict().items()}
    # teacher and student share module names, so taps by name work on both
    assert set(dict(teacher.named_modules())) == set(dict(rebuilt.named_modules()))


def test_inherit_keeps_strongest_channels():
    teacher = build_generator("resnet_6blocks", ngf=16, norm="instance").eval()
    with torch.no_grad():
        teacher.model[1].weight[:4] *= 100  # make four first-layer filters clearly the strongest
    student, _ = make_student(teacher, 0.25, method="rebuild", init="inherit")
    w_t, w_s = teacher.model[1].weight, student.model[1].weight
    kept = {i for i in range(16) for j in range(4) if torch.equal(w_t[i], w_s[j])}
    assert kept == {0, 1, 2, 3}
    scratch, _ = make_student(teacher, 0.25, method="rebuild", init="scratch")
    assert not any(torch.equal(w_t[i], scratch.model[1].weight[0]) for i in range(16))


def test_frozen_teacher_can_be_slimmed():
    teacher = build_generator("resnet_6blocks", ngf=16, norm="instance").eval().requires_grad_(False)
    for method in ("rebuild", "prune"):
        student, _ = make_student(teacher, 0.25, method=method)
        assert student.model[1].weight.shape[0] == 4 and student.model[1].weight.requires_grad


def test_rebuild_student_roundtrip(tmp_path):
    teacher = build_generator("unet_128", ngf=16, norm="batch").eval()
    student, plan = make_student(teacher, 0.5)
    save_student(student, plan, tmp_path)
    loaded = load_student(tmp_path)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(loaded(x), student.eval()(x))


def test_bad_width_and_method():
    from compressor.errors import RecipeError

    teacher = build_generator("resnet_6blocks", ngf=8, norm="instance")
    with pytest.raises(RecipeError, match="student.width"):
        make_student(teacher, 0)
    with pytest.raises(RecipeError, match="rebuild works for zoo teachers only"):
        make_student(custom_archs.make_pixelshuffle(), 0.5, method="rebuild")


# ------------------------------------------------------------------------------------- student.round_channels


def _slimmed_channels(model):
    return [
        (n, m.out_channels)
        for n, m in model.named_modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) and m.out_channels != 3
    ]


def test_round_channels_rebuild_rounds_ngf_and_still_inherits():
    teacher = build_generator("resnet_6blocks", ngf=64, norm="instance")
    student, plan = make_student(teacher, 0.3, method="rebuild", init="inherit", round_to=8)
    assert plan["ngf"] == 16 and plan["round_channels"] == 8  # 64 x 0.3 = 19.2 -> 16
    assert all(c % 8 == 0 for _, c in _slimmed_channels(student)), _slimmed_channels(student)
    plain, _ = make_student(teacher, 0.3, method="rebuild", init="inherit")
    assert plain.model[1].out_channels == 19  # without rounding: round(19.2)


def test_round_channels_prune_keeps_multiples_on_a_published_net():
    import published_nets as P

    teacher = P.make_transformer_net(32).eval()
    x = torch.randn(1, 3, 32, 32)
    student, plan = make_student(teacher, 0.3, method="prune", example_input=x, round_to=8)
    chans = _slimmed_channels(student)
    assert chans and all(c % 8 == 0 and c > 0 for _, c in chans), chans
    assert student(x).shape == teacher(x).shape
    plain, _ = make_student(teacher, 0.3, method="prune", example_input=x)
    assert any(c % 8 for _, c in _slimmed_channels(plain))  # the rounding did something


def test_round_channels_that_would_empty_a_layer_is_one_line():
    import published_nets as P

    teacher = P.make_transformer_net(16).eval()
    with pytest.raises(Exception, match=r"student.round_channels: 32 would leave layer '.*' \(16 channels") as e:
        make_student(teacher, 0.25, method="prune", example_input=torch.randn(1, 3, 32, 32), round_to=32)
    assert "\n" not in str(e.value)


def test_recipe_keep_and_round_channels_reach_the_student_stage(tmp_path):
    """The recipe's student.keep and student.round_channels are what the student stage builds with."""
    import json

    from conftest import tiny_recipe_text

    from compressor.app.pipeline import RunOptions, run_pipeline
    from compressor.recipe import load_recipe

    text = tiny_recipe_text().replace(
        "student: {width: 0.5}", "student: {width: 0.4, method: prune, keep: [model.1], round_channels: 4}"
    )
    (tmp_path / "r.yaml").write_text(text)
    recipe = load_recipe(tmp_path / "r.yaml")
    run_pipeline(recipe, tmp_path / "runs", RunOptions(recipe_path=tmp_path / "r.yaml", only=["teacher", "student"]))
    init = tmp_path / "runs" / "tiny" / "student_init"
    plan = json.loads((init / "student.json").read_text())
    assert plan["keep"] == ["model.1"] and plan["round_channels"] == 4
    student = load_student(init)
    assert student.model[1].out_channels == 8  # kept at the teacher's ngf
    assert all(c % 4 == 0 for _, c in _slimmed_channels(student))
