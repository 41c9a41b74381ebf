"""Value ranges: the toolkit works in [-1, 1]; a teacher that takes or returns [0, 1] or [0, 255] declares it
(``teacher.input_range`` / ``teacher.output_range``) and :func:`wrap_ranges` converts at its edges."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

TOOLKIT_RANGE = (-1.0, 1.0)


def _affine(src: Sequence[float], dst: Sequence[float]) -> tuple[float, float]:
    """(scale, shift) with ``y = x * scale + shift`` mapping ``src`` onto ``dst``."""
    scale = (dst[1] - dst[0]) / (src[1] - src[0])
    return scale, dst[0] - src[0] * scale


class RangeWrapper(nn.Module):
    """``model`` sees its native input range; callers see [-1, 1] in and out. The wrapped model stays at
    ``.model``, so module names gain a ``model.`` prefix."""

    def __init__(self, model: nn.Module, input_range: Sequence[float], output_range: Sequence[float]):
        super().__init__()
        self.model = model
        self.input_range = tuple(float(v) for v in input_range)
        self.output_range = tuple(float(v) for v in output_range)
        self.in_scale, self.in_shift = _affine(TOOLKIT_RANGE, self.input_range)
        self.out_scale, self.out_shift = _affine(self.output_range, TOOLKIT_RANGE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x * self.in_scale + self.in_shift) * self.out_scale + self.out_shift


def wrap_ranges(
    model: nn.Module, input_range: Sequence[float] = TOOLKIT_RANGE, output_range: Sequence[float] = TOOLKIT_RANGE
) -> nn.Module:
    """``model`` itself when both ranges are [-1, 1]; otherwise a :class:`RangeWrapper` around it."""
    if tuple(map(float, input_range)) == TOOLKIT_RANGE and tuple(map(float, output_range)) == TOOLKIT_RANGE:
        return model
    return RangeWrapper(model, input_range, output_range)
