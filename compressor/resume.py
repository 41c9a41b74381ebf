"""Which checkpoints a training may continue.

A training folder's ``checkpoints/`` carries ``config.json``: the digest of everything that shaped the training
(the stage's recipe sections and its upstream stages: teacher, student width, distill, data, seed). Training
continues (``--resume``) only from checkpoints whose digest matches the recipe in hand; anything else is one line
offering ``--force``, which moves the old checkpoints aside (never deletes them).

This module decides only *whether* the files may be used; reading and writing them (``step_*.pt``, rotation, the
random states) is :mod:`compressor.checkpoints`, beside it.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Optional

from .errors import UserError
from .io import atomic_write_json, refuse_link
from .schemas import CheckpointConfig, read_json

log = logging.getLogger(__name__)

CONFIG = "config.json"


def _checkpoint_files(ckpts: Path) -> list[Path]:
    return sorted(ckpts.glob("step_*.pt")) if ckpts.is_dir() else []


def recorded_digest(ckpts: Path) -> Optional[str]:
    """The digest ``checkpoints/config.json`` records (read bounded, checked); None when absent or unreadable."""
    try:
        return read_json(ckpts / CONFIG, CheckpointConfig).get("digest")
    except (OSError, UserError):
        return None


def move_aside(out_dir: Path) -> Path:
    """Move ``checkpoints/`` (and the metrics and samples that belong to it) to ``*.old-<time>``; return it."""
    ckpts = out_dir / "checkpoints"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = ckpts.with_name(f"checkpoints.old-{stamp}")
    n = 1
    while aside.exists():
        aside = ckpts.with_name(f"checkpoints.old-{stamp}-{n}")
        n += 1
    shutil.move(str(ckpts), str(aside))
    for extra in ("metrics.jsonl",):
        if (out_dir / extra).exists():
            shutil.move(str(out_dir / extra), str(aside / extra))
    log.warning("moved earlier checkpoints to %s", aside)
    return aside


def check_checkpoints(out_dir: Path, digest: str, *, resume: bool, force: bool, command: str = "") -> None:
    """Raise the one-line :class:`UserError` that :func:`prepare_checkpoints` would, without changing anything
    (a pre-flight check before a run touches its folder)."""
    ckpts = Path(out_dir) / "checkpoints"
    refuse_link(ckpts)  # a link to a folder elsewhere: never read, written or pruned through
    if force or not _checkpoint_files(ckpts):
        return
    old = recorded_digest(ckpts)
    if old != digest:
        what = "another configuration" if old else "an unknown configuration (no checkpoints/config.json)"
        raise UserError(
            f"{ckpts} holds checkpoints of {what}: the recipe's distill, student, teacher or data "
            f"settings changed since; pass --force to start over (the old checkpoints are kept aside)"
        )
    if not resume:
        hint = f" ({command})" if command else ""
        raise UserError(
            f"{ckpts} holds checkpoints of an unfinished run of this recipe: add --resume to "
            f"continue it{hint}, or --force to start over (the old checkpoints are kept aside)"
        )


def prepare_checkpoints(out_dir: Path, digest: str, *, resume: bool, force: bool, command: str = "") -> bool:
    """Decide what to do with ``out_dir/checkpoints`` before training; return whether to resume.

    * no checkpoints: start (``--resume`` then simply starts from step 0);
    * checkpoints of the same configuration: continue with ``--resume``, else ask for it or ``--force``;
    * checkpoints of another (or an unknown) configuration: ``--force`` moves them aside; otherwise one line.
    """
    out_dir = Path(out_dir)
    ckpts = out_dir / "checkpoints"
    refuse_link(ckpts)
    if _checkpoint_files(ckpts):
        check_checkpoints(out_dir, digest, resume=resume, force=force, command=command)
        if force:
            move_aside(out_dir)
            resume = False
    else:
        resume = False
    ckpts.mkdir(parents=True, exist_ok=True)
    if recorded_digest(ckpts) != digest:
        atomic_write_json(ckpts / CONFIG, {"digest": digest})
    return resume
