"""How much each channel of a network matters to its output: the distillation signal of a per-layer search.

Removing channel ``c`` of a group changes what every layer reading it sees of that channel. A student pruned from
the teacher and then distilled recovers a channel's mean (a constant its readers' biases absorb), not its
variation, so the removal is taken as replacing the channel by its mean ``μ`` over the images and positions. To
first order the network's output then moves by ``δ = -Σ_j J_j (a_j - μ_j)`` (the activations ``a_j`` the readers
``j`` see of the channel, ``J_j`` the output's Jacobian there), and the distillation loss a student starts from, its
squared error against the teacher, grows by ``‖δ‖²``. With a random sign vector ``r`` on the output,
``E_r[(rᵀδ)²] = ‖δ‖²``, and ``rᵀδ`` is one backward pass: ``-Σ_j Σ_hw (a_j - μ_j) · ∂(rᵀy)/∂a_j``. The importance
of a channel is that, squared, averaged over training images and sign vectors, divided by the output's size: the
mean squared error (on the network's output scale) that losing the channel alone adds. Unlike a weight magnitude
normalised within its group, it compares across groups (a channel of a 512-wide bottleneck against one of a 64-wide
full-resolution layer), which is what a latency-importance knapsack trades. It is Fisher pruning's first-order
estimate (Theis et al., 2018; Molchanov et al., CVPR 2019) with mean replacement, and the teacher's output, not a
task loss, as the signal: the quantity the student is judged on.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .models.ranges import tensor_leaves

Readers = dict[str, list[tuple[str, list[int]]]]  # group -> [(reading layer, its input channel per group channel)]


def output_sensitivity(
    model: nn.Module,
    readers: Readers,
    images: torch.Tensor,
    *,
    signs: int = 4,
    batch: int = 4,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Per group, per channel: the mean squared output change replacing that channel alone by its mean makes
    (first order, see the module docstring), over ``images`` (N, C, H, W) and ``signs`` random sign vectors each.
    ``readers`` names, per group, each layer reading its channels (a Conv or Linear by its name in ``model``) and
    which of that layer's input channels each group channel is. Groups none of whose readers run get no entry."""
    modules = dict(model.named_modules())
    wanted = {name for rs in readers.values() for name, _ in rs if name in modules}
    linear = {n for n in wanted if isinstance(modules[n], nn.Linear)}
    seen: dict[str, list[torch.Tensor]] = {}
    ids: set[int] = set()

    def hook(name: str):
        def pre(mod, args):
            a = args[0]
            if torch.is_tensor(a) and a.requires_grad and id(a) not in ids:  # a tensor two layers read: once
                ids.add(id(a))
                a.retain_grad()
                seen.setdefault(name, []).append(a)

        return pre

    gen = torch.Generator().manual_seed(seed)
    stats: dict[str, _ReaderStats] = {}
    size = 0
    was = model.training
    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in sorted(wanted)]
    model.eval()
    try:
        with torch.enable_grad():
            for start in range(0, len(images), batch):
                x = images[start : start + batch].detach().clone().requires_grad_(True)
                for _ in range(signs):
                    seen.clear()
                    ids.clear()
                    outs = tensor_leaves(model(x))
                    size = sum(o[0].numel() for o in outs)
                    loss = sum((o * _signs(o, gen)).sum() for o in outs)
                    loss.backward()
                    for name, tensors in seen.items():
                        done = [a for a in tensors if a.grad is not None]
                        if done:
                            stats.setdefault(name, _ReaderStats()).add(done, name in linear)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return _combine(readers, stats, size)


