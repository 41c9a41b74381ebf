"""Channel-width scaling: ``student, plan = make_student(teacher, width=0.25)``.

* ``rebuild`` re-instantiates a zoo model at ``round(ngf * width)``.
* ``prune`` uses Torch-Pruning's dependency graph to keep ``width`` of every prunable layer's channels, on any
  model (residual adds, concatenations, grouped/depthwise convs, ConvTranspose, norms). The output layer is
  never pruned.
* ``inherit`` starts the student from the teacher's strongest channels (L2 magnitude); ``scratch``
  re-initialises it.

Students are saved without pickle: ``student.safetensors`` plus ``student.json`` (the teacher spec and the
plan). ``load_student(dir)`` rebuilds the architecture exactly, without the teacher's weights.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn as nn
import torch_pruning as tp
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from .errors import CheckpointError, RecipeError
from .importance import curve_importance, measured_loss, output_sensitivity
from .io import atomic_write_bytes, atomic_write_text
from .models import (
    ZOO,
    apply_state_dict,
    build_from_spec,
    build_generator,
    init_weights,
    input_channels,
    size_multiple,
)
from .models import spec_of_model as teacher_spec_of
from .models.layers import (
    NORM_SIZE_WARNING,
    detach_hook_weights,
    frozen_modules,
    frozen_params,
    refreeze,
    remove_align_hooks,
    restore_reparam,
    strip_reparam,
    summarised_warnings,
)
from .models.ranges import RangeWrapper, select_output, tensor_leaves
from .schemas import StudentPlan, check, read_json

log = logging.getLogger(__name__)

PLAN_VERSION = 2
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)


def _example_for(model: nn.Module, example_input: Optional[torch.Tensor]) -> torch.Tensor:
    if example_input is not None:
        return example_input
    m = size_multiple(model)
    s = max(64, m)
    return torch.randn(1, input_channels(model), s, s)


def probe(model: nn.Module, x: torch.Tensor, handles: list) -> None:
    """One no-grad forward in eval mode (no BatchNorm statistics change) with the given hooks, then remove them."""
    was = model.training
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        model.train(was)
        for h in handles:
            h.remove()


class _AllOutputs:
    """While Torch-Pruning traces, a network that returns several tensors shows all of them (see
    :class:`~compressor.models.ranges.RangeWrapper`), so that the layers feeding the other outputs are pruned
    consistently with the ones they read from."""

    def __init__(self, model: nn.Module):
        self.wrappers = [m for m in model.modules() if isinstance(m, RangeWrapper) and m.output is not None]

    def __enter__(self):
        for m in self.wrappers:
            m.all_outputs = True
        return self

    def __exit__(self, *exc):
        for m in self.wrappers:
            m.all_outputs = False


def _producing_layers(model: nn.Module, tensors: list[torch.Tensor]) -> list[str]:
    """The conv/linear layers whose outputs reach ``tensors`` without passing another conv/linear layer (walking
    the autograd graph back from them)."""
    owner = {id(p): n for n, m in model.named_modules() if isinstance(m, _LAYERS) for p in m.parameters(False)}
    found: list[str] = []
    seen = set()
    stack = [t.grad_fn for t in tensors if t.grad_fn is not None]
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        seen.add(fn)
        nxt = [f for f, _ in fn.next_functions if f is not None]
        layers = [owner[id(f.variable)] for f in nxt if id(getattr(f, "variable", None)) in owner]
        if layers:
            found += [n for n in layers if n not in found]
        else:
            stack += nxt
    return found


def _output_layers(model: nn.Module, x: torch.Tensor, outputs: str = "named") -> list[str]:
    """The layers producing the output, never pruned: the last executed conv/linear layer of a network that returns
    one tensor; for one that returns several, the layers producing the named output (``outputs: named``) or every
    output (``outputs: all``)."""
    wrappers = _AllOutputs(model).wrappers
    if wrappers:
        was = model.training
        try:
            with torch.enable_grad(), _AllOutputs(model):
                out = model.eval()(x)
        finally:
            model.train(was)
        w = wrappers[0]
        named = select_output(out, w.output)
        found = _producing_layers(model, tensor_leaves(out) if outputs == "all" else [named])
        if found:
            return found
    order: list[str] = []
    probe(
        model,
        x,
        [
            m.register_forward_hook(lambda mod, i, o, n=n: order.append(n))
            for n, m in model.named_modules()
            if isinstance(m, _LAYERS)
        ],
    )
    if not order:
        raise RecipeError("student: the teacher has no conv or linear layer to prune")
    return [order[-1]]


_NORMS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.GroupNorm,
)


def _declared_channels(m: nn.Module) -> Optional[int]:
    if isinstance(m, nn.GroupNorm):
        return m.num_channels
    if isinstance(m, _NORMS):
        return m.num_features
    if isinstance(m, nn.PReLU):
        return m.num_parameters if m.num_parameters > 1 else None
    return None


def _has_state(m: nn.Module) -> bool:
    """Whether a norm's declared size matters (per-channel parameters or running statistics)."""
    if isinstance(m, nn.PReLU):
        return True
    return any(p is not None for p in (getattr(m, "weight", None), getattr(m, "running_mean", None)))


def seen_channels(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """The channels each norm layer and per-channel PReLU really receives in a forward pass."""
    seen: dict[str, int] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, i, n=n: seen.__setitem__(n, int(i[0].shape[1])))
        for n, m in model.named_modules()
        if _declared_channels(m) is not None
    ]
    if hooks:
        probe(model, x, hooks)
    return seen


