"""Student-over-teacher speed-up against the MAC reduction, and run-to-run agreement of p50.

    python tools/bench_profile.py [--arch resnet_9blocks] [--width 0.25] [--size 256] [--backend ort-cpu]

Runs `compress profile` twice back to back (each configuration in its own process) and prints the speed-up,
the MAC ratio and the p50 agreement between the two runs (target: within 10%).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compressor.exporters.profile import profile_models  # noqa: E402
from compressor.exporters.report import speedups  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet_9blocks")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--backend", default="ort-cpu")
    ap.add_argument("--iters", type=int, default=50)
    args = ap.parse_args()
    models = [f"{args.arch}:norm=instance", f"{args.arch}:norm=instance,width={args.width}"]
    runs = [
        profile_models(models, args.backend.split(","), [1], [args.size], warmup=10, iters=args.iters) for _ in range(2)
    ]
    for i, doc in enumerate(runs, 1):
        for s in speedups([doc]):
            print(
                f"run {i}: {s['backend']} {args.size}² teacher {s['teacher_ms']:.1f} ms, student {s['student_ms']:.1f} ms"
                f" -> speed-up {s['speedup']:.1f}x (MAC reduction {s['mac_reduction']:.1f}x)"
            )
    a, b = runs
    for ra, rb in zip(a["results"], b["results"]):
        if ra.get("status") == rb.get("status") == "ok":
            pa, pb = ra["latency_ms"]["p50"], rb["latency_ms"]["p50"]
            print(
                f"p50 agreement {ra['model']} {ra['backend']}: {pa:.2f} vs {pb:.2f} ms "
                f"({100 * abs(pa - pb) / min(pa, pb):.1f}% apart; target ≤ 10%)"
            )


if __name__ == "__main__":
    main()
