"""The SRP ablation on real facades (labels -> photo), reproducible with one command.

    python tools/ablation.py --scale cpu [--seeds 0,1] [--widths 0.25] [--out runs/ablation] [--write-docs]

Trains one pix2pix teacher, then, at the same width, steps and seeds, four students:

1. scratch      GAN + L1, no teacher
2. kd           + KD (L1 to the teacher's output)
3. kd_srp       + KD + SRP (semantic relation matrix)
4. kd_feat      + KD + plain feature distillation through 1x1 adapters

All four start from scratch (random init), so the losses are the only difference. ``--variants`` adds
``kd_srp_inherit`` (KD + SRP starting from the teacher's strongest channels) to check the recipes' init default.

and evaluates all of them on the 106 test pairs (FID, KID, PSNR/SSIM against ground truth, PSNR against the
teacher). Every run is an ordinary compressor run folder, so an interrupted ablation resumes where it stopped.

Scales: ``cpu`` is 128² crops with a schedule of about an hour on a 2-core machine; ``gpu`` is 256² with a
tenth of the pix2pix schedule (facades: 200 epochs x 400 images = 80k steps; here 8k teacher, 4k student steps).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from compressor.pipeline import run_pipeline  # noqa: E402
from compressor.recipe import parse_recipe  # noqa: E402

FACADES = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "facades"

SCALES = {
    "cpu": {"arch": "unet_128", "size": 128, "load_size": 143, "teacher_steps": 2000, "student_steps": 800,
            "ngf": 64, "batch": 1, "ndf": 64, "log_every": 100},
    "gpu": {"arch": "unet_256", "size": 256, "load_size": 286, "teacher_steps": 8000, "student_steps": 4000,
            "ngf": 64, "batch": 1, "ndf": 64, "log_every": 200},
}
VARIANTS = {
    "scratch": {"kd": 0.0, "srp": 0.0, "feat": 0.0},
    "kd": {"kd": 10.0, "srp": 0.0, "feat": 0.0},
    "kd_srp": {"kd": 10.0, "srp": 10.0, "feat": 0.0},
    "kd_feat": {"kd": 10.0, "srp": 0.0, "feat": 10.0},
    # not one of the four arms: the same as kd_srp, but starting from the teacher's strongest channels
    "kd_srp_inherit": {"kd": 10.0, "srp": 10.0, "feat": 0.0, "init": "inherit"},
}
DEFAULT_VARIANTS = ["scratch", "kd", "kd_srp", "kd_feat"]
LAYERS = ["encoder", "mid"]
METRICS = [("fid", "FID ↓"), ("kid", "KID ↓"), ("psnr", "PSNR ↑"), ("ssim", "SSIM ↑"),
           ("psnr_vs_teacher", "PSNR vs teacher ↑")]


def base_recipe(scale: dict, name: str, seed: int, data: Path) -> dict:
    return {
        "name": name, "seed": seed, "device": "auto",
        "data": {"kind": "paired", "root": str(data), "direction": "BtoA", "size": scale["size"],
                 "load_size": scale["load_size"], "flip": True, "batch_size": scale["batch"]},
        "teacher": {"arch": scale["arch"], "kwargs": {"ngf": scale["ngf"], "norm": "batch"}},
        "student": {"width": 0.25, "method": "rebuild", "init": "scratch"},
        "distill": {"steps": scale["student_steps"], "checkpoint_every": 200, "log_every": scale["log_every"],
                    "sample_every": 10**9, "discriminator": {"ndf": scale["ndf"], "n_layers": 3, "norm": "batch"}},
        "evaluate": {"metrics": ["fid", "kid", "psnr", "ssim"], "samples": 4, "batch_size": 16},
    }


def run(doc: dict, out: Path, only: list[str]) -> Path:
    recipe = parse_recipe(yaml.safe_dump(doc), source=f"{doc['name']}.yaml", base_dir=Path.cwd())
    src = out / "recipes" / f"{doc['name']}.yaml"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_text(yaml.safe_dump(doc, sort_keys=False))
    run_pipeline(recipe, out, resume=True, only=only, recipe_path=src)
    return out / doc["name"]


def mean_spread(values: list[float]) -> str:
    a = np.asarray(values, dtype=float)
    if len(a) == 1:
        return f"{a[0]:.4g}"
    return f"{a.mean():.4g} ± {(a.max() - a.min()) / 2:.2g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--widths", default="0.25")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"from {', '.join(VARIANTS)}")
    ap.add_argument("--data", default=str(FACADES))
    ap.add_argument("--out", default="runs/ablation")
    ap.add_argument("--write-docs", action="store_true", help="write docs/results.md and the sample grid")
    args = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    scale = SCALES[args.scale]
    data = Path(args.data)
    if not (data / "train").is_dir():
        sys.exit(f"error: {data}: facades not found (pass --data)")
    out = Path(args.out) / args.scale
    t0 = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    widths = [float(w) for w in args.widths.split(",")]
    # 1. the teacher, trained once
    tdoc = base_recipe(scale, "teacher", 0, data)
    tdoc["teacher"]["train"] = {"steps": scale["teacher_steps"]}
    tdoc["distill"]["checkpoint_every"] = 400
    teacher_run = run(tdoc, out, ["teacher"])
    teacher_ckpt = (teacher_run / "teacher.safetensors").resolve()
    print(f"teacher ready ({time.perf_counter() - t0:.0f} s)", flush=True)
    results: dict = {}
    for width in widths:
        for variant in args.variants.split(","):
            w = VARIANTS[variant]
            for seed in seeds:
                name = f"w{width:g}-{variant}-s{seed}"
                doc = base_recipe(scale, name, seed, data)
                doc["teacher"]["checkpoint"] = str(teacher_ckpt)
                doc["student"]["width"] = width
                doc["student"]["init"] = w.get("init", "scratch")
                doc["distill"]["losses"] = {
                    "kd": {"weight": w["kd"]}, "srp": {"weight": w["srp"], "layers": LAYERS},
                    "feat": {"weight": w["feat"], "layers": LAYERS}}
                t1 = time.perf_counter()
                rd = run(doc, out, ["teacher", "student", "distill", "evaluate"])
                ev = json.loads((rd / "eval.json").read_text())
                results.setdefault((width, variant), []).append(ev)
                print(f"{name}: done ({time.perf_counter() - t1:.0f} s) fid {ev['student'].get('fid', float('nan')):.1f} "
                      f"psnr {ev['student']['psnr']:.2f} psnr_vs_teacher {ev['student']['psnr_vs_teacher']:.2f}",
                      flush=True)
    wall = time.perf_counter() - t0
    table = render_table(results, scale, seeds)
    print(table)
    summary = {f"{w}-{v}": [e["student"] for e in evs] for (w, v), evs in results.items()}
    (out / "ablation.json").write_text(json.dumps({"scale": args.scale, "seeds": seeds, "wall_seconds": wall,
                                                   "results": summary,
                                                   "teacher": next(iter(results.values()))[0]["teacher"]},
                                                  indent=1))
    if args.write_docs:
        grid = sample_grid(out, results)
        write_docs(table, scale, args, wall, grid)


def render_table(results, scale, seeds) -> str:
    teacher = next(iter(results.values()))[0]["teacher"]
    head = "| student | width | params | " + " | ".join(label for _, label in METRICS) + " |"
    lines = [head, "|" + "---|" * (3 + len(METRICS))]
    lines.append(f"| teacher ({scale['arch']}, ngf {scale['ngf']}) | 1 | {teacher['params']:,} | " +
                 " | ".join(f"{teacher[k]:.4g}" if k in teacher else "–" for k, _ in METRICS) + " |")
    for (width, variant), evs in results.items():
        cells = [mean_spread([e["student"][k] for e in evs]) if k in evs[0]["student"] else "–" for k, _ in METRICS]
        lines.append(f"| {variant} | {width:g} | {evs[0]['student']['params']:,} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Mean ± half-range over seeds {', '.join(map(str, seeds))}; {evs[0]['n_images']} test pairs.")
    return "\n".join(lines)


def sample_grid(out: Path, results) -> Path:
    """One image: the same test inputs, with each variant's student output side by side."""
    from PIL import Image

    tiles = []
    for (width, variant), evs in results.items():
        path = out / f"w{width:g}-{variant}-s0" / "samples" / "eval.png"
        if path.exists():
            tiles.append((variant, Image.open(path)))
    if not tiles:
        return None
    # eval.png columns: input | teacher | student | target; keep input, teacher and target once
    first = tiles[0][1]
    w = first.width // 4
    cols = [first.crop((0, 0, w, first.height)), first.crop((w, 0, 2 * w, first.height))]
    cols += [img.crop((2 * w, 0, 3 * w, img.height)) for _, img in tiles]
    cols.append(first.crop((3 * w, 0, 4 * w, first.height)))
    grid = Image.new("RGB", (w * len(cols), first.height))
    for i, c in enumerate(cols):
        grid.paste(c, (i * w, 0))
    dst = Path(__file__).resolve().parent.parent / "docs" / "ablation_samples.png"
    dst.parent.mkdir(exist_ok=True)
    grid.save(dst)
    (dst.parent / "ablation_samples.txt").write_text(
        "columns: input | teacher | " + " | ".join(v for v, _ in tiles) + " | target\n")
    return dst


def write_docs(table: str, scale: dict, args, wall: float, grid) -> None:
    import os

    dst = Path(__file__).resolve().parent.parent / "docs" / "results_table.md"
    dst.write_text(f"<!-- written by tools/ablation.py --scale {args.scale} --widths {args.widths} "
                   f"--variants {args.variants} -->\n"
                   f"Machine: {platform.machine()}, {os.cpu_count()} cores; this invocation took {wall / 60:.1f} min "
                   f"(runs already complete are skipped).\n\n{table}\n")


if __name__ == "__main__":
    main()
