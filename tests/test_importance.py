"""The output sensitivity a per-layer search ranks channels by, against removing the channels for real."""

import pytest
import torch
from torch import nn

from compressor.app.commands import student_built
from compressor.importance import curve_importance, measured_loss, output_sensitivity
from compressor.models import build_generator
from compressor.slim import make_student, prunable_groups


def _removal_mse(model: nn.Module, layer: nn.Module, c: int, x: torch.Tensor) -> float:
    """The output's mean squared change when ``layer``'s output channel ``c`` is replaced by its mean over the
    images and positions (its readers see that constant)."""
    return _replaced_mse(model, layer, [c], x)


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


def test_unet_groups_rank_by_sensitivity():
    """On a zoo U-Net (skips couple layers): every group measured, the same groups as the magnitude's, and a
    per-layer student built from widths runs."""
    torch.manual_seed(0)
    t = build_generator("unet_128", ngf=8).eval()
    x = torch.zeros(1, 3, 128, 128)
    mag = prunable_groups(t, x)
    sens = prunable_groups(t, x, images=torch.rand(2, 3, 128, 128) * 2 - 1)
    assert [g.name for g in mag] == [g.name for g in sens]
    for s in sens:
        assert s.kind == "sensitivity" and len(s.importance) == s.channels and all(v >= 0 for v in s.importance)
    assert any(sum(s.importance) > 0 for s in sens)
    widths = {g.name: max(1, g.channels // 2) for g in sens}
    student = make_student(t, 1.0, "prune", "scratch", x, widths=widths)[0]
    assert student(x).shape == t(x).shape


def _pruned_by_root(plan: dict) -> dict[str, set[int]]:
    """The output channels each layer lost, from a student's pruning history."""
    return {name: set(idxs) for name, out, idxs in plan["history"] if out}


@pytest.mark.parametrize("how", ["uniform", "per-layer"])
def test_a_student_keeps_the_channels_the_output_is_most_sensitive_to(how):
    """``student.importance: sensitivity``: each group loses its channels of least output sensitivity, not of least
    weight magnitude, for a uniform width and for per-layer widths alike; the plan says so. Built on a chain
    whose weights make the two orders disagree: the first layer's four largest channels read only an image channel
    that never varies, so they are constant (a bias the readers absorb)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
    net.append(nn.Conv2d(8, 3, 3, padding=1))
    with torch.no_grad():
        net[0].weight[:4] = 0.0
        net[0].weight[:4, 0] = 10.0  # large weights on image channel 0 alone
    images = torch.rand(8, 3, 16, 16) * 2 - 1
    images[:, 0] = 0.3
    x = images[:1]
    widths = {"0": 4, "2": 6} if how == "per-layer" else None
    groups = {g.name: g for g in prunable_groups(net, x, images=images)}
    mag = {g.name: g for g in prunable_groups(net, x)}
    _, plan = make_student(net, 0.5, "prune", "inherit", x, widths=widths, images=images)
    _, by_mag = make_student(net, 0.5, "prune", "inherit", x, widths=widths)
    assert plan["importance"] == "sensitivity" and "importance" not in by_mag
    assert "most sensitive to" in student_built(plan) and "sensitive" not in student_built(by_mag)
    lost, lost_mag = _pruned_by_root(plan), _pruned_by_root(by_mag)
    for name in ("0", "2"):
        n = len(lost[name])
        least = sorted(range(8), key=lambda i: groups[name].importance[i])[:n]
        assert lost[name] == set(least)
        assert lost_mag[name] == set(sorted(range(8), key=lambda i: mag[name].importance[i])[:n])
    assert lost["0"] != lost_mag["0"]  # the construction makes them disagree where it is built to


def test_a_rebuilt_zoo_student_inherits_by_sensitivity():
    """A zoo teacher rebuilt at a width (``student.method: rebuild``, inherit) takes the sensitivity's channels
    too: the weights differ from the magnitude's student, the shapes do not."""
    torch.manual_seed(0)
    t = build_generator("unet_128", ngf=8).eval()
    images = torch.rand(2, 3, 128, 128) * 2 - 1
    s, plan = make_student(t, 0.5, "rebuild", "inherit", images[:1], images=images)
    m, _ = make_student(t, 0.5, "rebuild", "inherit", images[:1])
    assert plan["importance"] == "sensitivity" and plan["ngf"] == 4
    a, b = s.state_dict(), m.state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


def _replaced_mse(model: nn.Module, site: nn.Module, drop: list[int], x: torch.Tensor) -> float:
    """The output's mean squared change when the channels ``drop`` of what ``site`` returns are replaced by their
    means over the images and positions."""
    with torch.no_grad():
        y = model(x)
        seen = []
        h = site.register_forward_hook(lambda m, i, o: seen.append(o.mean((0, 2, 3))))
        model(x)
        h.remove()

        def cut(m, i, o):
            o = o.clone()
            o[:, drop] = seen[0][drop].view(1, -1, 1, 1)
            return o

        h = site.register_forward_hook(cut)
        try:
            z = model(x)
        finally:
            h.remove()
    return float(((z - y) ** 2).mean())


def test_measured_loss_is_the_loss_of_replacing_the_channels_by_their_means():
    """The measured loss of dropping several channels at once (not to first order) equals replacing them by their
    means where the reader sees them (after the ReLU), written here independently; two readers of one group (a
    skip) both see the means; keeping every channel loses nothing."""
    torch.manual_seed(0)

    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.act = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
            self.b = nn.Conv2d(8, 8, 3, padding=1)
            self.c = nn.Conv2d(16, 3, 3, padding=1)

        def forward(self, x):
            h = self.act(self.a(x))
            return self.c(torch.cat([torch.relu(self.b(h)), h], 1))

    net = Skip().eval()
    x = torch.randn(5, 3, 10, 10)
    readers = {"a": [("b", list(range(8))), ("c", list(range(8, 16)))]}
    drops = {"a": {0: list(range(8)), 3: [7, 1, 4, 0, 2], 8: []}}
    got = measured_loss(net, readers, x, drops, batch=2)
    for count, dropped in drops["a"].items():
        assert got["a"][count] == pytest.approx(_replaced_mse(net, net.act, dropped, x), rel=1e-5, abs=1e-12)
    assert got["a"][8] == 0.0 and got["a"][0] > got["a"][3] > 0
    assert measured_loss(net, {"z": [("missing", [0])]}, x, {"z": {0: [0]}}) == {}  # no reader ran: no entry


def test_a_curve_is_shared_by_the_channels_between_its_counts():
    """Keeping a group's ``count`` channels of highest share keeps what the measured curve says at each count; a
    curve rising somewhere (noise) or concave is replaced by its convex, non-increasing envelope, so the shares
    never grow with a channel's rank."""
    order = [3, 0, 5, 1, 4, 2]  # most important first
    losses = {0: 10.0, 2: 4.0, 4: 1.0}
    share = curve_importance(order, losses)
    for count, loss in losses.items():
        assert sum(share[c] for c in order[count:]) == pytest.approx(loss)
    ranked = [share[c] for c in order]
    assert ranked == sorted(ranked, reverse=True) and ranked[0] == pytest.approx(3.0)
    bumpy = curve_importance(order, {0: 10.0, 2: 1.0, 4: 2.0})  # rises at 4: taken as 2 at 2, under the envelope
    ranked = [bumpy[c] for c in order]
    assert ranked == sorted(ranked, reverse=True) and sum(ranked) == pytest.approx(10.0) and min(ranked) >= 0
    assert sum(bumpy[c] for c in order[2:]) == pytest.approx(2.0)  # (0, 10), (2, 2), (6, 0): 4 at 2 to 6
    assert sum(bumpy[c] for c in order[4:]) == pytest.approx(1.0)


def test_groups_weighed_by_their_measured_loss():
    """``counts`` given: every group's importance is the measured loss curve spread over its channels (kind
    ``measured``), the channels ranked as the sensitivity ranks them, and the whole group's share is the loss of
    replacing all its channels by their means."""
    torch.manual_seed(0)
    t = build_generator("unet_128", ngf=8).eval()
    x = torch.zeros(1, 3, 128, 128)
    images = torch.rand(2, 3, 128, 128) * 2 - 1
    sens = prunable_groups(t, x, images=images)
    meas = prunable_groups(t, x, images=images, counts=lambda n: [n // 4, n // 2, 3 * n // 4])
    assert [g.name for g in meas] == [g.name for g in sens]
    for s, m in zip(sens, meas):
        assert m.kind == "measured" and len(m.importance) == m.channels and min(m.importance) >= 0
        rank = sorted(range(s.channels), key=lambda i: -s.importance[i])
        shares = [m.importance[i] for i in rank]
        assert shares == sorted(shares, reverse=True)  # the most sensitive channel never weighs less
    assert sum(sum(m.importance) for m in meas) > 0


def test_a_linear_reader_sees_its_channels_on_the_last_dim():
    """A Linear reading tokens (channels last): the sensitivity and the measured loss take its last dim as the
    group's channels, and agree with replacing them for real (the conv's outputs, before the reshape)."""
    torch.manual_seed(2)

    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 5, 3, padding=1)
            self.fc = nn.Linear(5, 3)

        def forward(self, x):
            return self.fc(self.conv(x).flatten(2).transpose(1, 2))

    net = Tokens().eval()
    x = torch.randn(3, 3, 6, 6)
    readers = {"conv": [("fc", list(range(5)))]}
    sens = output_sensitivity(net, readers, x, signs=400)
    real = [_removal_mse(net, net.conv, c, x) for c in range(5)]
    assert sens["conv"] == pytest.approx(real, rel=0.2)  # linear in the channels: first order is exact
    got = measured_loss(net, readers, x, {"conv": {2: [4, 0, 3]}})
    assert got["conv"][2] == pytest.approx(_replaced_mse(net, net.conv, [4, 0, 3], x), rel=1e-5)
