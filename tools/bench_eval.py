"""Wall time of evaluating teacher and student on the 106 facades test pairs at 256² (target: under 2 minutes
on a 2-core CPU, feature extraction included).

    python tools/bench_eval.py [--data ../shared/datasets/facades] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from compressor.data import PairedDataset  # noqa: E402
from compressor.metrics import evaluate_models, load_inception  # noqa: E402
from compressor.models import build_generator  # noqa: E402
from compressor.slim import make_student  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets" / "facades"))
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    os.environ.setdefault("COMPRESSOR_CACHE", tempfile.mkdtemp())  # cold cache: real features computed too
    t0 = time.perf_counter()
    teacher = build_generator("unet_256", norm="batch").eval()
    student, _ = make_student(teacher, 0.25)
    ds = PairedDataset(Path(args.data) / "test", "BtoA", 256, train=False)
    inception, how = load_inception(device=args.device)
    if inception is None:
        sys.exit(f"no Inception weights: {how}")
    res = evaluate_models(
        {"teacher": teacher, "student": student},
        ds,
        ["fid", "kid", "psnr", "ssim"],
        torch.device(args.device),
        16,
        inception,
        "",
        "input",
        "target",
        "teacher",
    )
    dt = time.perf_counter() - t0
    print(
        f"evaluated {len(ds)} pairs at 256² (teacher + student, FID/KID/PSNR/SSIM) in {dt:.1f} s on "
        f"{args.device} (target < 120 s)"
    )
    for k in ("fid", "kid", "psnr", "ssim"):
        print(
            f"  {k:>5}: teacher {res['teacher'].get(k, float('nan')):.4g}  student {res['student'].get(k, float('nan')):.4g}"
        )


if __name__ == "__main__":
    main()
