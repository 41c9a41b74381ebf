"""The table of loss terms: each term's function, its recipe entry (spec class and default) and its description.

One row of :data:`TERMS` is everything about a term: the function that computes it (unweighted), the spec class
of its ``distill.losses.<name>`` entry (the weight, the taps it reads in ``layers``, ``needs_teacher``), that
entry's default, and the description the recipe reference prints. :class:`LossesSpec` (the recipe's
``distill.losses`` section) is built from the table; :meth:`compressor.train.Trainer.generator_terms` runs every
per-direction term whose weight is positive (and whose teacher is there when it needs one) in table order, the
order of the sum; :meth:`~compressor.train.Trainer.cycle_terms` runs the terms that span both directions. Each
term's value and gradient share are logged under ``<direction>/<name>`` (``<name>`` for terms across directions).

Adding a term is one function and one row here: a term that is off by default (weight 0) and marked
``neutral=True`` leaves stage digests as they were while it is off, so existing runs stay up to date. A row also
owns what the term needs beyond its function: its taps (a ``layers`` field in its entry: the trainer records those
layers of teacher and student), its trainable state (``state``: a function that builds an ``nn.Module`` from the
entry and the tapped layers' channels, trained with the student, saved in checkpoints and handed to the function as
``inputs.state``), and the training stages it joins (``stages``: the distill stage by default; the teacher's own
training takes only the terms that list ``"teacher"``, each at its teacher-training setting).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, ClassVar, Literal, Optional

import torch
import torch.nn as nn
from pydantic import Field, PrivateAttr, create_model, model_validator

from .losses import kd_loss, srp_multi
from .schemas import Strict

log = logging.getLogger(__name__)

# SRP's default weight on the balanced scale (normalize: rows). Chosen so that SRP's share of the student's gradient
# is within 10x of KD's for both zoo families at 256² with the default recipe: tools/bench_losses.py,
# docs/benchmarks.md.
SRP_DEFAULT_WEIGHT = 5.0
SRP_OLD_DEFAULT_WEIGHT = 10.0  # the default before normalize existed (per-entry scale)
_NOTED: set[str] = set()  # notes already logged (once per process)


# ---------------------------------------------------------------------------------------------- recipe entries


class WeightSpec(Strict):
    """A loss term's recipe entry: its weight, and, in subclasses, the taps it reads (``layers``) and whether it
    needs the teacher."""

    needs_teacher: ClassVar[bool] = False
    weight: float = Field(..., ge=0, description="loss weight (0 turns it off)")


class TeacherWeightSpec(WeightSpec):
    needs_teacher: ClassVar[bool] = True


class ReconLossSpec(WeightSpec):
    loss: Literal["l1", "mse"] = Field("l1", description="l1, or mse (mean squared error: what PSNR measures)")


class KdLossSpec(TeacherWeightSpec):
    loss: Literal["l1", "mse"] = Field("l1", description="l1, or mse (mean squared error: what PSNR measures)")


class GanLossSpec(WeightSpec):
    weight: float = Field(1.0, ge=0)
    mode: Literal["lsgan", "vanilla", "hinge"] = Field("lsgan", description="adversarial loss")


TapPair = Annotated[list[str], Field(min_length=2, max_length=2)]
PAIR_SEP = "->"  # a pair's tap alias: TEACHER_TAP->STUDENT_TAP


class TappedSpec(TeacherWeightSpec):
    """A term that reads tapped features: ``layers`` (the same tap names in teacher and student) or ``pairs``
    (``[teacher tap, student tap]``, for a student of another architecture or other names)."""

    layers: list[str] = Field(default_factory=lambda: ["encoder"], description="tap aliases or module names")
    pairs: Optional[list[TapPair]] = Field(
        None,
        min_length=1,
        description="[[TEACHER_TAP, STUDENT_TAP], ...]: taps named in each network (maps of different sizes are "
        "compared at the smaller size)",
    )

    @model_validator(mode="after")
    def _pairs_or_layers(self):
        if self.pairs is not None and "layers" in self.model_fields_set:
            raise ValueError(
                "give layers (the same tap in both networks) or pairs ([teacher tap, student tap]), not both"
            )
        return self

    def tap_pairs(self) -> dict[str, tuple[str, str]]:
        """Each tap's alias -> (teacher tap, student tap): a layer is its own alias in both networks, a pair's
        alias is ``TEACHER->STUDENT``."""
        if self.pairs is None:
            return {layer: (layer, layer) for layer in self.layers}
        return {f"{t}{PAIR_SEP}{s}" if t != s else t: (t, s) for t, s in self.pairs}

    @property
    def aliases(self) -> list[str]:
        return list(self.tap_pairs())


class SrpLossSpec(TappedSpec):
    _note: str = PrivateAttr("")  # how to convert a weight written before normalize existed (log_old_weights)
    weight: float = Field(SRP_DEFAULT_WEIGHT, ge=0)
    layer_weights: Optional[list[float]] = Field(None, description="one weight per layer (default: all 1)")
    pool: Optional[int] = Field(None, ge=1, description="average-pool features to this size first")
    variant: Literal["l2", "l1"] = Field("l2", description="l2: exact factorised form; l1: materialised")
    float64: bool = Field(False, description="accumulate in float64 (teacher and student nearly equal)")
    normalize: Optional[Literal["rows", "entries"]] = Field(
        None,
        description=(
            "rows: the mean over relation rows (bounded by 4 at any resolution; the default); entries: the mean over "
            "(HW)² entries, the scale before this option (default when a recipe sets weight without normalize)"
        ),
    )
    grad_ratio: Optional[float] = Field(
        None,
        gt=0,
        le=100,
        description="SRP's gradient norm on the student as this multiple of KD's, kept during training (the weight "
        "is then only the starting point; the same meaning on every network)",
    )

    @model_validator(mode="after")
    def _check(self):
        if self.layer_weights is not None and len(self.layer_weights) != len(self.aliases):
            raise ValueError("distill.losses.srp.layer_weights needs one weight per layer (or pair)")
        if self.normalize is None:
            # A recipe written before normalize existed and setting the weight meant the per-entry scale: keep it.
            old = "weight" in self.model_fields_set
            self.normalize = "entries" if old else "rows"
            if old and self.weight > 0:
                note = (
                    f"distill.losses.srp.weight {self.weight:g} keeps its earlier meaning (normalize: entries, the "
                    f"mean over the (HW)² relation entries); for the balanced scale write `normalize: rows` and a "
                    f"weight about {SRP_DEFAULT_WEIGHT:g} (the default), or divide this one by each tap's H·W "
                    f"(16² tap: /256) for the same effect"
                )
                self._note = note
        return self


class FeatLossSpec(TappedSpec):
    weight: float = Field(0.0, ge=0)


# ---------------------------------------------------------------------------------------------- what terms see


@dataclass
class TermInputs:
    """What a per-direction term may look at: one direction's student output and taps, the teacher's, the batch.
    (The trainer, direction and teacher output are :mod:`compressor.train`'s ``Trainer``, ``Direction`` and
    ``TeacherOut``; this module does not import it, which imports this one.)"""

    trainer: Any
    direction: Any
    batch: dict
    x: torch.Tensor
    out: torch.Tensor  # the student's output
    features: dict[str, torch.Tensor]  # the student's tapped features
    teacher: Any  # Optional[TeacherOut]
    extras: dict[str, Any] = field(default_factory=dict)  # what a term hands back besides its value (GAN pair)
    state: Any = None  # the running term's own trainable state (its row's ``state``), for this direction


@dataclass
class CrossInputs:
    """What a term across directions may look at: every direction's student output (``fakes``, by direction
    name) and the batch."""

    trainer: Any
    fakes: dict[str, torch.Tensor]
    batch: dict


# ---------------------------------------------------------------------------------------------- the functions


def recon_term(t: TermInputs, spec: ReconLossSpec) -> Optional[torch.Tensor]:
    """L1 (or MSE) to the ground truth, where the data kind has one."""
    key = t.direction.kind.recon_target(t.direction, t.batch)
    if key is None:
        return None
    return kd_loss(t.out.float(), t.trainer._to(t.batch[key]), spec.loss)


def kd_term(t: TermInputs, spec: KdLossSpec) -> Optional[torch.Tensor]:
    """KD: L1 (or MSE) to the teacher's output."""
    return kd_loss(t.out.float(), t.teacher.image, spec.loss)


