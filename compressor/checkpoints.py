"""Training checkpoints on disk: the ``checkpoints/step_<8 digits>.pt`` files a training writes and resumes from.

Beside :mod:`compressor.resume`, which decides *whether* a training may continue (the recipe's digest in
``checkpoints/config.json``, ``--resume`` and ``--force``), this module reads and writes the files themselves:

* :func:`save_checkpoint` writes one state atomically (a crash leaves the previous file, never a cut one) and keeps
  the newest ``keep_last``;
* :func:`list_checkpoints`, :func:`load_latest_checkpoint` (skipping a truncated or corrupt newest file) and
  :func:`resumable_checkpoint` (its structure checked against :class:`compressor.schemas.CheckpointState`);
* :func:`capture_rng` and :func:`restore_rng`: the torch, CUDA, Python and numpy random states, in types
  ``torch.load(weights_only=True)`` reads back, so that a resumed run equals an uninterrupted one.

What a state holds besides the random states (models, optimisers, schedulers, step) is
:meth:`compressor.train.Trainer.state_dict`'s business; the training loop imports this module, never the reverse.
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .errors import CheckpointError, UserError
from .io import atomic_torch_save, refuse_link
from .models.checkpoint import check_checkpoint_size
from .schemas import CheckpointState, check

log = logging.getLogger(__name__)

CKPT_RE = re.compile(r"step_(\d+)\.pt$")


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint in ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    out = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CKPT_RE.search(p.name))]
    return sorted(out)


def save_checkpoint(state: dict, folder: Path, step: int, keep_last: int) -> Path:
    """Write ``state`` as ``folder/step_<step>.pt`` atomically, then delete all but the newest ``keep_last``."""
    refuse_link(folder)  # keep-last pruning deletes: never in a folder elsewhere
    path = Path(folder) / f"step_{step:08d}.pt"
    atomic_torch_save(state, path)
    for _, old in list_checkpoints(Path(folder))[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def load_latest_checkpoint(folder: Path) -> Optional[dict]:
    """The newest readable checkpoint; a truncated or corrupt one is reported and skipped."""
    refuse_link(folder)  # another place's checkpoints are not this training's
    for step, path in reversed(list_checkpoints(folder)):
        try:
            check_checkpoint_size(path, "checkpoint")
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or state.get("step") != step:
                raise ValueError("unexpected content")
            return state
        except Exception as exc:  # noqa: BLE001 - any failure means this file is unusable
            log.warning(
                "checkpoint %s is truncated or corrupt (%s); using the previous one",
                path,
                str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__,
            )
    return None


def resumable_checkpoint(folder: Path) -> Optional[dict]:
    """The newest readable checkpoint, checked against :class:`compressor.schemas.CheckpointState` (the
    structure :meth:`compressor.train.Trainer.load_state_dict` expects); a wrong structure is one CheckpointError
    line."""
    state = load_latest_checkpoint(folder)
    if state is not None:
        try:
            check(state, CheckpointState, f"{folder}/step_{state['step']:08d}.pt")
        except UserError as exc:
            raise CheckpointError(f"{exc}; pass --force to start over (the old checkpoints are kept aside)") from None
    return state


def capture_rng() -> dict:
    """Every random state (``rng_cpu``, ``rng_py``, ``rng_np`` and, once CUDA is in use, ``rng_cuda``), in types
    ``torch.load(weights_only=True)`` reads back."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "rng_cpu": torch.get_rng_state(),
        "rng_py": {"version": py[0], "state": list(py[1]), "gauss_next": py[2]},
        "rng_np": {
            "kind": str(np_state[0]),
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["rng_cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Restore the torch, CUDA, Python and numpy random states a checkpoint holds (older ones hold fewer)."""
    torch.set_rng_state(state["rng_cpu"])
    if "rng_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    py = state.get("rng_py")
    if isinstance(py, dict):
        random.setstate((py["version"], tuple(int(v) for v in py["state"]), py["gauss_next"]))
    n = state.get("rng_np")
    if isinstance(n, dict):
        np.random.set_state(
            (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
        )
