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

import copy
import json
import logging
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
import torch_pruning as tp
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from .errors import CheckpointError, RecipeError
from .io import atomic_write_bytes, atomic_write_text
from .models import ZOO, apply_state_dict, build_from_spec, build_generator, init_weights, size_multiple
from .models import spec_of_model as teacher_spec_of

log = logging.getLogger(__name__)

PLAN_VERSION = 1


def _example_for(model: nn.Module, example_input: Optional[torch.Tensor]) -> torch.Tensor:
    if example_input is not None:
        return example_input
    m = size_multiple(model)
    s = max(64, m)
    in_ch = getattr(model, "config", {}).get("input_nc", 3)
    return torch.randn(1, in_ch, s, s)


def _probe(model: nn.Module, x: torch.Tensor, handles: list) -> None:
    """One no-grad forward in eval mode (no BatchNorm statistics change) with the given hooks, then remove them."""
    was = model.training
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        model.train(was)
        for h in handles:
            h.remove()


def _output_layers(model: nn.Module, x: torch.Tensor) -> list[nn.Module]:
    """The last executed conv/linear layer: the output layer, never pruned."""
    order: list[nn.Module] = []
    _probe(model, x, [m.register_forward_hook(lambda mod, i, o: order.append(mod)) for m in model.modules()
                      if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear))])
    if not order:
        raise RecipeError("student: the teacher has no conv or linear layer to prune")
    return [order[-1]]


def fix_instance_norms(model: nn.Module, x: torch.Tensor) -> None:
    """Set ``num_features`` of affine-free InstanceNorms from the channels they really see after pruning."""
    hooks = []
    for m in model.modules():
        if isinstance(m, (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)) and not m.affine:
            def hook(mod, inputs):
                mod.num_features = inputs[0].shape[1]
            hooks.append(m.register_forward_pre_hook(hook))
    if hooks:
        _probe(model, x, hooks)


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
            c = nn.Conv2d(conv.in_channels, conv.out_channels // (r * r), conv.kernel_size, conv.stride,
                          conv.padding, conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
            c.weight.data = conv.weight.data[k::r * r].clone()
            if conv.bias is not None:
                c.bias.data = conv.bias.data[k::r * r].clone()
            self.convs.append(c)

    def forward(self, x):
        y = torch.stack([c(x) for c in self.convs], 2)
        b, ch, _, h, w = y.shape
        return y.view(b, ch, self.r, self.r, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, ch, h * self.r, w * self.r)

    def merged(self) -> nn.Conv2d:
        c0, rr = self.convs[0], self.r * self.r
        conv = nn.Conv2d(c0.in_channels, c0.out_channels * rr, c0.kernel_size, c0.stride, c0.padding, c0.dilation,
                         c0.groups, c0.bias is not None, c0.padding_mode)
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
        hooks.append(m.register_forward_pre_hook(
            lambda mod, i, n=n: pairs.append((produced.get(id(i[0])), n, mod.upscale_factor))))
    _probe(model, x, hooks)
    records = []
    for conv_name, shuffle_name, r in pairs:
        if conv_name is None:
            raise RecipeError(f"student.method: prune supports PixelShuffle only right after a Conv2d "
                              f"({shuffle_name} follows another operation)")
        _set_module(model, conv_name, _SubpixelConv(model.get_submodule(conv_name), r))
        _set_module(model, shuffle_name, nn.Identity())
        records.append((conv_name, shuffle_name, r))
    return records


def _merge_pixel_shuffles(model: nn.Module, records) -> None:
    for conv_name, shuffle_name, r in records:
        _set_module(model, conv_name, model.get_submodule(conv_name).merged())
        _set_module(model, shuffle_name, nn.PixelShuffle(r))


def _prune(model: nn.Module, width: float, x: torch.Tensor, record: bool = True) -> list[dict]:
    """Prune ``model`` in place to ``width``; return the replayable list of pruning groups."""
    model.requires_grad_(True)  # tracing follows autograd; a frozen teacher copy would hide every layer
    shuffles = _split_pixel_shuffles(model, x)
    names = {m: n for n, m in model.named_modules()}
    was = model.training
    ignored = _output_layers(model, x)
    imp = tp.importance.MagnitudeImportance(p=2)
    with torch.enable_grad():
        pruner = tp.pruner.BasePruner(model, x, importance=imp, pruning_ratio=1.0 - width, ignored_layers=ignored,
                                      global_pruning=False)
        groups = []
        for group in pruner.step(interactive=True):
            dep, idxs = group[0].dep, group[0].idxs
            fn = getattr(dep.handler, "__name__", "")
            groups.append({"module": names[dep.target.module], "fn": fn, "idxs": [int(i) for i in idxs]})
            group.prune()
    _merge_pixel_shuffles(model, shuffles)
    model.train(was)
    fix_instance_norms(model, x)
    return groups


def _replay(model: nn.Module, groups: list[dict], x: torch.Tensor) -> None:
    model.requires_grad_(True)
    shuffles = _split_pixel_shuffles(model, x)
    modules = dict(model.named_modules())
    was = model.training
    with torch.enable_grad():
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=x)
        for g in groups:
            mod = modules.get(g["module"])
            if mod is None:
                raise CheckpointError(f"student.json: plan names module {g['module']!r}, which the architecture "
                                      f"does not have")
            fn = getattr(dg.get_pruner_of_module(mod), g["fn"])
            dg.get_pruning_group(mod, fn, g["idxs"]).prune()
    _merge_pixel_shuffles(model, shuffles)
    model.train(was)
    fix_instance_norms(model, x)


