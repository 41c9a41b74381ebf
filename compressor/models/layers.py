"""Layer classes published generators use that need care when a network is slimmed or run by the toolkit.

* Re-parametrized weights: ``torch.nn.utils.parametrizations.spectral_norm`` / ``weight_norm`` (SPADE/GauGAN,
  WDSR) and the older hook-based ``torch.nn.utils.spectral_norm`` / ``weight_norm``. :func:`strip_reparam` turns
  them into plain weights (spectral norm keeps its unnormalised weight, weight norm its effective weight) so that
  Torch-Pruning sees ordinary layers; :func:`restore_reparam` puts the same re-parametrization, with the same
  settings, back on the slimmed layers.
* Frozen layers (EDSR/RCAN ``MeanShift``: a constant 1x1 conv with ``requires_grad=False``): :func:`frozen_params`
  names them so that they stay frozen and at full width.
* Norms without parameters whose declared ``num_features`` disagree with their input (GAN Compression's released
  generators): PyTorch warns on every call; :func:`align_free_norms` sets them to what they receive, the first
  time they run, and says so in one log line.
* :func:`summarised_warnings`: warnings raised by a network's own code while the toolkit runs it, one log line
  per distinct message with its count.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn
from torch.nn.utils import parametrizations, parametrize

from ..errors import RecipeError

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------ re-parametrized weights


def _spectral_param_type():
    return getattr(parametrizations, "_SpectralNorm", None)


def _weight_norm_param_type():
    return getattr(parametrizations, "_WeightNorm", None)


def strip_reparam(model: nn.Module) -> list[dict]:
    """Replace every spectral-norm / weight-norm re-parametrization in ``model`` by a plain weight; return what
    :func:`restore_reparam` needs to put them back (module name, tensor name, kind, settings)."""
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    records: list[dict] = []
    for name, m in list(model.named_modules()):
        if parametrize.is_parametrized(m):
            # deep copies share their parametrized class, from which removal deletes the property: own one
            cls = type(m)
            m.__class__ = type(cls.__name__, cls.__bases__, {k: v for k, v in cls.__dict__.items() if k != "__dict__"})
            for tensor, plist in list(m.parametrizations.items()):
                p = plist[0] if len(plist) == 1 else None
                if p is not None and isinstance(p, _spectral_param_type()):
                    settings = {"n_power_iterations": p.n_power_iterations, "eps": p.eps, "dim": p.dim}
                    parametrize.remove_parametrizations(m, tensor, leave_parametrized=False)  # W itself
                    records.append({"module": name, "tensor": tensor, "kind": "spectral", **settings})
                elif p is not None and isinstance(p, _weight_norm_param_type()):
                    parametrize.remove_parametrizations(m, tensor, leave_parametrized=True)  # g * v / |v|
                    records.append({"module": name, "tensor": tensor, "kind": "weight_norm", "dim": p.dim})
                else:
                    kinds = ", ".join(type(q).__name__ for q in plist)
                    raise RecipeError(
                        f"student.method: prune cannot handle module {name!r} ({type(m).__name__}): its "
                        f"{tensor!r} is re-parametrized by {kinds}, which only spectral_norm and weight_norm "
                        f"are known to allow; leave it at full width with student.keep: [{name}]"
                    )
        for hook in list(m._forward_pre_hooks.values()):
            if isinstance(hook, SpectralNorm):
                orig = getattr(m, hook.name + "_orig").detach().clone()
                settings = {"n_power_iterations": hook.n_power_iterations, "eps": hook.eps, "dim": hook.dim}
                torch.nn.utils.remove_spectral_norm(m, hook.name)
                getattr(m, hook.name).data = orig  # the unnormalised weight, not W / sigma
                records.append({"module": name, "tensor": hook.name, "kind": "spectral_hook", **settings})
            elif isinstance(hook, WeightNorm):
                torch.nn.utils.remove_weight_norm(m, hook.name)
                records.append({"module": name, "tensor": hook.name, "kind": "weight_norm_hook", "dim": hook.dim})
    return records


def restore_reparam(model: nn.Module, records: list[dict]) -> None:
    """Put back the re-parametrizations :func:`strip_reparam` removed, with the same settings, on the (slimmed)
    layers of the same names. Spectral norm's power-iteration vectors are re-estimated for the new shapes."""
    for r in records:
        m = model.get_submodule(r["module"])
        kind, tensor = r["kind"], r["tensor"]
        if kind == "spectral":  # runs 15 power iterations on registration
            parametrizations.spectral_norm(m, tensor, r["n_power_iterations"], r["eps"], r["dim"])
        elif kind == "weight_norm":
            parametrizations.weight_norm(m, tensor, r["dim"])
        elif kind == "spectral_hook":
            torch.nn.utils.spectral_norm(m, tensor, r["n_power_iterations"], r["eps"], r["dim"])
            hook = next(h for h in m._forward_pre_hooks.values() if getattr(h, "name", None) == tensor)
            for _ in range(15):  # converge u and v, as the parametrization does on registration
                hook.compute_weight(m, do_power_iteration=True)
        elif kind == "weight_norm_hook":
            with warnings.catch_warnings():  # the hook form is deprecated; the network uses it, so it is kept
                warnings.simplefilter("ignore", FutureWarning)
                torch.nn.utils.weight_norm(m, tensor, r["dim"])