def srp_term(t: TermInputs, spec: SrpLossSpec) -> Optional[torch.Tensor]:
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


def feat_term(t: TermInputs, spec: FeatLossSpec) -> Optional[torch.Tensor]:
    """Feature distillation through the trainer's 1x1 adapters (student to teacher widths)."""
    adapters = t.trainer.adapters
    if adapters is None:
        return None
    return adapters[t.direction.name](t.teacher.features, t.features)


def gan_term(t: TermInputs, spec: GanLossSpec) -> Optional[torch.Tensor]:
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


def cycle_term(t: CrossInputs, spec: WeightSpec) -> Optional[torch.Tensor]:
    """Unpaired data: A -> B -> A and B -> A -> B back to their inputs (L1)."""
    tr = t.trainer
    if tr.s.kind != "unpaired" or len(tr.s.directions) != 2:
        return None
    ab, ba = tr.s.directions
    rec_a = ba.student(t.fakes[ab.name])
    rec_b = ab.student(t.fakes[ba.name])
    return nn.functional.l1_loss(rec_a, tr._to(t.batch[ab.src])) + nn.functional.l1_loss(rec_b, tr._to(t.batch[ba.src]))


# ---------------------------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Term:
    """One loss term. ``compute(inputs, spec)`` returns its unweighted value, or None where it does not apply
    (:class:`TermInputs` per direction; :class:`CrossInputs` when ``across`` directions). ``spec(**default)`` is
    its recipe entry's default. ``neutral``: added after run folders existed; while its entry holds the default,
    stage digests leave it out."""

    name: str
    compute: Callable[[Any, Any], Optional[torch.Tensor]]
    spec: type[WeightSpec]
    description: str
    default: dict = field(default_factory=dict)
    across: bool = False
    neutral: bool = False
    # builds the term's trainable state for one direction: state(entry, channels) -> nn.Module, where channels maps
    # each tapped layer to its (teacher, student) channel counts; trained with the student, kept in checkpoints
    state: Optional[Callable[[Any, dict[str, tuple[int, int]]], nn.Module]] = None
    stages: tuple[str, ...] = ("distill",)  # the training stages it joins: "distill", "teacher"

    def default_entry(self) -> WeightSpec:
        return self.spec(**self.default)