def repair_norms(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Set the declared size of state-free norms (affine-free InstanceNorm, GroupNorm without affine) to the
    channels they really receive; PyTorch tolerates the disagreement, Torch-Pruning does not. Returns the names
    of the layers changed."""
    modules = dict(model.named_modules())
    fixed = []
    for name, c in seen_channels(model, x).items():
        m = modules[name]
        if _declared_channels(m) != c and not _has_state(m):
            if isinstance(m, nn.GroupNorm):
                m.num_channels = c
            else:
                m.num_features = c
            fixed.append(name)
    return fixed


fix_instance_norms = repair_norms  # the former name


def check_channels(model: nn.Module, x: torch.Tensor) -> None:
    """Raise a one-line error naming the first norm or PReLU whose parameters disagree with its input."""
    modules = dict(model.named_modules())
    for name, c in seen_channels(model, x).items():
        m = modules[name]
        if _declared_channels(m) != c and _has_state(m):
            raise _cannot_prune(
                name,
                m,
                f"it holds {_declared_channels(m)} per-channel parameters but receives {c} channels after pruning",
            )


def _cannot_prune(name: str, module: nn.Module, reason: str) -> RecipeError:
    err = RecipeError(
        f"student.method: prune cannot handle module {name!r} ({type(module).__name__}): {reason}; "
        f"leave it at full width with student.keep: [{name}]"
    )
    err.module = name  # type: ignore[attr-defined]  # read by _prune_keeping_grouped
    return err


def _first_failing_module(model: nn.Module, x: torch.Tensor) -> Optional[tuple[str, BaseException]]:
    """Run a forward pass; when it fails, the innermost module that was running, and the exception."""
    stack: list[str] = []
    hooks = []
    for n, m in model.named_modules():
        if n:
            hooks.append(m.register_forward_pre_hook(lambda mod, i, n=n: stack.append(n)))
            hooks.append(m.register_forward_hook(lambda mod, i, o: stack.pop() and None))
    try:
        probe(model, x, hooks)
    except Exception as exc:  # noqa: BLE001 - reported with the module's name
        return (stack[-1] if stack else ""), exc
    return None


def _unknown_layers(model: nn.Module) -> list[str]:
    """Modules that own parameters directly but have no Torch-Pruning pruner (e.g. modulated convolutions)."""
    known = (
        nn.Conv1d,
        nn.Conv2d,
        nn.Conv3d,
        nn.ConvTranspose2d,
        nn.Linear,
        nn.PReLU,
        nn.LayerNorm,
        nn.Embedding,
        nn.MultiheadAttention,
        nn.LSTM,
    ) + _NORMS
    out = []
    for n, m in model.named_modules():
        if any(True for _ in m.parameters(recurse=False)) and not isinstance(m, known):
            out.append(n)
    return out


class _SubpixelConv(nn.Module):
    """A conv feeding ``PixelShuffle(r)``, split into r² convs whose outputs are interleaved.

    Torch-Pruning cannot follow PixelShuffle's channel-to-space mapping; in this form the r² convs share their
    output channel index (through ``stack``), so pruning channel c removes the whole block c·r²…c·r²+r²−1.
    """

    def __init__(self, conv: nn.Conv2d, r: int):
        super().__init__()
        self.r = r
        self.convs = nn.ModuleList()
        for k in range(r * r):
            c = nn.Conv2d(
                conv.in_channels,
                conv.out_channels // (r * r),
                conv.kernel_size,
                conv.stride,
                conv.padding,
                conv.dilation,
                conv.groups,
                conv.bias is not None,
                conv.padding_mode,
            )
            c.weight.data = conv.weight.data[k :: r * r].clone()
            if conv.bias is not None:
                c.bias.data = conv.bias.data[k :: r * r].clone()
            self.convs.append(c)

    def forward(self, x):
        y = torch.stack([c(x) for c in self.convs], 2)
        b, ch, _, h, w = y.shape
        return y.view(b, ch, self.r, self.r, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, ch, h * self.r, w * self.r)

    def merged(self) -> nn.Conv2d:
        c0, rr = self.convs[0], self.r * self.r
        conv = nn.Conv2d(
            c0.in_channels,
            c0.out_channels * rr,
            c0.kernel_size,
            c0.stride,
            c0.padding,
            c0.dilation,
            c0.groups,
            c0.bias is not None,
            c0.padding_mode,
        )
        for k, c in enumerate(self.convs):
            conv.weight.data[k::rr] = c.weight.data
            if c.bias is not None:
                conv.bias.data[k::rr] = c.bias.data
        return conv


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def _split_pixel_shuffles(model: nn.Module, x: torch.Tensor) -> list[tuple[str, str, int]]:
    """Replace each (Conv2d -> PixelShuffle) pair by a prunable :class:`_SubpixelConv`; return what to undo."""
    shuffles = {n: m for n, m in model.named_modules() if isinstance(m, nn.PixelShuffle)}
    if not shuffles:
        return []
    produced: dict[int, str] = {}
    pairs = []
    hooks = []
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(lambda mod, i, o, n=n: produced.__setitem__(id(o), n)))
    for n, m in shuffles.items():
        hooks.append(
            m.register_forward_pre_hook(
                lambda mod, i, n=n: pairs.append((produced.get(id(i[0])), n, mod.upscale_factor))
            )
        )
    probe(model, x, hooks)
    records = []
    for conv_name, shuffle_name, r in pairs:
        if conv_name is None:
            raise RecipeError(
                f"student.method: prune supports PixelShuffle only right after a Conv2d "
                f"({shuffle_name} follows another operation)"
            )
        _set_module(model, conv_name, _SubpixelConv(model.get_submodule(conv_name), r))
        _set_module(model, shuffle_name, nn.Identity())
        records.append((conv_name, shuffle_name, r))
    return records


def _merge_pixel_shuffles(model: nn.Module, records) -> None:
    for conv_name, shuffle_name, r in records:
        _set_module(model, conv_name, model.get_submodule(conv_name).merged())
        _set_module(model, shuffle_name, nn.PixelShuffle(r))


class _NotInplace:
    """Turn off modules' ``inplace`` flags while Torch-Pruning traces: an in-place activation after a norm
    rewrites the norm's autograd node, so the norm drops out of the dependency graph and keeps its old size."""

    def __init__(self, model: nn.Module):
        self.flags = [(m, m.inplace) for m in model.modules() if isinstance(getattr(m, "inplace", None), bool)]

    def __enter__(self):
        for m, _ in self.flags:
            m.inplace = False

    def __exit__(self, *exc):
        for m, flag in self.flags:
            m.inplace = flag


def _modules_named(model: nn.Module, names: list[str], key: str) -> list[nn.Module]:
    modules = dict(model.named_modules())
    out = []
    for n in names:
        if n not in modules or not n:
            raise RecipeError(f"{key}: the model has no module named {n!r} (names as in model.named_modules())")
        out.append(modules[n])
    return out


def _prepare(
    model: nn.Module, x: torch.Tensor, keep: list[str], outputs: str = "named", frozen: tuple = (), quiet: bool = False
):
    """Make ``model`` traceable by Torch-Pruning: repair declared norm sizes, split PixelShuffle convs.

    Returns ``(shuffles, ignored)``: what to merge back afterwards, and the layers to leave at full width (the
    output layers, ``keep`` and the ``frozen`` modules)."""
    model.requires_grad_(True)  # tracing follows autograd; a frozen teacher copy would hide every layer
    repaired = repair_norms(model, x)
    if repaired:
        (log.debug if quiet else log.info)(
            "student: %d norm layers declared a size other than the channels they receive; set to the "
            "traced channels (%s)",
            len(repaired),
            ", ".join(repaired[:5]),
        )
    _modules_named(model, list(keep), "student.keep")  # names checked before the PixelShuffle split renames any
    ignored_names = _output_layers(model, x, outputs) + list(keep) + list(frozen)
    shuffles = _split_pixel_shuffles(model, x)
    ignored = _modules_named(model, ignored_names, "student.keep")
    return shuffles, ignored


class _Opaque:
    """Torch-Pruning pruners that make some layers opaque: their channels are never pruned, and neither are the
    channels of the layers feeding them or fed by them. Used for kept layers Torch-Pruning cannot follow and for
    frozen layers (a standard conv then gets a class of its own while tracing, as Torch-Pruning 1.6 keys
    customized pruners by type)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, keep: list[str], frozen: tuple = ()):
        unknown = set(_unknown_layers(model))
        kept = [n for n in keep if n in unknown or any(u.startswith(n + ".") for u in unknown)]
        self.model, self.x = model, x
        self.names = {model.get_submodule(n): n for n in kept}
        self.swapped = {model.get_submodule(n): n for n in frozen if model.get_submodule(n) not in self.names}
        self.classes: dict = {}

    def __enter__(self) -> dict:
        if not self.names and not self.swapped:
            return {}
        channels: dict[str, tuple[int, int]] = {}
        probe(
            self.model,
            self.x,
            [
                m.register_forward_hook(
                    lambda mod, i, o, n=n: channels.__setitem__(n, (int(i[0].shape[1]), int(o.shape[1])))
                )
                for m, n in {**self.names, **self.swapped}.items()
            ],
        )
        names = {**self.names, **self.swapped}

        class Opaque(tp.pruner.BasePruningFunc):
            def prune_out_channels(self, layer, idxs):  # also the in-channel function: every group touching it
                raise RuntimeError("a kept layer was pruned")  # counts as pruning an ignored layer's outputs

            prune_in_channels = prune_out_channels

            def get_out_channels(self, layer):
                return channels[names[layer]][1]

            def get_in_channels(self, layer):
                return channels[names[layer]][0]

        for m in self.swapped:
            self.classes[m] = cls = type(m)
            m.__class__ = type(f"Frozen{cls.__name__}", (cls,), {})
        pruner = Opaque()
        return {type(m): pruner for m in names}

    def __exit__(self, *exc):
        for m, cls in self.classes.items():
            m.__class__ = cls
        self.classes = {}


def _check_forward(model: nn.Module, x: torch.Tensor) -> None:
    failed = _first_failing_module(model, x)
    if failed:
        name, exc = failed
        reason = f"the pruned model fails there ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        if name:
            raise _cannot_prune(name, model.get_submodule(name), reason)
        raise RecipeError(
            f"student.method: prune produced a model whose forward pass fails outside any module "
            f"({reason}); leave the layers involved at full width with student.keep: [names]"
        )


def _prune(
    model: nn.Module,
    width: float,
    x: torch.Tensor,
    keep: Optional[list[str]] = None,
    round_to: Optional[int] = None,
    outputs: str = "named",
    counts: Optional[dict[str, int]] = None,
    scores: Optional[dict[str, list[float]]] = None,
) -> list:
    """Prune ``model`` in place to ``width`` (or to ``counts``: channels kept per group, see
    :func:`prunable_groups`); return Torch-Pruning's pruning history (JSON-serialisable). Each group keeps its
    strongest channels: by ``scores`` (per channel, by the group's root layer, see :func:`channel_scores`) where
    given, else by their weights' L2 magnitude.
    ``round_to``: every pruned layer keeps a multiple of this many channels (Torch-Pruning rounds down).
    Spectral/weight-norm layers are pruned as plain layers and re-parametrized again; frozen layers stay frozen
    and at full width."""
    frozen = frozen_params(model)
    reparam = strip_reparam(model)
    frozen_mods = _frozen_modules_of(model, frozen)
    history = _prune_plain(model, width, x, keep, round_to, outputs, frozen_mods, counts, scores)
    restore_reparam(model, reparam)
    refreeze(model, frozen)
    return history


def _frozen_modules_of(model: nn.Module, frozen: list[str]) -> tuple:
    """The modules whose own parameters are all in ``frozen`` (names recorded before tracing unfreezes them)."""
    if not frozen:
        return ()
    return tuple(frozen_modules(model))


def _prune_plain(
    model: nn.Module,
    width: float,
    x: torch.Tensor,
    keep: Optional[list[str]],
    round_to: Optional[int],
    outputs: str,
    frozen: tuple,
    counts: Optional[dict[str, int]] = None,
    scores: Optional[dict[str, list[float]]] = None,
) -> list:
    with _TracedPruner(model, width, x, keep, None if counts else round_to, outputs, frozen, scores) as pruner:
        if counts is None:
            pruner.step()
        else:
            _prune_counts(pruner, model, counts)
    history = [[str(n), bool(out), [int(i) for i in idxs]] for n, out, idxs in pruner.pruning_history()]
    return history


class _TracedPruner:
    """Torch-Pruning's pruner over ``model`` prepared as every pruning here needs it (norm sizes repaired,
    PixelShuffle convs split, output/kept/frozen layers ignored); on a clean exit the model is put back together
    and checked. Torch-Pruning's own failures become one line naming ``student.keep``. ``scores`` (per channel, by
    group root layer) rank the channels where given, the weights' L2 magnitude elsewhere."""

    def __init__(self, model, width, x, keep, round_to, outputs, frozen, scores=None):
        self.model, self.width, self.x, self.round_to, self.outputs, self.frozen = (
            model,
            width,
            x,
            round_to,
            outputs,
            frozen,
        )
        self.keep = list(keep or [])
        self.scores = scores or {}
        self.stack = contextlib.ExitStack()

    def __enter__(self) -> "tp.pruner.BasePruner":
        model, x, keep = self.model, self.x, self.keep
        _modules_named(model, keep, "student.keep")
        self.was = model.training
        unknown = [n for n in _unknown_layers(model) if not any(n == k or n.startswith(k + ".") for k in keep)]
        if unknown:  # Torch-Pruning would guess a pruning dimension for their bare parameters, or never finish
            raise _cannot_prune(
                unknown[0],
                model.get_submodule(unknown[0]),
                "it uses its own parameters outside the standard layers Torch-Pruning knows",
            )
        self.shuffles, ignored = _prepare(model, x, keep, self.outputs, self.frozen)
        if self.round_to:
            _check_round_to(model, self.width, self.round_to, ignored)
        self.stack = contextlib.ExitStack()
        try:
            for c in (torch.enable_grad(), _NotInplace(model), _AllOutputs(model)):
                self.stack.enter_context(c)
            opaque = self.stack.enter_context(_Opaque(model, x, keep, self.frozen))
            return tp.pruner.BasePruner(
                model,
                x,
                importance=_ScoredImportance({model.get_submodule(n): v for n, v in self.scores.items()}),
                pruning_ratio=1.0 - self.width,
                ignored_layers=ignored,
                global_pruning=False,
                customized_pruners=opaque or None,
                round_to=self.round_to,
                output_transform=tensor_leaves,
            )
        except Exception as exc:  # noqa: BLE001 - Torch-Pruning raises many types
            self.stack.close()
            raise _tp_failed(exc) from None

    def __exit__(self, kind, exc, tb) -> bool:
        self.stack.close()
        if kind is not None:
            if isinstance(exc, RecipeError):
                return False
            raise _tp_failed(exc) from None
        _merge_pixel_shuffles(self.model, self.shuffles)
        self.model.train(self.was)
        _check_forward(self.model, self.x)
        repair_norms(self.model, self.x)
        check_channels(self.model, self.x)
        return False


