"""The distillation loop (and teacher training, which is the same loop without a teacher).

One step serves three data kinds, in named parts as gan-compression's distillers have them:

* :meth:`Trainer.generator_terms`: one direction's student (and frozen teacher) forward and its loss terms:
  L1 to ground truth, KD (L1 to the teacher's output), SRP, feature distillation through 1x1 adapters, and the
  generator's adversarial term;
* :meth:`Trainer.cycle_terms`: unpaired data (CycleGAN): the cycle loss across the two directions;
* :meth:`Trainer.discriminator_step`: the PatchGAN update on real and (detached) fake samples.

What differs between data kinds (is there a ground truth, what the discriminator sees as real, its input
channels) lives in a :class:`DataKind` that each :class:`Direction` carries: **paired** (pix2pix, conditional
PatchGAN on (input, output)), **unpaired** (two students and two teachers, unconditional PatchGAN) and **folder**
(inputs only; the teacher's outputs are the GAN's real samples when asked).

Every N steps the loop writes a checkpoint (the last K kept); ``resume`` restores models, optimisers, schedulers,
the Python, numpy, torch and CUDA random states, data position and step, so an interrupted and resumed run equals
an uninterrupted one. What a checkpoint holds is :meth:`Trainer.state_dict`; the files themselves (atomic writes,
rotation, a corrupt newest file skipped, the random states) are :mod:`compressor.checkpoints`, and whether a run
may continue from them at all is :mod:`compressor.resume`. A NaN/Inf loss stops the run and names the term; SIGINT
writes a checkpoint and raises :class:`Interrupted`. Several processes (``torchrun``) train under
:class:`DistributedDataParallel` (bucketed all-reduce overlapped with the backward pass); rank 0 alone writes.

``amp`` is mixed precision: on CUDA, bf16 or fp16 autocast for every forward; on a CPU, bf16 autocast for the frozen
teacher's forward where the CPU computes bf16 natively (AVX512-BF16 or AMX), else FP32 with a one-time note.
Loss terms (SRP included) are computed in FP32.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import random
import signal
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from .checkpoints import capture_rng, list_checkpoints, restore_rng, resumable_checkpoint
from .checkpoints import save_checkpoint as write_checkpoint
from .data import ResumableSampler, image_row, to_image
from .errors import CheckpointError, Interrupted, TrainingDiverged
from .features import FeatureTaps
from .io import append_line, atomic_write_bytes, atomic_write_text, own_folder
from .losses import FeatureAdapters, GANLoss
from .models import build_discriminator
from .procs import STOP_ENV
from .recipe import LossesSpec
from .schedule import Plateau, cosine_lambda, linear_lambda
from .schemas import MetricsLine, check, read_text_bounded
from .teacher_cache import MemoryTeacherCache
from .terms import CROSS_TERMS, GENERATOR_TERMS, STATEFUL_TERMS, CrossInputs, TermInputs

log = logging.getLogger(__name__)

SHARE_FLOOR = 0.01  # a distillation term below this share of the gradient norm ...
SHARE_PATIENCE = 3  # ... at this many consecutive logged steps gets one warning


# ---------------------------------------------------------------------------------------------- hardware


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_bf16_native(flags: Optional[frozenset[str]] = None) -> bool:
    """True where the CPU computes bf16 matrix products natively (AVX512-BF16 or AMX-BF16).

    Without them (AVX2, plain AVX-512), oneDNN emulates bf16 through FP32 conversions, which is slower than FP32.
    """
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def cpu_amp_dtype(amp: str, flags: Optional[frozenset[str]] = None) -> tuple[Optional[torch.dtype], str]:
    """The autocast dtype for ``distill.amp`` on this CPU, and a note when it falls back to FP32."""
    if amp == "none":
        return None, ""
    if amp == "bf16" and cpu_bf16_native(flags):
        return torch.bfloat16, ""
    cap = torch.backends.cpu.get_cpu_capability()
    if amp == "fp16":
        return None, "distill.amp=fp16 needs CUDA; training in FP32 on the CPU"
    return None, (
        f"distill.amp=bf16: this CPU ({cap}) has neither AVX512-BF16 nor AMX, where bf16 is emulated "
        f"and slower than FP32; training in FP32"
    )


# ---------------------------------------------------------------------------------------------- data kinds


class DataKind:
    """What one data kind means for the losses: ground truth, the discriminator's view, its input channels."""

    name = ""
    conditional = True  # the discriminator sees (input, output) pairs

    def gan_enabled(self, teacher_as_real: bool) -> bool:
        return True

    def recon_target(self, d: "Direction", batch: dict) -> Optional[str]:
        """The batch key of the ground truth for the L1 term, or None."""
        return None

    def real_sample(
        self, d: "Direction", batch: dict, x: torch.Tensor, t_out: Optional[torch.Tensor], to: Callable
    ) -> torch.Tensor:
        raise NotImplementedError

    def disc_input_channels(self, in_nc: int, out_nc: int) -> int:
        return in_nc + out_nc if self.conditional else out_nc

    def gan_pair(
        self,
        d: "Direction",
        batch: dict,
        x: torch.Tensor,
        out_s: torch.Tensor,
        t_out: Optional[torch.Tensor],
        to: Callable,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(real, fake) as the discriminator sees them."""
        real = self.real_sample(d, batch, x, t_out, to)
        if self.conditional:
            if x.shape[-2:] != out_s.shape[-2:]:  # super-resolution: condition on the input enlarged to the output
                x = nn.functional.interpolate(x, size=out_s.shape[-2:], mode="bilinear", align_corners=False)
            return torch.cat([x, real], 1), torch.cat([x, out_s], 1)
        return real, out_s


class Paired(DataKind):
    name = "paired"

    def recon_target(self, d, batch):
        return d.tgt if d.tgt and d.tgt in batch else None

    def real_sample(self, d, batch, x, t_out, to):
        return to(batch[d.tgt])


class Unpaired(DataKind):
    name = "unpaired"
    conditional = False

    def real_sample(self, d, batch, x, t_out, to):
        return to(batch[d.tgt])


class Folder(DataKind):
    name = "folder"

    def gan_enabled(self, teacher_as_real: bool) -> bool:
        return teacher_as_real

    def real_sample(self, d, batch, x, t_out, to):
        if t_out is None:
            raise ValueError("folder data: the GAN's real samples are the teacher's outputs, and there is no teacher")
        return t_out


DATA_KINDS: dict[str, DataKind] = {k.name: k for k in (Paired(), Unpaired(), Folder())}


@dataclass
class Direction:
    """One generator being trained: src -> tgt, with its optional teacher and its discriminator."""

    name: str
    student: nn.Module
    teacher: Optional[nn.Module]
    src: str
    tgt: Optional[str]
    disc: Optional[nn.Module] = None
    kind: DataKind = field(default_factory=Paired)


@dataclass
class TrainSetup:
    kind: str  # paired | unpaired | folder
    directions: list[Direction]
    dataset: torch.utils.data.Dataset
    losses: LossesSpec
    steps: int
    lr: float = 2e-4
    decay_from: float = 0.5
    schedule: str = "linear"  # linear | cosine | plateau (compressor.schedule)
    beta1: float = 0.5
    plateau: Optional[Any] = None  # the recipe's PlateauSpec, for schedule plateau
    val_batch: Optional[dict] = None  # fixed held-out batch the plateau rule scores the student on
    batch_size: int = 1
    num_workers: int = 0
    seed: int = 0
    taps: dict[str, str] = field(default_factory=dict)  # srp/feat alias -> the teacher's module name
    student_taps: dict[str, str] = field(default_factory=dict)  # alias -> the student's (empty: the same names)
    srp_layers: list[str] = field(default_factory=list)
    feat_channels: dict[str, tuple[int, int]] = field(default_factory=dict)
    tap_channels: dict[str, tuple[int, int]] = field(default_factory=dict)  # every tap: (teacher, student) channels
    teacher_as_real: bool = False
    disc_spec: Optional[dict] = None
    # builds each direction's discriminator: build(input_nc=..., **disc_spec); a caller may pass its own (the
    # ablation builds every arm's from the seed alone)
    build_discriminator: Callable[..., nn.Module] = build_discriminator
    checkpoint_every: int = 1000
    keep_last: int = 3
    log_every: int = 50
    sample_every: int = 1000
    amp: str = "none"
    channels_last: bool = False
    cache_teacher: bool = False  # keep the teacher's outputs per dataset index (data without random augmentation)
    # where they are kept (compressor.teacher_cache: on disk, memory-mapped); None: in memory for the process
    teacher_cache: Optional[Any] = None
    sample_batch: Optional[dict] = None
    resume_command: str = ""
    # called with the step about to run (1-based) before each step: what changes with the step alone and is saved in
    # the models' state (a quantised student's observers held from a given step), so a resumed run does the same
    before_step: Optional[Callable[[int], None]] = None


@dataclass
class TeacherOut:
    """The frozen teacher's output for one direction and the features it tapped (FP32)."""

    image: torch.Tensor
    features: dict[str, torch.Tensor]


class _Objective(nn.Module):
    """The trainable modules of one optimiser and the function that computes their loss in one forward.

    DistributedDataParallel wraps this: one forward and one backward per step, however many times the loss calls
    each network (cycle terms call both students twice; the discriminator sees real and fake). Frozen teachers
    and the other side's networks are not submodules, so DDP neither syncs nor broadcasts them.
    """

    def __init__(self, modules: dict[str, nn.Module], fn: Callable):
        super().__init__()
        self.nets = nn.ModuleDict(modules)
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


class Trainer:
    """The training loop over a :class:`TrainSetup`: models placed on the device, discriminators built where the GAN
    term needs them, one optimiser (and LR schedule) for the generator side and one for the discriminators.

    Checkpoints (:meth:`state_dict`, :meth:`save_checkpoint`) are written and read through
    :mod:`compressor.checkpoints`; metrics go to ``metrics.jsonl`` (and TensorBoard where installed), sample grids
    to ``samples/``.
    """

    def __init__(
        self,
        setup: TrainSetup,
        out_dir: Path,
        device: torch.device,
        progress: Optional[Callable[[int, int, dict], None]] = None,
    ):
        self.s = setup
        self.out = Path(out_dir)
        self.device = device
        self.progress = progress
        self.rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.ckpt_dir = self.out / "checkpoints"
        self.metrics_file = self.out / "metrics.jsonl"
        self.samples_dir = self.out / "samples"
        self.gan = GANLoss(setup.losses.gan.mode)
        kind = DATA_KINDS[setup.kind]
        self.use_gan = setup.losses.gan.weight > 0 and kind.gan_enabled(setup.teacher_as_real)
        cl = setup.channels_last and device.type == "cuda"
        self.memory_format = torch.channels_last if cl else torch.contiguous_format
        self._place_models(kind)
        self._build_discriminators()  # draws from the torch RNG: after the students, before the adapters
        self._build_objectives()
        self._build_optimisers()
        self._setup_precision()
        self._teacher_cache = setup.teacher_cache if setup.teacher_cache is not None else MemoryTeacherCache()
        self.step_kind = "computed"  # whether this step ran the teacher or read its outputs (the cache's timing)
        self.step_times: dict[str, list[float]] = {"computed": [0.0, 0], "cached": [0.0, 0]}
        self.teacher_seconds: dict[str, float] = {"computed": 0.0, "cached": 0.0}
        self.shares: dict[str, float] = {}  # each generator term's share of the gradient norm, at the last log step
        self.grad_norms: dict[str, float] = {}
        self.balance: dict[str, float] = {}  # term -> multiplier of its weight that keeps its gradient ratio
        self.converged = False  # schedule plateau: stopped because the held-out loss was flat
        self._val_refs: dict[str, torch.Tensor] = {}  # the teachers' outputs on the held-out batch
        self._low_share: dict[str, int] = {}
        self._share_warned: set[str] = set()
        self.step = 0
        self._stop = False
        self._ddp_ready = False

    def _place_models(self, kind: DataKind) -> None:
        """Every direction's student (training) and frozen teacher on the device; each direction learns its kind."""
        for d in self.s.directions:
            d.kind = kind
            d.student.to(self.device, memory_format=self.memory_format).train()
            if d.teacher is not None:
                d.teacher.to(self.device, memory_format=self.memory_format).eval().requires_grad_(False)

    def _build_discriminators(self) -> None:
        """A discriminator for each direction that has none while the GAN term is on; its input channels come
        from one probe forward of the student on the first sample."""
        s = self.s
        for d in s.directions:
            if self.use_gan and d.disc is None:
                probe = s.dataset[0][d.src][None].to(self.device)
                with torch.no_grad():
                    out_nc = d.student(probe).shape[1]
                d.disc = s.build_discriminator(
                    input_nc=d.kind.disc_input_channels(probe.shape[1], out_nc), **dict(s.disc_spec or {})
                )
            if d.disc is not None:
                d.disc.to(self.device, memory_format=self.memory_format).train()

    def _build_objectives(self) -> None:
        """The feature-distillation adapters, and the generator-side and discriminator-side objectives."""
        s = self.s
        self.adapters = None
        if s.losses.feat.weight > 0 and s.feat_channels:
            self.adapters = nn.ModuleDict(
                {d.name: FeatureAdapters(s.feat_channels) for d in s.directions if d.teacher is not None}
            ).to(self.device)
        self.term_states = self._build_term_states()
        g_modules = {f"student_{d.name}": d.student for d in s.directions}
        if self.adapters is not None:
            g_modules["adapters"] = self.adapters
        g_modules.update({f"term_{name}": state for name, state in self.term_states.items()})
        d_modules = {f"disc_{d.name}": d.disc for d in s.directions if d.disc is not None}
        self.g_objective: nn.Module = _Objective(g_modules, self._generator_loss)
        self.d_objective: Optional[nn.Module] = _Objective(d_modules, self._discriminator_loss) if d_modules else None

    def _build_term_states(self) -> dict[str, nn.ModuleDict]:
        """The trainable state of each running term whose row builds one (:attr:`compressor.terms.Term.state`),
        one per direction that has a teacher, by term name."""
        s, out = self.s, {}
        for name, build in STATEFUL_TERMS.items():
            spec = getattr(s.losses, name)
            if spec.weight > 0:
                dirs = [d for d in s.directions if d.teacher is not None or not spec.needs_teacher]
                out[name] = nn.ModuleDict({d.name: build(spec, dict(s.tap_channels)) for d in dirs}).to(self.device)
        return out

    def _build_optimisers(self) -> None:
        """Adam for each objective, and the learning-rate schedule (:mod:`compressor.schedule`)."""
        s = self.s
        betas = (s.beta1, 0.999)
        self.opt_g = torch.optim.Adam(list(self.g_objective.parameters()), lr=s.lr, betas=betas)
        self.opt_d = (
            torch.optim.Adam(self.d_objective.parameters(), lr=s.lr, betas=betas)
            if self.d_objective is not None
            else None
        )
        self.plateau: Optional[Plateau] = None
        if s.schedule == "plateau":
            p = s.plateau
            self.plateau = Plateau(p.every, p.patience, p.min_delta, p.factor, p.decays)
            sched = self.plateau.lr_lambda()
        elif s.schedule == "cosine":
            sched = cosine_lambda(s.steps)
        else:
            sched = linear_lambda(s.steps, s.decay_from)
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, sched)
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, sched) if self.opt_d else None

    def _setup_precision(self) -> None:
        """Mixed precision: the whole step (the frozen teacher's forward, the students' and discriminators' forward
        and backward, FP32 master weights) under autocast, on CUDA (bf16, fp16) and on CPUs with native bf16."""
        self.amp_dtype: Optional[torch.dtype] = None
        if self.device.type == "cuda":
            self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.s.amp)
        else:
            self.amp_dtype, note = cpu_amp_dtype(self.s.amp)
            if note and self.rank == 0:
                log.warning(note)
        self.teacher_amp_dtype: Optional[torch.dtype] = self.amp_dtype
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    def _wrap_distributed(self) -> None:
        """DistributedDataParallel around both objectives (after resume: DDP broadcasts rank 0's weights)."""
        if self.world == 1 or self._ddp_ready:
            return
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.g_objective = DistributedDataParallel(self.g_objective, device_ids=ids)
        if self.d_objective is not None:
            self.d_objective = DistributedDataParallel(self.d_objective, device_ids=ids)
        self._ddp_ready = True

    # ------------------------------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """Everything a resumed run needs: models, optimisers, schedulers, scaler, step and the random states."""
        return {
            "step": self.step,
            "students": {d.name: d.student.state_dict() for d in self.s.directions},
            "discriminators": {d.name: d.disc.state_dict() for d in self.s.directions if d.disc is not None},
            "adapters": self.adapters.state_dict() if self.adapters is not None else {},
            **({"terms": {k: v.state_dict() for k, v in self.term_states.items()}} if self.term_states else {}),
            "opt_g": self.opt_g.state_dict(),
            "sched_g": self.sched_g.state_dict(),
            "opt_d": self.opt_d.state_dict() if self.opt_d else {},
            "sched_d": self.sched_d.state_dict() if self.sched_d else {},
            "scaler": self.scaler.state_dict(),
            "balance": dict(self.balance),
            "plateau": self.plateau.state_dict() if self.plateau is not None else {},
            "converged": self.converged,
            **capture_rng(),
        }

    def load_state_dict(self, state: dict) -> None:
        for d in self.s.directions:
            d.student.load_state_dict(state["students"][d.name])
            if d.disc is not None and d.name in state["discriminators"]:
                d.disc.load_state_dict(state["discriminators"][d.name])
        if self.adapters is not None and state.get("adapters"):
            self.adapters.load_state_dict(state["adapters"])
        for name, module in self.term_states.items():
            if name in state.get("terms", {}):
                module.load_state_dict(state["terms"][name])
        self.opt_g.load_state_dict(state["opt_g"])
        self.sched_g.load_state_dict(state["sched_g"])
        if self.opt_d and state.get("opt_d"):
            self.opt_d.load_state_dict(state["opt_d"])
            self.sched_d.load_state_dict(state["sched_d"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.balance = {str(k): float(v) for k, v in (state.get("balance") or {}).items()}
        if self.plateau is not None and state.get("plateau"):
            self.plateau.load_state_dict(state["plateau"])
        self.converged = bool(state.get("converged", False))
        restore_rng(state)
        self.step = int(state["step"])

    def save_checkpoint(self) -> Optional[Path]:
        """Write :meth:`state_dict` as ``checkpoints/step_<step>.pt``, keeping the last ``keep_last`` (rank 0 only)."""
        if self.rank != 0:
            return None
        return write_checkpoint(self.state_dict(), self.ckpt_dir, self.step, self.s.keep_last)

    # ------------------------------------------------------------------------------------------ step

    def _autocast(self, dtype: Optional[torch.dtype] = None):
        dtype = dtype or self.amp_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def _to(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)

    def teacher_forward(self, d: Direction, x: torch.Tensor, batch: dict) -> Optional[TeacherOut]:
        """The frozen teacher's output and tapped features, in FP32 (bf16 autocast inside where enabled).

        With ``cache_teacher`` the result is kept per dataset index: valid only for data without random
        augmentation, which the recipe checks.
        """
        if d.teacher is None:
            return None
        t0 = time.perf_counter()
        indices = None
        if self.s.cache_teacher and "index" in batch:
            indices = [int(i) for i in batch["index"]]
            hit = self._teacher_cache.get(d.name, indices)
            if hit is not None:
                out = TeacherOut(self._to(hit[0]), {a: self._to(f) for a, f in hit[1].items()})
                self.teacher_seconds["cached"] += time.perf_counter() - t0
                return out
        self.step_kind = "computed"
        with torch.no_grad(), FeatureTaps(d.teacher, self.s.taps) as tap_t, self._autocast(self.teacher_amp_dtype):
            image = d.teacher(x)
        out = TeacherOut(image.float(), {a: f.float() for a, f in tap_t.features.items()})
        if indices is not None:
            self._teacher_cache.put(d.name, indices, out.image, out.features)
        self.teacher_seconds["computed"] += time.perf_counter() - t0
        return out

    def generator_terms(
        self, d: Direction, batch: dict
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, Optional[tuple]]:
        """One direction's generator loss terms (weighted), its output, and the (real, fake) pair for the
        discriminator: every term of :data:`compressor.terms.GENERATOR_TERMS` with a positive weight, whose teacher
        is there when it needs one."""
        s, L = self.s, self.s.losses
        terms: dict[str, torch.Tensor] = {}
        x = self._to(batch[d.src])
        t = self.teacher_forward(d, x, batch)
        with FeatureTaps(d.student, s.student_taps or s.taps) as tap_s:
            out_s = d.student(x)
        inputs = TermInputs(self, d, batch, x, out_s, tap_s.features, t)
        for name, fn in GENERATOR_TERMS.items():
            spec = getattr(L, name)
            if spec.weight <= 0 or (spec.needs_teacher and t is None):
                continue
            states = self.term_states.get(name)
            inputs.state = states[d.name] if states is not None and d.name in states else None
            value = fn(inputs, spec)
            if value is not None:
                terms[f"{d.name}/{name}"] = value.float() * (spec.weight * self.balance.get(name, 1.0))
        return terms, out_s, inputs.extras.get("pair")

    def cycle_terms(self, fakes: dict[str, torch.Tensor], batch: dict) -> dict[str, torch.Tensor]:
        """The terms across directions (:data:`compressor.terms.CROSS_TERMS`: the unpaired cycle loss), weighted."""
        terms: dict[str, torch.Tensor] = {}
        inputs = CrossInputs(self, fakes, batch)
        for name, fn in CROSS_TERMS.items():
            spec = getattr(self.s.losses, name)
            if spec.weight <= 0:
                continue
            value = fn(inputs, spec)
            if value is not None:
                terms[name] = value.float() * spec.weight
        return terms

    def _generator_loss(self, batch: dict):
        terms: dict[str, torch.Tensor] = {}
        fakes, pairs = {}, {}
        with self._autocast():
            for d in self.s.directions:
                t, fakes[d.name], pair = self.generator_terms(d, batch)
                terms.update(t)
                if pair is not None:
                    pairs[d.name] = pair
            terms.update(self.cycle_terms(fakes, batch))
        return sum(terms.values()), terms, pairs

    def _discriminator_loss(self, pairs: dict[str, tuple]) -> dict[str, torch.Tensor]:
        terms = {}
        with self._autocast():
            for d in self.s.directions:
                if d.name in pairs:
                    real, fake = pairs[d.name]
                    terms[f"{d.name}/disc"] = (
                        0.5 * (self.gan(d.disc(real), True) + self.gan(d.disc(fake.detach()), False)).float()
                    )
        return terms

    def term_weight(self, term: str) -> float:
        """The weight a generator term has now (``G/srp`` -> ``distill.losses.srp.weight``, times the multiplier
        that keeps ``srp.grad_ratio`` where one is set)."""
        name = term.rsplit("/", 1)[-1]
        spec = getattr(self.s.losses, name, None)
        return float(spec.weight) * self.balance.get(name, 1.0) if spec is not None else 1.0

    @property
    def balancing(self) -> bool:
        """Whether SRP's weight follows ``srp.grad_ratio`` (its gradient as a multiple of KD's)."""
        L = self.s.losses
        return bool(getattr(L.srp, "grad_ratio", None)) and L.srp.weight > 0 and L.kd.weight > 0

    def _rebalance(self, norms: dict[str, float]) -> None:
        """``srp.grad_ratio``: move SRP's weight multiplier toward the value that makes its gradient norm on the
        students ``grad_ratio`` times KD's (the first measurement sets it; later ones go half way, in log scale, so
        one noisy batch does not swing it)."""
        if not self.balancing:
            return
        n_srp = sum(v for k, v in norms.items() if k.rsplit("/", 1)[-1] == "srp")
        n_kd = sum(v for k, v in norms.items() if k.rsplit("/", 1)[-1] == "kd")
        if n_srp <= 0 or n_kd <= 0:
            return
        old = self.balance.get("srp")
        target = (old or 1.0) * self.s.losses.srp.grad_ratio * n_kd / n_srp
        self.balance["srp"] = target if old is None else math.sqrt(old * target)

    def term_grad_norms(self, terms: dict[str, torch.Tensor]) -> dict[str, float]:
        """L2 norm of each (weighted) term's gradient on the students' parameters, each term alone.

        One extra backward pass per term through the retained graph: called at ``log_every`` steps only.
        """
        params = [p for d in self.s.directions for p in d.student.parameters() if p.requires_grad]
        out = {}
        for k, v in terms.items():
            if not v.requires_grad:
                out[k] = 0.0
                continue
            grads = torch.autograd.grad(v, params, retain_graph=True, allow_unused=True)
            sq = sum(g.detach().float().pow(2).sum() for g in grads if g is not None)
            out[k] = float(torch.as_tensor(sq).sqrt())
        return out

    def _measure_shares(self, terms: dict[str, torch.Tensor]) -> None:
        norms = self.term_grad_norms(terms)
        self._rebalance(norms)
        total = sum(norms.values())
        self.shares = {k: (n / total if total > 0 else 0.0) for k, n in norms.items()}
        self.grad_norms = norms
        for k, share in self.shares.items():
            name = k.rsplit("/", 1)[-1]
            if not getattr(getattr(self.s.losses, name, None), "needs_teacher", False):
                continue  # only the distillation terms (those that carry the teacher) are watched
            self._low_share[k] = self._low_share.get(k, 0) + 1 if share < SHARE_FLOOR else 0
            if self._low_share[k] >= SHARE_PATIENCE and k not in self._share_warned and self.rank == 0:
                self._share_warned.add(k)
                log.warning(
                    "loss term %s: its share of the student's gradient norm stayed below %.0f%% (%.3g%% now) at %d "
                    "logged steps in a row; at weight %g it barely reaches the student (raise "
                    "distill.losses.%s.weight; shares per term are in metrics.jsonl)",
                    k,
                    100 * SHARE_FLOOR,
                    100 * share,
                    self._low_share[k],
                    self.term_weight(k),
                    name,
                )

    def generator_step(self, batch: dict, measure: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, tuple]]:
        """Every generator-side term (all directions, cycle) and one optimiser step; returns terms and GAN pairs.

        ``measure``: first record each term's gradient norm and share on the students (:meth:`term_grad_norms`).
        """
        g_loss, terms, pairs = self.g_objective(batch)
        self._check_finite(terms)
        if measure:
            self._measure_shares(terms)
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(g_loss).backward()
        self.scaler.unscale_(self.opt_g)
        self.scaler.step(self.opt_g)
        return terms, pairs

    def discriminator_step(self, pairs: dict[str, tuple]) -> dict[str, torch.Tensor]:
        """One PatchGAN update on the pairs the generator step produced."""
        if self.d_objective is None or not pairs:
            return {}
        terms = self.d_objective(pairs)
        self._check_finite(terms)
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler.scale(sum(terms.values())).backward()
        self.scaler.unscale_(self.opt_d)
        self.scaler.step(self.opt_d)
        self.sched_d.step()
        return terms

    def train_step(self, batch: dict) -> dict[str, torch.Tensor]:
        nxt = self.step + 1
        # gradient shares at the logged steps, on one process (a separate backward under DDP would need its hooks)
        measure = self.world == 1 and (
            nxt % self.s.log_every == 0 or nxt == self.s.steps or (nxt == 1 and self.balancing)
        )
        terms, pairs = self.generator_step(batch, measure)
        terms.update(self.discriminator_step(pairs))
        self.scaler.update()
        self.sched_g.step()
        return {k: v.detach() for k, v in terms.items()}

    def _check_finite(self, terms: dict[str, torch.Tensor]) -> None:
        if not terms:
            return
        vals = torch.stack([v.detach().float() for v in terms.values()])
        if bool(torch.isfinite(vals).all()):
            return
        bad = [k for k, v in terms.items() if not torch.isfinite(v.detach()).all()]
        last = list_checkpoints(self.ckpt_dir)
        kept = f"the last good checkpoint is {last[-1][1]}" if last else "no checkpoint was written yet"
        raise TrainingDiverged(
            f"loss term {bad[0]} became {float(terms[bad[0]].detach())} at step {self.step + 1}; "
            f"{kept} (lower distill.lr or the loss weights)"
        )

    # ------------------------------------------------------------------------------------------ loop

    def _loader(self) -> DataLoader:
        s = self.s
        sampler = ResumableSampler(
            len(s.dataset), s.seed, start=self.step * s.batch_size, rank=self.rank, world=self.world
        )
        # the loader's own generator: starting an iterator must not draw from the global torch RNG, or a resumed
        # run would differ from an uninterrupted one
        gen = torch.Generator().manual_seed(s.seed + self.step)
        return DataLoader(
            s.dataset,
            batch_size=s.batch_size,
            sampler=sampler,
            num_workers=s.num_workers,
            drop_last=True,
            pin_memory=self.device.type == "cuda",
            persistent_workers=s.num_workers > 0,
            generator=gen,
        )

    def _truncate_metrics(self) -> None:
        if self.rank != 0 or not self.metrics_file.exists():
            return
        keep = []
        for i, line in enumerate(read_text_bounded(self.metrics_file, 1 << 30).splitlines()):
            try:
                rec = json.loads(line)
            except (ValueError, RecursionError):
                continue  # a line cut by a crash
            if check(rec, MetricsLine, f"{self.metrics_file}: line {i + 1}")["step"] <= self.step:
                keep.append(line)
        atomic_write_text(self.metrics_file, "".join(l + "\n" for l in keep))

    def _on_sigint(self, *_):
        self._stop = True

    def _stop_requested(self) -> bool:
        """Ctrl-C here, or (several processes) the stop file the launching process writes on Ctrl-C
        (``COMPRESSOR_STOP_FILE``); every rank agrees, so that all of them stop after the same step."""
        stop = self._stop or bool(os.environ.get(STOP_ENV) and Path(os.environ[STOP_ENV]).exists())
        if self.world > 1:
            flag = torch.tensor([1.0 if stop else 0.0], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        return stop

    def fit(self, resume: bool = False) -> dict:
        """Train to ``steps`` (from the newest checkpoint with ``resume``); a summary of the run."""
        if resume:
            self._resume()
        self._wrap_distributed()
        self._truncate_metrics()
        if self.step >= self.s.steps or self.converged:
            return self.summary({})
        t0 = time.perf_counter()
        with self._sigint_stops():
            last = self._loop(t0)
        summary = self.summary(last, time.perf_counter() - t0)
        if self.s.cache_teacher and self.s.directions[0].teacher is not None:
            summary["teacher_cache"] = self.cache_timing()
            if self.rank == 0:
                log.info("%s", cache_timing_text(summary["teacher_cache"]))
        return summary

    def cache_timing(self) -> dict:
        """``distill.cache_teacher``: the mean step time and the teacher's share of it, in steps that ran the
        teacher and in steps that read its outputs back."""
        out = {}
        for kind in ("computed", "cached"):
            seconds, n = self.step_times[kind]
            if n:
                out[kind] = {
                    "steps": n,
                    "step_s": round(seconds / n, 5),
                    "teacher_share": round(self.teacher_seconds[kind] / seconds, 4) if seconds > 0 else None,
                }
        return out

    def _resume(self) -> None:
        """Load the newest readable checkpoint (none: start from step 0); one CheckpointError line when it does
        not fit this model or none of several is readable."""
        state = resumable_checkpoint(self.ckpt_dir)
        if state is not None:
            try:
                self.load_state_dict(state)
            except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as exc:
                # another architecture (student.width), or pieces of the wrong structure
                raise CheckpointError(
                    f"{self.ckpt_dir}: the checkpoint does not fit this model "
                    f"({str(exc).splitlines()[0][:160]}); pass --force to start over (the "
                    f"old checkpoints are kept aside)"
                ) from None
            log.info("resumed from step %d", self.step)
        elif list_checkpoints(self.ckpt_dir):
            raise CheckpointError(f"{self.ckpt_dir}: no readable checkpoint to resume from")

    @contextlib.contextmanager
    def _sigint_stops(self) -> Iterator[None]:
        """Ctrl-C (on rank 0, in the main thread) asks the loop to stop after the current step."""
        old_handler = None
        if self.rank == 0 and hasattr(signal, "SIGINT"):
            try:
                old_handler = signal.signal(signal.SIGINT, self._on_sigint)
            except ValueError:  # not the main thread
                old_handler = None
        try:
            yield
        finally:
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)

    def _loop(self, t0: float) -> dict[str, float]:
        """Steps until ``steps``; the mean of each term over the last logged window."""
        s = self.s
        sums: dict[str, float] = {}
        count = 0
        last: dict[str, float] = {}
        for batch in self._loader():
            if s.before_step is not None:
                s.before_step(self.step + 1)
            self.step_kind, t_step = "cached", time.perf_counter()
            terms = self.train_step(batch)
            self.step_times[self.step_kind][0] += time.perf_counter() - t_step
            self.step_times[self.step_kind][1] += 1
            self.step += 1
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            count += 1
            if self.step % s.log_every == 0 or self.step == s.steps:
                last = {k: v / count for k, v in sums.items()}
                if self.rank == 0:
                    self._log_metrics(last, t0)
                sums, count = {}, 0
            self._after_step(terms)
            if self.step >= s.steps or self.converged:
                break
        return last

    def _after_step(self, terms: dict[str, torch.Tensor]) -> None:
        """Progress, samples and checkpoints as scheduled; a requested stop writes a checkpoint and raises
        :class:`Interrupted`."""
        s = self.s
        if self.progress and self.rank == 0:
            shares = {f"share:{k}": v for k, v in self.shares.items()}
            self.progress(self.step, s.steps, {**{k: float(v) for k, v in terms.items()}, **shares})
        self._check_plateau()
        last = self.step == s.steps or self.converged
        if self.rank == 0 and (self.step % s.sample_every == 0 or last):
            self.write_samples()
        if self.step % s.checkpoint_every == 0 or last:
            self.save_checkpoint()
        if self._stop_requested():
            path = self.save_checkpoint()
            raise Interrupted(f"interrupted at step {self.step}; checkpoint written to {path}", s.resume_command)

    @torch.no_grad()
    def validation_score(self) -> float:
        """Mean L1 of the students' outputs (eval mode) on the fixed held-out batch, to the teacher's output where
        a direction has a teacher, else to the ground truth (the plateau rule's score)."""
        batch, total = self.s.val_batch, 0.0
        for d in self.s.directions:
            x = self._to(batch[d.src])
            if d.teacher is not None:
                ref = self._val_refs.get(d.name)
                if ref is None:
                    ref = self._val_refs[d.name] = d.teacher(x).float()
            elif d.tgt and d.tgt in batch:
                ref = self._to(batch[d.tgt])
            else:
                raise ValueError("distill.schedule plateau: a direction with neither a teacher nor a ground truth")
            was = d.student.training
            d.student.eval()
            total += float(nn.functional.l1_loss(d.student(x).float(), ref))
            d.student.train(was)
        return total

    def _check_plateau(self) -> None:
        """Schedule plateau: at its checks, score the students; lower the rate or stop when the loss is flat."""
        if self.plateau is None or not self.plateau.due(self.step) or self.s.val_batch is None:
            return
        score = self.validation_score()
        if self.world > 1:  # every rank takes the same decision: rank 0's score
            t = torch.tensor([score], dtype=torch.float64, device=self.device)
            dist.broadcast(t, 0)
            score = float(t.item())
        action = self.plateau.update(self.step, score)
        if action and self.rank == 0:
            lr = self.sched_g.get_last_lr()[0]
            log.info(
                "step %d: held-out L1 %.5f flat for %d checks; %s",
                self.step,
                score,
                self.plateau.patience,
                "converged, stopping"
                if action == "stop"
                else f"learning rate {lr:.3g} -> {lr * self.plateau.factor:.3g}",
            )
        if action == "stop":
            self.converged = True

    def _log_metrics(self, losses: dict, t0: float) -> None:
        rec = {
            "step": self.step,
            "lr": self.sched_g.get_last_lr()[0],
            "time_s": round(time.perf_counter() - t0, 3),
            **{k: round(v, 6) for k, v in losses.items()},
        }
        if self.shares:  # measured at this step: value above, weight, gradient norm and share of each term
            for k in self.shares:
                rec[f"weight:{k}"] = self.term_weight(k)
                rec[f"gradnorm:{k}"] = round(self.grad_norms[k], 6)
                rec[f"share:{k}"] = round(self.shares[k], 6)
        append_line(self.metrics_file, json.dumps(rec))
        if self._tb() is not None:
            for k, v in losses.items():
                self._tb().add_scalar(k, v, self.step)
            for k, v in self.shares.items():
                self._tb().add_scalar(f"share/{k}", v, self.step)

    _tb_writer = None

    def _tb(self):
        if self._tb_writer is False:
            return None
        if self._tb_writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb_writer = SummaryWriter(str(self.out / "tensorboard"))
            except Exception:  # tensorboard is optional
                self._tb_writer = False
                return None
        return self._tb_writer

    @torch.no_grad()
    def write_samples(self) -> Optional[Path]:
        batch = self.s.sample_batch
        if not batch:
            return None
        rows = []
        for d in self.s.directions:
            x = self._to(batch[d.src])
            was = d.student.training
            d.student.eval()
            cols = [x]
            if d.teacher is not None:
                cols.append(d.teacher(x))
            cols.append(d.student(x))
            d.student.train(was)
            if d.tgt in batch:
                cols.append(self._to(batch[d.tgt]))
            for i in range(x.shape[0]):
                rows.append(image_row([c[i] for c in cols]))
        width = max(r.shape[2] for r in rows)
        rows = [nn.functional.pad(r, (0, width - r.shape[2]), value=-1) for r in rows]
        grid = torch.cat(rows, dim=1)
        path = own_folder(self.samples_dir, create=False) / f"step_{self.step:08d}.png"  # never a link elsewhere
        buf = io.BytesIO()
        to_image(grid).save(buf, format="PNG")
        atomic_write_bytes(path, buf.getvalue())  # a full disk: one line (DiskWriteError), no cut PNG
        return path

    def summary(self, last: dict, seconds: float = 0.0) -> dict:
        checks = []
        for d in self.s.directions:
            checks.append(float(sum(p.detach().double().sum() for p in d.student.parameters())))
        ranks = [checks]
        if self.world > 1:
            gathered = [None] * self.world
            dist.all_gather_object(gathered, checks)
            ranks = gathered
        return {
            "step": self.step,
            "steps": self.s.steps,
            **({"converged": self.converged, "plateau": self.plateau.state_dict()} if self.plateau else {}),
            "world_size": self.world,
            "final_losses": last,
            "train_seconds": round(seconds, 2),
            "weight_checksums_per_rank": ranks,
        }


def cache_timing_text(timing: dict) -> str:
    """One log line: what the teacher cost a step before its outputs were cached and after."""
    parts = []
    for kind, what in (("computed", "running the teacher"), ("cached", "reading its outputs back")):
        t = timing.get(kind)
        if t and t.get("teacher_share") is not None:
            parts.append(f"{t['teacher_share']:.0%} of a {t['step_s'] * 1000:.0f} ms step {what} ({t['steps']} steps)")
    return "distill.cache_teacher: the teacher took " + ("; ".join(parts) or "no measured step")


def init_distributed() -> tuple[int, int]:
    """Join the process group torchrun set up (gloo on CPU, nccl on GPU); (rank, world)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
