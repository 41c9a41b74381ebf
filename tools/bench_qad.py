"""INT8 after quantisation-aware distillation (QAD) against post-training quantisation (PTQ), on a run's test set.

    python tools/bench_qad.py RUN_DIR [--size 256] [--iters 50] [--max-images N] [--json out.json] [--trust-code]

RUN_DIR is a run made with ``distill.quantize`` (``student.qad.safetensors``) whose export stage wrote the INT8
files: ``student.int8.onnx`` (PTQ, ONNX Runtime's calibration) and ``student.qad.int8.onnx`` (the trained scales),
and, where ``export.formats`` lists openvino, ``student.int8.xml`` (PTQ, NNCF) and ``student.qad.int8.xml``.
Every model runs over the run's whole test split (the recipe's data section: ground truth from the dataset, e.g.
clean images for ``data.kind: degraded``): the teacher and the FP32 student in PyTorch, each INT8 file in its own
runtime. Per model: PSNR/SSIM against the ground truth, PSNR against the teacher and against the FP32 student, and
the paired difference to the FP32 student against the ground truth with a 95% bootstrap interval over images. Then
each INT8 file is timed in its own process (batch 1 at ``--size``², the profile harness), PTQ and QAD of a runtime
back to back in one run, with the QAD/PTQ latency ratio. The CPU's ISA flags are printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from compressor.data import make_dataset  # noqa: E402
from compressor.exporters.profile import time_artifact  # noqa: E402
from compressor.exporters.runtimes import ort_session  # noqa: E402
from compressor.metrics import paired_metrics  # noqa: E402
from compressor.runfolder import RunDir, load_run_recipe, load_run_student, load_run_teacher  # noqa: E402
from compressor.stats import paired_mean_difference  # noqa: E402
from compressor.train import cpu_flags  # noqa: E402
from compressor.trust import trust_all_code  # noqa: E402

FILES = {  # model name -> (file, backend)
    "ort-int8-ptq": ("student.int8.onnx", "ort-cpu"),
    "ort-int8-qad": ("student.qad.int8.onnx", "ort-cpu"),
    "openvino-int8-ptq": ("student.int8.xml", "openvino"),
    "openvino-int8-qad": ("student.qad.int8.xml", "openvino"),
}


class _Ort(nn.Module):
    def __init__(self, path: Path):
        super().__init__()
        self.sess = ort_session(path)
        self.name = self.sess.get_inputs()[0].name

    def forward(self, x):
        return torch.from_numpy(self.sess.run(None, {self.name: x.cpu().numpy()})[0])


class _OpenVINO(nn.Module):
    def __init__(self, path: Path):
        super().__init__()
        import openvino as ov

        self.model = ov.Core().compile_model(str(path), "CPU")

    def forward(self, x):
        return torch.from_numpy(np.array(self.model(x.cpu().numpy())[0]))


def evaluate(run: RunDir, max_images: int | None) -> dict:
    """Per-image PSNR/SSIM of every model against the ground truth, the teacher and the FP32 student."""
    recipe = load_run_recipe(run)
    ds = make_dataset(recipe.data, recipe.resolve_path(recipe.data.root), "test", recipe.seed, max_items=max_images)
    models: dict[str, nn.Module] = {
        "teacher": load_run_teacher(run).eval(),
        "student-fp32": load_run_student(run).eval(),
    }
    for name, (file, backend) in FILES.items():
        if (run.root / file).exists():
            models[name] = (_Ort if backend == "ort-cpu" else _OpenVINO)(run.root / file)
    per: dict[str, dict[str, list[float]]] = {n: {} for n in models}
    with torch.no_grad():
        for i in range(len(ds)):
            item = ds[i]
            x, gt = item["input"][None], item["target"][None]
            outs = {n: m(x).float() for n, m in models.items()}
            for n, y in outs.items():
                for key, ref in (("gt", gt), ("teacher", outs["teacher"]), ("fp32", outs["student-fp32"])):
                    q = paired_metrics(y, ref)
                    per[n].setdefault(f"psnr_vs_{key}", []).append(float(q["psnr"][0]))
                    if key == "gt":
                        per[n].setdefault("ssim_vs_gt", []).append(float(q["ssim"][0]))
            print(f"  image {i + 1}/{len(ds)}", file=sys.stderr, end="\r")
    return {"n_images": len(ds), "per_image": per}


def summarise(ev: dict) -> dict:
    per, out = ev["per_image"], {}
    base = np.array(per["student-fp32"]["psnr_vs_gt"])
    for name, d in per.items():
        row = {k: float(np.mean(v)) for k, v in d.items()}
        iv = paired_mean_difference(np.array(d["psnr_vs_gt"])[None], base[None])  # one seed, paired by image
        row["minus_fp32_vs_gt"] = [float(iv.estimate), float(iv.lo), float(iv.hi)]
        out[name] = row
    return out


def timings(run: RunDir, size: int, iters: int, input_nc: int, rounds: int = 1) -> tuple[dict, dict]:
    """p50 per file (the median over ``rounds``), and per runtime the QAD/PTQ ratio of each round: PTQ and QAD are
    timed back to back, alternating which goes first, each in its own process, so that the machine's drift between
    rounds (±20% on a shared VM) divides out of the ratio."""
    out: dict = {}
    ratios: dict = {}
    runtimes = sorted({name.rsplit("-int8-", 1)[0] for name in FILES if "-int8-" in name})
    for k in range(rounds):
        for rt in runtimes:
            pair = [f"{rt}-int8-ptq", f"{rt}-int8-qad"]
            got = {}
            for name in pair if k % 2 == 0 else pair[::-1]:
                file, backend = FILES[name]
                path = run.root / file
                if not path.exists():
                    continue
                t = time_artifact(
                    backend, str(path), precision="int8", size=size, input_nc=input_nc, warmup=10, iters=iters
                )
                got[name] = t["latency_ms"]["p50"] if t.get("status") == "ok" else t.get("reason")
                out.setdefault(name, []).append(got[name])
            p, q = got.get(pair[0]), got.get(pair[1])
            if isinstance(p, float) and isinstance(q, float):
                ratios.setdefault(rt, []).append(q / p)
    p50 = {n: float(np.median(v)) if all(isinstance(x, float) for x in v) else v[-1] for n, v in out.items()}
    return p50, ratios


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--max-images", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=5, help="PTQ/QAD timing pairs per runtime (alternating order)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--trust-code", action="store_true", help="allow the run's teacher.json to import its code")
    a = ap.parse_args(argv)
    if a.trust_code:
        trust_all_code()
    run = RunDir(a.run)
    if not run.student_qad.exists():
        print(f"error: {run.root}: no student.qad.safetensors (run the recipe with distill.quantize)", file=sys.stderr)
        return 2
    t0 = time.time()
    ev = evaluate(run, a.max_images)
    summary = summarise(ev)
    input_nc = load_run_recipe(run).data.channels
    lat, ratios = timings(run, a.size, a.iters, input_nc, a.rounds)
    isa = sorted(f for f in cpu_flags() if f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8"))
    print(f"\n{run.root}: {ev['n_images']} test images; CPU flags: {', '.join(isa)}; {time.time() - t0:.0f} s")
    print("| model | PSNR vs GT | minus FP32 vs GT [95%] | SSIM | PSNR vs teacher | PSNR vs FP32 | p50 ms |")
    print("|---|---|---|---|---|---|---|")
    for name, r in summary.items():
        m, lo, hi = r["minus_fp32_vs_gt"]
        p50 = lat.get(name)
        print(
            f"| {name} | {r['psnr_vs_gt']:.3f} | {m:+.3f} [{lo:+.3f}, {hi:+.3f}] | {r['ssim_vs_gt']:.4f} | "
            f"{r['psnr_vs_teacher']:.2f} | {r['psnr_vs_fp32']:.2f} | "
            f"{'' if p50 is None else (f'{p50:.2f}' if isinstance(p50, float) else p50)} |"
        )
    for rt, rs in ratios.items():
        print(
            f"{rt}: QAD/PTQ latency, median of {len(rs)} back-to-back pairs {float(np.median(rs)):.3f} "
            f"(each pair: {', '.join(f'{r:.3f}' for r in rs)}) at {a.size}², batch 1"
        )
    if a.json:
        a.json.write_text(
            json.dumps({"summary": summary, "latency_p50_ms": lat, "qad_over_ptq": ratios, "isa": isa, **ev}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
