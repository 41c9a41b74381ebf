import pytest
import reference_networks as ref
import torch

from compressor.complexity import profile_model
from compressor.errors import CheckpointError
from compressor.models import apply_state_dict, build_discriminator, build_generator, load_state_dict_file, load_teacher

ZOO_CASES = [
    ("resnet_9blocks", 64, "instance"),
    ("resnet_6blocks", 64, "batch"),
    ("unet_128", 128, "batch"),
    ("unet_256", 256, "instance"),
]


@pytest.mark.parametrize("name, size, norm", ZOO_CASES)
def test_reference_checkpoints_load_strictly_and_match(tmp_path, name, size, norm):
    torch.manual_seed(0)
    theirs = ref.define_G(3, 3, 16, name, norm=norm, use_dropout=False).eval()
    path = tmp_path / "latest_net_G.pth"
    torch.save(theirs.state_dict(), path)
    ours = build_generator(name, ngf=16, norm=norm).eval()
    ours.load_state_dict(torch.load(path, weights_only=True), strict=True)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)
    assert list(ours.state_dict()) == list(theirs.state_dict())


def test_discriminator_is_key_compatible():
    theirs = ref.define_D(6, 16, 3, norm="batch").eval()
    ours = build_discriminator(6, 16, 3, norm="batch").eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 6, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-6)


def test_legacy_instance_norm_and_dataparallel_prefix(tmp_path):
    theirs = ref.define_G(3, 3, 8, "resnet_6blocks", norm="instance")
    state = {f"module.{k}": v for k, v in theirs.state_dict().items()}
    # old PyTorch versions stored running stats for InstanceNorm
    state["module.model.2.running_mean"] = torch.zeros(8)
    state["module.model.2.running_var"] = torch.ones(8)
    state["module.model.2.num_batches_tracked"] = torch.tensor(0)
    path = tmp_path / "legacy.pth"
    torch.save(state, path)
    model = load_teacher({"arch": "resnet_6blocks", "kwargs": {"ngf": 8, "norm": "instance"}, "checkpoint": str(path)})
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), theirs.eval()(x), atol=1e-6)


def test_pickled_checkpoint_refused_without_trust(tmp_path):
    path = tmp_path / "full_model.pth"
    torch.save(ref.define_G(3, 3, 8, "resnet_6blocks", norm="instance"), path)  # a pickled module
    spec = {"arch": "resnet_6blocks", "kwargs": {"ngf": 8, "norm": "instance"}, "checkpoint": str(path)}
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        load_teacher(spec)
    model = load_teacher(spec, trust_checkpoint=True)
    assert isinstance(model, torch.nn.Module)


def test_missing_file_and_wrong_shapes(tmp_path):
    with pytest.raises(CheckpointError, match="file not found"):
        load_teacher({"arch": "unet_128", "checkpoint": str(tmp_path / "nope.pth")})
    path = tmp_path / "wrong.pth"
    torch.save(build_generator("resnet_6blocks", ngf=16, norm="instance").state_dict(), path)
    with pytest.raises(CheckpointError) as e:
        load_teacher({"arch": "resnet_6blocks", "kwargs": {"ngf": 8, "norm": "instance"}, "checkpoint": str(path)})
    msg = str(e.value)
    assert "model.1.weight" in msg and "(16, 3, 7, 7)" in msg and "(8, 3, 7, 7)" in msg


def test_missing_and_unexpected_keys_reported(tmp_path):
    state = build_generator("resnet_6blocks", ngf=8, norm="instance").state_dict()
    state.pop("model.1.weight")
    state["extra.weight"] = torch.zeros(1)
    model = build_generator("resnet_6blocks", ngf=8, norm="instance")
    with pytest.raises(CheckpointError, match=r"1 missing \(e.g. model.1.weight\); 1 unexpected \(e.g. extra.weight\)"):
        apply_state_dict(model, state)


def test_corrupt_and_safetensors_checkpoints(tmp_path):
    from safetensors.torch import save_file

    model = build_generator("resnet_6blocks", ngf=8, norm="instance")
    st = tmp_path / "teacher.safetensors"
    save_file(model.state_dict(), str(st))
    loaded = load_teacher({"arch": "resnet_6blocks", "kwargs": {"ngf": 8, "norm": "instance"}, "checkpoint": str(st)})
    assert torch.equal(loaded.state_dict()["model.1.weight"], model.state_dict()["model.1.weight"])
    good = tmp_path / "good.pth"
    torch.save(model.state_dict(), good)
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_state_dict_file(bad)


def test_import_teacher_from_file(tmp_path):
    (tmp_path / "mynet.py").write_text(
        "import torch.nn as nn\n"
        "def make(ch=4):\n    return nn.Sequential(nn.Conv2d(3, ch, 3, padding=1), nn.ReLU(), nn.Conv2d(ch, 3, 1))\n"
    )
    m = load_teacher({"import": "mynet.py:make", "kwargs": {"ch": 6}}, base_dir=tmp_path)
    assert m[0].out_channels == 6
    from compressor.errors import RecipeError

    with pytest.raises(RecipeError, match="has no attribute 'nope'"):
        load_teacher({"import": "mynet.py:nope"}, base_dir=tmp_path)
    with pytest.raises(RecipeError, match="no module named"):
        load_teacher({"import": "not_a_module_xyz:make"})


@pytest.mark.parametrize(
    "name, ngf, norm, params, macs, macs_paper",
    [
        ("resnet_9blocks", 64, "instance", 11_378_179, 49.55e9, 56.80e9),
        ("unet_256", 64, "batch", 54_413_955, 6.05e9, 18.14e9),
        ("resnet_9blocks", 16, "instance", 715_651, 3.33e9, 3.78e9),
        ("unet_256", 16, "batch", 3_404_451, 0.406e9, 1.22e9),
    ],
)
def test_complexity_table(name, ngf, norm, params, macs, macs_paper):
    cx = profile_model(build_generator(name, ngf=ngf, norm=norm, init=None), (1, 3, 256, 256))
    assert cx["params"] == params
    assert cx["macs"] == pytest.approx(macs, rel=2e-3)
    assert cx["macs_paper_convention"] == pytest.approx(macs_paper, rel=2e-3)
    assert sum(v for k, v in cx["per_module"].items() if k == "Global") == cx["macs"]


def test_fvcore_cross_check():
    pytest.importorskip("fvcore")
    from compressor.complexity import fvcore_macs

    m = build_generator("resnet_6blocks", ngf=8, norm="instance", init=None)
    assert fvcore_macs(m, (1, 3, 64, 64)) == profile_model(m, (1, 3, 64, 64))["macs"]


@pytest.mark.parametrize(
    "name, size", [("resnet_9blocks", 64), ("resnet_6blocks", 64), ("unet_128", 128), ("unet_256", 256)]
)
def test_default_taps_resolve_to_feature_maps(name, size):
    from compressor.features import probe_shapes

    model = build_generator(name, ngf=8, init=None).eval()
    modules = dict(model.named_modules())
    assert "encoder" in model.taps
    assert all(t in modules for t in model.taps.values())
    shapes = probe_shapes(model, model.taps, torch.zeros(1, 3, size, size))
    enc = shapes["encoder"]
    assert len(enc) == 4 and enc[2] == size // (4 if name.startswith("resnet") else 16)