BOTH = ("teacher", "distill")  # the terms of pix2pix / CycleGAN training, which the teacher's own training runs too

# The order of the sum (per direction, then across directions).
TERMS: tuple[Term, ...] = (
    Term("recon", recon_term, ReconLossSpec, "L1 (or MSE) to ground truth", {"weight": 100.0}, stages=BOTH),
    Term("kd", kd_term, KdLossSpec, "L1 (or MSE) to teacher output", {"weight": 10.0}),
    Term("srp", srp_term, SrpLossSpec, "semantic relation preserving loss"),
    Term("feat", feat_term, FeatLossSpec, "feature L2 through 1x1 adapters"),
    Term("gan", gan_term, GanLossSpec, "adversarial loss", stages=BOTH),
    Term("cycle", cycle_term, WeightSpec, "unpaired cycle loss", {"weight": 10.0}, across=True, stages=BOTH),
)
GENERATOR_TERMS: dict[str, Callable] = {t.name: t.compute for t in TERMS if not t.across}
CROSS_TERMS: dict[str, Callable] = {t.name: t.compute for t in TERMS if t.across}
STATEFUL_TERMS: dict[str, Callable] = {t.name: t.state for t in TERMS if t.state is not None}


def stage_losses(stage: str, entries: dict[str, dict]) -> dict[str, dict]:
    """The ``distill.losses`` document of a training stage other than distill: ``entries`` (else the default entry)
    for the terms that join ``stage``, every other term off (weight 0)."""
    return {t.name: entries.get(t.name, dict(t.default)) if stage in t.stages else {"weight": 0} for t in TERMS}


def digest_neutral_defaults() -> dict[str, Any]:
    """``distill.losses.<name>`` -> its default entry (as dumped) for the terms marked ``neutral``."""
    return {f"distill.losses.{t.name}": t.default_entry().model_dump(mode="json") for t in TERMS if t.neutral}


# ---------------------------------------------------------------------------------------------- distill.losses


class _LossesBase(Strict):
    def log_old_weights(self) -> None:
        """One log line per process for a weight that keeps its meaning from before the per-row scale (called when
        distillation starts, so that a recipe with an error prints that error alone)."""
        note = self.srp._note
        if note and self.srp.weight > 0 and note not in _NOTED:
            _NOTED.add(note)
            log.warning(note)

    def active(self) -> dict[str, WeightSpec]:
        """The terms with a positive weight, by name, in field order."""
        return {k: v for k, v in self if isinstance(v, WeightSpec) and v.weight > 0}

    def tapped_layers(self) -> list[str]:
        """The taps the active feature losses (SRP, feature distillation) read, each once, by alias."""
        return list(self.tap_pairs())

    def tap_pairs(self) -> dict[str, tuple[str, str]]:
        """The active feature losses' taps: alias -> (teacher tap, student tap)."""
        out: dict[str, tuple[str, str]] = {}
        for spec in self.active().values():
            if isinstance(spec, TappedSpec):
                out.update(spec.tap_pairs())
        return out

    def uses_teacher(self, data_kind: str) -> bool:
        """Whether any loss looks at the teacher (folder data has no targets, so it always does)."""
        return any(spec.needs_teacher for spec in self.active().values()) or data_kind == "folder"


def _entry_field(t: Term) -> tuple[type, Any]:
    return (t.spec, Field(default_factory=t.default_entry, description=t.description))


# Recipes list the adversarial entry first (the layout of every recipe written so far), then the table's order.
LossesSpec = create_model(
    "LossesSpec",
    __base__=_LossesBase,
    __module__=__name__,
    __doc__="The recipe's ``distill.losses``: one entry per row of :data:`TERMS`.",
    **{t.name: _entry_field(t) for t in sorted(TERMS, key=lambda t: t.name != "gan")},
)