class _ScoredImportance(tp.importance.Importance):
    """Torch-Pruning's importance for a pruner: given scores for a group's root layer (one per channel), else the
    L2 magnitude of the group's weights (Torch-Pruning's default)."""

    def __init__(self, scores: dict[nn.Module, list[float]]):
        self.scores = scores
        self.magnitude = tp.importance.MagnitudeImportance(p=2)

    def __call__(self, group) -> Optional[torch.Tensor]:
        root = group[0].dep.target.module
        given = self.scores.get(root)
        idxs = list(group[0].idxs)
        if given is None or len(given) <= max(idxs, default=-1):
            return self.magnitude(group)
        return torch.tensor(given, dtype=torch.float64)[idxs]


def _tp_failed(exc: BaseException) -> RecipeError:
    reason = f"Torch-Pruning failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
    return RecipeError(
        f"student.method: prune: {reason}; leave the layers involved at full width with student.keep: [names]"
    )


@dataclass
class PruneGroup:
    """Channels Torch-Pruning removes together: one layer's outputs and every layer reading them (residual adds
    and U-Net skips couple several layers into one group)."""

    name: str  # the group's root layer: the first layer whose outputs it sets
    channels: int
    outs: list[str]  # layers whose output channels the group sets
    ins: list[str]  # layers whose input channels the group sets
    importance: list[float]  # per channel: Torch-Pruning's group L2 magnitude, normalised to mean 1 in the group
    kind: str = "magnitude"  # or "sensitivity": the output change replacing a channel alone by its mean makes


