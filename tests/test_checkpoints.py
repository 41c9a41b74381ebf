"""Checkpoint layouts people publish load into a teacher; ambiguity and a wrong checkpoint_key are one-line errors."""

import logging

import published_nets as P
import pytest
import torch
import torch.nn as nn

from compressor.errors import CheckpointError
from compressor.models import apply_state_dict, load_state_dict_file
from compressor.models.ranges import wrap_ranges


def _net():
    return P.make_srvgg(num_feat=8, num_conv=1)


@pytest.mark.parametrize(
    "layout",
    [
        "flat",
        "params",
        "params_ema",
        "state_dict",
        "model",
        "netG",
        "generator",
        "g_ema",
        "G",
        "module_prefix",
        "legacy",
        "safetensors",
        "with_bookkeeping",
    ],
)
def test_each_layout_loads(tmp_path, layout, caplog):
    net = _net()
    sd = net.state_dict()
    path = tmp_path / "w.pth"
    if layout == "flat":
        torch.save(sd, path)
    elif layout == "params_ema":  # Real-ESRGAN: both, EMA preferred
        torch.save({"params_ema": sd, "params": {k: torch.zeros_like(v) for k, v in sd.items()}}, path)
    elif layout == "module_prefix":
        torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, path)
    elif layout == "legacy":
        torch.save({"params": sd}, path, _use_new_zipfile_serialization=False)
    elif layout == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    elif layout == "with_bookkeeping":
        torch.save({"netG": sd, "epoch": 12, "optimizer": {"lr": 1e-4}}, path)
    else:
        torch.save({layout: sd, "iter": 5}, path)
    with caplog.at_level(logging.INFO, logger="compressor.models.checkpoint"):
        state = load_state_dict_file(path)
    fresh = _net()
    apply_state_dict(fresh, state)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, sd[k]), k
    if layout in ("params", "params_ema", "netG", "g_ema", "G"):
        assert repr(layout) in caplog.text


def test_ambiguity_and_checkpoint_key(tmp_path):
    a, b = _net().state_dict(), _net().state_dict()
    path = tmp_path / "two.pth"
    torch.save({"netG_A": a, "netG_B": b}, path)
    with pytest.raises(CheckpointError, match=r"several state_dicts \(netG_A, netG_B\).*teacher.checkpoint_key") as e:
        load_state_dict_file(path)
    assert "\n" not in str(e.value)
    state = load_state_dict_file(path, checkpoint_key="netG_B")
    assert all(torch.equal(state[k], b[k]) for k in b)
    with pytest.raises(CheckpointError, match="teacher.checkpoint_key: .* has no entry 'netG_C'"):
        load_state_dict_file(path, checkpoint_key="netG_C")
    # params wins over nothing, but params_ema + state_dict together is ambiguous
    torch.save({"params_ema": a, "state_dict": b}, path)
    with pytest.raises(CheckpointError, match="several state_dicts"):
        load_state_dict_file(path)
    assert torch.equal(load_state_dict_file(path, checkpoint_key="params_ema")["body.0.weight"], a["body.0.weight"])


def test_pickled_model_needs_trust(tmp_path):
    path = tmp_path / "m.pth"
    torch.save({"model": nn.Conv2d(1, 1, 1)}, path)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        load_state_dict_file(path)
    assert "weight" in load_state_dict_file(path, trust=True)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "x.pth"
    torch.save({"epoch": 3, "name": "run"}, path)
    with pytest.raises(CheckpointError, match="does not hold a state_dict.*epoch, name"):
        load_state_dict_file(path)


@pytest.mark.parametrize("rng", [(0.0, 1.0), (0.0, 255.0), (-1.0, 1.0)])
def test_wrap_ranges(rng):
    seen = {}

    class Probe(nn.Module):
        def forward(self, x):
            seen["x"] = x
            return x

    w = wrap_ranges(Probe(), rng, rng)
    x = torch.tensor([-1.0, 0.0, 1.0])
    assert torch.allclose(w(x), x)  # identity in its native range stays identity in [-1, 1]
    assert torch.allclose(seen["x"], torch.tensor([rng[0], (rng[0] + rng[1]) / 2, rng[1]]))
