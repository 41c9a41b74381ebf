"""The registry of generator loss terms: one entry per term, the function that computes it (unweighted).

A term is this function plus its entry in :class:`compressor.recipe.LossesSpec`, a field of the same name whose
spec carries the weight (``weight``), the taps it reads (``layers``, when it has them) and whether it needs the
teacher (the spec class's ``needs_teacher``). :meth:`compressor.train.Trainer.generator_terms` runs every term
of :data:`GENERATOR_TERMS` whose weight is positive (and whose teacher is there when it needs one), in this order,
and logs each one's value and gradient share under ``<direction>/<name>``.

Adding a term: a function here, one entry in :data:`GENERATOR_TERMS`, and its field in ``LossesSpec``
(``WeightSpec`` or a subclass with ``needs_teacher = True`` and ``layers`` when it reads features). Terms that
span directions (the unpaired cycle loss) stay in :meth:`compressor.train.Trainer.cycle_terms`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from .losses import kd_loss, srp_multi


@dataclass
class TermInputs:
    """What a term may look at: one direction's student output and taps, the teacher's, the batch. (The trainer,
    direction and teacher output are :mod:`compressor.train`'s ``Trainer``, ``Direction`` and ``TeacherOut``; this
    module does not import it, which imports this one.)"""

    trainer: Any
    direction: Any
    batch: dict
    x: torch.Tensor
    out: torch.Tensor  # the student's output
    features: dict[str, torch.Tensor]  # the student's tapped features
    teacher: Any  # Optional[TeacherOut]
    extras: dict[str, Any] = field(default_factory=dict)  # what a term hands back besides its value (GAN pair)


def recon_term(t: TermInputs, spec) -> Optional[torch.Tensor]:
    """L1 to the ground truth, where the data kind has one."""
    key = t.direction.kind.recon_target(t.direction, t.batch)
    if key is None:
        return None
    return nn.functional.l1_loss(t.out.float(), t.trainer._to(t.batch[key]))


def kd_term(t: TermInputs, spec) -> Optional[torch.Tensor]:
    """KD: L1 to the teacher's output."""
    return kd_loss(t.out.float(), t.teacher.image)


def srp_term(t: TermInputs, spec) -> Optional[torch.Tensor]:
    """SRP on the tapped layers (:func:`compressor.losses.srp_multi`)."""
    layers = t.trainer.s.srp_layers
    if not layers:
        return None
    return srp_multi(
        t.teacher.features,
        t.features,
        layers,
        spec.layer_weights,
        pool=spec.pool,
        variant=spec.variant,
        float64=spec.float64,
        normalize=spec.normalize,
    )


def feat_term(t: TermInputs, spec) -> Optional[torch.Tensor]:
    """Feature distillation through the trainer's 1x1 adapters (student to teacher widths)."""
    adapters = t.trainer.adapters
    if adapters is None:
        return None
    return adapters[t.direction.name](t.teacher.features, t.features)


def gan_term(t: TermInputs, spec) -> Optional[torch.Tensor]:
    """The generator's adversarial term; hands the (real, fake) pair on to the discriminator step."""
    d, tr = t.direction, t.trainer
    if not tr.use_gan or d.disc is None:
        return None
    pair = d.kind.gan_pair(d, t.batch, t.x, t.out, t.teacher.image if t.teacher is not None else None, tr._to)
    t.extras["pair"] = pair
    d.disc.requires_grad_(False)  # the generator's adversarial term trains the generator only
    value = tr.gan(d.disc(pair[1]), True, False)
    d.disc.requires_grad_(True)
    return value


# name (the LossesSpec field and the logged key) -> function; the order is the order of the sum
GENERATOR_TERMS: dict[str, Callable[[TermInputs, Any], Optional[torch.Tensor]]] = {
    "recon": recon_term,
    "kd": kd_term,
    "srp": srp_term,
    "feat": feat_term,
    "gan": gan_term,
}
