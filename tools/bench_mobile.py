"""Phone and board formats on this CPU: size, agreement with PyTorch and latency in each format's own runtime.

    python tools/bench_mobile.py [--data ../shared/datasets/facades] [--size 256] [--calib 16] [--iters 20]
                                 [--threads 1] [--json docs/bench_mobile.json] [--write-docs]
    python tools/bench_mobile.py --from-json docs/bench_mobile.json --write-docs   # re-render only

``--write-docs`` replaces the block between ``<!-- bench_mobile:begin -->`` and ``<!-- bench_mobile:end -->`` in
README.md and docs/benchmarks.md (``tools/bench_all.py`` keeps that block when it rewrites docs/benchmarks.md).

Models: the quickstart's student (resnet_6blocks, ngf 32, width 0.25) and the resnet_9blocks width-0.25 student
(ngf 64 x 0.25), built from the zoo with pix2pix's initialisation (latency does not depend on the weights; no
trained generator ships with the repository), plus two published generators from ``tests/published_nets.py``
(GAN Compression's mobile ResNet and Real-ESRGAN's SRVGGNetCompact), which are exported at FP32 only to show
whether each format takes them. Inputs are facades photos (test split; calibration from the train split).

For every format and precision of the export formats table's phone rows (ExecuTorch, LiteRT, ncnn, Core ML): the
exporter's own check against PyTorch (max abs error for FP32, PSNR for FP16/INT8, on the test photos), the file
size, and p50 latency of batch 1 in the format's runtime, timed in its own process by the profile harness
(``compressor.exporters.profile.time_artifact``). Core ML is converted and validated only (it predicts on macOS). A format
that refuses a model keeps the converter's one-line reason.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
VERSIONS = ("torch", "executorch", "litert-torch", "ai-edge-litert", "ai-edge-quantizer", "ncnn", "pnnx", "coremltools")
PLAN = {  # format -> precisions measured for the zoo students
    "executorch": ("fp32", "int8"),
    "litert": ("fp32", "fp16", "int8"),
    "ncnn": ("fp32", "fp16"),
    "coreml": ("fp16", "int8"),
}


def cpu_flags() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("model name")), "?")
    flags = sorted(set(re.findall(r"\b(avx2|avx512f|avx512_vnni|avx512_bf16|amx_tile|amx_int8|amx_bf16|f16c)\b", text)))
    return f"{model}; {' '.join(flags)}"


def models(size: int) -> list[tuple[str, torch.nn.Module, dict, bool]]:
    """(label, model, torch_ref for the timing harness, all precisions?)"""
    from published_nets import make_mobile_resnet, make_srvgg

    from compressor.models import build_generator
    from compressor.slim import make_student

    out = []
    for label, arch, ngf in (
        ("quickstart student (resnet_6blocks ngf32 w0.25)", "resnet_6blocks", 32),
        ("resnet_9blocks w0.25", "resnet_9blocks", 64),
    ):
        torch.manual_seed(0)
        student, _ = make_student(build_generator(arch, ngf=ngf, norm="instance"), 0.25, "rebuild", "scratch")
        ref = {"type": "zoo", "arch": arch, "kwargs": {"ngf": ngf, "norm": "instance"}, "width": 0.25}
        out.append((label, student.eval(), ref, True))
    torch.manual_seed(0)
    out.append(("GAN Compression mobile ResNet (published)", make_mobile_resnet(9).eval(), None, False))
    out.append(("Real-ESRGAN SRVGGNetCompact (published, x4)", make_srvgg().eval(), None, False))
    return out


def photos(root: Path, split: str, size: int, n: int) -> torch.Tensor:
    from compressor.data import PairedDataset

    ds = PairedDataset(root / split, direction="AtoB", size=size, train=False, max_items=n)  # A: the photo
    return torch.stack([ds[i]["input"] for i in range(min(n, len(ds)))])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "facades")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--calib", type=int, default=16)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default="", help="comma-separated model label prefixes")
    ap.add_argument("--formats", default=",".join(PLAN), help="comma-separated formats")
    ap.add_argument("--json", type=Path, default=ROOT / "docs" / "bench_mobile.json")
    ap.add_argument("--write-docs", action="store_true", help="update README.md and docs/benchmarks.md")
    ap.add_argument("--from-json", type=Path, nargs="+", help="render saved results (rows joined) instead of measuring")
    args = ap.parse_args()
    if args.from_json:
        docs = [json.loads(p.read_text()) for p in args.from_json]
        doc = {**docs[0], "rows": [r for d in docs for r in d["rows"]]}
        doc["command"] = "; ".join(dict.fromkeys(d["command"] for d in docs))
        doc["load_average_at_end"] = max((d["load_average_at_end"] for d in docs), key=lambda v: float(v[0]))
        print(markdown(doc))
        if args.write_docs:
            write_docs(markdown(doc))
        return 0
    torch.set_num_threads(args.threads)

    from compressor.errors import ExportError
    from compressor.exporters.export import FORMATS
    from compressor.exporters.profile import environment, time_artifact

    samples = photos(args.data, "test", args.size, args.samples)
    calib = [x[None].numpy() for x in photos(args.data, "train", args.size, args.calib)]
    rows = []
    work = Path(tempfile.mkdtemp(prefix="bench-mobile-"))
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    env = environment(args.threads)

    def save() -> dict:  # after every row: a run cut short keeps what it measured
        load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
        doc = {
            "date": started,
            "cpu": cpu_flags(),
            "threads": args.threads,
            "load_average_at_end": load,
            "size": args.size,
            "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
            "versions": {k: _version(k) for k in VERSIONS},
            "environment": env,
            "rows": rows,
        }
        args.json.write_text(json.dumps(doc, indent=1))
        return doc

    for label, model, ref, full in models(args.size):
        if args.only and not any(label.startswith(p) for p in args.only.split(",")):
            continue
        x = samples
        if ref is not None:  # PyTorch eager, for scale
            t = time_artifact("torch", None, torch_ref=ref, size=args.size, iters=args.iters, threads=args.threads)
            rows.append(
                {
                    "model": label,
                    "format": "torch (eager)",
                    "precision": "fp32",
                    "status": "ok",
                    "bytes": sum(p.numel() * 4 for p in model.parameters()),
                    "p50_ms": t.get("latency_ms", {}).get("p50"),
                    "reason": t.get("reason", ""),
                }
            )
        for fmt_name, precisions in PLAN.items():
            if fmt_name not in args.formats.split(","):
                continue
            fmt = FORMATS[fmt_name]
            for prec in precisions if full else precisions[:1]:
                row = {"model": label, "format": fmt_name, "precision": prec}
                path = fmt.path(work, re.sub(r"\W+", "_", label)[:40], prec)
                t0 = time.perf_counter()
                try:
                    # min_psnr 0: the number is recorded whatever it is; the table compares it with 30 dB
                    from importlib import import_module

                    exporter = getattr(import_module(f"compressor.exporters.{fmt_name}"), f"export_{fmt_name}")
                    rec = exporter(
                        model, path, x, precision=prec, calibration=calib, min_psnr=0.0, metadata={"benchmark": label}
                    )
                except ExportError as exc:
                    rows.append({**row, "status": "refused", "reason": str(exc)})
                    save()
                    print(f"{label} {fmt_name} {prec}: refused: {exc}", flush=True)
                    continue
                par = rec["parity"]
                row.update(
                    status="ok",
                    bytes=rec["bytes"],
                    max_abs=par.get("max_abs"),
                    psnr=par.get("psnr_min"),
                    export_s=round(time.perf_counter() - t0, 1),
                    notes=rec.get("notes", []),
                )
                if "int8_weight_share" in rec:
                    row["int8_weight_share"] = rec["int8_weight_share"]
                if fmt_name == "coreml":
                    row["reason"] = "converted and spec-checked; predicts on macOS only"
                else:
                    t = time_artifact(
                        fmt.backend,
                        str(path.parent / rec["path"]),
                        precision=prec,
                        size=args.size,
                        input_nc=x.shape[1],
                        iters=args.iters,
                        threads=args.threads,
                    )
                    row["p50_ms"] = t.get("latency_ms", {}).get("p50")
                    if t.get("status") != "ok":
                        row["reason"] = t.get("reason", "")
                rows.append(row)
                save()
                print(json.dumps(row), flush=True)
    doc = save()
    print(markdown(doc))
    if args.write_docs:
        write_docs(markdown(doc))
    return 0


BEGIN, END = "<!-- bench_mobile:begin -->", "<!-- bench_mobile:end -->"


def replace_block(text: str, block: str, heading: str) -> str:
    """``text`` with the marked block replaced (or appended under ``heading`` where it has none)."""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        return head + BEGIN + "\n" + block + END + rest.split(END, 1)[1]
    return text.rstrip("\n") + f"\n\n{heading}\n\n{BEGIN}\n{block}{END}\n"


def write_docs(block: str) -> None:
    block = "Generated by `python tools/bench_mobile.py --write-docs`.\n\n" + block
    for path, heading in (
        (ROOT / "README.md", "### Phones and boards"),
        (ROOT / "docs" / "benchmarks.md", "## Phones and boards"),
    ):
        path.write_text(replace_block(path.read_text(), block, heading))


def _version(pkg: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "not installed"


def markdown(doc: dict) -> str:
    lines = [
        f"Measured {doc['date']} on {doc['cpu']}; {doc['threads']} thread(s), batch 1, {doc['size']}² "
        f"(load average at the end: {' '.join(doc['load_average_at_end'])}; the machine was shared, so latencies "
        f"are indicative). Command: `{doc['command']}`. Versions: "
        + ", ".join(f"{k} {v}" for k, v in doc["versions"].items())
        + ".",
        "",
        "Weights: pix2pix's initialisation (no trained generator ships with the repository; latency does not depend "
        "on the weights, agreement does somewhat). Inputs: 4 facades test photos; INT8 calibration: 16 facades train "
        "photos. FP32 rows must agree with PyTorch within 1e-3 max abs, FP16/INT8 rows within 30 dB PSNR of PyTorch "
        "FP32 (the limits the exporters enforce). Published generators: FP32 only, to show whether each format takes "
        "them; **refused** rows give the converter's or the exporter's reason.",
        *(["", doc["remark"]] if doc.get("remark") else []),
        "",
        "| model | format | precision | size | max abs vs PyTorch | PSNR vs PyTorch FP32 | p50 ms (own runtime) | note |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in doc["rows"]:
        size = f"{r['bytes'] / 2**20:.2f} MB" if r.get("bytes") else ""
        mx = f"{r['max_abs']:.1e}" if r.get("max_abs") is not None else ""
        ps = r.get("psnr")
        ps = "" if ps is None else ("inf" if ps == float("inf") else f"{ps:.1f} dB")
        p50 = f"{r['p50_ms']:.1f}" if r.get("p50_ms") else ""
        note = (
            r.get("reason", "")
            if r["status"] != "ok"
            else "; ".join(
                [n.split(" (")[0] for n in r.get("notes", [])]
                + ([f"{r['int8_weight_share']:.0%} of weight bytes INT8"] if "int8_weight_share" in r else [])
                + ([r["reason"]] if r.get("reason") else [])
            )
        )
        status = "" if r["status"] == "ok" else f"**{r['status']}**: "
        lines.append(
            f"| {r['model']} | {r['format']} | {r['precision']} | {size} | {mx} | {ps} | {p50} | "
            f"{status}{note.replace('|', '/')} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
