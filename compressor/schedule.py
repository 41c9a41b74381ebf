"""Learning-rate schedules, and the rule that says a training run has converged.

``distill.schedule`` names one:

* ``linear``: constant for ``decay_from`` of the steps, then linear decay to zero (pix2pix's schedule).
* ``cosine``: cosine decay from the first step to zero at ``steps``.
* ``plateau``: the tool's convergence rule. Every ``plateau.every`` steps the student is scored on a fixed
  held-out batch (L1 to the teacher's output where the run uses a teacher, else to the ground truth). When the
  best score has not improved by ``min_delta`` (relative) for ``patience`` checks in a row the loss is *flat* at
  this learning rate: the rate is multiplied by ``factor``; once it is flat after ``decays`` such reductions the
  run stops, converged. ``distill.steps`` is the cap. Its state travels in checkpoints, so a resumed run stops
  where an uninterrupted one would.
"""

from __future__ import annotations

import math
from typing import Callable, Optional


def linear_lambda(steps: int, decay_from: float) -> Callable[[int], float]:
    """Constant for ``decay_from`` of the steps, then linear decay to zero."""
    keep = int(steps * decay_from)

    def f(step):
        if step < keep:
            return 1.0
        return max(0.0, 1.0 - (step - keep) / max(1, steps - keep))

    return f


def cosine_lambda(steps: int) -> Callable[[int], float]:
    """Cosine decay from 1 at step 0 to 0 at ``steps``."""

    def f(step):
        return 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / max(1, steps)))

    return f


class Plateau:
    """The ``plateau`` schedule's state: the learning-rate scale, the best held-out score, the checks since it
    last improved, the reductions so far, and whether the run has converged (see the module docstring)."""

    def __init__(self, every: int, patience: int, min_delta: float, factor: float, decays: int):
        self.every, self.patience, self.min_delta, self.factor, self.decays = every, patience, min_delta, factor, decays
        self.scale = 1.0
        self.best: Optional[float] = None
        self.bad = 0
        self.done_decays = 0
        self.converged = False
        self.history: list[tuple[int, float]] = []

    def lr_lambda(self) -> Callable[[int], float]:
        return lambda _step: self.scale

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def update(self, step: int, score: float) -> Optional[str]:
        """Record the held-out score at ``step``; returns ``"decay"``, ``"stop"`` or None."""
        self.history.append((step, float(score)))
        if self.best is None or score < self.best * (1.0 - self.min_delta):
            self.best, self.bad = float(score), 0
            return None
        self.best = min(self.best, float(score))
        self.bad += 1
        if self.bad < self.patience:
            return None
        self.bad = 0
        if self.done_decays >= self.decays:
            self.converged = True
            return "stop"
        self.done_decays += 1
        self.scale *= self.factor
        return "decay"

    def state_dict(self) -> dict:
        return {
            "scale": self.scale,
            "best": self.best,
            "bad": self.bad,
            "done_decays": self.done_decays,
            "converged": self.converged,
            "history": [list(h) for h in self.history],
        }

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self.best = None if state["best"] is None else float(state["best"])
        self.bad = int(state["bad"])
        self.done_decays = int(state["done_decays"])
        self.converged = bool(state["converged"])
        self.history = [(int(s), float(v)) for s, v in state["history"]]
