"""Two ``compress ablate`` folders side by side: one student of each, paired by seed and test image.

``compress ablate`` pairs the students of one folder (its ``--widths``). A setting that is not a width
(``--set student.importance=sensitivity``, a ``distill.*`` value) runs in a folder of its own; this pairs two such
folders: the difference B − A in PSNR against the teacher and against the ground truth, over the seeds both
finished, with the same two-level bootstrap interval as the ablation's own tables (:mod:`compressor.stats`). Both
must have evaluated the same teacher outputs on the same test images (checked from each run's ``per_image.npz``
key; one ``error:`` line and exit 2 otherwise).

    python tools/compare_ablations.py OUT_A OUT_B --student w0.5 [--student-b w-plan] [--arm kd] [--init inherit]
"""

from __future__ import annotations

import argparse
import io
import re
import sys
from pathlib import Path

import numpy as np

from compressor import stats as st
from compressor.errors import UserError
from compressor.io import read_bounded, refuse_link

MAX_BYTES = 64 << 20
METRICS = (("psnr_t", "PSNR vs teacher (dB)"), ("psnr", "PSNR vs ground truth (dB)"))


def per_seed(out: Path, student: str, arm: str, init: str) -> dict[int, dict]:
    """Per seed: the per-image arrays of the runs ``OUT/NAME/NAME-STUDENT-INIT-ARM-sSEED`` that were evaluated."""
    found: dict[int, dict] = {}
    pattern = re.compile(rf"-{re.escape(student)}-{re.escape(init)}-{re.escape(arm)}-s(\d+)$")
    for path in sorted(Path(out).glob("*/*/per_image.npz")):
        m = pattern.search(path.parent.name)
        if not m or path.parent.is_symlink():
            continue
        refuse_link(path)
        z = dict(np.load(io.BytesIO(read_bounded(path, MAX_BYTES)), allow_pickle=False))
        found[int(m.group(1))] = z
    if not found:
        raise UserError(f"{out}: no evaluated run of student {student}, init {init}, arm {arm} (per_image.npz)")
    return found


def compare(a: dict[int, dict], b: dict[int, dict], n_boot: int = 1000) -> dict:
    """B − A per metric over the seeds both hold, paired by seed and image."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        raise UserError(f"the two folders share {len(seeds)} evaluated seed(s); pairing needs two or more")
    for s in seeds:
        ta, tb = str(a[s]["key"]).split("|", 1)[-1], str(b[s]["key"]).split("|", 1)[-1]
        if ta != tb:
            raise UserError(f"seed {s}: the two runs were evaluated against different teacher outputs or test images")
    out = {"seeds": seeds, "n_images": int(len(a[seeds[0]]["psnr"]))}
    for key, label in METRICS:
        xa = np.stack([a[s][key] for s in seeds])
        xb = np.stack([b[s][key] for s in seeds])
        d = st.paired_mean_difference(xb, xa, n_boot=n_boot)
        out[key] = {
            "label": label,
            "a": float(xa.mean()),
            "b": float(xb.mean()),
            "diff": d.estimate,
            "lo": d.lo,
            "hi": d.hi,
            "per_seed": [[float(x.mean()), float(y.mean())] for x, y in zip(xa, xb)],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path, help="the first ablation's --out folder (the base)")
    ap.add_argument("b", type=Path, help="the second ablation's --out folder")
    ap.add_argument("--student", required=True, help="the student's label in A's run names (w0.5, w-NAME)")
    ap.add_argument("--student-b", default=None, help="the student's label in B (default: --student)")
    ap.add_argument("--arm", default="kd")
    ap.add_argument("--init", default="inherit")
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args(argv)
    try:
        a = per_seed(args.a, args.student, args.arm, args.init)
        b = per_seed(args.b, args.student_b or args.student, args.arm, args.init)
        doc = compare(a, b, args.n_boot)
    except (UserError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"B − A over seeds {', '.join(map(str, doc['seeds']))}, {doc['n_images']} test images each")
    for key, _ in METRICS:
        r = doc[key]
        seeds = "; ".join(f"{x:.3f} → {y:.3f}" for x, y in r["per_seed"])
        print(f"{r['label']}: A {r['a']:.3f}, B {r['b']:.3f}, B − A {r['diff']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}]")
        print(f"  per seed (A → B): {seeds}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
