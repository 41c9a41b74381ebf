"""Entry point of one training process under torchrun: ``python -m compressor.app.worker RUN_DIR``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
import torch.distributed as dist

from ..errors import Interrupted
from ..procs import die_with_parent
from ..runfolder import RunDir, load_run_recipe
from ..train import init_distributed
from .context import Context, RunOptions, resolve_device
from .stages import distill_in_process, finish_distill


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args(argv)
    die_with_parent()  # compress killed (even by SIGKILL): this worker stops too
    logging.basicConfig(level=logging.WARNING)
    rank, world = init_distributed()
    run = RunDir(Path(args.run_dir))
    recipe = load_run_recipe(run)
    device = resolve_device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    ctx = Context(recipe, run, device, RunOptions(resume=args.resume, nproc=world))
    try:
        out = distill_in_process(ctx)
    except Interrupted:  # stopped on request with a checkpoint; the launching compress says so and how to resume
        if dist.is_initialized():
            dist.destroy_process_group()
        return 0
    if rank == 0:
        finish_distill(ctx, out["dirs"], out["summary"])
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
