"""`compress plan` end to end: pick the widest student within a latency budget, measured on this machine.

    python tools/bench_plan.py [--arch resnet_9blocks] [--size 256] [--latency-ms 30] [--backend ort-cpu]
                               [--margin 0] [--plot docs/plan_latency.png] [--limit-s 180]

Writes a recipe for a zoo teacher (instance norm, no weights needed: latency does not depend on them), runs
`compress plan` on it in a fresh run folder, and prints the wall time, every candidate, the chosen width's
confirmed p50 (target: within the budget) and the next wider candidate's confirmed p50 (target: over it).
The margin defaults to 0 here, so "within the budget" and "over it" refer to the same line. The machine's load
average is printed before and after: timings on a busy machine are slower and noisier.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _load() -> str:
    one, five, _ = os.getloadavg()
    cores = os.cpu_count() or 1
    busy = " (busy: more runnable processes than cores; timings are slower and noisier)" if one > cores else ""
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {cores} cores{busy}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet_9blocks")
    ap.add_argument("--ngf", type=int, default=64)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--latency-ms", type=float, default=30.0)
    ap.add_argument("--backend", default="ort-cpu")
    ap.add_argument("--margin", type=float, default=0.0)
    ap.add_argument("--plot", type=Path, default=None, help="copy plan.png here")
    ap.add_argument("--limit-s", type=float, default=180.0, help="target wall time")
    ap.add_argument("--keep", type=Path, default=None, help="run folder parent to keep (default: a temp dir)")
    args = ap.parse_args()

    out = args.keep or Path(tempfile.mkdtemp(prefix="bench-plan-"))
    recipe = out / "bench_plan.yaml"
    out.mkdir(parents=True, exist_ok=True)
    recipe.write_text(f"""name: bench-plan
data: {{kind: synthetic, size: {args.size}}}
teacher: {{arch: {args.arch}, kwargs: {{ngf: {args.ngf}, norm: instance}}}}
student:
  width: auto
  margin: {args.margin}
  budget: {{latency_ms: {args.latency_ms}, backend: {args.backend}}}
""")
    print(f"before: {_load()}")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "compressor", "plan", str(recipe), "--out", str(out / "runs"), "--force", "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - t0
    print(proc.stdout, end="")
    if proc.returncode != 0:
        print(proc.stderr, end="", file=sys.stderr)
        return proc.returncode
    print(f"after: {_load()}")
    run = out / "runs" / "bench-plan"
    doc = json.loads((run / "plan.json").read_text())
    ch, nxt = doc["choice"], doc["next_wider"]
    print(
        f"{args.arch} {args.size}², budget {args.latency_ms:g} ms p50 on {args.backend}, margin {args.margin:g}: "
        f"{len([c for c in doc['candidates'] if c.get('p50') is not None])} widths timed of "
        f"{args.ngf} possible"
    )
    print(
        f"wall time of compress plan: {wall:.1f} s (target < {args.limit_s:g} s: "
        f"{'yes' if wall < args.limit_s else 'NO'})"
    )
    ok = ch["p50"] <= args.latency_ms
    print(
        f"chosen width {ch['width']:.4g} (ngf {ch.get('ngf')}): confirmed p50 {ch['p50']:.2f} ms "
        f"({'within' if ok else 'OVER'} the {args.latency_ms:g} ms budget)"
    )
    if nxt:
        over = nxt["p50"] > args.latency_ms
        print(
            f"next wider width {nxt['width']:.4g} (ngf {nxt.get('ngf')}): confirmed p50 {nxt['p50']:.2f} ms "
            f"({'over' if over else 'NOT over'} the budget)"
        )
    else:
        over = True
        print("next wider width: none (the teacher itself meets the budget)")
    if args.plot and doc.get("plot"):
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run / doc["plot"], args.plot)
        print(f"plot: {args.plot}")
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return 0 if ok and over and wall < args.limit_s else 1


if __name__ == "__main__":
    raise SystemExit(main())
