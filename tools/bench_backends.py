"""ONNX Runtime against OpenVINO on this CPU, FP32 and INT8, for the width-0.25 students: latency and INT8 quality.

    python tools/bench_backends.py [--data ../shared/datasets/facades] [--calib 8] [--iters 30] [--threads 2]
                                   [--families resnet_in,resnet_bn,unet] [--train-steps N] [--json out.json]

For each width-0.25 student (resnet_9blocks with InstanceNorm and with BatchNorm, unet_256; 256², batch 1) it
exports one FP32 ONNX and derives from that same file: ONNX Runtime INT8 (``compressor.exporters.quantize.quantize_onnx``,
QDQ, per-channel weights), the OpenVINO FP32 IR, and the OpenVINO INT8 IR (NNCF post-training quantisation on
``--calib`` facades train images). Each file is timed in its own process with the profile harness
(``compressor.exporters.profile.time_artifact``), one after another in one run, so the ratios compare like with like.
OpenVINO FP32 is compiled with ``INFERENCE_PRECISION_HINT=f32`` (FP32 means FP32; on CPUs with AVX-512 BF16/AMX
OpenVINO would otherwise run BF16): the FP16 IR, which runs at the device default (BF16 here), is timed as well.

Quality: PSNR of each INT8 file's output against the FP32 ONNX's on facades test photos (the A halves). The students
are the students as built (random kaiming weights, BatchNorm statistics from the calibration images, as in
``tools/bench_export.py``): latency does not depend on the weights; an untrained network's INT8 PSNR is a
pessimistic proxy for a distilled one's. With ``--train-steps N`` each student's architecture (the zoo network at
ngf 16, which is what width 0.25 rebuilds) is first trained N pix2pix steps on the facades photos (photo -> labels,
256², the toolkit's own teacher stage), so the quantisers see a trained network's activations.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = {
    "resnet_in": ("resnet_9blocks", "instance"),
    "resnet_bn": ("resnet_9blocks", "batch"),
    "unet": ("unet_256", "batch"),
}
COLUMNS = (  # key, backend, kind of file, label
    ("ort_fp32", "ort-cpu", "onnx", "ORT FP32"),
    ("ort_int8", "ort-cpu", "int8-onnx", "ORT INT8"),
    ("ov_fp32", "openvino", "openvino", "OpenVINO FP32"),
    ("ov_fp16", "openvino", "fp16-openvino", "OpenVINO FP16 (runs BF16)"),
    ("ov_int8", "openvino", "int8-openvino", "OpenVINO INT8"),
)


def photos(data: Path, calib: int, tests: int):
    """(calibration, test) facades photos (the A halves) as (1, 3, 256, 256) arrays in [-1, 1]."""
    from compressor.data import PairedDataset

    train = PairedDataset(data / "train", "AtoB", 256, train=False, max_items=calib)
    test = PairedDataset(data / "test", "AtoB", 256, train=False, max_items=tests)
    return [train[i]["input"][None].numpy() for i in range(len(train))], [
        test[i]["input"][None].numpy() for i in range(len(test))
    ]


def outputs(backend: str, path: Path, xs: list[np.ndarray]) -> list[np.ndarray]:
    from compressor.exporters.runtimes import make_runner

    runner = make_runner(backend, path, threads=1)
    return [runner(x) for x in xs]


def trained_student(arch: str, norm: str, steps: int, data: Path, work: Path):
    """The width-0.25 student's architecture (``arch`` at ngf 16) trained ``steps`` pix2pix steps on the facades
    photos (AtoB: photo -> labels, 256², batch 1) by the toolkit's teacher stage; its parameters are checked
    against the rebuilt width-0.25 student's."""
    from bench_export import build_student

    from compressor.app.pipeline import RunOptions, run_pipeline
    from compressor.recipe import parse_recipe
    from compressor.runfolder import RunDir, load_run_teacher

    text = (
        f"name: {arch}-{norm}-ngf16-{steps}\n"
        f"data: {{kind: paired, root: {data}, direction: AtoB, size: 256}}\n"
        f"teacher: {{arch: {arch}, kwargs: {{ngf: 16, norm: {norm}}}, train: {{steps: {steps}}}}}\n"
        f"distill: {{log_every: 50, checkpoint_every: {steps}, sample_every: {steps}}}\n"
    )
    recipe = parse_recipe(text, source="bench_backends", base_dir=work)
    run_pipeline(recipe, work / "runs", RunOptions(only=["teacher"]))
    net = load_run_teacher(RunDir(work / "runs" / recipe.name)).eval()
    want = sum(p.numel() for p in build_student(arch, norm)[1].parameters())
    got = sum(p.numel() for p in net.parameters())
    if got != want:
        raise SystemExit(f"{arch} ngf 16 has {got} parameters, the width-0.25 student {want}")
    return net


