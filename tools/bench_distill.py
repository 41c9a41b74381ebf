"""Time one distillation step, split into teacher forward, student forward/backward, discriminator and SRP.

    python tools/bench_distill.py [--arch resnet_9blocks] [--size 256] [--width 0.25] [--device cpu]
                                  [--amp none,bf16] [--json out.json]

The SRP share is printed as a fraction of the whole step (target: at most 5%). ``--amp none,bf16`` times the
step with the frozen teacher's forward in FP32 and under ``torch.autocast(dtype=torch.bfloat16)`` (what
``distill.amp: bf16`` does on a CPU with AVX512-BF16 or AMX), prints the teacher's share, the bf16/FP32 step
ratio and the teacher output's largest difference, and says whether this CPU computes bf16 natively (where it
does not, the trainer stays in FP32). ``distill.cache_teacher`` removes the teacher's share altogether.

    python tools/bench_distill.py --cache [--teacher-ngf 128 --student-ngf 16 --size 128 --images 8 --epochs 3]

times the whole training step (the pipeline's Trainer: KD + SRP + reconstruction + GAN) of a small student under a
teacher many times its MACs, without and with the on-disk teacher cache (``distill.cache_teacher``), in one run:
the mean step once the cache is filled against the mean step without it, and the largest difference between the
two runs' logged losses (none with ``--cache-dtype float32``; FP16 rows round the teacher's outputs).
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


class _FixedPairs(torch.utils.data.Dataset):
    """``n`` fixed (input, target) pairs with their index: the same every epoch (no augmentation)."""

    def __init__(self, n: int, size: int):
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        i %= self.n  # the sampler's positions run past the end; the image is the position modulo n
        g = torch.Generator().manual_seed(i)
        x = torch.rand(3, self.size, self.size, generator=g) * 2 - 1
        return {"input": x, "target": torch.tanh(x.flip(1)), "index": i}


def time_cache(args) -> dict:
    """The Trainer without and with the on-disk teacher cache; step times, MACs ratio and loss differences."""
    import tempfile

    from compressor.complexity import profile_model
    from compressor.teacher_cache import DiskTeacherCache
    from compressor.terms import LossesSpec
    from compressor.train import Direction, Trainer, TrainSetup, seed_everything

    torch.manual_seed(0)
    teacher = build_generator(args.arch, ngf=args.teacher_ngf, norm="instance").eval().requires_grad_(False)
    shape = (1, 3, args.size, args.size)
    ratio_macs = profile_model(teacher, shape)["macs"]
    losses = LossesSpec.model_validate(
        {"kd": {"weight": 10}, "recon": {"weight": 100}, "srp": {"weight": 5, "layers": args.layers.split(",")}}
    )
    taps = resolve_taps(teacher, args.layers.split(","))
    steps = args.epochs * args.images // 2
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for cache in (False, True):
            seed_everything(0)
            student = build_generator(args.arch, ngf=args.student_ngf, norm="instance")
            if not cache:
                ratio_macs /= profile_model(student, shape)["macs"]
            out = Path(tmp) / ("cache" if cache else "plain")
            setup = TrainSetup(
                kind="paired",
                directions=[Direction("G", student, teacher, "input", "target")],
                dataset=_FixedPairs(args.images, args.size),
                losses=losses,
                steps=steps,
                batch_size=2,
                seed=0,
                taps=taps,
                srp_layers=list(taps),
                disc_spec={"ndf": 16, "n_layers": 2},
                checkpoint_every=10**6,
                log_every=1,
                sample_every=10**6,
                cache_teacher=cache,
                teacher_cache=DiskTeacherCache(out / "teacher_cache", "bench", args.images, args.cache_dtype)
                if cache
                else None,
            )
            tr = Trainer(setup, out, torch.device("cpu"))
            tr.fit()
            rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            runs[cache] = {"timing": tr.cache_timing(), "rows": rows, "step_times": dict(tr.step_times)}
    plain = runs[False]["step_times"]["computed"]
    plain_step = plain[0] / plain[1]
    cached = runs[True]["timing"]["cached"]
    diffs = [
        abs(a[k] - b[k])
        for a, b in zip(runs[False]["rows"], runs[True]["rows"])
        for k in a
        if k.startswith("G/") or k.startswith("D/")
    ]
    return {
        "teacher_student_macs": ratio_macs,
        "plain_step_s": plain_step,
        "cached_step_s": cached["step_s"],
        "speedup": plain_step / cached["step_s"],
        "teacher_share": {k: v["teacher_share"] for k, v in runs[True]["timing"].items()},
        "max_loss_diff": max(diffs) if diffs else None,
        "steps": steps,
    }


def main_cache(args) -> None:
    load0 = os.getloadavg()[0]
    r = time_cache(args)
    load1 = os.getloadavg()[0]
    flags = cpu_flags()
    isa = " ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f in flags)
    print(
        f"{args.arch} ngf {args.teacher_ngf} teacher -> ngf {args.student_ngf} student at {args.size}², "
        f"{args.images} images, {r['steps']} steps ({args.epochs} epochs), batch 2, cache {args.cache_dtype}; "
        f"CPU ISA: {isa or 'unknown'}; {torch.get_num_threads()} threads; load {load0:.1f} -> {load1:.1f}"
    )
    print(f"teacher/student MACs: {r['teacher_student_macs']:.1f}x")
    print(
        f"step without the cache {r['plain_step_s'] * 1000:.0f} ms, with it (filled) {r['cached_step_s'] * 1000:.0f} ms: "
        f"{r['speedup']:.2f}x faster (target ≥ 3x); the teacher's share of a step: "
        + ", ".join(f"{k} {v:.0%}" for k, v in r["teacher_share"].items() if v is not None)
    )
    print(f"largest difference between the two runs' logged losses: {r['max_loss_diff']:.3g}")
    if args.json:
        Path(args.json).write_text(json.dumps({**r, "load_avg": [load0, load1], "isa": isa}, indent=1))


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
    ap.add_argument("--cache", action="store_true", help="time the Trainer without and with distill.cache_teacher")
    ap.add_argument("--teacher-ngf", type=int, default=128)
    ap.add_argument("--student-ngf", type=int, default=16)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--cache-dtype", default="float16", choices=["float16", "float32"])
    args = ap.parse_args()
    if args.cache:
        if "--size" not in sys.argv:
            args.size = 128
        return main_cache(args)
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