def _reinit(model: nn.Module) -> None:
    if getattr(model, "arch", None) in ZOO:
        init_weights(model)
        return
    for m in model.modules():
        if hasattr(m, "reset_parameters") and m is not model:
            m.reset_parameters()


def make_student(teacher: nn.Module, width: float, method: str = "auto", init: str = "inherit",
                 example_input: Optional[torch.Tensor] = None) -> tuple[nn.Module, dict]:
    """Return ``(student, plan)`` for a teacher at a channel ``width`` in (0, 1]."""
    if not 0 < width <= 1:
        raise RecipeError(f"student.width: must be in (0, 1], got {width}")
    if method not in ("auto", "rebuild", "prune"):
        raise RecipeError(f"student.method: unknown method {method!r}")
    if init not in ("inherit", "scratch"):
        raise RecipeError(f"student.init: unknown init {init!r}")
    zoo = getattr(teacher, "arch", None) in ZOO
    if method == "auto":
        method = "rebuild" if zoo else "prune"
    if method == "rebuild" and not zoo:
        raise RecipeError("student.method: rebuild works for zoo teachers only; use prune for imported models")
    spec = teacher_spec_of(teacher)
    x = _example_for(teacher, example_input)
    plan: dict[str, Any] = {"version": PLAN_VERSION, "method": method, "width": width, "init": init,
                            "teacher": spec}
    if method == "rebuild":
        kwargs = dict(spec["kwargs"])
        kwargs["ngf"] = max(1, round(kwargs["ngf"] * width))
        student = build_generator(spec["arch"], init="normal", **kwargs)
        plan["ngf"] = kwargs["ngf"]
        if init == "inherit":
            pruned = copy.deepcopy(teacher)
            _prune(pruned, width, x)
            state = pruned.state_dict()
            own = student.state_dict()
            bad = [k for k in own if k not in state or state[k].shape != own[k].shape]
            if bad:
                raise RecipeError(f"student.width: {width} does not split every layer evenly ({bad[0]}); "
                                  f"use student.method: prune, or a width such as 0.25 or 0.5")
            student.load_state_dict(state)
    else:
        student = copy.deepcopy(teacher)
        plan["groups"] = _prune(student, width, x)
        if init == "scratch":
            _reinit(student)
    student.train(teacher.training)
    if spec:
        student.compressor_spec = spec
    plan["example_shape"] = list(x.shape)
    return student, plan


def student_from_plan(plan: dict, allow_import: Optional[bool] = None) -> nn.Module:
    """Rebuild the student's architecture (random weights) from a plan (an imported architecture needs consent:
    see :func:`build_from_spec`)."""
    spec = plan.get("teacher") if isinstance(plan, dict) else None
    if not spec or not isinstance(spec, dict):
        raise CheckpointError("student.json: the plan has no teacher spec to rebuild from")
    if plan.get("method") == "rebuild":
        kwargs = dict(spec.get("kwargs") or {}, ngf=plan.get("ngf"))
        return build_from_spec({"arch": spec.get("arch"), "kwargs": kwargs}, init=None, source="student.json")
    model = build_from_spec(spec, init=None, allow_import=allow_import, source="student.json")
    _replay(model, plan["groups"], torch.randn(*plan["example_shape"]))
    if spec:
        model.compressor_spec = spec
    return model


def save_student(student: nn.Module, plan: dict, out_dir: str | Path, extra: Optional[dict] = None) -> Path:
    """Write ``student.safetensors`` and ``student.json`` atomically into ``out_dir``."""

    if not plan.get("teacher"):
        raise ValueError("save_student needs a plan with a teacher spec: set teacher.compressor_spec = "
                         "{'import': 'module:factory', 'kwargs': {...}} before make_student")
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
            raise CheckpointError(f"{f}: file not found (a student folder holds student.json and "
                                  f"student.safetensors)")
    try:
        plan = json.loads(meta_file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{meta_file}: not valid JSON ({exc})") from None
    model = student_from_plan(plan, allow_import=allow_import)
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises several types
        raise CheckpointError(f"{weights}: unreadable ({exc})") from None
    apply_state_dict(model, state, source=str(weights), key="student")
    model.eval()
    model.student_plan = plan
    return model
