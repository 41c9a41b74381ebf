"""SRP loss: factorised against materialised form, forward+backward time and peak extra memory.

    python tools/bench_srp.py [--sizes 64,128,256] [--device cpu|cuda]

Each measurement runs in its own process (peak RSS on CPU, max allocated on CUDA). Printed ratios come from
this one run. Targets: ≥15x faster at 64², ≥50x at 128², and 256² within 1 GiB extra memory for the
factorised form, where the reference cannot run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CODE = r"""
import json, resource, sys, time, torch
sys.path.insert(0, {root!r})
from compressor.losses import srp_loss, srp_loss_reference
size, form, device, reps = {size}, {form!r}, {device!r}, {reps}
torch.manual_seed(0)
ft = torch.randn(1, 256, size, size, device=device)
fs = torch.randn(1, 64, size, size, device=device, requires_grad=True)
fn = srp_loss if form == "factorised" else srp_loss_reference
def sync():
    if device == "cuda": torch.cuda.synchronize()
if device == "cuda":
    torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
else:
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
fn(ft, fs).backward(); sync()  # warm-up (counted in the peak)
times = []
for _ in range(reps):
    fs.grad = None
    t0 = time.perf_counter(); fn(ft, fs).backward(); sync(); times.append(time.perf_counter() - t0)
peak = (torch.cuda.max_memory_allocated() if device == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) - base
print(json.dumps({{"seconds": sorted(times)[len(times) // 2], "extra_bytes": max(peak, 0)}}))
"""


def measure(size: int, form: str, device: str, reps: int) -> dict:
    root = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.run(
        [sys.executable, "-c", CODE.format(root=root, size=size, form=form, device=device, reps=reps)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:120]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="64,128,256")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--reference-limit-gib",
        type=float,
        default=16.0,
        help="skip the reference where its HW x HW matrices alone would exceed this",
    )
    args = ap.parse_args()
    print(f"SRP forward+backward, B=1, C_t=256, C_s=64, device={args.device}")
    print(
        f"{'size':>6} {'factorised':>12} {'reference':>12} {'speed-up':>9} {'fact. extra MiB':>16} {'ref. extra MiB':>15}"
    )
    for size in [int(s) for s in args.sizes.split(",")]:
        reps = 5 if size <= 64 else 3
        fact = measure(size, "factorised", args.device, reps)
        hw = size * size
        need = 6 * hw * hw * 4 / 2**30  # two relation matrices, their difference and gradients, fp32
        if need > args.reference_limit_gib:
            ref = {"error": f"not run: needs ~{need:.0f} GiB"}
        else:
            ref = measure(size, "reference", args.device, reps)
        speed = f"{ref['seconds'] / fact['seconds']:.1f}x" if "seconds" in ref and "seconds" in fact else "–"
        fmt = lambda r: f"{r['seconds'] * 1000:.1f} ms" if "seconds" in r else r["error"][:24]  # noqa: E731
        mem = lambda r: f"{r['extra_bytes'] / 2**20:.0f}" if "extra_bytes" in r else "–"  # noqa: E731
        print(f"{size:>5}² {fmt(fact):>12} {fmt(ref):>12} {speed:>9} {mem(fact):>16} {mem(ref):>15}")


if __name__ == "__main__":
    main()
