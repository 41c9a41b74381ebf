"""Feature taps: forward hooks on named modules. Teacher and student share module names, so one list of names
taps both."""

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
    names = dict(model.named_modules())
    out = {}
    for layer in layers:
        target = aliases.get(layer, layer)
        if target not in names and f"model.{target}" in names and isinstance(model, RangeWrapper):
            target = f"model.{target}"  # a teacher converted to [-1, 1]: its own module names still work
        if target not in names or target == "":
            known = ", ".join(sorted(aliases)) or "none"
            raise RecipeError(
                f"{key}: no module or tap alias named {layer!r} (aliases: {known}; module names "
                f"as in model.named_modules())"
            )
        out[layer] = target
    return out


def tap_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The modules a tap can name: ``model.named_modules()``, or those the model names itself where its layers are
    not modules (a quantised student's graph hands its tapped outputs to ``tap_modules()``)."""
    own = getattr(model, "tap_modules", None)
    return own() if callable(own) else dict(model.named_modules())


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
) -> dict[str, tuple[int, int]]:
    """Verify teacher and student taps share H,W; return (C_teacher, C_student) per alias."""
    st = probe_shapes(teacher, taps, example)
    ss = probe_shapes(student, taps, example)
    out = {}
    for alias in taps:
        if alias not in st or alias not in ss:
            raise RecipeError(f"{key}: layer {alias!r} ({taps[alias]}) was not executed by the forward pass")
        t, s = st[alias], ss[alias]
        if len(t) != 4 or len(s) != 4 or t[2:] != s[2:]:
            raise RecipeError(
                f"{key}: layer {alias!r} ({taps[alias]}) has teacher shape {t} and student shape "
                f"{s}; SRP needs 4-D features with equal H,W"
            )
        out[alias] = (t[1], s[1])
    return out