def run_family(key: str, args, calib, tests, work: Path) -> dict:
    from bench_export import build_student, set_batchnorm_statistics

    from compressor.exporters.export import FORMATS
    from compressor.exporters.formats.openvino import psnr
    from compressor.exporters.profile import time_artifact

    arch, norm = FAMILIES[key]
    if args.train_steps:
        student = trained_student(arch, norm, args.train_steps, Path(args.data), work)
    else:
        _, student = build_student(arch, norm)
        set_batchnorm_statistics(student, calib)
    d = work / key
    d.mkdir(parents=True, exist_ok=True)
    samples = np.concatenate(tests[:3])
    files, export_s = {}, {}
    t0 = time.perf_counter()
    files["onnx"] = FORMATS["onnx"].path(d, "student", "fp32")
    FORMATS["onnx"].exporter(student, files["onnx"], samples, size=256)
    export_s["onnx"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    files["int8-onnx"] = FORMATS["onnx"].path(d, "student", "int8")
    FORMATS["onnx"].exporter(student, files["int8-onnx"], samples, precision="int8", size=256, calibration=calib)
    export_s["int8-onnx"] = time.perf_counter() - t0
    for prec, kind in (("fp32", "openvino"), ("fp16", "fp16-openvino"), ("int8", "int8-openvino")):
        t0 = time.perf_counter()
        files[kind] = FORMATS["openvino"].path(d, "student", prec)
        FORMATS["openvino"].exporter(
            student,
            files[kind],
            samples,
            precision=prec,
            size=256,
            calibration=calib if prec == "int8" else None,
            onnx_path=files["onnx"],
        )
        export_s[kind] = time.perf_counter() - t0
    res: dict = {"arch": arch, "norm": norm, "export_seconds": export_s, "latency_ms": {}, "bytes": {}}
    for col, backend, kind, _ in COLUMNS:
        r = time_artifact(backend, str(files[kind]), size=256, warmup=5, iters=args.iters, threads=args.threads)
        if r.get("status") != "ok":
            raise SystemExit(f"{key} {col}: {r.get('reason')}")
        res["latency_ms"][col] = {k: r["latency_ms"][k] for k in ("p50", "p90", "mean", "min")}
        path = files[kind]
        res["bytes"][col] = path.stat().st_size + (
            path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else 0
        )
    ref = outputs("ort-cpu", files["onnx"], tests)
    for col, backend, kind in (("ort_int8", "ort-cpu", "int8-onnx"), ("ov_int8", "openvino", "int8-openvino")):
        vals = [psnr(a, b) for a, b in zip(ref, outputs(backend, files[kind], tests))]
        res.setdefault("psnr_vs_fp32", {})[col] = {"mean": float(np.mean(vals)), "min": float(np.min(vals))}
    fp32 = res["latency_ms"]["ort_fp32"]["p50"]
    res["speedup_vs_ort_fp32"] = {c: fp32 / res["latency_ms"][c]["p50"] for c, *_ in COLUMNS}
    return res


def markdown(doc: dict) -> str:
    cpu = doc["cpu"]
    lines = [
        f"{time.strftime('%Y-%m-%d', time.gmtime(doc['created']))}, {cpu['model']}, {cpu['cores']} cores "
        f"({', '.join(cpu['isa'])}), {doc['threads']} thread(s), p50 of {doc['iters']} runs at 256², batch 1; "
        f"load average {doc['load_avg_before']:.1f} before, {doc['load_avg_after']:.1f} after"
        + (" (measured while other jobs shared the machine)" if doc["load_avg_before"] > 0.5 else ""),
        "",
        "| student | "
        + " | ".join(label for *_, label in COLUMNS)
        + " | OV INT8 vs ORT FP32 | PSNR INT8 vs FP32 (OV / ORT) |",
        "|---|" + "---|" * (len(COLUMNS) + 2),
    ]
    for r in doc["families"].values():
        lat = r["latency_ms"]
        sp = r["speedup_vs_ort_fp32"]
        cells = [f"{lat[c]['p50']:.1f} ms" + ("" if c == "ort_fp32" else f" ({sp[c]:.2f}×)") for c, *_ in COLUMNS]
        q = r["psnr_vs_fp32"]
        lines.append(
            f"| {r['arch']} {r['norm']} w0.25{' trained ' + str(doc['train_steps']) + ' steps' if doc.get('train_steps') else ''} | "
            + " | ".join(cells)
            + f" | {sp['ov_int8']:.2f}× | {q['ov_int8']['mean']:.1f} dB (min {q['ov_int8']['min']:.1f}) / "
            f"{q['ort_int8']['mean']:.1f} dB |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "facades"))
    ap.add_argument("--calib", type=int, default=8)
    ap.add_argument("--tests", type=int, default=8)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--train-steps", type=int, default=0, help="train each student N pix2pix steps first")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from bench_export import cpu_info

    calib, tests = photos(Path(args.data), args.calib, args.tests)
    doc = {
        "created": time.time(),
        "cpu": cpu_info(),
        "threads": args.threads,
        "iters": args.iters,
        "calibration_images": len(calib),
        "test_images": len(tests),
        "train_steps": args.train_steps,
        "load_avg_before": os.getloadavg()[0],
        "families": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as td:
        for key in args.families.split(","):
            doc["families"][key] = run_family(key, args, calib, tests, Path(td))
            print(f"{key}: " + json.dumps(doc["families"][key]["speedup_vs_ort_fp32"]), flush=True)
    doc["load_avg_after"] = os.getloadavg()[0]
    print(markdown(doc))
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
