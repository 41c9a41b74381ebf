"""Time one distillation step, split into teacher forward, student forward/backward, discriminator and SRP.

    python tools/bench_distill.py [--arch resnet_9blocks] [--size 256] [--width 0.25] [--device cpu]
                                  [--amp none,bf16] [--json out.json]

The SRP share is printed as a fraction of the whole step (target: at most 5%). ``--amp none,bf16`` times the
step with the frozen teacher's forward in FP32 and under ``torch.autocast(dtype=torch.bfloat16)`` (what
``distill.amp: bf16`` does on a CPU with AVX512-BF16 or AMX), prints the teacher's share, the bf16/FP32 step
ratio and the teacher output's largest difference, and says whether this CPU computes bf16 natively (where it
does not, the trainer stays in FP32). ``distill.cache_teacher`` removes the teacher's share altogether.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
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
from compressor.train import cpu_bf16_native, cpu_flags  # noqa: E402


def time_step(args, amp: str) -> dict:
    dev = torch.device(args.device)
    torch.manual_seed(0)
    teacher = build_generator(args.arch, norm="instance").eval().requires_grad_(False)
    student, _ = make_student(teacher, args.width)
    teacher.to(dev)
    student.to(dev).train()
    disc = build_discriminator(6, norm="instance").to(dev)
    layers = args.layers.split(",")
    taps = resolve_taps(teacher, layers)
    gan = GANLoss("lsgan")
    x = torch.randn(1, 3, args.size, args.size, device=dev)
    y = torch.randn(1, 3, args.size, args.size, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    cast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if amp == "bf16" else contextlib.nullcontext
    parts = {"teacher forward": [], "student forward/backward": [], "discriminator": [], "srp": []}
    t_ref = None
    for rep in range(args.reps + 1):
        student.zero_grad(set_to_none=True)
        sync()
        t0 = time.perf_counter()
        with torch.no_grad(), FeatureTaps(teacher, taps) as tt, cast():
            t_out = teacher(x)
        t_out = t_out.float()
        feats_t = {k: v.float() for k, v in tt.features.items()}
        sync()
        t1 = time.perf_counter()
        with FeatureTaps(student, taps) as ts:
            s_out = student(x)
        g_loss = (
            F.l1_loss(s_out, y) * 100 + F.l1_loss(s_out, t_out) * 10 + gan(disc(torch.cat([x, s_out], 1)), True, False)
        )
        g_loss.backward(retain_graph=True)
        sync()
        t2 = time.perf_counter()
        d_loss = 0.5 * (gan(disc(torch.cat([x, y], 1)), True) + gan(disc(torch.cat([x, s_out.detach()], 1)), False))
        d_loss.backward()
        sync()
        t3 = time.perf_counter()
        srp = srp_multi(feats_t, ts.features, layers) * 10  # FP32 whatever the teacher ran in
        srp.backward()
        sync()
        t4 = time.perf_counter()
        t_ref = t_out
        if rep == 0:
            continue  # warm-up
        for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            parts[k].append(v)
    med = {k: sorted(v)[len(v) // 2] * 1000 for k, v in parts.items()}
    return {"amp": amp, "parts_ms": med, "step_ms": sum(med.values()), "teacher_out": t_ref}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet_9blocks")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--layers", default="encoder")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--amp", default="none", help="comma-separated: none,bf16")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    flags = cpu_flags()
    native = cpu_bf16_native()
    load0 = os.getloadavg()[0]
    results = [time_step(args, amp) for amp in args.amp.split(",")]
    load1 = os.getloadavg()[0]
    print(f"{args.arch} -> width {args.width} at {args.size}², SRP on {args.layers}, device {args.device}")
    if args.device == "cpu":
        isa = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags)
        print(
            f"CPU ISA: {isa or 'unknown'} (torch: {torch.backends.cpu.get_cpu_capability()}); native bf16: "
            f"{'yes' if native else 'no: bf16 is emulated here, distill.amp: bf16 trains in FP32'}"
        )
    loaded = max(load0, load1) > (os.cpu_count() or 1) * 0.75
    if loaded:
        print(f"load average {load0:.1f} -> {load1:.1f}: the machine was loaded by other work; timings are noisy")
    for r in results:
        total = r["step_ms"]
        print(f"teacher forward in {'FP32' if r['amp'] == 'none' else 'bf16 autocast'}:")
        for k, v in r["parts_ms"].items():
            print(f"  {k:<26} {v:9.1f} ms  {100 * v / total:5.1f}%")
        print(f"  {'step':<26} {total:9.1f} ms")
        print(
            f"  SRP share of the step: {100 * r['parts_ms']['srp'] / total:.2f}% (target ≤ 5%); teacher share "
            f"{100 * r['parts_ms']['teacher forward'] / total:.1f}%"
        )
    out = {
        "arch": args.arch,
        "size": args.size,
        "width": args.width,
        "device": args.device,
        "native_bf16": native,
        "loaded": loaded,
        "load_avg": [load0, load1],
        "runs": [{k: v for k, v in r.items() if k != "teacher_out"} for r in results],
    }
    by = {r["amp"]: r for r in results}
    if "none" in by and "bf16" in by:
        ratio = by["none"]["step_ms"] / by["bf16"]["step_ms"]
        tr = by["none"]["parts_ms"]["teacher forward"] / by["bf16"]["parts_ms"]["teacher forward"]
        diff = float((by["none"]["teacher_out"] - by["bf16"]["teacher_out"]).abs().max())
        print(
            f"bf16 autocast: step {ratio:.2f}x, teacher forward {tr:.2f}x faster than FP32 (below 1: slower); "
            f"max teacher output difference {diff:.3f} (target: step ≥ 1.5x)"
        )
        out.update(step_speedup_bf16=ratio, teacher_speedup_bf16=tr, teacher_max_diff_bf16=diff)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
