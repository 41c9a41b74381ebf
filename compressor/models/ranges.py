"""The toolkit's view of a network: one tensor in [-1, 1] in, one tensor in [-1, 1] out.

* Value ranges: a teacher that takes or returns [0, 1] or [0, 255] declares it (``teacher.input_range`` /
  ``teacher.output_range``) and :func:`wrap_ranges` converts at its edges.
* Several outputs: a teacher whose ``forward`` returns a tuple, list or dict (curve or attention maps beside the
  image, deep-supervision outputs, ``{"out": ...}``) names the tensor to learn with ``teacher.output`` (an index
  or key, dotted for nested results: ``1``, ``out``, ``aux.0``); the wrapper returns that tensor, with the ranges
  applied to it alone. The network itself stays at ``.model`` and still returns everything.
* Residual outputs: a network that returns a correction rather than the image declares it (``teacher.residual``):
  ``subtract`` (the image is input − output: DnCNN returns the noise), ``add`` (input + output) or
  ``upsample_add`` (the input enlarged bicubically to the output's size, plus the output: super-resolution
  networks). The combination happens in the network's native range, before the output range is converted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn

from ..errors import RecipeError

TOOLKIT_RANGE = (-1.0, 1.0)
RESIDUALS = ("none", "subtract", "add", "upsample_add")


def tensor_leaves(out: Any) -> list[torch.Tensor]:
    """Every tensor in a forward pass's result (tuples, lists and dicts, nested)."""
    if torch.is_tensor(out):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in tensor_leaves(o)]
    return []


def apply_residual(x: torch.Tensor, out: torch.Tensor, residual: str) -> torch.Tensor:
    """The image a network means when it returns ``out`` for input ``x`` (both in its native range)."""
    if residual == "none":
        return out
    if residual == "upsample_add":
        if x.shape[-2:] != out.shape[-2:]:
            x = nn.functional.interpolate(x, size=tuple(out.shape[-2:]), mode="bicubic", align_corners=False)
        return x + out
    if x.shape != out.shape:
        raise RecipeError(
            f"teacher.residual: {residual} needs the output to have the input's shape; the network takes "
            f"{list(x.shape)} and returns {list(out.shape)}"
            + (" (use upsample_add for a network that enlarges)" if x.shape[-1] < out.shape[-1] else "")
        )
    return x - out if residual == "subtract" else x + out


def _affine(src: Sequence[float], dst: Sequence[float]) -> tuple[float, float]:
    """(scale, shift) with ``y = x * scale + shift`` mapping ``src`` onto ``dst``."""
    scale = (dst[1] - dst[0]) / (src[1] - src[0])
    return scale, dst[0] - src[0] * scale


def describe_output(out: Any, depth: int = 0) -> str:
    """What a forward pass returned, in one line: ``a tuple of 3 (0: Tensor[1, 3, 64, 64], 1: ...)``."""
    if torch.is_tensor(out):
        return f"Tensor{list(out.shape)}"
    if depth > 2:
        return type(out).__name__
    if isinstance(out, Mapping):
        inner = ", ".join(f"{k}: {describe_output(v, depth + 1)}" for k, v in list(out.items())[:8])
        return f"a dict of {len(out)} ({inner}{', ...' if len(out) > 8 else ''})"
    if isinstance(out, (tuple, list)):
        inner = ", ".join(f"{i}: {describe_output(v, depth + 1)}" for i, v in enumerate(out[:8]))
        return f"a {type(out).__name__} of {len(out)} ({inner}{', ...' if len(out) > 8 else ''})"
    return type(out).__name__


def select_output(out: Any, key: Optional[str], who: str = "teacher") -> torch.Tensor:
    """The tensor ``key`` names in a forward pass's result (``key`` None: the result must be a tensor itself);
    anything else is one :class:`~compressor.errors.RecipeError` line saying what the network returned."""
    if key is None:
        if torch.is_tensor(out):
            return out
        raise RecipeError(
            f"teacher.output: the {who} returns {describe_output(out)}, not one tensor; name the image to learn "
            f"with teacher.output: INDEX or KEY (dotted for nested results, e.g. 1, out, aux.0)"
        )
    cur = out
    for part in str(key).split("."):
        if isinstance(cur, Mapping):
            if part in cur:
                cur = cur[part]
                continue
            if part.lstrip("-").isdigit() and int(part) in cur:
                cur = cur[int(part)]
                continue
        elif isinstance(cur, (tuple, list)) and part.lstrip("-").isdigit() and -len(cur) <= int(part) < len(cur):
            cur = cur[int(part)]
            continue
        raise RecipeError(f"teacher.output: {key!r} names nothing in what the {who} returns ({describe_output(out)})")
    if not torch.is_tensor(cur):
        raise RecipeError(f"teacher.output: {key!r} is {describe_output(cur)}, not a tensor ({describe_output(out)})")
    return cur


class RangeWrapper(nn.Module):
    """``model`` sees its native input range; callers see [-1, 1] in and out, and only the tensor ``output`` names
    when the model returns several. The wrapped model stays at ``.model``, so module names gain a ``model.``
    prefix. ``all_outputs`` (set while Torch-Pruning traces) makes :meth:`forward` return the whole result."""

    def __init__(
        self,
        model: nn.Module,
        input_range: Sequence[float] = TOOLKIT_RANGE,
        output_range: Sequence[float] = TOOLKIT_RANGE,
        output: Optional[str] = None,
        residual: str = "none",
    ):
        super().__init__()
        if residual not in RESIDUALS:
            raise RecipeError(f"teacher.residual: expected one of {', '.join(RESIDUALS)}, got {residual!r}")
        self.model = model
        self.residual = residual
        self.input_range = tuple(float(v) for v in input_range)
        self.output_range = tuple(float(v) for v in output_range)
        self.output = None if output is None else str(output)
        self.in_scale, self.in_shift = _affine(TOOLKIT_RANGE, self.input_range)
        self.out_scale, self.out_shift = _affine(self.output_range, TOOLKIT_RANGE)
        self.all_outputs = False

    def forward(self, x: torch.Tensor) -> Any:
        native = x * self.in_scale + self.in_shift
        out = self.model(native)
        if self.all_outputs:
            return out
        image = apply_residual(native, select_output(out, self.output), self.residual)
        return image * self.out_scale + self.out_shift


def wrap_ranges(
    model: nn.Module,
    input_range: Sequence[float] = TOOLKIT_RANGE,
    output_range: Sequence[float] = TOOLKIT_RANGE,
    output: Optional[str] = None,
    residual: str = "none",
) -> nn.Module:
    """``model`` itself when both ranges are [-1, 1], no ``output`` is named and the output is the image itself;
    otherwise a :class:`RangeWrapper` around it."""
    if (
        output is None
        and residual == "none"
        and tuple(map(float, input_range)) == TOOLKIT_RANGE
        and tuple(map(float, output_range)) == TOOLKIT_RANGE
    ):
        return model
    return RangeWrapper(model, input_range, output_range, output, residual)
