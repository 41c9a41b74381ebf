"""Students side by side on one target: are they at equal measured latency?

    python tools/bench_students.py RUN [RUN ...] [--backend ort-cpu] [--size 128] [--threads 1]
                                   [--rounds 5] [--iters 30] [--stat p50|p10] [--channels 1] [--trust-code]
    python tools/bench_students.py --teacher RUN WIDTH|PLAN.json [...]   (untrained students of RUN's teacher)

Each RUN is a run folder holding a distilled student (an ablation's runs, e.g. a uniform width and a per-layer
plan's widths); with ``--teacher RUN`` each argument is instead a uniform width (``0.265625``) or a plan.json of
per-layer widths, pruned from that run's teacher untrained (latency does not depend on the weights): how the
uniform width of a per-layer student's latency is found before anything is distilled. Every student is exported
once (ONNX, as the per-layer table exports), then timed in rounds: in each round every student runs in a process of
its own, the order alternating between rounds, so that drift of the machine falls on all of them alike. Prints each
student's median over the rounds of its per-round ``--stat`` (p50, or p10) and the spread of those, the ratio to
the first student, the same ratio paired round by round (the median of each round's ratio: drift cancels), the
CPU's ISA flags and the load average before and after.
A student of an imported architecture (a published teacher's code) loads only with --trust-code.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compressor.app.layerwise import export_for_timing  # noqa: E402
from compressor.app.preflight import read_widths  # noqa: E402
from compressor.complexity import count_params, profile_model  # noqa: E402
from compressor.errors import UserError  # noqa: E402
from compressor.exporters.profile import time_artifacts  # noqa: E402
from compressor.models import input_channels  # noqa: E402
from compressor.runfolder import RunDir, load_run_student, load_run_teacher  # noqa: E402
from compressor.slim import make_student  # noqa: E402
from compressor.train import cpu_flags  # noqa: E402
from compressor.trust import trust_all_code  # noqa: E402

ISA = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


def _student(args: argparse.Namespace, what: str, teacher) -> torch.nn.Module:
    """A run's distilled student, or (``--teacher``) a uniform width or a plan's widths pruned from the teacher."""
    if teacher is None:
        return load_run_student(RunDir(Path(what)))
    x = torch.zeros(1, input_channels(teacher), args.size, args.size)
    if what.endswith(".json") or Path(what).is_dir():
        return make_student(teacher, 1.0, "prune", "scratch", x, widths=read_widths(Path(what), what))[0]
    try:
        width = float(what)
    except ValueError:
        raise UserError(f"{what}: neither a width nor a plan.json") from None
    if not 0 < width <= 1:
        raise UserError(f"{what}: a width is in (0, 1]")
    return make_student(teacher, width, "prune", "scratch", x)[0]


def _export(args: argparse.Namespace, work: Path) -> tuple[list[dict], list[tuple[str, int, int]]]:
    """Each student as an ONNX file to time, with its name, MACs and parameters."""
    items, info = [], []
    teacher = load_run_teacher(RunDir(args.teacher)).eval() if args.teacher else None
    for k, run in enumerate(args.runs):
        student = _student(args, str(run), teacher).eval()
        nc = args.channels or input_channels(student)
        x = torch.zeros(1, nc, args.size, args.size)
        path = work / f"student{k}.onnx"
        export_for_timing(student, path, x)
        items.append({"artifact": path, "size": args.size, "input_nc": nc})
        info.append(
            (
                run.name if teacher is None else str(run),
                int(profile_model(student, tuple(x.shape))["macs"]),
                count_params(student),
            )
        )
    return items, info


def _time(args: argparse.Namespace, items: list[dict]) -> list[list[float]]:
    """Every file once per round, each in a process of its own, the order alternating: their ``--stat`` per
    round."""
    p50s: list[list[float]] = [[] for _ in items]
    for r in range(args.rounds):
        for k in list(range(len(items)))[:: 1 if r % 2 == 0 else -1]:
            row = time_artifacts(args.backend, [items[k]], iters=args.iters, threads=args.threads)[0]
            if row.get("status") != "ok":
                raise UserError(f"timing {args.runs[k]} failed: {row.get('reason')}")
            p50s[k].append(row["latency_ms"][args.stat])
    return p50s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--teacher", type=Path, default=None, help="RUN: time untrained students of its teacher")
    ap.add_argument("--backend", default="ort-cpu")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--channels", type=int, default=None, help="input channels (default: the student's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument(
        "--stat",
        choices=("p50", "p10"),
        default="p50",
        help="each round's statistic (p10: what a shared machine's interference moves least)",
    )
    ap.add_argument("--trust-code", action="store_true", help="allow students whose student.json imports code")
    args = ap.parse_args(argv)
    if args.trust_code:
        trust_all_code()

    flags = cpu_flags()
    print(f"ISA flags: {' '.join(f for f in ISA if f in flags) or 'none of ' + ', '.join(ISA)}; before: {_load()}")
    work = Path(tempfile.mkdtemp(prefix="bench-students-"))
    try:
        items, info = _export(args, work)
        p50s = _time(args, items)
    except UserError as exc:  # a folder without a student, an import not trusted, a failed timing: one line
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(p50s[0])
    print(
        f"{args.backend}, {args.threads} thread(s), {args.size}², batch 1; median over {args.rounds} rounds of the "
        f"{args.stat} of {args.iters} runs; after: {_load()}"
    )
    st = args.stat
    print(f"| student | MACs | params | {st} (ms) | spread of the rounds' {st} | ratio to the first | paired ratio |")
    print("|---|---|---|---|---|---|---|")
    for (name, macs, params), row in zip(info, p50s):
        med = statistics.median(row)
        paired = statistics.median(a / b for a, b in zip(row, p50s[0]))  # within each round: drift cancels
        print(
            f"| {name} | {macs / 1e9:.3f} G | {params:,} | {med:.2f} | {min(row):.2f}-{max(row):.2f} | "
            f"{med / base:.3f} | {paired:.3f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