def kept_fraction(
    teacher: nn.Module,
    widths: dict[str, int],
    example_input: Optional[torch.Tensor] = None,
    keep: Optional[list[str]] = None,
    outputs: str = "named",
) -> float:
    """The fraction of the prunable groups' channels a per-layer student with ``widths`` keeps (what its plan records
    as its width; a group not named keeps all its channels)."""
    groups = prunable_groups(teacher, example_input, keep, outputs)
    total = sum(g.channels for g in groups)
    kept = sum(min(int(widths.get(g.name, g.channels)), g.channels) for g in groups)
    return kept / total if total else 1.0


def _pruning_groups(pruner, model: nn.Module) -> list[tuple[str, Any]]:
    """``(root layer name, group)`` for every group the pruner would shrink, grouped convolutions left out (they
    stay at full width in a per-layer student)."""
    names = {m: n for n, m in model.named_modules()}
    out = []
    for group in pruner.DG.get_all_groups(
        ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types
    ):
        mods = [d.target.module for d, _ in group]
        if any(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.groups > 1 for m in mods):
            continue
        root = group[0].dep.target.module
        if root in names:
            out.append((names[root], group))
    return out


def _group_layers(pruner, names: dict[nn.Module, str], group) -> tuple[list[str], list[str]]:
    outs: list[str] = []
    ins: list[str] = []
    for dep, _ in group:
        m = dep.target.module
        if not isinstance(m, _LAYERS) or m not in names:
            continue
        side = outs if pruner.DG.is_out_channel_pruning_fn(dep.handler) else ins
        if names[m] not in side:
            side.append(names[m])
    return outs, ins


