"""Entry point of one training process under torchrun: ``python -m compressor.worker RUN_DIR``."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .pipeline import Context, RunDir, _run_training, distill_setup, finish_distill, resolve_device
from .procs import die_with_parent
from .recipe import load_recipe
from .train import init_distributed, seed_everything


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
    recipe = load_recipe(run.recipe, check_paths=False)
    src = run.run_json
    import json

    source = json.loads(src.read_text()).get("recipe_source")
    if source:
        recipe._base_dir = Path(source).parent
    device = resolve_device(args.device)
    if device.type == "cuda":
        import torch

        device = torch.device("cuda", torch.cuda.current_device())
    ctx = Context(recipe, run, device, resume=args.resume, nproc=world)
    seed_everything(recipe.seed)
    dirs, taps, srp_layers, feat = distill_setup(ctx)
    summary = _run_training(ctx, dirs, recipe.distill.losses, recipe.distill.steps, recipe.distill.lr, run.root,
                            "distill", taps=taps, srp_layers=srp_layers, feat_channels=feat)
    if rank == 0:
        finish_distill(ctx, dirs, summary)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
