"""Published generator families (tests/published_nets.py) through prune -> distill -> ONNX -> save/load."""

import subprocess
import sys

import published_nets as P
import pytest
import torch
import torch.nn as nn
from conftest import ROOT

from compressor.errors import UserError
from compressor.features import FeatureTaps
from compressor.losses import kd_loss, srp_loss
from compressor.models import apply_state_dict, build_generator, load_state_dict_file, with_ranges
from compressor.slim import load_student, make_student, save_student

# name: (factory import path, kwargs, inner module for SRP, input size, upper bound of params ratio / width^2 at
# width 0.25). The bound is 1.2 where the inner layers dominate; tiny test widths make the full-width layers
# (image input channels, the output layer, 1-channel attention maps, SR's 3*r^2 output conv) weigh more.
FAMILIES = {
    "pix2pix_resnet": (
        "compressor.models:build_generator",
        {"name": "resnet_6blocks", "ngf": 16, "norm": "instance"},
        "model.12",
        32,
        1.2,
    ),
    "pix2pix_unet": (
        "compressor.models:build_generator",
        {"name": "unet_128", "ngf": 8, "norm": "batch"},
        "model.model.0",
        128,
        1.2,
    ),
    "gan_compression_mobile": ("published_nets:make_mobile_resnet", {}, "model.11", 32, 1.4),  # 7x7 image convs
    "fast_neural_style": ("published_nets:make_transformer_net", {}, "res3", 32, 1.2),
    "inverted_residual": ("published_nets:InvertedResidualNet", {}, "blocks.1", 32, 1.5),  # 7x7 image convs
    "real_esrgan_srvgg": ("published_nets:make_srvgg", {}, "body.4", 16, 2.0),  # 48-channel x4 output conv
    "esrgan_rrdb": ("published_nets:make_rrdbnet", {}, "body.0.rdb2", 16, 1.2),
    "attention_unet": ("published_nets:make_attention_unet", {}, "Up_conv3.conv.0", 32, 3.2),  # 1-channel gates, BN(1)
    "se_unet": ("published_nets:SEUNet", {}, "enc2", 32, 1.2),
    "grouped_conv": ("published_nets:GroupedConvNet", {}, "blocks.1", 32, 1.9),  # 27->GroupNorm stem, small net
    "spade": ("published_nets:SPADEGenerator", {}, "head_0", 32, 1.3),
    # several outputs, re-parametrized convs, frozen layers, channel attention, pixel_unshuffle, internal resampling
    "zero_dce_tuple": ("published_nets:make_zero_dce", {}, "model.e_conv4", 32, 2.2),  # 24 curve maps at full width
    "rcan_meanshift": ("published_nets:RCAN", {"n_resgroups": 1}, "model.body.0", 16, 1.3),
    "spade_spectral_norm": ("published_nets:SpectralSPADEGenerator", {}, "head_0", 32, 1.3),
}
# what the recipe's teacher section would declare for these families (teacher.output, value ranges)
DECLARED = {
    "zero_dce_tuple": {"output": "1", "input_range": [0.0, 1.0], "output_range": [0.0, 1.0]},
    "rcan_meanshift": {"input_range": [0.0, 255.0], "output_range": [0.0, 255.0]},
}


def _build(import_path, kwargs, family=None):
    mod, _, attr = import_path.partition(":")
    if mod == "compressor.models":
        kw = dict(kwargs)
        net = build_generator(kw.pop("name"), **kw)
    else:
        declared = DECLARED.get(family, {})
        net = with_ranges(getattr(P, attr)(**kwargs), declared)
        net.compressor_spec = {"import": import_path, "kwargs": kwargs, **declared}
    return net.eval()