def _prune_counts(pruner, model: nn.Module, counts: dict[str, int]) -> None:
    """Keep ``counts[name]`` channels of each named group (its strongest by the pruner's importance); the indices
    are chosen on the unpruned model for every group first, as Torch-Pruning's own step does."""
    groups = dict(_pruning_groups(pruner, model))
    bad = [n for n in counts if n not in groups]
    if bad:
        raise RecipeError(f"student.widths: {bad[0]!r} is not a prunable group of the teacher")
    todo = []
    for name, group in groups.items():
        if name not in counts:
            continue
        full, k = len(group[0].idxs), int(counts[name])
        if not 1 <= k <= full:
            raise RecipeError(f"student.widths: {name!r} keeps {k} channels; it has {full}")
        if k < full:
            order = torch.argsort(pruner.estimate_importance(group).cpu())
            todo.append((group[0].dep.target.module, group[0].dep.handler, order[: full - k].tolist()))
    for module, fn, idxs in todo:
        pruner.DG.get_pruning_group(module, fn, idxs).prune()


def prunable_groups(
    teacher: nn.Module,
    example_input: Optional[torch.Tensor] = None,
    keep: Optional[list[str]] = None,
    outputs: str = "named",
    images: Optional[torch.Tensor] = None,
    counts: Optional[Callable[[int], list[int]]] = None,
) -> list[PruneGroup]:
    """The channel groups a per-layer student may set one by one (on a copy of ``teacher``; the output layers,
    ``keep`` and grouped convolutions stay at full width), with each channel's importance: Torch-Pruning's group L2
    magnitude (normalised to mean 1 in the group), or, given training ``images``, the output change replacing it by
    its mean makes (:func:`compressor.importance.output_sensitivity`, comparable across groups). A pruned student
    keeps each group's channels of highest importance (:func:`channel_scores` passes the sensitivity on). Given
    ``counts`` too (the channel counts a group of so many channels may keep), each group's importance becomes its
    share of the output loss measured keeping each of those counts of its most sensitive channels (kind
    ``measured``: :func:`compressor.importance.measured_loss`); the channels ranked stay the sensitivity's."""
    model = copy.deepcopy(teacher)
    remove_align_hooks(model)
    detach_hook_weights(model)
    frozen = _frozen_modules_of(model, frozen_params(model))
    strip_reparam(model)
    x = _example_for(model, example_input)
    imp = tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean", normalizer="mean")
    found: list[PruneGroup] = []
    readers: dict[str, list[tuple[str, list[int]]]] = {}
    with summarised_warnings("student: tracing", handled=(NORM_SIZE_WARNING,)):
        with _TracedPruner(model, 0.5, x, keep, None, outputs, frozen) as pruner:
            names = {m: n for n, m in model.named_modules()}  # as prepared (PixelShuffle convolutions split)
            for name, group in _pruning_groups(pruner, model):
                outs, ins = _group_layers(pruner, names, group)
                v = imp(group)
                found.append(
                    PruneGroup(name, len(group[0].idxs), outs, ins, [] if v is None else [float(a) for a in v])
                )
                readers[name] = _readers(pruner, names, group)
            if images is not None and found:
                _sensitivity(model, found, readers, images)
                if counts is not None and all(g.kind == "sensitivity" for g in found):
                    _measured(model, found, readers, images, counts)
    return found


def _readers(pruner, names: dict[nn.Module, str], group) -> list[tuple[str, list[int]]]:
    """Each layer reading the group's channels, with its input channel for each of the group's channels (in the
    root's order); a reader that sees a channel several times (a Linear after a flatten) is left out."""
    n = len(group[0].idxs)
    out = []
    for dep, idxs in group:
        m = dep.target.module
        if isinstance(m, _LAYERS) and m in names and not pruner.DG.is_out_channel_pruning_fn(dep.handler):
            if len(idxs) == n:
                out.append((names[m], [int(i) for i in idxs]))
    return out


def _sensitivity(model: nn.Module, found: list[PruneGroup], readers: dict, images: torch.Tensor) -> None:
    """Replace the magnitudes by the output sensitivity (all groups, or none: the two do not compare)."""
    sens = output_sensitivity(model, readers, images)
    _set_importance(found, sens, "sensitivity", "output sensitivity", "magnitude")


def _set_importance(found: list[PruneGroup], scores: dict, kind: str, what: str, kept: str) -> None:
    """Every group's importance from ``scores`` (by group), or none of them, with a warning naming the first group
    without one and the ``kept`` importance that ranks instead."""
    missing = [g.name for g in found if g.name not in scores]
    if missing:
        log.warning("student: no %s for group %r (no layer reading it ran); ranking by %s", what, missing[0], kept)
        return
    for g in found:
        g.importance = [float(v) for v in scores[g.name]]
        g.kind = kind


def _measured(
    model: nn.Module,
    found: list[PruneGroup],
    readers: dict,
    images: torch.Tensor,
    counts: Callable[[int], list[int]],
) -> None:
    """Replace each group's sensitivity by its share of the output loss measured keeping each of ``counts``
    (and none) of its most sensitive channels, the rest of the network whole."""
    orders = {g.name: sorted(range(g.channels), key=lambda i: (-g.importance[i], i)) for g in found}
    drops = {}
    for g in found:
        kept = sorted({0, *(c for c in counts(g.channels) if 0 <= c < g.channels)})
        drops[g.name] = {c: orders[g.name][c:] for c in kept}
    losses = measured_loss(model, readers, images, drops)
    shares = {g.name: curve_importance(orders[g.name], losses[g.name]) for g in found if g.name in losses}
    _set_importance(found, shares, "measured", "measured loss", "sensitivity")


