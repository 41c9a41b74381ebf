"""Reports: merge profile and evaluation JSONs from any number of machines into report.md and a self-contained
report.html (plots embedded as PNG data URIs)."""
from __future__ import annotations

import base64
import html
import io
import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Optional

from compressor.errors import UserError

log = logging.getLogger(__name__)


PROFILE_ROW_KEYS = ("model", "backend", "batch", "size")


def _load(path: str | Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise UserError(f"{path}: not valid JSON ({str(exc)[:160]})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None


def classify(paths: list[str | Path]) -> tuple[list[dict], list[dict], list[dict]]:
    """Split JSON files into profile, eval and export documents by their content."""
    profiles, evals, exports = [], [], []
    for p in paths:
        doc = _load(p)
        if isinstance(doc, dict) and str(doc.get("schema", "")).startswith("compressor.profile"):
            rows = doc.get("results", [])
            for i, r in enumerate(rows if isinstance(rows, list) else [None]):
                missing = [k for k in PROFILE_ROW_KEYS if not isinstance(r, dict) or k not in r]
                if missing:
                    raise UserError(f"{p}: results[{i}] lacks {', '.join(repr(k) for k in missing)}; not a profile "
                                    f"row written by compress profile")
            profiles.append(doc)
        elif isinstance(doc, dict) and "teacher" in doc and "student" in doc:
            evals.append(doc)
        elif isinstance(doc, dict) and "onnx" in doc:
            exports.append(doc)
        else:
            raise UserError(f"{p}: neither a profile.json, an eval.json nor an export.json")
    return profiles, evals, exports


def _fmt(v, digits=3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if v != v:
            return "–"
        return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _g(n) -> str:
    return "–" if n is None else f"{n / 1e9:.3g} G"


def _table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_fmt(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows]
    return "\n".join(out)


def _rows_by_config(profiles: list[dict]):
    """{(model, role, backend, batch, size, precision): {machine: row}} and the machine list."""
    table = defaultdict(dict)
    machines = []
    for doc in profiles:
        m = doc.get("environment", {}).get("machine", "machine")
        if m in machines:
            k = 2
            while f"{m} ({k})" in machines:
                k += 1
            m = f"{m} ({k})"
        machines.append(m)
        for r in doc.get("results", []):
            key = (r["model"], r.get("role", "model"), r["backend"], r["batch"], r["size"], r.get("precision", "fp32"))
            table[key][m] = r
    return table, machines


def speedups(profiles: list[dict]) -> list[dict]:
    """Student-over-teacher speed-up per (machine, backend, batch, size, precision), with the MAC ratio."""
    table, machines = _rows_by_config(profiles)
    out = []
    by = defaultdict(dict)
    for (model, role, backend, batch, size, prec), per in table.items():
        for m, r in per.items():
            if r.get("status") == "ok":
                by[(m, backend, batch, size, prec)][role] = r
    for (m, backend, batch, size, prec), roles in by.items():
        t, s = roles.get("teacher"), roles.get("student")
        if t and s:
            mac_ratio = (t["macs"] / s["macs"]) if t.get("macs") and s.get("macs") else None
            out.append({"machine": m, "backend": backend, "batch": batch, "size": size, "precision": prec,
                        "teacher_ms": t["latency_ms"]["p50"], "student_ms": s["latency_ms"]["p50"],
                        "speedup": t["latency_ms"]["p50"] / s["latency_ms"]["p50"], "mac_reduction": mac_ratio})
    return out


# ------------------------------------------------------------------------------------------------ plots


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def make_plots(profiles: list[dict], evals: list[dict]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = {}
    table, machines = _rows_by_config(profiles)
    ok = [(k, m, r) for k, per in table.items() for m, r in per.items() if r.get("status") == "ok"]
    if ok:
        fig, ax = plt.subplots(figsize=(8, 0.45 * len(ok) + 1.2))
        labels = [f"{k[0]} · {k[2]} · b{k[3]} · {k[4]}² · {k[5]}\n{m}" for k, m, _ in ok]
        vals = [r["latency_ms"]["p50"] for _, _, r in ok]
        errs = [max(0.0, r["latency_ms"]["p90"] - r["latency_ms"]["p50"]) for _, _, r in ok]
        colors = ["#d62728" if k[1] == "teacher" else "#1f77b4" for k, _, _ in ok]
        ax.barh(range(len(ok)), vals, xerr=errs, color=colors)
        ax.set_yticks(range(len(ok)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("latency p50 (ms), whisker to p90")
        ax.set_title("Latency per model, backend and machine (red: teacher, blue: student)")
        plots["latency"] = _png(fig)
    sp = speedups(profiles)
    if sp and any(s["mac_reduction"] for s in sp):
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        for s in sp:
            if s["mac_reduction"]:
                ax.scatter(s["mac_reduction"], s["speedup"], s=40)
                ax.annotate(f"{s['backend']} b{s['batch']}", (s["mac_reduction"], s["speedup"]), fontsize=7)
        hi = max(max(s["mac_reduction"] or 1 for s in sp), max(s["speedup"] for s in sp)) * 1.1
        ax.plot([1, hi], [1, hi], "k--", lw=0.8, label="speed-up = MAC reduction")
        ax.set_xlabel("MAC reduction (teacher / student)")
        ax.set_ylabel("measured speed-up (p50)")
        ax.legend(fontsize=8)
        ax.set_title("Speed-up against MAC reduction")
        plots["speedup"] = _png(fig)
    if evals and ok:
        ev = evals[0]
        metric = "psnr" if "psnr" in ev["student"] else ("fid" if "fid" in ev["student"] else None)
        points = []
        for k, m, r in ok:
            if metric and k[1] in ("teacher", "student") and metric in ev[k[1]]:
                points.append((r["latency_ms"]["p50"], ev[k[1]][metric], f"{k[1]} {k[2]} b{k[3]}"))
        if points:
            fig, ax = plt.subplots(figsize=(5.5, 4.5))
            for x, y, lab in points:
                ax.scatter(x, y, s=40, color="#d62728" if lab.startswith("teacher") else "#1f77b4")
                ax.annotate(lab, (x, y), fontsize=7)
            ax.set_xscale("log")
            ax.set_xlabel("latency p50 (ms, log)")
            ax.set_ylabel(metric.upper() + (" (higher is better)" if metric == "psnr" else " (lower is better)"))
            ax.set_title("Quality against latency")
            plots["pareto"] = _png(fig)
    return plots


# ------------------------------------------------------------------------------------------------ documents


def build_markdown(profiles: list[dict], evals: list[dict], exports: list[dict], title: str,
                   samples: Optional[str] = None) -> str:
    lines = [f"# {title}", ""]
    ev = evals[0] if evals else None
    sp = speedups(profiles)
    if ev:
        t, s = ev["teacher"], ev["student"]
        lines += ["## Teacher against student", ""]
        rows = [["params", _fmt(t.get("params")), _fmt(s.get("params")),
                 f"{t['params'] / s['params']:.1f}× fewer" if t.get("params") and s.get("params") else "–"],
                ["MACs (ours: ConvTranspose by input size)", _g(t.get("macs")), _g(s.get("macs")),
                 f"{t['macs'] / s['macs']:.1f}× fewer" if t.get("macs") and s.get("macs") else "–"],
                ["MACs (paper convention: by output size)", _g(t.get("macs_paper_convention")),
                 _g(s.get("macs_paper_convention")), "–"]]
        for x in sp:
            rows.append([f"latency p50, {x['backend']} b{x['batch']} {x['size']}² ({x['machine']})",
                         f"{x['teacher_ms']:.2f} ms", f"{x['student_ms']:.2f} ms",
                         f"{x['speedup']:.1f}× faster (MACs {x['mac_reduction']:.1f}×)" if x["mac_reduction"]
                         else f"{x['speedup']:.1f}× faster"])
        for k, label, better in (("psnr", "PSNR vs ground truth (dB)", "higher"),
                                 ("ssim", "SSIM vs ground truth", "higher"), ("l1", "L1 vs ground truth", "lower"),
                                 ("fid", "FID", "lower"), ("kid", "KID", "lower")):
            if k in t or k in s:
                pct = ev.get("student_pct_of_teacher", {}).get(k)
                rows.append([f"{label} ({better} is better)", _fmt(t.get(k)), _fmt(s.get(k)),
                             f"student at {pct}% of teacher" if pct else "–"])
        if "psnr_vs_teacher" in s:
            rows.append(["student PSNR against the teacher's output (dB)", "–", _fmt(s["psnr_vs_teacher"]), "–"])
        lines += [_table(["", "teacher", "student", "change"], rows), ""]
        lines.append(f"Evaluated on {ev.get('n_images')} test images at {ev.get('size')}². " +
                     (f"FID/KID skipped: {ev['fid_skipped']}" if ev.get("fid_skipped") else
                      (f"FID weights: {ev.get('fid_weights')}." if ev.get("fid_weights") else "")))
        lines.append("")
    elif sp:
        lines += ["## Speed-up", "", _table(["machine", "backend", "batch", "size", "teacher ms", "student ms",
                                             "speed-up", "MAC reduction"],
                                            [[x["machine"], x["backend"], x["batch"], x["size"], x["teacher_ms"],
                                              x["student_ms"], f"{x['speedup']:.1f}×",
                                              f"{x['mac_reduction']:.1f}×" if x["mac_reduction"] else "–"]
                                             for x in sp]), ""]
    if profiles:
        table, machines = _rows_by_config(profiles)
        lines += ["## Latency", "", "p50 (p90) in ms per machine; each configuration was timed in its own process.",
                  ""]
        header = ["model", "backend", "batch", "size", "precision"] + machines
        rows, missing = [], []
        for key in sorted(table, key=lambda k: (k[2], k[3], k[4], k[1], k[0])):
            per = table[key]
            cells = []
            for m in machines:
                r = per.get(m)
                if r is None:
                    cells.append("–")
                elif r.get("status") == "ok":
                    lat = r["latency_ms"]
                    cells.append(f"{lat['p50']:.2f} ({lat['p90']:.2f})")
                else:
                    cells.append(r.get("status", "?"))
                    missing.append((key, m, r.get("reason", "")))
            rows.append([key[0], key[2], key[3], key[4], key[5]] + cells)
        lines += [_table(header, rows), ""]
        if missing:
            lines += ["Not measured:", ""]
            seen = set()
            for key, m, reason in missing:
                if (key[2], reason) in seen:
                    continue
                seen.add((key[2], reason))
                lines.append(f"- {key[2]} ({key[5]}): {reason}")
            lines.append("")
        lines += ["## Machines", ""]
        for doc, m in zip(profiles, machines):
            e = doc.get("environment", {})
            peak = e.get("gemm_peak_macs_per_s")
            lines.append(f"- **{m}**: {e.get('cpu')}, {e.get('cores')} cores, {e.get('threads')} threads"
                         + (f", GPU {e['gpu']}" if e.get("gpu") else "")
                         + f"; torch {e.get('torch_version')}, onnxruntime {e.get('onnxruntime_version')}"
                         + (f", TensorRT {e['tensorrt_version']}" if e.get("tensorrt_version") else "")
                         + (f"; FP32 GEMM peak {peak / 1e9:.1f} GMAC/s" if peak and peak == peak else ""))
        lines.append("")
    for ex in exports:
        lines += ["## Export", ""]
        for name, info in ex.get("onnx", {}).items():
            par = info["parity"]
            lines.append(f"- {info['path']}: {info['bytes'] / 2**20:.2f} MiB; parity against PyTorch: max abs error "
                         f"{par['max_abs']:.2e} over {len(par['cases'])} input shapes (tolerance {par['tolerance']:g})"
                         f" — {'passed' if par['passed'] else 'FAILED'}")
        if "int8" in ex:
            q = ex["int8"]
            lines.append(f"- {q['path']}: PSNR against FP32 {q['psnr_vs_fp32']:.1f} dB; ONNX Runtime CPU latency "
                         f"{q['latency_ms_int8']:.2f} ms vs {q['latency_ms_fp32']:.2f} ms FP32 (ratio "
                         f"{q['latency_ratio_int8_over_fp32']:.2f})")
        if "tensorrt_lint" in ex:
            lint = ex["tensorrt_lint"]
            lines.append(f"- TensorRT {lint['target']} compatibility lint: "
                         + ("no problems" if not lint["problems"] else f"{len(lint['problems'])} problem(s)"))
        for note in ex.get("notes", []):
            lines.append(f"- {note}")
        lines.append("")
    if samples:
        lines += ["## Samples", "", "input | teacher | student | target", "", f"![samples]({samples})", ""]
    lines += ["MACs are counted with torch's FlopCounterMode (MACs = FLOPs / 2), ConvTranspose by input size; the "
              "paper convention counts it by output size, as GAN-compression papers do.", ""]
    return "\n".join(lines)


def build_html(markdown_text: str, plots: dict[str, str], title: str, samples_png: Optional[bytes] = None) -> str:
    """A self-contained page: the markdown rendered to simple HTML, plus embedded plots."""
    body = []
    in_table = False
    for line in markdown_text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(set(c) <= {"-"} for c in cells):
                continue
            if not in_table:
                body.append("<table>")
                body.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cells) + "</tr>")
                in_table = True
                continue
            body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("!["):
            if samples_png:
                body.append(f'<img alt="samples" src="data:image/png;base64,{base64.b64encode(samples_png).decode()}">')
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:]).replace('**', '')}</li>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    figs = "".join(f'<figure><img alt="{k}" src="data:image/png;base64,{v}"><figcaption>{k}</figcaption></figure>'
                   for k, v in plots.items())
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}"
             "th{background:#f3f3f3}figure{display:inline-block;margin:1em}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}<h2>Plots</h2>{figs}</body></html>")


def write_report(profile_files: list, eval_files: list, out_dir: str | Path, title: str = "compressor report",
                 export_files: list = (), samples: Optional[Path] = None) -> tuple[Path, Path]:
    paths = list(profile_files) + list(eval_files) + list(export_files)
    profiles, evals, exports = classify(paths)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rel = None
    if samples and Path(samples).exists():
        try:
            rel = str(Path(samples).resolve().relative_to(out.resolve()))
        except ValueError:
            rel = str(Path(samples).resolve())
    md = build_markdown(profiles, evals, exports, title, rel)
    plots = make_plots(profiles, evals)
    from compressor.io import atomic_write_text

    md_path, html_path = out / "report.md", out / "report.html"
    atomic_write_text(md_path, md)
    atomic_write_text(html_path, build_html(md, plots, title, Path(samples).read_bytes() if rel else None))
    return md_path, html_path


def report_run(run) -> tuple[Path, Path]:
    files = [f for f in (run.profile_json, run.eval_json, run.export_json) if f.exists()]
    return write_report([f for f in files if f == run.profile_json], [f for f in files if f == run.eval_json],
                        run.root, f"compressor report: {run.root.name}",
                        [f for f in files if f == run.export_json], run.eval_samples)
