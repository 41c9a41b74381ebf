"""INT8 against FP32 for the unet_256 width-0.25 student in ONNX Runtime on this CPU: PSNR and latency ratio.

    python tools/bench_export.py [--data ../shared/datasets/facades] [--calib 32] [--teacher-steps 0]

Calibration and test images come from facades (labels -> photo) when present, else the synthetic set. The
student is width-scaled from a unet_256 teacher; with --run RUN_DIR a distilled student is used instead.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from compressor.data import PairedDataset, SyntheticPairedDataset  # noqa: E402
from compressor.models import build_generator, init_weights  # noqa: E402
from compressor.slim import load_student, make_student  # noqa: E402
from exporters.onnx import export_onnx  # noqa: E402
from exporters.quantize import compare_int8, quantize_onnx  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets" / "facades"))
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--run", default=None, help="a run folder whose distilled student to quantise")
    ap.add_argument("--iters", type=int, default=30)
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.run:
        student = load_student(args.run)
    else:
        teacher = build_generator("unet_256", ngf=64, norm="batch", init="kaiming").eval()
        student, _ = make_student(teacher, 0.25, method="rebuild", init="scratch")
        init_weights(student, "kaiming")
        student.eval()
    root = Path(args.data)
    if (root / "train").is_dir():
        train = PairedDataset(root / "train", "BtoA", 256, train=False, max_items=args.calib)
        test = PairedDataset(root / "test", "BtoA", 256, train=False, max_items=8)
        source = f"facades ({root})"
    else:
        train = SyntheticPairedDataset(args.calib, 256, 0)
        test = SyntheticPairedDataset(8, 256, 0, offset=10_000)
        source = "synthetic"
    with tempfile.TemporaryDirectory() as td:
        fp32, int8 = Path(td) / "s.onnx", Path(td) / "s.int8.onnx"
        export_onnx(student, fp32, torch.zeros(1, 3, 256, 256))
        quantize_onnx(fp32, int8, [train[i]["input"][None].numpy() for i in range(len(train))])
        imgs = torch.stack([test[i]["input"] for i in range(len(test))])
        res = compare_int8(fp32, int8, imgs, iters=args.iters)
    print(f"unet_256 width 0.25 student, calibration: {len(train)} images from {source}")
    print(f"  PSNR INT8 vs FP32: {res['psnr_vs_fp32']:.2f} dB (min {res['psnr_min']:.2f}; target ≥ 30)")
    print(f"  ONNX Runtime CPU latency, batch 1: FP32 {res['latency_ms_fp32']:.2f} ms, INT8 {res['latency_ms_int8']:.2f} ms")
    print(f"  latency ratio INT8/FP32: {res['latency_ratio_int8_over_fp32']:.2f}")


if __name__ == "__main__":
    main()