def channel_scores(
    teacher: nn.Module,
    images: torch.Tensor,
    example_input: Optional[torch.Tensor] = None,
    keep: Optional[list[str]] = None,
    outputs: str = "named",
) -> dict[str, list[float]]:
    """Per group (by root layer), per channel: the teacher's output sensitivity on ``images``, the scores a student
    pruned with ``student.importance: sensitivity`` keeps its channels by (empty where it could not be measured:
    the magnitude then chooses, as it says in a warning)."""
    groups = prunable_groups(teacher, example_input, keep, outputs, images=images)
    return {g.name: g.importance for g in groups if g.kind == "sensitivity"}


def kept_at(channels: int, width: float, round_to: Optional[int] = None) -> int:
    """The channels a layer of ``channels`` keeps in a uniform student at ``width`` (``student.width``: Torch-
    Pruning's count, rounded down to ``round_to``, never below it nor above the layer's)."""
    kept = channels - int(channels * (1.0 - width))
    if round_to and round_to > 1:
        kept = max(round_to, kept - kept % round_to)
    return min(max(1, kept), channels)


def _check_round_to(model: nn.Module, width: float, round_to: int, ignored: list) -> None:
    """One line instead of an emptied layer: a pruned layer whose kept channels would round down to zero."""
    skip = {id(sub) for m in ignored for sub in m.modules()}
    for name, m in model.named_modules():
        if id(m) in skip or not isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            continue
        ch = m.out_features if isinstance(m, nn.Linear) else m.out_channels
        if kept_at(ch, width) < round_to:
            raise RecipeError(
                f"student.round_channels: {round_to} would leave layer {name!r} ({ch} channels at width {width}) "
                f"with none; use a smaller multiple, a larger width, or student.keep: [{name}]"
            )


def _replay(model: nn.Module, history: list, x: torch.Tensor, keep: Optional[list[str]] = None) -> None:
    """Redo a pruning on a freshly built teacher architecture with Torch-Pruning's own history replay."""

    was = model.training
    frozen = frozen_params(model)
    reparam = strip_reparam(model)
    frozen_mods = _frozen_modules_of(model, frozen)
    shuffles, _ = _prepare(model, x, list(keep or []), "named", frozen_mods, quiet=True)  # said when slimmed
    modules = dict(model.named_modules())
    for entry in history:
        if not entry[0] or entry[0] not in modules:
            raise CheckpointError(
                f"student.json: the pruning history names module {entry[0]!r}, which the architecture does not have"
            )
    opaque = _Opaque(model, x, list(keep or []), frozen_mods)
    with torch.enable_grad(), _NotInplace(model), _AllOutputs(model), opaque as pruners:
        dg = tp.DependencyGraph().build_dependency(
            model, example_inputs=x, customized_pruners=pruners or None, output_transform=tensor_leaves
        )
        try:
            dg.load_pruning_history([list(e) for e in history])
        except (AttributeError, KeyError, IndexError, ValueError, TypeError, RuntimeError) as exc:
            raise CheckpointError(
                f"student.json: the pruning history does not replay on this architecture "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"
            ) from None
    _merge_pixel_shuffles(model, shuffles)
    model.train(was)
    repair_norms(model, x)
    restore_reparam(model, reparam)
    refreeze(model, frozen)


def _reinit(model: nn.Module) -> None:
    """Fresh weights (``student.init: scratch``); frozen layers (constants such as EDSR's MeanShift) keep theirs,
    spectral/weight-norm layers are re-initialised under their re-parametrization."""
    if getattr(model, "arch", None) in ZOO:
        init_weights(model)
        return
    frozen = frozen_params(model)
    keep = {id(model.get_submodule(n)) for n in _frozen_modules_of(model, frozen)}
    reparam = strip_reparam(model)
    for m in model.modules():
        if hasattr(m, "reset_parameters") and m is not model and id(m) not in keep:
            m.reset_parameters()
    restore_reparam(model, reparam)
    refreeze(model, frozen)


def make_student(
    teacher: nn.Module,
    width: float,
    method: str = "auto",
    init: str = "inherit",
    example_input: Optional[torch.Tensor] = None,
    keep: Optional[list[str]] = None,
    input_range: Optional[tuple[float, float]] = None,
    output_range: Optional[tuple[float, float]] = None,
    round_to: Optional[int] = None,
    outputs: str = "named",
    widths: Optional[dict[str, int]] = None,
    images: Optional[torch.Tensor] = None,
) -> tuple[nn.Module, dict]:
    """Return ``(student, plan)`` for a teacher at a channel ``width`` in (0, 1].

    ``widths`` (a per-layer student, method prune): the channels each group of :func:`prunable_groups` keeps,
    by its root layer's name; groups not named keep all theirs, and ``width`` is then only recorded.

    ``keep`` names modules left at full width (Torch-Pruning's ignored layers). ``input_range`` and
    ``output_range`` (the teacher's native value ranges) are recorded in the plan; the student keeps them.
    ``round_to`` (``student.round_channels``) makes every slimmed layer's channel count a multiple of it: the zoo's
    ``ngf`` is rounded to the nearest multiple, pruned layers are rounded down (never below ``round_to``).
    ``outputs`` (``student.outputs``), for a teacher that returns several tensors (``teacher.output``): ``named``
    leaves only the named output's layers at full width, ``all`` every output's, so the network inside the student
    (``student.model``) returns the teacher's whole structure with the same shapes. ``images`` (training inputs,
    ``student.importance: sensitivity``): an inheriting student keeps each group's channels the teacher's output is
    most sensitive to (:func:`channel_scores`), not those of largest weights. Warnings raised meanwhile (by the
    teacher's code, by Torch-Pruning) are logged once each, with their count."""
    with summarised_warnings("student: slimming", handled=(NORM_SIZE_WARNING,)):
        x = _example_for(teacher, example_input)
        return _make_student(
            teacher, width, method, init, x, keep, input_range, output_range, round_to, outputs, widths, images
        )