def _norms_agree(model, x):
    """Every norm layer and PReLU agrees with the channels it receives (checked on the real forward pass)."""
    bad = []

    def hook(mod, inputs):
        c = inputs[0].shape[1]
        declared = (
            mod.num_channels
            if isinstance(mod, nn.GroupNorm)
            else mod.num_parameters
            if isinstance(mod, nn.PReLU)
            else mod.num_features
        )
        n_w = mod.weight.shape[0] if getattr(mod, "weight", None) is not None else declared
        if isinstance(mod, nn.PReLU) and mod.num_parameters == 1:
            return
        if declared != c or n_w != c:
            bad.append((type(mod).__name__, declared, n_w, c))

    kinds = (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm, nn.PReLU)
    hs = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    with torch.no_grad():
        model(x)
    for h in hs:
        h.remove()
    assert not bad, bad


def _params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("width", [0.5, 0.25])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family(family, width, tmp_path):
    from compressor.exporters.formats.onnx import export_onnx, parity

    import_path, kwargs, tap, size, upper = FAMILIES[family]
    torch.manual_seed(0)
    teacher = _build(import_path, kwargs, family)
    x = torch.randn(1, 3, size, size)
    student, plan = make_student(teacher, width, method="prune", example_input=x)
    _norms_agree(student, x)
    frozen = {n: p.detach().clone() for n, p in teacher.named_parameters() if not p.requires_grad}
    assert {n for n, p in student.named_parameters() if not p.requires_grad} == set(frozen)  # still frozen
    ratio = _params(student) / _params(teacher) / width**2
    assert 0.8 <= ratio <= (upper if width == 0.25 else 1 + (upper - 1) / 2), ratio
    out_t = teacher(x)
    out_s = student(x)
    assert out_s.shape == out_t.shape

    # three distillation steps: KD on the output, SRP on a named inner module (teacher and student share names)
    student.train()
    opt = torch.optim.Adam(student.parameters(), 1e-3)
    xb = torch.randn(2, 3, size, size)
    with torch.no_grad(), FeatureTaps(teacher, {"f": tap}) as tt:
        y_t = teacher(xb)
        f_t = tt.features["f"]
    with FeatureTaps(student, {"f": tap}) as ts:
        for _ in range(3):
            ts.clear()
            y_s = student(xb)
            loss = kd_loss(y_s, y_t) + srp_loss(f_t, ts.features["f"])
            assert torch.isfinite(loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
    student.eval()
    params = dict(student.named_parameters())
    for n, p in frozen.items():  # frozen layers: not pruned, not trained
        assert torch.equal(params[n], p), n

    # ONNX parity
    onnx_path = export_onnx(student, tmp_path / "s.onnx", x, dynamic=("batch",))
    # inputs in the toolkit's [-1, 1]: Zero-DCE's curve iterations square their input eight times over
    inputs = [x.clamp(-1, 1), torch.rand(2, 3, size, size) * 2 - 1]
    assert parity(student, onnx_path, inputs, tol=1e-4)["passed"]


def test_every_family_reloads_in_one_fresh_process(tmp_path):
    """save -> load_student in a fresh process, without the teacher's weights, for every family at both widths
    (one interpreter for all of them: a process per family cost the suite a minute)."""
    cases = []
    for family, (import_path, kwargs, _tap, size, _upper) in FAMILIES.items():
        for width in (0.5, 0.25):
            torch.manual_seed(0)
            teacher = _build(import_path, kwargs, family)
            student, plan = make_student(teacher, width, method="prune", example_input=torch.randn(1, 3, size, size))
            with torch.no_grad():  # weights of its own, so a load that kept the rebuilt model's init would show
                for p in student.parameters():
                    p.add_(0.01 * torch.randn_like(p))
            folder = tmp_path / f"{family}-{width}"
            save_student(student.eval(), plan, folder)
            torch.manual_seed(1)
            with torch.no_grad():
                torch.save(student(torch.randn(2, 3, size, size)), folder / "expected.pt")
            cases.append((str(folder), size))
    code = (
        f"import sys, torch; sys.path.insert(0, {str(ROOT / 'tests')!r}); "
        "from compressor.slim import load_student\n"
        f"for folder, size in {cases!r}:\n"
        "    m = load_student(folder, allow_import=True).eval(); torch.manual_seed(1)\n"
        "    with torch.no_grad(): y = m(torch.randn(2, 3, size, size))\n"
        "    assert torch.allclose(y, torch.load(folder + '/expected.pt'), atol=1e-5), folder\n"
        f"print({len(cases)})\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == str(2 * len(FAMILIES))


def test_issue_mobile_resnet_mismatched_norms_prunes():
    """GAN Compression's released layout: non-affine norms declare sizes other than their inputs; Torch-Pruning
    used to fail with 'IndexError: index ... is out of bounds'."""
    teacher = P.make_mobile_resnet().eval()
    declared = teacher.model[5].num_features
    x = torch.randn(1, 3, 32, 32)
    assert teacher.model[:5](x).shape[1] != declared  # the mismatch is really there
    student, _ = make_student(teacher, 0.5, method="prune", example_input=x)
    _norms_agree(student, x)


def test_issue_affine_instance_norm_distills():
    """An encoder-decoder with affine InstanceNorm followed by in-place ReLU: the norms used to keep their size
    and distillation died with 'expected input's size at dim=1 to match num_features'."""
    teacher = P.AffineEncoderDecoder().eval()
    x = torch.randn(2, 3, 32, 32)
    student, _ = make_student(teacher, 0.5, method="prune", example_input=x[:1])
    assert student.encoder[1].weight.shape[0] == 16
    student.train()
    loss = kd_loss(student(x), teacher(x).detach())
    loss.backward()


def test_issue_real_esrgan_params_checkpoint(tmp_path):
    """A Real-ESRGAN checkpoint is {'params': state_dict} (or params_ema): it loads."""
    net = P.make_srvgg(num_feat=8, num_conv=1)
    torch.save({"params": net.state_dict()}, tmp_path / "realesr.pth")
    apply_state_dict(P.make_srvgg(num_feat=8, num_conv=1), load_state_dict_file(tmp_path / "realesr.pth"))


def test_modulated_conv_names_layer_and_keep_works():
    teacher = P.StyledImageNet().eval()
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(UserError) as e:
        make_student(teacher, 0.5, method="prune", example_input=x)
    msg = str(e.value)
    assert "'conv' (ModulatedConv2d)" in msg and "student.keep: [conv]" in msg and "\n" not in msg
    student, plan = make_student(teacher, 0.5, method="prune", example_input=x, keep=["conv"])
    assert student.conv.weight.shape == teacher.conv.weight.shape and plan["keep"] == ["conv"]
    assert student.dec[3].weight.shape[1] == teacher.dec[3].weight.shape[1] // 2
    assert student(x).shape == x.shape
    with pytest.raises(UserError, match="student.keep: the model has no module named 'nope'"):
        make_student(teacher, 0.5, method="prune", example_input=x, keep=["nope"])


def test_sr_x2_output_size():
    teacher = P.make_srvgg(num_feat=16, num_conv=2, upscale=2).eval()
    teacher.compressor_spec = {
        "import": "published_nets:make_srvgg",
        "kwargs": {"num_feat": 16, "num_conv": 2, "upscale": 2},
    }
    x = torch.randn(1, 3, 16, 16)
    student, plan = make_student(teacher, 0.5, method="prune", example_input=x, input_range=(0, 1), output_range=(0, 1))
    assert student(x).shape == (1, 3, 32, 32) and plan["input_range"] == [0.0, 1.0]
    prelus = [m for m in student.modules() if isinstance(m, nn.PReLU)]
    assert all(p.weight.shape[0] == 8 for p in prelus)
    # the kept PReLU slopes are the teacher's own for the kept channels
    t_slopes = set(teacher.body[1].weight.tolist())
    assert set(student.body[1].weight.tolist()) <= t_slopes


def test_old_plan_format_still_loads(tmp_path):
    """A student.json written before pruning histories ('groups' with module/fn/idxs) still loads."""
    import json

    teacher = _build("published_nets:SEUNet", {})
    x = torch.randn(1, 3, 32, 32)
    student, plan = make_student(teacher, 0.5, method="prune", example_input=x)
    save_student(student, plan, tmp_path)
    meta = json.loads((tmp_path / "student.json").read_text())
    meta["version"] = 1
    meta["groups"] = [
        {"module": n, "fn": "prune_out_channels" if out else "prune_in_channels", "idxs": i}
        for n, out, i in meta.pop("history")
    ]
    (tmp_path / "student.json").write_text(json.dumps(meta))
    with torch.no_grad():
        assert torch.allclose(load_student(tmp_path, allow_import=True)(x), student.eval()(x), atol=1e-6)


# lighter checks for more layer classes (the full per-family test above costs ~10 s a family): prune at 0.25,
# frozen/re-parametrized layers as in the teacher, save -> load in this process, same outputs
MORE_CLASSES = {
    "wdsr_weight_norm": ("WDSR", {}, 16),  # torch.nn.utils.parametrizations.weight_norm, PixelShuffle
    "rrdb_pixel_unshuffle": ("make_rrdbnet", {"scale": 2, "num_feat": 16, "num_grow_ch": 8}, 16),
    "separable_down_up": ("DownUpSeparableNet", {}, 32),  # stride-2 depthwise conv, bilinear x2 back
    "conv_param_spectral_norm": ("ReparamNet", {"kind": "spectral"}, 16),  # parametrizations.spectral_norm
    "conv_hook_weight_norm": ("ReparamNet", {"kind": "weight_norm_hook"}, 16),  # torch.nn.utils.weight_norm
}


@pytest.mark.parametrize("family", list(MORE_CLASSES))
def test_more_layer_classes_prune_and_reload(family, tmp_path):
    from torch.nn.utils import parametrize

    attr, kwargs, size = MORE_CLASSES[family]
    torch.manual_seed(0)
    teacher = _build(f"published_nets:{attr}", kwargs, family)
    x = torch.rand(1, 3, size, size) * 2 - 1
    student, plan = make_student(teacher, 0.25, method="prune", example_input=x)
    assert student(x).shape == teacher(x).shape
    assert _params(student) < 0.5 * _params(teacher)
    reparam = sorted(n for n, m in teacher.named_modules() if parametrize.is_parametrized(m) or m._forward_pre_hooks)
    assert reparam == sorted(
        n for n, m in student.named_modules() if parametrize.is_parametrized(m) or m._forward_pre_hooks
    )
    assert set(student.state_dict()) == set(teacher.state_dict())  # the published layout, on slimmer layers
    save_student(student.eval(), plan, tmp_path)
    with torch.no_grad():
        assert torch.allclose(load_student(tmp_path, allow_import=True)(x), student(x), atol=1e-5)


def test_gan_compression_generator_warns_once_not_per_call(caplog, monkeypatch, tmp_path):
    """GAN Compression's released generators: their non-affine InstanceNorms declare other sizes than they receive,
    and PyTorch warns about them in every stage and process. The toolkit aligns them in the teacher and repairs
    them in the student, one log line each, and no warning reaches the user (loading, slimming, rebuilding, running)."""
    import logging
    import warnings

    from compressor.models import layers, load_teacher

    monkeypatch.setattr(layers, "_REPORTED", set())  # said once per process: start this test from none said
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with warnings.catch_warnings(record=True) as raw:
        warnings.simplefilter("always")
        P.make_mobile_resnet()(x)
    assert any("num_features" in str(w.message) for w in raw)  # the published net warns by itself

    spec = {"import": "published_nets:make_mobile_resnet", "kwargs": {}}
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        for _ in range(2):  # each stage loads the teacher again
            teacher = load_teacher(spec)
            teacher.compressor_spec = spec
            for _ in range(3):
                teacher(x)
        teacher = load_teacher(spec)
        teacher.compressor_spec = spec
        student, plan = make_student(teacher, 0.5, method="prune", example_input=x[:1])
        save_student(student, plan, tmp_path)
        load_student(tmp_path, allow_import=True)(x)
    assert not [w for w in caught if "num_features" in str(w.message)], [str(w.message) for w in caught]
    said = [r.getMessage() for r in caplog.records if "norm layers" in r.getMessage()]
    assert len(said) == 2, said
    assert said[0].startswith("teacher: 5 norm layers without parameters declared num_features"), said
    assert said[1].startswith("student: 5 norm layers declared a size other than"), said
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.records


def test_frozen_layers_keep_their_constants_in_a_scratch_student(tmp_path):
    """RCAN's MeanShift convs (requires_grad=False): at full width, frozen, and not re-initialised by init: scratch;
    frozen again after a rebuild from student.json."""
    teacher = P.RCAN(n_resgroups=1, n_resblocks=1, n_feats=8, reduction=4).eval()
    teacher.compressor_spec = {
        "import": "published_nets:RCAN",
        "kwargs": {"n_resgroups": 1, "n_resblocks": 1, "n_feats": 8, "reduction": 4},
    }
    student, plan = make_student(teacher, 0.5, "prune", "scratch", example_input=torch.rand(1, 3, 16, 16))
    for name in ("sub_mean", "add_mean"):
        s, t = getattr(student, name), getattr(teacher, name)
        assert torch.equal(s.weight, t.weight) and torch.equal(s.bias, t.bias) and not s.weight.requires_grad
    assert student.tail[1].out_channels == 3 and student.head[0].out_channels == 4  # the image channels stay whole
    assert plan["frozen"] == ["sub_mean.weight", "sub_mean.bias", "add_mean.weight", "add_mean.bias"]
    save_student(student, plan, tmp_path)
    reloaded = load_student(tmp_path, allow_import=True)
    assert [n for n, p in reloaded.named_parameters() if not p.requires_grad] == plan["frozen"]


def test_depthwise_conv_on_the_image_stays_full_width_without_keep(caplog, tmp_path):
    """Zero-DCE++ starts with a depthwise conv on the RGB input (groups tied to the image's 3 channels), works at
    half resolution inside and returns a tuple. Torch-Pruning alone shrinks that conv's groups with its channels
    and the student fails; the toolkit finds it, leaves it at full width, says so, and records it for the replay."""
    import logging

    declared = {"output": "0", "input_range": [0.0, 1.0], "output_range": [0.0, 1.0]}
    torch.manual_seed(0)
    teacher = with_ranges(P.ZeroDCEpp(scale_factor=2), declared).eval()
    teacher.compressor_spec = {"import": "published_nets:ZeroDCEpp", "kwargs": {"scale_factor": 2}, **declared}
    x = torch.rand(1, 3, 32, 32)
    with caplog.at_level(logging.INFO, logger="compressor.slim"):
        student, plan = make_student(teacher, 0.5, method="prune", example_input=x)
    assert plan["keep"] == ["model.e_conv1.depth_conv"]
    assert "left at full width: model.e_conv1.depth_conv" in caplog.text
    convs = dict(student.named_modules())
    assert convs["model.e_conv1.depth_conv"].weight.shape == (3, 1, 3, 3)
    # Torch-Pruning 1.6 puts the branches concatenated into one depthwise conv in one group (its issue #481), so
    # the widths inside are uneven; the student is still slimmer and runs
    assert _params(student) < 0.9 * _params(teacher)
    with torch.no_grad():
        assert student(x).shape == teacher(x).shape
        save_student(student.eval(), plan, tmp_path)
        assert torch.allclose(load_student(tmp_path, allow_import=True)(x), student(x), atol=1e-6)
    # a keep the user named is never dropped, and a layer that still fails names itself in one line
    _, plan = make_student(teacher, 0.5, method="prune", example_input=x, keep=["model.e_conv7"])
    assert plan["keep"] == ["model.e_conv7", "model.e_conv1.depth_conv"]
