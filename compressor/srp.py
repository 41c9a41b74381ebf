"""SRP for your own training loop: :class:`SRPLoss`, the semantic relation preserving loss as an ``nn.Module`` that
taps teacher and student by module name, and :func:`distill`, the plainest loop around it (KD + SRP on your images).

The loss is the one the pipeline's ``distill.losses.srp`` term computes (:func:`compressor.losses.srp_multi`), on
features recorded by the same forward hooks (:class:`compressor.features.FeatureTaps`), with the same tap names
(an alias of the zoo such as ``encoder``, or a name from ``model.named_modules()``)::

    srp = SRPLoss(teacher, student, layers=["encoder"])
    with torch.no_grad():
        target = teacher(x)
    out = student(x)
    loss = F.l1_loss(out, target) + 5.0 * srp()  # srp() reads what the two forward passes recorded
"""

from __future__ import annotations

from itertools import cycle, islice
from typing import Iterable, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .features import FeatureTaps, resolve_tap_pairs
from .losses import srp_multi


class SRPLoss(nn.Module):
    """SRP between ``teacher`` and ``student`` at ``layers``: tap aliases or module names, the student's looked up
    under the same names (a slimmed student), or ``(teacher tap, student tap)`` pairs, each looked up in its own
    network (a student of another architecture; maps of different sizes meet at the smaller). Calling it returns the weighted SRP of the features the last forward pass of each
    model recorded, and clears them; :meth:`remove` takes the hooks off. ``normalize="rows"`` is the pipeline's
    default scale (one weight means the same at every tap and image size); ``layer_weights``, ``pool``, ``variant``
    and ``float64`` are those of the recipe's ``distill.losses.srp``. Neither model becomes a submodule: the loss
    has no parameters of its own."""

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        layers: Sequence[Union[str, tuple[str, str]]] = ("encoder",),
        layer_weights: Optional[Sequence[float]] = None,
        *,
        pool: Optional[int] = None,
        variant: str = "l2",
        float64: bool = False,
        normalize: str = "rows",
    ):
        super().__init__()
        pairs = {}
        for layer in layers:
            t, s = (layer, layer) if isinstance(layer, str) else tuple(layer)
            pairs[t if t == s else f"{t}->{s}"] = (t, s)
        self.layers = list(pairs)
        self.layer_weights = list(layer_weights) if layer_weights is not None else None
        self.pool, self.variant, self.float64, self.normalize = pool, variant, float64, normalize
        t_taps, s_taps = resolve_tap_pairs(teacher, student, pairs, key="layers")
        self._taps = (FeatureTaps(teacher, t_taps).__enter__(), FeatureTaps(student, s_taps).__enter__())

    def forward(self) -> torch.Tensor:
        teacher, student = self._taps
        missing = [n for n in self.layers if n not in teacher.features or n not in student.features]
        if missing:
            raise RuntimeError(f"SRPLoss: no features at {missing[0]!r}: run the teacher and the student first")
        loss = srp_multi(
            teacher.features,
            student.features,
            self.layers,
            self.layer_weights,
            pool=self.pool,
            variant=self.variant,
            float64=self.float64,
            normalize=self.normalize,
        )
        teacher.clear()
        student.clear()
        return loss

    def remove(self) -> None:
        """Take the forward hooks off both models."""
        for taps in self._taps:
            taps.__exit__(None, None, None)


def distill(
    teacher: nn.Module,
    student: nn.Module,
    images: Iterable[torch.Tensor],
    *,
    steps: int = 100,
    lr: float = 2e-4,
    kd_weight: float = 10.0,
    srp_weight: float = 5.0,
    layers: Sequence[Union[str, tuple[str, str]]] = ("encoder",),
    device: str = "cpu",
) -> list[dict]:
    """Train ``student`` to match ``teacher`` on ``images`` (batches (N, C, H, W) in [-1, 1], cycled for ``steps``
    steps): L1 to the teacher's output times ``kd_weight`` plus :class:`SRPLoss` at ``layers`` times
    ``srp_weight``, Adam at ``lr``. Returns one ``{"step", "kd", "srp", "loss"}`` per step; the student is left in
    eval mode on the CPU. For GAN terms, reconstruction to targets, schedules, checkpoints and DDP, use a recipe
    (``compress recipe.yaml``)."""
    teacher = teacher.to(device).eval().requires_grad_(False)
    student = student.to(device).train()
    srp = SRPLoss(teacher, student, layers)
    opt = torch.optim.Adam(student.parameters(), lr=lr, betas=(0.5, 0.999))
    history = []
    try:
        for step, x in enumerate(islice(cycle(images), steps)):
            x = x.to(device)
            with torch.no_grad():
                target = teacher(x)
            kd = F.l1_loss(student(x), target)
            relation = srp()
            loss = kd_weight * kd + srp_weight * relation
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history.append({"step": step, "kd": kd.item(), "srp": relation.item(), "loss": loss.item()})
    finally:
        srp.remove()
    student.eval().cpu()
    return history
