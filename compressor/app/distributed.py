"""The distill stage in several processes (``compress RUN --nproc N``): the torchrun launch (gloo on CPU, nccl on
GPU), the progress relayed from the workers' ``metrics.jsonl``, and a stop on Ctrl-C with the resume command. Each
worker is :mod:`compressor.app.worker`."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
import threading
from pathlib import Path
from typing import Optional

from ..checkpoints import list_checkpoints
from ..errors import Interrupted, UserError
from ..procs import run_group_stoppable
from ..schemas import read_json
from .context import Context, checkpoint_policy, resume_command


def distributed_interrupted(ctx: Context, stop: Path) -> Interrupted:
    """The :class:`Interrupted` of a stopped ``--nproc`` run, naming its newest checkpoint."""
    stop.unlink(missing_ok=True)
    ckpts = list_checkpoints(ctx.run.checkpoints)
    where = f"at step {ckpts[-1][0]}; checkpoint written to {ckpts[-1][1]}" if ckpts else "before the first checkpoint"
    return Interrupted(f"interrupted {where}", resume_command(ctx))


def last_metrics_line(path: Path, tail: int = 1 << 16) -> Optional[dict]:
    """The newest complete line of a ``metrics.jsonl`` (read from its last ``tail`` bytes, without following a
    link or blocking on a FIFO); None when there is none yet."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        start = max(0, os.fstat(fd).st_size - tail)
        f.seek(start)
        lines = f.read(tail).decode("utf-8", "replace").splitlines()
    for line in reversed(lines[1:] if start else lines):  # a tail's first line may be cut
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and isinstance(doc.get("step"), int):
            return doc
    return None


@contextlib.contextmanager
def _relay_training_progress(ctx: Context, stage: str, steps: int, every: float = 1.0):
    """``--nproc N``: the workers have no progress callback; their rank 0 appends to metrics.jsonl every
    ``distill.log_every`` steps, and a thread passes the newest line on to ``ctx.progress`` (steps, losses,
    gradient shares), so the heartbeat shows steps, not only "working…"."""
    if ctx.progress is None:
        yield
        return
    done = threading.Event()

    def relay() -> None:
        seen = None
        while not done.wait(every):
            line = last_metrics_line(ctx.run.metrics)
            if line is not None and line["step"] != seen:
                seen = line["step"]
                keep = {k: v for k, v in line.items() if ("/" in k and ":" not in k) or k.startswith("share:")}
                ctx.progress(stage, seen, steps, {**keep, "doing": f"distilling in {ctx.options.nproc} processes"})

    thread = threading.Thread(target=relay, name="progress-relay", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=5)


def launch_distributed(ctx: Context) -> dict:
    """Run the distill stage in ``nproc`` processes with torchrun (gloo on CPU, nccl on GPU)."""
    if ctx.options.build_discriminator is not None:
        raise ValueError("a discriminator builder works in one process only (nproc 1), not under torchrun")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={ctx.options.nproc}",
        "-m",
        "compressor.app.worker",
        str(ctx.run.root),
        "--device",
        ctx.device.type,
    ]
    if checkpoint_policy(ctx, ctx.run.root, "distill"):
        cmd.append("--resume")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    stop = ctx.run.root / ".stop"
    stop.unlink(missing_ok=True)
    try:  # torchrun and its workers die with this process; on Ctrl-C they checkpoint and stop first
        with _relay_training_progress(ctx, "distill", ctx.recipe.distill.steps):
            proc = run_group_stoppable(cmd, stop, env=env)
    except KeyboardInterrupt:
        raise distributed_interrupted(ctx, stop) from None
    if stop.exists():  # asked to stop (SIGINT reached the workers' launcher another way)
        raise distributed_interrupted(ctx, stop)
    if proc.returncode != 0:
        raise UserError(f"distributed training failed (exit {proc.returncode}); see the messages above")
    return read_json(ctx.run.distill_json)