def _signs(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return (torch.randint(0, 2, t.shape, generator=gen) * 2 - 1).to(t.dtype)


class _ReaderStats:
    """One reading layer over the passes: per sample and channel ``Σ a·g`` and ``Σ g`` (the sums over positions),
    and the channel's mean activation, so that ``Σ (a - mean)·g`` is formed once the mean is known."""

    def __init__(self) -> None:
        self.ag: list[torch.Tensor] = []
        self.g: list[torch.Tensor] = []
        self.a_sum: Optional[torch.Tensor] = None
        self.positions = 0

    def add(self, tensors: list[torch.Tensor], linear: bool) -> None:
        """One pass: what the layer read (several tensors where it runs more than once), summed per sample."""
        ag = g = None
        for a in tensors:
            act = _positions(_channels_of(a.detach().double(), linear))
            grad = _positions(_channels_of(a.grad.double(), linear))
            ag = (act * grad).sum(2) + (0 if ag is None else ag)
            g = grad.sum(2) + (0 if g is None else g)
            s = act.sum((0, 2))
            self.a_sum = s if self.a_sum is None else self.a_sum + s
            self.positions += act.shape[0] * act.shape[2]
        self.ag.append(ag)
        self.g.append(g)

    def z(self) -> torch.Tensor:
        """Per sample and channel: ``Σ (a - mean)·g``, the first-order output change (up to sign and ``r``)."""
        mean = self.a_sum / max(self.positions, 1)
        return torch.cat(self.ag) - mean * torch.cat(self.g)


def _combine(readers: Readers, stats: dict[str, "_ReaderStats"], size: int) -> dict[str, list[float]]:
    """Per group and channel: the readers' changes summed per sample, squared, averaged, per output element."""
    zs = {name: st.z() for name, st in stats.items()}
    out = {}
    for g, rs in readers.items():
        z = None
        for name, idx in rs:
            if name in zs:
                part = zs[name][:, idx]
                z = part if z is None else z + part
        if z is not None:
            out[g] = ((z**2).mean(0) / max(size, 1)).tolist()
    return out


def measured_loss(
    model: nn.Module,
    readers: Readers,
    images: torch.Tensor,
    drops: dict[str, dict[int, list[int]]],
    *,
    batch: int = 4,
) -> dict[str, dict[int, float]]:
    """Per group, per kept count: the mean squared output change (per output element, on ``images``) that replacing
    the group's channels ``drops[group][count]`` by their means makes, the rest of the network as it is: the loss
    :func:`output_sensitivity` estimates to first order, measured at the widths a search may choose. A channel's
    mean is over all ``images`` and positions, as a reader sees it; groups none of whose readers run get no entry."""
    modules = dict(model.named_modules())
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            means, ref = _reader_means(model, modules, readers, images, batch)
            out: dict[str, dict[int, float]] = {}
            for g, by_count in drops.items():
                rs = [(name, idx) for name, idx in readers.get(g, []) if name in means]
                if not rs:
                    continue
                out[g] = {}
                for count, dropped in by_count.items():
                    cut = {name: [idx[c] for c in dropped] for name, idx in rs}
                    out[g][count] = _replaced_error(model, modules, means, cut, images, ref, batch)
    finally:
        model.train(was)
    return out


def _channels_of(a: torch.Tensor, linear: bool) -> torch.Tensor:
    """``a`` with the channels a layer reads on dim 1 (a Linear reads its last dim)."""
    return a.movedim(-1, 1) if linear else a


def _positions(a: torch.Tensor) -> torch.Tensor:
    """``a`` (channels on dim 1) as (samples, channels, positions)."""
    return a.flatten(2) if a.dim() > 2 else a[..., None]


def _reader_means(model, modules, readers: Readers, images: torch.Tensor, batch: int):
    """Each reader's mean input per channel over ``images`` and positions, and the network's outputs."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str):
        def pre(mod, args):
            a = _positions(_channels_of(args[0].double(), isinstance(mod, nn.Linear)))
            sums[name] = a.sum((0, 2)) + sums.get(name, 0)
            counts[name] = counts.get(name, 0) + a.shape[0] * a.shape[2]

        return pre

    wanted = sorted({name for rs in readers.values() for name, _ in rs if name in modules})
    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in wanted]
    try:
        ref = [tensor_leaves(model(images[s : s + batch])) for s in range(0, len(images), batch)]
    finally:
        for h in handles:
            h.remove()
    return {n: (sums[n] / counts[n]).float() for n in sums}, ref


def _replaced_error(model, modules, means, cut: dict[str, list[int]], images, ref, batch: int) -> float:
    """The mean squared output change with each reader's channels ``cut[reader]`` replaced by their means."""

    def hook(name: str):
        idx = torch.tensor(cut[name], dtype=torch.long)

        def pre(mod, args):
            linear = isinstance(mod, nn.Linear)
            a = _channels_of(args[0], linear).clone()
            shape = [1, len(idx)] + [1] * (a.dim() - 2)
            a[:, idx] = means[name][idx].to(a.dtype).view(shape)
            return (a.movedim(1, -1) if linear else a,) + tuple(args[1:])

        return pre

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in cut if cut[n]]
    err = 0.0
    size = 0
    try:
        for i, s in enumerate(range(0, len(images), batch)):
            for o, r in zip(tensor_leaves(model(images[s : s + batch])), ref[i]):
                err += float(((o - r).double() ** 2).sum())
                size += r.numel()
    finally:
        for h in handles:
            h.remove()
    return err / max(size, 1)


def curve_importance(order: list[int], losses: dict[int, float]) -> list[float]:
    """Per channel, its share of a measured loss curve: ``losses`` maps kept counts to the loss keeping the
    ``count`` first channels of ``order`` (most important first) makes (the full count loses nothing). The curve
    is made non-increasing and convex in the count (its lower envelope: each further channel lost costs at least
    as much as the one before), and the loss between two counts is shared equally by the channels between them, so
    that keeping a group's ``count`` channels of highest importance keeps what the curve says, at every count it
    measured."""
    n = len(order)
    pts = sorted({**losses, n: 0.0}.items())
    fixed = []
    for c, v in reversed(pts):  # non-increasing in the count: never below a wider count's loss
        fixed.append((c, max(v, fixed[-1][1] if fixed else 0.0)))
    fixed.reverse()
    hull: list[tuple[int, float]] = []
    for p in fixed:  # lower convex envelope
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) <= 0:
            hull.pop()
        hull.append(p)
    share = [0.0] * n
    for (c0, v0), (c1, v1) in zip(hull, hull[1:]):
        for rank in range(c0, c1):
            share[order[rank]] = (v0 - v1) / (c1 - c0)
    return share


def _cross(o: tuple[int, float], a: tuple[int, float], b: tuple[int, float]) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
