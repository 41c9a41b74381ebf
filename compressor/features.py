"""Feature taps: forward hooks on named modules. A slimmed student shares the teacher's module names, so one list
of names taps both; a student of another architecture is tapped by its own names (tap pairs)."""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn

from .errors import RecipeError
from .models import RangeWrapper, default_taps


def resolve_taps(
    model: nn.Module,
    layers: list[str],
    extra_aliases: dict[str, str] | None = None,
    key: str = "distill.losses.srp.layers",
) -> dict[str, str]:
    """Map each requested layer (an alias such as ``encoder`` or a module name) to a module name."""
    aliases = {**default_taps(model), **(extra_aliases or {})}
    names = tap_modules(model)
    out = {}
    for layer in layers:
        target = aliases.get(layer, layer)
        if target not in names and f"model.{target}" in names and isinstance(model, RangeWrapper):
            target = f"model.{target}"  # a teacher converted to [-1, 1]: its own module names still work
        if target not in names or target == "":
            tensors = getattr(_inner(model), "tensors", None)
            if tensors is not None:  # an ONNX teacher: its taps are the graph's tensor names
                close = [t for t in tensors if str(layer).lower() in t.lower()] or tensors
                raise RecipeError(
                    f"{key}: the ONNX teacher has no tensor named {layer!r} (e.g. {', '.join(close[:5])})"
                )
            known = ", ".join(sorted(aliases)) or "none"
            raise RecipeError(
                f"{key}: no module or tap alias named {layer!r} (aliases: {known}; module names "
                f"as in model.named_modules())"
            )
        out[layer] = target
    return out


def resolve_tap_pairs(
    teacher: nn.Module,
    student: nn.Module,
    pairs: dict[str, tuple[str, str]],
    teacher_aliases: dict[str, str] | None = None,
    key: str = "distill.losses.srp.pairs",
) -> tuple[dict[str, str], dict[str, str]]:
    """``(teacher taps, student taps)``: alias -> module name in each network, for ``pairs`` (alias -> (teacher
    tap, student tap)). The student's tap names are its module names and zoo aliases, then the teacher's aliases:
    a slimmed student has the teacher's names, a student of another architecture its own."""
    t_taps = resolve_taps(teacher, [t for t, _ in pairs.values()], teacher_aliases, key=key)
    s_aliases = {**default_taps(teacher), **(teacher_aliases or {}), **default_taps(student)}
    s_taps = resolve_taps(student, [s for _, s in pairs.values()], s_aliases, key=key)
    return (
        {alias: t_taps[t] for alias, (t, _) in pairs.items()},
        {alias: s_taps[s] for alias, (_, s) in pairs.items()},
    )


def tap_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The modules a tap can name: ``model.named_modules()``, or those the model names itself where its layers are
    not modules (a quantised student's graph hands its tapped outputs to ``tap_modules()``)."""
    own = getattr(_inner(model), "tap_modules", None)
    return own() if callable(own) else dict(model.named_modules())


def _inner(model: nn.Module) -> nn.Module:
    """The network inside a range wrapper where it names its own taps (an ONNX teacher), else the model."""
    if isinstance(model, RangeWrapper) and callable(getattr(model.model, "tap_modules", None)):
        return model.model
    return model


class FeatureTaps:
    """Record the outputs of named modules during forward passes.

    The recorded tensor is a copy of the module's own output: an in-place activation after the tapped module
    (``nn.ReLU(True)``, ``nn.LeakyReLU(0.2, True)``, as in the pix2pix zoo) would otherwise overwrite what was
    recorded, and a tap documented as a norm's output would hold the activation's. The copy stays in the
    autograd graph, so losses on it train the model.

    >>> with FeatureTaps(model, {"encoder": "model.8"}) as taps:
    ...     model(x); taps.features["encoder"]
    """

    def __init__(self, model: nn.Module, taps: dict[str, str]):
        self.model, self.taps = model, dict(taps)
        self.features: dict[str, torch.Tensor] = {}
        self._handles = []

    def __enter__(self):
        modules = tap_modules(self.model)
        for alias, name in self.taps.items():
            self._handles.append(modules[name].register_forward_hook(self._hook(alias)))
        return self

    def _hook(self, alias):
        def hook(_module, _inputs, output):
            self.features[alias] = output.clone() if isinstance(output, torch.Tensor) else output

        return hook

    def clear(self):
        self.features = {}

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []


@contextmanager
def tapped(model: nn.Module, taps: dict[str, str]):
    with FeatureTaps(model, taps) as t:
        yield t


def probe_shapes(model: nn.Module, taps: dict[str, str], example: torch.Tensor) -> dict[str, tuple]:
    """Shapes of the tapped features for one example input (no grad)."""
    with torch.no_grad(), FeatureTaps(model, taps) as t:
        model(example)
        return {k: tuple(v.shape) for k, v in t.features.items()}


def check_tap_pair(
    teacher: nn.Module,
    student: nn.Module,
    taps: dict[str, str],
    example: torch.Tensor,
    key: str = "distill.losses.srp.layers",
    student_taps: dict[str, str] | None = None,
) -> dict[str, tuple[int, int]]:
    """Verify that every tap gives a 4-D feature map in both networks; return (C_teacher, C_student) per alias.
    Maps of different sizes are compared at the smaller one (:func:`compressor.losses.common_size`), so H and W may
    differ; channel counts never need to match (SRP's relation matrix is HW x HW, feature adapters map them)."""
    student_taps = student_taps or taps
    st = probe_shapes(teacher, taps, example)
    ss = probe_shapes(student, student_taps, example)
    out = {}
    for alias in taps:
        for side, shapes, names in (("teacher", st, taps), ("student", ss, student_taps)):
            if alias not in shapes:
                raise RecipeError(
                    f"{key}: the {side}'s tap {alias!r} ({names[alias]}) was not executed by its forward pass"
                )
        t, s = st[alias], ss[alias]
        if len(t) != 4 or len(s) != 4:
            raise RecipeError(
                f"{key}: tap {alias!r} has teacher shape {t} and student shape {s}; SRP needs (B, C, H, W) feature maps"
            )
        out[alias] = (t[1], s[1])
    return out
