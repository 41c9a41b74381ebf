"""How much each channel of a network matters to its output: the distillation signal of a per-layer search.

Removing channel ``c`` of a group zeroes what every layer reading it sees of that channel. To first order, the
network's output then moves by ``δ = -Σ_j J_j a_j`` (the activations ``a_j`` the readers ``j`` see of the channel,
``J_j`` the output's Jacobian there), and the distillation loss a student starts from, its squared error against the
teacher, grows by ``‖δ‖²``. With a random sign vector ``r`` on the output, ``E_r[(rᵀδ)²] = ‖δ‖²``, and ``rᵀδ`` is
one backward pass: ``-Σ_j Σ_hw a_j · ∂(rᵀy)/∂a_j``. The importance of a channel is that, squared, averaged over
training images and sign vectors, divided by the output's size: the mean squared error (on the network's output
scale) that removing the channel alone adds. Unlike a weight magnitude normalised within its group, it compares
across groups (a channel of a 512-wide bottleneck against one of a 64-wide full-resolution layer), which is what a
latency-importance knapsack trades. It is Fisher pruning's first-order estimate (Theis et al., 2018; Molchanov et
al., CVPR 2019) with the teacher's output, not a task loss, as the signal: the quantity the student is judged on.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

Readers = dict[str, list[tuple[str, list[int]]]]  # group -> [(reading layer, its input channel per group channel)]


def _leaves(out: Any) -> list[torch.Tensor]:
    if torch.is_tensor(out):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _leaves(o)]
    return []


def output_sensitivity(
    model: nn.Module,
    readers: Readers,
    images: torch.Tensor,
    *,
    signs: int = 4,
    batch: int = 4,
    seed: int = 0,
    leaves: Callable[[Any], list[torch.Tensor]] = _leaves,
) -> dict[str, list[float]]:
    """Per group, per channel: the mean squared output change removing that channel alone makes (first order,
    see the module docstring), over ``images`` (N, C, H, W) and ``signs`` random sign vectors each. ``readers``
    names, per group, each layer reading its channels (a Conv or Linear by its name in ``model``) and which of that
    layer's input channels each group channel is. Groups none of whose readers run get no entry."""
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
    sums = {g: torch.zeros(len(rs[0][1]) if rs else 0, dtype=torch.float64) for g, rs in readers.items()}
    count = 0
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
                    outs = leaves(model(x))
                    size = sum(o[0].numel() for o in outs)
                    loss = sum((o * _signs(o, gen)).sum() for o in outs)
                    loss.backward()
                    _accumulate(sums, readers, seen, linear)
                    count += x.shape[0]
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    scale = 1.0 / max(count * size, 1)
    return {g: (s * scale).tolist() for g, s in sums.items() if any(n in seen for n, _ in readers[g])}


def _signs(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return (torch.randint(0, 2, t.shape, generator=gen) * 2 - 1).to(t.dtype)


def _per_channel(a: torch.Tensor, linear: bool) -> torch.Tensor:
    """``a · ∂L/∂a`` summed over everything but the sample and the channel (a Conv's dim 1, a Linear's last)."""
    prod = (a.detach() * a.grad).double()
    if linear:
        prod = prod.movedim(-1, 1)
    return prod.flatten(2).sum(2) if prod.dim() > 2 else prod


def _accumulate(
    sums: dict[str, torch.Tensor], readers: Readers, seen: dict[str, list[torch.Tensor]], linear: set[str]
) -> None:
    """Add one pass's squared first-order changes: per sample, the readers' ``a · ∂L/∂a`` summed per channel."""
    per_layer: dict[str, torch.Tensor] = {}
    for name, tensors in seen.items():
        for a in tensors:
            if a.grad is not None:
                per = _per_channel(a, name in linear)
                per_layer[name] = per if name not in per_layer else per_layer[name] + per
    for g, rs in readers.items():
        z = None
        for name, idx in rs:
            if name in per_layer:
                part = per_layer[name][:, idx]
                z = part if z is None else z + part
        if z is not None:
            sums[g] += (z**2).sum(0)