# ------------------------------------------------------------------------------------------------ frozen layers


def frozen_params(model: nn.Module) -> list[str]:
    """Names of the parameters a network keeps frozen (``requires_grad=False``) while others train. A model whose
    parameters are all frozen (a teacher switched off for distillation) has none."""
    params = list(model.named_parameters())
    frozen = [n for n, p in params if not p.requires_grad]
    return frozen if len(frozen) < len(params) else []


def frozen_modules(model: nn.Module) -> list[str]:
    """Modules whose own parameters are all frozen (see :func:`frozen_params`)."""
    frozen = set(frozen_params(model))
    out = []
    for name, m in model.named_modules():
        own = [f"{name}.{n}" if name else n for n, _ in m.named_parameters(recurse=False)]
        if name and own and all(n in frozen for n in own):
            out.append(name)
    return out


def refreeze(model: nn.Module, names: list[str]) -> None:
    params = dict(model.named_parameters())
    for n in names:
        if n in params:
            params[n].requires_grad_(False)


# ---------------------------------------------------------------------------------- norms without parameters

_FREE_NORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
_REPORTED: set[str] = set()
# the warning PyTorch gives for such a norm; the toolkit repairs those norms and says so itself
NORM_SIZE_WARNING = "does not match num_features"


class _AlignReport:
    """Forward hook on the model: one log line for the norms :class:`_AlignNorm` set during that call."""

    def __init__(self, who: str):
        self.who = who
        self.pending: list[str] = []

    def __call__(self, module, inputs, output):
        if self.pending:
            message = (
                f"{self.who}: {len(self.pending)} norm layers without parameters declared num_features other than "
                f"the channels they receive ({', '.join(self.pending[:5])}{', ...' if len(self.pending) > 5 else ''});"
                f" set to the channels received (PyTorch would warn on every call)"
            )
            if message not in _REPORTED:  # the same teacher is loaded once per stage: say it once per process
                _REPORTED.add(message)
                log.info("%s", message)
            self.pending = []


class _AlignNorm:
    def __init__(self, name: str, report: _AlignReport):
        self.name, self.report = name, report

    def __call__(self, module, inputs):
        x = inputs[0] if inputs else None
        if torch.is_tensor(x) and x.dim() >= 2:
            c = int(x.shape[1 if x.dim() > 2 else 0])
            if c != module.num_features:
                module.num_features = c
                self.report.pending.append(self.name)


def align_free_norms(model: nn.Module, who: str = "teacher") -> int:
    """Make every InstanceNorm without affine parameters or running statistics take the size of what it receives,
    on its first call (the values do not change: such a norm never uses ``num_features``). Returns how many norms
    are watched."""
    report = _AlignReport(who)
    n = 0
    for name, m in model.named_modules():
        if isinstance(m, _FREE_NORMS) and not m.affine and not m.track_running_stats:
            m.register_forward_pre_hook(_AlignNorm(name, report))
            n += 1
    if n:
        model.register_forward_hook(report)
    return n


# ---------------------------------------------------------------------------------------------------- warnings


@contextmanager
def summarised_warnings(who: str, handled: tuple[str, ...] = ()) -> Iterator[None]:
    """Record the warnings raised inside the block and log each distinct one once, with its count (``who``: what
    was running, e.g. ``student: slimming``). Warnings containing one of ``handled`` are dropped: the toolkit
    repairs their cause and logs that itself."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    caught = [w for w in caught if str(w.message).strip() and not any(h in str(w.message) for h in handled)]
    counts = Counter((w.category.__name__, str(w.message).strip().splitlines()[0][:300]) for w in caught)
    for (category, message), n in counts.items():
        log.warning("%s: %s%s: %s", who, category, f" ({n} times)" if n > 1 else "", message)


def detach_hook_weights(model: nn.Module) -> None:
    """The hook-based spectral/weight norms cache their computed weight as a non-leaf tensor after a forward pass
    with gradients, which ``copy.deepcopy`` refuses; the hooks recompute it on every call, so the cached value is
    detached (https://github.com/pytorch/pytorch/pull/103001)."""
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    for m in model.modules():
        for hook in m._forward_pre_hooks.values():
            if isinstance(hook, (SpectralNorm, WeightNorm)):
                w = getattr(m, hook.name, None)
                if torch.is_tensor(w) and not isinstance(w, nn.Parameter) and w.grad_fn is not None:
                    setattr(m, hook.name, w.detach())


def remove_align_hooks(model: nn.Module) -> None:
    """Take :func:`align_free_norms`'s hooks off a copy of the teacher (a student repairs its norms itself)."""
    for m in model.modules():
        for hooks in (m._forward_pre_hooks, m._forward_hooks):
            for k in [k for k, h in hooks.items() if isinstance(h, (_AlignNorm, _AlignReport))]:
                del hooks[k]
