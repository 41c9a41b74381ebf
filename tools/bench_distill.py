"""Time one distillation step, split into teacher forward, student forward/backward, discriminator and SRP.

    python tools/bench_distill.py [--arch resnet_9blocks] [--size 256] [--width 0.25] [--device cpu]

The SRP share is printed as a fraction of the whole step (target: at most 5%).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from compressor.features import FeatureTaps, resolve_taps  # noqa: E402
from compressor.losses import GANLoss, srp_multi  # noqa: E402
from compressor.models import build_discriminator, build_generator  # noqa: E402
from compressor.slim import make_student  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet_9blocks")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--layers", default="encoder")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    dev = torch.device(args.device)
    teacher = build_generator(args.arch, norm="instance").to(dev).eval().requires_grad_(False)
    student, _ = make_student(teacher.cpu(), args.width)
    teacher.to(dev)
    student.to(dev).train()
    disc = build_discriminator(6, norm="instance").to(dev)
    layers = args.layers.split(",")
    taps = resolve_taps(teacher, layers)
    gan = GANLoss("lsgan")
    x = torch.randn(1, 3, args.size, args.size, device=dev)
    y = torch.randn(1, 3, args.size, args.size, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    parts = {"teacher forward": [], "student forward/backward": [], "discriminator": [], "srp": []}
    for rep in range(args.reps + 1):
        student.zero_grad(set_to_none=True)
        sync(); t0 = time.perf_counter()
        with torch.no_grad(), FeatureTaps(teacher, taps) as tt:
            t_out = teacher(x)
        sync(); t1 = time.perf_counter()
        with FeatureTaps(student, taps) as ts:
            s_out = student(x)
        g_loss = F.l1_loss(s_out, y) * 100 + F.l1_loss(s_out, t_out) * 10 + \
            gan(disc(torch.cat([x, s_out], 1)), True, False)
        g_loss.backward(retain_graph=True)
        sync(); t2 = time.perf_counter()
        d_loss = 0.5 * (gan(disc(torch.cat([x, y], 1)), True) + gan(disc(torch.cat([x, s_out.detach()], 1)), False))
        d_loss.backward()
        sync(); t3 = time.perf_counter()
        srp = srp_multi(tt.features, ts.features, layers) * 10
        srp.backward()
        sync(); t4 = time.perf_counter()
        if rep == 0:
            continue  # warm-up
        for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            parts[k].append(v)
    med = {k: sorted(v)[len(v) // 2] for k, v in parts.items()}
    total = sum(med.values())
    print(f"{args.arch} -> width {args.width} at {args.size}², SRP on {layers}, device {dev}")
    for k, v in med.items():
        print(f"  {k:<26} {v * 1000:9.1f} ms  {100 * v / total:5.1f}%")
    print(f"  {'step':<26} {total * 1000:9.1f} ms")
    print(f"SRP share of the step: {100 * med['srp'] / total:.2f}% (target ≤ 5%)")


if __name__ == "__main__":
    main()
