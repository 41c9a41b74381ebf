"""The output sensitivity a per-layer search ranks channels by, against removing the channels for real."""

import pytest
import torch
from torch import nn

from compressor.importance import output_sensitivity
from compressor.models import build_generator
from compressor.slim import make_student, prunable_groups


def _removal_mse(model: nn.Module, layer: nn.Module, c: int, x: torch.Tensor) -> float:
    """The output's mean squared change when ``layer``'s output channel ``c`` is replaced by its mean over the
    images and positions (its readers see that constant)."""
    with torch.no_grad():
        y = model(x)
        seen = []
        h = layer.register_forward_hook(lambda m, i, o: seen.append(o[:, c].mean()))
        model(x)
        h.remove()
        h = layer.register_forward_hook(lambda m, i, o: o.index_fill(1, torch.tensor([c]), float(seen[0])))
        try:
            z = model(x)
        finally:
            h.remove()
    return float(((z - y) ** 2).mean())


def test_linear_network_matches_real_removal():
    """On a network linear in its channels, the first-order estimate is exact in expectation over the signs: the
    importance of each channel is the mean squared change removing it makes, within the sampling error."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 1), nn.Conv2d(6, 3, 3, padding=1))
    with torch.no_grad():  # a constant channel (a bias alone): its readers' biases absorb it, importance 0
        net[0].weight[5].zero_()
        net[0].bias[5] = 10.0
    x = torch.randn(4, 3, 12, 12)
    readers = {"0": [("1", list(range(6)))], "1": [("2", list(range(6)))]}
    sens = output_sensitivity(net, readers, x, signs=400, batch=4)
    assert sens["0"][5] < 1e-12 < min(sens["0"][:5])
    for group, layer in (("0", net[0]), ("1", net[1])):
        real = [_removal_mse(net, layer, c, x) for c in range(6)]
        est = sens[group]
        for r, e in zip(real, est):
            assert e == pytest.approx(r, rel=0.2)
        # the order across groups is what the search trades on
    real_all = sorted(
        (_removal_mse(net, lay, c, x), g, c) for g, lay in (("0", net[0]), ("1", net[1])) for c in range(6)
    )
    est_all = sorted((sens[g][c], g, c) for _, g, c in real_all)
    assert [k[1:] for k in real_all][-3:] == [k[1:] for k in est_all][-3:]


def test_two_readers_of_one_tensor_count_once():
    """A tensor two layers read (its gradient already the sum of both paths) is counted once."""

    class Fork(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 1)
            self.b = nn.Conv2d(4, 3, 1)
            self.c = nn.Conv2d(4, 3, 1)

        def forward(self, x):
            h = self.a(x)
            return self.b(h) + self.c(h)

    torch.manual_seed(1)
    net = Fork()
    x = torch.randn(2, 3, 8, 8)
    sens = output_sensitivity(net, {"a": [("b", [0, 1, 2, 3]), ("c", [0, 1, 2, 3])]}, x, signs=400)
    real = [_removal_mse(net, net.a, ch, x) for ch in range(4)]
    assert sens["a"] == pytest.approx(real, rel=0.2)


def test_unet_groups_rank_by_sensitivity_keep_the_magnitude_order():
    """On a zoo U-Net (skips couple layers): every group measured, the kept order is the magnitude's, and the
    student built from widths is unchanged by the ranking (the search sets how many, not which)."""
    torch.manual_seed(0)
    t = build_generator("unet_128", ngf=8).eval()
    x = torch.zeros(1, 3, 128, 128)
    mag = prunable_groups(t, x)
    sens = prunable_groups(t, x, images=torch.rand(2, 3, 128, 128) * 2 - 1)
    assert [g.name for g in mag] == [g.name for g in sens]
    for m, s in zip(mag, sens):
        assert s.kind == "sensitivity" and len(s.importance) == s.channels and all(v >= 0 for v in s.importance)
        assert s.rank == sorted(range(m.channels), key=lambda i: -m.importance[i])
    assert any(sum(s.importance) > 0 for s in sens)
    widths = {g.name: max(1, g.channels // 2) for g in sens}
    student = make_student(t, 1.0, "prune", "scratch", x, widths=widths)[0]
    assert student(x).shape == t(x).shape