def _inherit_rebuilt(
    student: nn.Module, teacher: nn.Module, fraction: float, width: float, x: torch.Tensor, scores: Optional[dict]
) -> None:
    """A rebuilt zoo student takes the channels a pruned copy of the teacher keeps at ``fraction``."""
    detach_hook_weights(teacher)
    pruned = copy.deepcopy(teacher)
    remove_align_hooks(pruned)
    _prune(pruned, fraction, x, scores=scores)
    state = pruned.state_dict()
    own = student.state_dict()
    bad = [k for k in own if k not in state or state[k].shape != own[k].shape]
    if bad:
        raise RecipeError(
            f"student.width: {width} does not split every layer evenly ({bad[0]}); "
            f"use student.method: prune, or a width such as 0.25 or 0.5"
        )
    student.load_state_dict(state)


def _check_choices(width: float, method: str, init: str, outputs: str) -> None:
    if not 0 < width <= 1:
        raise RecipeError(f"student.width: must be in (0, 1], got {width}")
    if method not in ("auto", "rebuild", "prune"):
        raise RecipeError(f"student.method: unknown method {method!r}")
    if init not in ("inherit", "scratch"):
        raise RecipeError(f"student.init: unknown init {init!r}")
    if outputs not in ("named", "all"):
        raise RecipeError(f"student.outputs: expected named or all, got {outputs!r}")


def _make_student(
    teacher, width, method, init, x, keep, input_range, output_range, round_to, outputs, widths, images
) -> tuple[nn.Module, dict]:
    _check_choices(width, method, init, outputs)
    zoo = getattr(teacher, "arch", None) in ZOO
    if method == "auto":
        method = "rebuild" if zoo and widths is None else "prune"
    if method == "rebuild" and not zoo:
        raise RecipeError("student.method: rebuild works for zoo teachers only; use prune for imported models")
    if method == "rebuild" and widths is not None:
        raise RecipeError("student.method: per-layer widths prune the teacher; use student.method: prune (or auto)")
    spec = teacher_spec_of(teacher)
    plan: dict[str, Any] = {"version": PLAN_VERSION, "method": method, "width": width, "init": init, "teacher": spec}
    if keep:
        if method == "rebuild":
            raise RecipeError("student.keep: works with student.method: prune only")
        plan["keep"] = list(keep)
    for name, rng in (("input_range", input_range), ("output_range", output_range)):
        if rng is not None:
            plan[name] = [float(v) for v in rng]
    round_to = int(round_to) if round_to and round_to > 1 else None  # 1: every count is a multiple already
    if round_to:
        plan["round_channels"] = round_to
    if outputs != "named":
        plan["outputs"] = outputs
    if frozen_params(teacher):  # frozen layers (EDSR's MeanShift): frozen again in a rebuilt student
        plan["frozen"] = frozen_params(teacher)
    scores = None
    if images is not None and init == "inherit":  # which channels the student inherits
        scores = channel_scores(teacher, images, x, keep, outputs)
        plan["importance"] = "sensitivity" if scores else "magnitude"
    if method == "rebuild":
        kwargs = dict(spec["kwargs"])
        full = kwargs["ngf"]
        kwargs["ngf"] = max(1, round(full * width))
        if round_to:
            kwargs["ngf"] = min(full, max(round_to, round_to * round(full * width / round_to)))
        student = build_generator(spec["arch"], init="normal", **kwargs)
        plan["ngf"] = kwargs["ngf"]
        if init == "inherit":
            _inherit_rebuilt(student, teacher, kwargs["ngf"] / full, width, x, scores)
    elif widths is not None:
        detach_hook_weights(teacher)
        student = copy.deepcopy(teacher)
        remove_align_hooks(student)
        plan["widths"] = {str(k): int(v) for k, v in widths.items()}
        plan["history"] = _prune(student, width, x, keep, None, outputs, counts=plan["widths"], scores=scores)
        if init == "scratch":
            _reinit(student)
    else:
        detach_hook_weights(teacher)
        student, plan["history"], found = _prune_keeping_grouped(teacher, width, x, keep, round_to, outputs, scores)
        if found:
            plan["keep"] = list(keep or []) + found
        if init == "scratch":
            _reinit(student)
    student.train(teacher.training)
    if spec:
        student.compressor_spec = spec
    plan["example_shape"] = list(x.shape)
    return student, plan


def _grouped_convs(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.groups > 1}


def _prune_keeping_grouped(
    teacher: nn.Module,
    width: float,
    x: torch.Tensor,
    keep: Optional[list[str]],
    round_to: Optional[int],
    outputs: str,
    scores: Optional[dict[str, list[float]]] = None,
) -> tuple[nn.Module, list, list[str]]:
    """Prune a copy of ``teacher``; return ``(student, history, found)``.

    A grouped or depthwise convolution whose groups are tied to channels nothing can shrink (the image's three, as
    light-enhancement and mobile nets start with a depthwise-separable block on the input) makes the pruned model
    fail at that layer. Such a layer is found here, left at full width (``found``, logged and recorded in the plan's
    ``keep`` so the student replays), and the pruning redone from a fresh copy: at most once per grouped layer."""
    grouped = _grouped_convs(teacher)
    found: list[str] = []
    while True:
        student = copy.deepcopy(teacher)
        remove_align_hooks(student)
        try:
            history = _prune(student, width, x, list(keep or []) + found, round_to, outputs, scores=scores)
        except RecipeError as exc:
            name = getattr(exc, "module", None)
            if name not in grouped or name in found or name in (keep or []):
                raise
            found.append(name)
            continue
        if found:
            log.info(
                "student: %d grouped convolution%s tied to channels that cannot shrink (the image's) left at full "
                "width: %s",
                len(found),
                "" if len(found) == 1 else "s",
                ", ".join(found),
            )
        return student, history, found


REPLAY_SIDE = 512  # a multiple of every zoo size multiple (4 to 256)


def replay_shape(shape: list[int]) -> list[int]:
    """The example input a pruning history is replayed with: channel pruning does not depend on the image
    size, so a plan recorded at 2048² replays at :data:`REPLAY_SIDE`² and batch 1 (bounded memory)."""
    n, c, h, w = shape
    if h * w > REPLAY_SIDE * REPLAY_SIDE:
        h = w = REPLAY_SIDE
    return [1, c, h, w]


def _first_image(out: Any) -> Optional[torch.Tensor]:
    leaves = tensor_leaves(out)
    return leaves[0] if leaves else None


def other_student(
    teacher: nn.Module, spec: dict, example_input: Optional[torch.Tensor] = None, allow_import: Optional[bool] = None
) -> tuple[nn.Module, dict]:
    """Return ``(student, plan)`` for a student of another architecture (``student.arch`` / ``student.import``):
    ``spec`` is ``{"arch"|"import": ..., "kwargs": {...}}`` as :func:`build_from_spec` takes it. The student works
    in the toolkit's [-1, 1] range (no wrapper), starts from its own initialisation, and must return an image of
    the teacher's shape (one :class:`RecipeError` line if not)."""
    x = _example_for(teacher, example_input)
    student = build_from_spec(spec, init="normal", allow_import=allow_import, source="student")
    if not isinstance(student, nn.Module):
        raise RecipeError(f"student.import: {spec.get('import')} returned {type(student).__name__}, not an nn.Module")
    training = teacher.training
    with torch.no_grad():
        want = teacher.eval()(x)
        try:
            got = student.eval()(x)
        except Exception as exc:  # noqa: BLE001 - the user's network on the teacher's input
            first = str(exc).splitlines()[0][:200] if str(exc) else ""
            raise RecipeError(
                f"student.{'arch' if spec.get('arch') else 'import'}: the student cannot run on the teacher's input "
                f"{tuple(x.shape)} ({type(exc).__name__}: {first})"
            ) from None
    got = got if isinstance(got, torch.Tensor) else _first_image(got)
    if got is None or tuple(got.shape) != tuple(want.shape):
        shown = tuple(got.shape) if got is not None else "no tensor"
        raise RecipeError(
            f"student.{'arch' if spec.get('arch') else 'import'}: the student returns {shown} for an input of "
            f"{tuple(x.shape)}, the teacher {tuple(want.shape)}; their outputs must have the same shape"
        )
    student.train(training)
    teacher.train(training)
    tspec = teacher_spec_of(teacher)
    plan: dict[str, Any] = {
        "version": PLAN_VERSION,
        "method": "arch",
        "student": dict(spec),
        "teacher": tspec,
        "example_shape": list(x.shape),
    }
    student.compressor_spec = dict(spec)
    return student, plan


def student_from_plan(plan: dict, allow_import: Optional[bool] = None) -> nn.Module:
    """Rebuild the student's architecture (random weights) from a plan (an imported architecture needs consent:
    see :func:`build_from_spec`)."""
    spec = plan.get("teacher") if isinstance(plan, dict) else None
    if not spec or not isinstance(spec, dict):
        raise CheckpointError("student.json: the plan has no teacher spec to rebuild from")
    check(plan, StudentPlan, "student.json")  # a plan from elsewhere: bounded example_shape, typed history
    if plan.get("method") == "arch":
        own = plan.get("student")
        if not isinstance(own, dict):
            raise CheckpointError("student.json: a student of another architecture needs its 'student' spec")
        model = build_from_spec(own, init=None, allow_import=allow_import, source="student.json")
        model.compressor_spec = dict(own)
        return model
    if plan.get("method") == "rebuild":
        kwargs = dict(spec.get("kwargs") or {}, ngf=plan.get("ngf"))
        ranges = {k: spec[k] for k in ("input_range", "output_range", "residual") if k in spec}
        return build_from_spec({"arch": spec.get("arch"), "kwargs": kwargs, **ranges}, init=None, source="student.json")
    history = plan.get("history")
    if history is None and "groups" in plan:  # version 1: one root group per entry, the same information
        try:
            history = [[g["module"], g["fn"] == "prune_out_channels", g["idxs"]] for g in plan["groups"]]
        except (TypeError, KeyError):
            history = None
    if not isinstance(history, list) or "example_shape" not in plan:
        raise CheckpointError(
            "student.json: a pruned student's plan needs 'history' and 'example_shape'; "
            "this file has neither (save the student again)"
        )
    model = build_from_spec(spec, init=None, allow_import=allow_import, source="student.json")
    with summarised_warnings("student: rebuilding", handled=(NORM_SIZE_WARNING,)):
        _replay(model, history, torch.randn(*replay_shape(plan["example_shape"])), plan.get("keep"))
    if isinstance(plan.get("frozen"), list):
        refreeze(model, [str(n) for n in plan["frozen"]])
    if spec:
        model.compressor_spec = spec
    return model


def save_student(student: nn.Module, plan: dict, out_dir: str | Path, extra: Optional[dict] = None) -> Path:
    """Write ``student.safetensors`` and ``student.json`` atomically into ``out_dir``."""

    if not plan.get("teacher"):
        raise ValueError(
            "save_student needs a plan with a teacher spec: set teacher.compressor_spec = "
            "{'import': 'module:factory', 'kwargs': {...}} before make_student"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in student.state_dict().items()}
    atomic_write_bytes(out / "student.safetensors", st_save(state))
    meta = dict(plan)
    if extra:
        meta.update(extra)
    atomic_write_text(out / "student.json", json.dumps(meta, indent=1))
    return out


def load_student(path: str | Path, allow_import: Optional[bool] = None) -> nn.Module:
    """Load a student saved by :func:`save_student`: rebuild from the plan, then load the safetensors. A plan
    naming an ``import`` runs code: it needs ``allow_import=True`` (or ``--trust-code``)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    meta_file = folder / "student.json"
    weights = folder / "student.safetensors"
    for f in (meta_file, weights):
        if not f.is_file():
            raise CheckpointError(f"{f}: file not found (a student folder holds student.json and student.safetensors)")
    plan = read_json(meta_file, StudentPlan)  # types and bounds (example_shape) before anything is built
    model = student_from_plan(plan, allow_import=allow_import)
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises several types
        raise CheckpointError(f"{weights}: unreadable ({exc})") from None
    apply_state_dict(model, state, source=str(weights), key="student")
    model.eval()
    model.student_plan = plan
    return model
