"""Reports: merge profile and evaluation JSONs from any number of machines into report.md and a self-contained
report.html (plots embedded as PNG data URIs)."""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Optional

from compressor import schemas
from compressor.errors import UserError
from compressor.io import atomic_write_bytes, atomic_write_text, confined

log = logging.getLogger(__name__)


PROFILE_ROW_KEYS = ("model", "backend", "batch", "size")


def _load(path: str | Path) -> dict:
    return schemas.read_json(path)  # bounded size and depth; one line naming the file otherwise


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
                    raise UserError(
                        f"{p}: results[{i}] lacks {', '.join(repr(k) for k in missing)}; not a profile "
                        f"row written by compress profile"
                    )
            profiles.append(schemas.check(doc, schemas.ProfileDoc, str(p)))
        elif isinstance(doc, dict) and "teacher" in doc and "student" in doc:
            evals.append(schemas.check(doc, schemas.EvalDoc, str(p)))
        elif isinstance(doc, dict) and "onnx" in doc:
            exports.append(schemas.check(doc, schemas.ExportDoc, str(p)))
        else:
            raise UserError(f"{p}: neither a profile.json, an eval.json nor an export.json")
    return profiles, evals, exports


NOISY_RATIO = 1.5  # p90 / p50 above this: the measurement is marked noisy
SMALL_FID_N = 1000  # FID/KID from fewer images carry a caveat
SMALL_N_NOTE = "compare rows with each other, not with published FIDs"
TEACHER_COLOR, STUDENT_COLOR, OTHER_COLOR = "#d62728", "#1f77b4", "#7f7f7f"

METRICS = (  # key, label, decimals (None: a count), which way is better
    ("params", "params", None, "lower"),
    ("macs", "MACs", None, "lower"),
    ("fid", "FID", 1, "lower"),
    ("kid", "KID", 4, "lower"),
    ("psnr", "PSNR, dB", 1, "higher"),
    ("ssim", "SSIM", 3, "higher"),
    ("l1", "L1", 3, "lower"),
    ("psnr_vs_teacher", "PSNR against the teacher, dB", 1, "higher"),
    ("ssim_vs_teacher", "SSIM against the teacher", 3, "higher"),
)
_DECIMALS = {k: d for k, _, d, _ in METRICS}
_BETTER = {k: b for k, _, _, b in METRICS}


def sig(v, n: int = 3) -> str:
    """``v`` with ``n`` significant digits and its trailing zeros (18.0, 18.4, 202, 0.0123); "–" when absent."""
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        return "–"
    if math.isinf(v):
        return "∞" if v > 0 else "-∞"
    if v == 0:
        return "0"
    decimals = max(0, n - 1 - int(math.floor(math.log10(abs(v)))))
    return f"{v:,.{decimals}f}"


def _output_note(ev: dict) -> str:
    """ " (output 128²)" when the network's output is larger or smaller than its input (super-resolution)."""
    out, size = ev.get("output_size"), ev.get("size")
    if not isinstance(out, list) or len(out) != 2 or out == [size, size]:
        return ""
    return f" (output {out[0]}²)" if out[0] == out[1] else f" (output {out[0]}×{out[1]})"


def metric_text(key: str, v) -> str:
    """A metric with the same number of decimals wherever it appears (PSNR 18.0 beside 18.4, never 18)."""
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        return "–"
    if key == "params":
        return f"{v:,}" if isinstance(v, int) else sig(v)
    if key == "macs":
        return f"{sig(v / 1e9)} G"
    d = _DECIMALS.get(key)
    return f"{v:.{d}f}" if d is not None else sig(v)


def change_text(key: str, teacher, student) -> str:
    """Student against teacher wherever both exist: ×-fold for size; difference, direction and % for quality."""
    ok = [isinstance(v, (int, float)) and v == v for v in (teacher, student)]
    if not all(ok):
        return "–"
    if key in ("params", "macs"):
        return f"{teacher / student:.1f}× fewer" if student else "–"
    diff = student - teacher
    d = _DECIMALS.get(key) or 3
    if round(diff, d) == 0:
        word = "same"
    else:
        word = "better" if (diff > 0) == (_BETTER.get(key, "higher") == "higher") else "worse"
    pct = f", {100 * student / teacher:.0f}% of teacher" if _BETTER.get(key) == "higher" and teacher else ""
    return f"{diff:+.{d}f} ({word}{pct})"


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return sig(v)
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _g(n) -> str:
    return "–" if n is None else f"{sig(n / 1e9)} G"


def _table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_fmt(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows]
    return "\n".join(out)


def machine_key(doc: dict) -> str:
    """One column per machine: hostname + GPU (or CPU) + threads. The same machine in several files is one."""
    e = doc.get("environment", {})
    if e.get("hostname"):
        return f"{e['hostname']} · {e.get('gpu') or e.get('cpu')} · {e.get('threads')}t"
    return e.get("machine", "machine")


def noise_ratio(r: dict) -> Optional[float]:
    """p90 / p50 of an ok row, or None."""
    lat = r.get("latency_ms") or {}
    if r.get("status", "ok") != "ok" or not lat.get("p50"):
        return None
    return lat["p90"] / lat["p50"]


def is_noisy(r: dict) -> bool:
    q = noise_ratio(r)
    return q is not None and q > NOISY_RATIO


def noisy_mark(r: dict) -> str:
    return f" ⚠ noisy (p90/p50 {noise_ratio(r):.1f})" if is_noisy(r) else ""


def _rows_by_config(profiles: list[dict]):
    """{(model, role, backend, batch, size, precision): {machine: row}}, the machine list and their environments."""
    table = defaultdict(dict)
    machines, envs = [], {}
    for doc in profiles:
        m = machine_key(doc)
        if m not in machines:
            machines.append(m)
            envs[m] = doc.get("environment", {})
        for r in doc.get("results", []):
            key = (r["model"], r.get("role", "model"), r["backend"], r["batch"], r["size"], r.get("precision", "fp32"))
            prev = table[key].get(m)
            if prev is None or prev.get("status") != "ok" or r.get("status") == "ok":
                table[key][m] = r  # a later measurement of the same configuration on the same machine wins
    return table, machines, envs


def speedups(profiles: list[dict]) -> list[dict]:
    """Student-over-teacher speed-up per (machine, backend, batch, size, precision), with the MAC ratio."""
    table, _, _ = _rows_by_config(profiles)
    out = []
    by = defaultdict(dict)
    for (_model, role, backend, batch, size, prec), per in table.items():
        for m, r in per.items():
            if r.get("status") == "ok":
                by[(m, backend, batch, size, prec)][role] = r
    for (m, backend, batch, size, prec), roles in by.items():
        t, s = roles.get("teacher"), roles.get("student")
        if t and s:
            mac_ratio = (t["macs"] / s["macs"]) if t.get("macs") and s.get("macs") else None
            ratios = [q for q in (noise_ratio(t), noise_ratio(s)) if q is not None]
            out.append(
                {
                    "machine": m,
                    "backend": backend,
                    "batch": batch,
                    "size": size,
                    "precision": prec,
                    "teacher_ms": t["latency_ms"]["p50"],
                    "student_ms": s["latency_ms"]["p50"],
                    "speedup": t["latency_ms"]["p50"] / s["latency_ms"]["p50"],
                    "mac_reduction": mac_ratio,
                    "noise_ratio": max(ratios) if ratios else None,
                }
            )
    return out


# ------------------------------------------------------------------------------------------------ plots


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _color(role: str) -> str:
    return {"teacher": TEACHER_COLOR, "student": STUDENT_COLOR}.get(role, OTHER_COLOR)


def _finite(v) -> bool:
    """A number a plot can place (not None, NaN or infinite: PSNR of identical images is +inf)."""
    return isinstance(v, (int, float)) and math.isfinite(v)


def whisker(lat: dict) -> tuple[float, float, float]:
    """(low, p50, high) of a latency record: p10 (or min) to p90, never below zero, always around p50."""
    p50 = float(lat["p50"])
    lo = lat.get("p10", lat.get("min", p50))
    hi = lat.get("p90", p50)
    return max(0.0, min(float(lo), p50)), p50, max(float(hi), p50)


def _config_label(k: tuple) -> str:
    return f"{k[0]} · {k[2]} b{k[3]} {k[4]}² {k[5]}"


def figures(profiles: list[dict], evals: list[dict]) -> dict:
    """One matplotlib figure per question: latency per backend and machine; speed-up against MAC reduction;
    quality against latency. Keys: latency, speedup, pareto."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    figs = {}
    table, machines, _ = _rows_by_config(profiles)
    per_machine = {
        m: [
            (k, per[m])
            for k in sorted(table, key=lambda k: (k[2], k[3], k[4], k[5], k[1], k[0]))
            if (per := table[k]).get(m, {}).get("status") == "ok"
        ]
        for m in machines
    }
    per_machine = {m: rows for m, rows in per_machine.items() if rows}
    if per_machine:
        n_rows = [len(rows) for rows in per_machine.values()]
        fig, axes = plt.subplots(
            len(n_rows),
            1,
            squeeze=False,
            sharex=True,
            figsize=(9, sum(0.42 * n + 1.1 for n in n_rows) + 0.6),
            gridspec_kw={"height_ratios": [n + 1.5 for n in n_rows]},
        )
        right = max(whisker(r["latency_ms"])[2] for rows in per_machine.values() for _, r in rows)
        for ax, (m, rows) in zip(axes[:, 0], per_machine.items()):
            lo, mid, hi = zip(*(whisker(r["latency_ms"]) for _, r in rows))
            err = [[b - a for a, b in zip(lo, mid)], [c - b for b, c in zip(mid, hi)]]
            y = list(range(len(rows)))
            ax.barh(
                y,
                mid,
                xerr=err,
                color=[_color(k[1]) for k, _ in rows],
                height=0.6,
                error_kw={"ecolor": "#333", "capsize": 3, "lw": 1},
            )
            for yi, (_k, r), h in zip(y, rows, hi):
                ax.text(
                    h + right * 0.015,
                    yi,
                    f"{sig(r['latency_ms']['p50'])} ms" + (" ⚠ noisy" if is_noisy(r) else ""),
                    va="center",
                    fontsize=8,
                    color="#b35900" if is_noisy(r) else "#222",
                )
            ax.set_yticks(y, [_config_label(k) for k, _ in rows], fontsize=8)
            ax.set_ylim(len(rows) - 0.4, -0.6)
            ax.set_xlim(0, right * 1.3)
            ax.set_title(m, fontsize=9, loc="left")
            ax.grid(axis="x", alpha=0.3)
        axes[-1, 0].set_xlabel("latency (ms, linear): bar = p50, whisker = p10 → p90")
        axes[0, 0].legend(
            handles=[Patch(color=TEACHER_COLOR, label="teacher"), Patch(color=STUDENT_COLOR, label="student")],
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            borderaxespad=0,
            fontsize=8,
        )
        fig.suptitle("How long does one call take? Latency per backend and machine", fontsize=11)
        fig.tight_layout()
        figs["latency"] = fig
    sp = [s for s in speedups(profiles) if s["mac_reduction"]]
    if sp:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        markers = "osD^vP*X"
        backends = sorted({s["backend"] for s in sp})
        colors = plt.get_cmap("tab10")
        for _i, s in enumerate(sp):
            ax.scatter(
                s["mac_reduction"],
                s["speedup"],
                s=50,
                marker=markers[backends.index(s["backend"]) % 8],
                color=colors(machines.index(s["machine"]) % 10 if s["machine"] in machines else 0),
                label=f"{s['backend']} b{s['batch']} {s['size']}² · {s['machine']}"
                + (" ⚠ noisy" if (s["noise_ratio"] or 0) > NOISY_RATIO else ""),
            )
        hi = max(max(s["mac_reduction"] for s in sp), max(s["speedup"] for s in sp)) * 1.15
        ax.plot([0, hi], [0, hi], "k--", lw=0.8, label="speed-up = MAC reduction")
        ax.axhline(1, color="#999", lw=0.6)
        ax.set_xlim(0, hi)
        ax.set_ylim(0, hi)
        ax.set_xlabel("MAC reduction (teacher MACs / student MACs, linear)")
        ax.set_ylabel("measured speed-up (teacher p50 / student p50)")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
        ax.set_title("Does the student run as much faster as it has fewer MACs?", fontsize=10)
        fig.tight_layout()
        figs["speedup"] = fig
    ev = evals[0] if evals else None
    if ev and per_machine:
        metric = next((k for k in ("psnr", "fid", "ssim") if k in ev.get("student", {})), None)
        points = [
            (k, m, r)
            for m, rows in per_machine.items()
            for k, r in rows
            if metric and k[1] in ("teacher", "student") and _finite(ev.get(k[1], {}).get(metric))
        ]
        if points:
            fig, ax = plt.subplots(figsize=(9, 4.5))
            markers = "osD^vP*X"
            backends = sorted({k[2] for k, _, _ in points})
            for k, m, r in points:
                lo, mid, hi = whisker(r["latency_ms"])
                ax.errorbar(
                    [mid],
                    [ev[k[1]][metric]],
                    xerr=[[mid - lo], [hi - mid]],
                    fmt=markers[backends.index(k[2]) % 8],
                    color=_color(k[1]),
                    ms=7,
                    capsize=3,
                    lw=1,
                    label=f"{k[1]} · {k[2]} b{k[3]} {k[4]}² {k[5]}"
                    + (f" · {m}" if len(per_machine) > 1 else "")
                    + (" ⚠ noisy" if is_noisy(r) else ""),
                )
            ax.set_xscale("log")
            ax.set_xlabel("latency p50 (ms, log scale); whisker p10 → p90")
            name = metric.upper()
            ax.set_ylabel(f"{name} ({'higher' if _BETTER.get(metric) == 'higher' else 'lower'} is better)")
            vals = [ev[k[1]][metric] for k, _, _ in points]
            pad = (max(vals) - min(vals)) * 0.2 or abs(max(vals)) * 0.05 or 1.0
            ax.set_ylim(min(vals) - pad, max(vals) + pad)
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
            ax.set_title("What quality do you keep for the latency you gain?", fontsize=10)
            ax.grid(alpha=0.3, which="both")
            fig.tight_layout()
            figs["pareto"] = fig
    return figs


PLOT_CAPTIONS = {
    "latency": "Latency per backend and machine (bar: p50; whisker: p10 to p90)",
    "speedup": "Speed-up against MAC reduction (dashed: the speed-up the MAC count promises)",
    "pareto": "Quality against latency (log scale)",
}


def make_plots(profiles: list[dict], evals: list[dict]) -> dict[str, str]:
    """The :func:`figures` as base64 PNGs."""
    return {k: _png(f) for k, f in figures(profiles, evals).items()}


# ------------------------------------------------------------------------------------------------ documents


def headline(ev: Optional[dict], profiles: list[dict]) -> Optional[str]:
    """One line: params ×, MACs ×, latency × per backend (smallest batch; first machine), quality kept."""
    parts = []
    t, s = (ev or {}).get("teacher", {}), (ev or {}).get("student", {})
    for k, name in (("params", "params"), ("macs", "MACs")):
        if t.get(k) and s.get(k):
            parts.append(f"{name} {t[k] / s[k]:.1f}× fewer")
    sp = speedups(profiles)
    if sp:
        first, small = sp[0]["machine"], min(x["batch"] for x in sp)
        for x in sp:
            if x["machine"] == first and x["batch"] == small:
                noisy = " (noisy)" if (x["noise_ratio"] or 0) > NOISY_RATIO else ""
                parts.append(f"{x['backend']} {x['speedup']:.1f}× faster{noisy}")
    pct = (ev or {}).get("student_pct_of_teacher", {})
    if all(_finite(x) for x in (pct.get("psnr"), s.get("psnr"), t.get("psnr"))):
        parts.append(f"PSNR {s['psnr']:.1f} dB ({pct['psnr']:.0f}% of the teacher's {t['psnr']:.1f})")
    if s.get("fid") is not None and t.get("fid") is not None:
        parts.append(f"FID {t['fid']:.1f} → {s['fid']:.1f} (n = {ev.get('n_images')})")
    return "; ".join(parts) if parts else None


def _fid_caveat(ev: dict) -> str:
    n = ev.get("n_images")
    return f"n = {n}: {SMALL_N_NOTE}" if isinstance(n, int) and n < SMALL_FID_N else ""


def build_markdown(profiles: list[dict], evals: list[dict], exports: list[dict], title: str, samples=None) -> str:
    """The report as Markdown. ``samples``: a relative image path, or a list of (caption, path) pairs."""
    lines = [f"# {title}", ""]
    ev = evals[0] if evals else None
    sp = speedups(profiles)
    head = headline(ev, profiles)
    if head and ev:
        lines += [f"**Student against teacher: {head}.**", ""]
    if ev:
        t, s = ev["teacher"], ev["student"]
        lines += ["## Teacher against student", ""]
        rows = [
            [
                "params",
                metric_text("params", t.get("params")),
                metric_text("params", s.get("params")),
                change_text("params", t.get("params"), s.get("params")),
            ],
            [
                "MACs (ours: ConvTranspose by input size)",
                _g(t.get("macs")),
                _g(s.get("macs")),
                change_text("macs", t.get("macs"), s.get("macs")),
            ],
            [
                "MACs (paper convention: by output size)",
                _g(t.get("macs_paper_convention")),
                _g(s.get("macs_paper_convention")),
                change_text("macs", t.get("macs_paper_convention"), s.get("macs_paper_convention")),
            ],
        ]
        for x in sp:
            noisy = x["noise_ratio"] is not None and x["noise_ratio"] > NOISY_RATIO
            rows.append(
                [
                    f"latency p50, {x['backend']} b{x['batch']} {x['size']}² {x['precision']} ({x['machine']})",
                    f"{sig(x['teacher_ms'])} ms",
                    f"{sig(x['student_ms'])} ms",
                    f"{x['speedup']:.1f}× faster"
                    + (f" (MACs {x['mac_reduction']:.1f}×)" if x["mac_reduction"] else "")
                    + (f" ⚠ noisy (p90/p50 {x['noise_ratio']:.1f})" if noisy else ""),
                ]
            )
        caveat = _fid_caveat(ev)
        for k, label, _, better in METRICS:
            if k in ("params", "macs") or not (k in t or k in s):
                continue
            extra = f"; {caveat}" if caveat and k in ("fid", "kid") else ""
            rows.append(
                [
                    f"{label} ({better} is better{extra})",
                    metric_text(k, t.get(k)),
                    metric_text(k, s.get(k)),
                    change_text(k, t.get(k), s.get(k)),
                ]
            )
        lines += [_table(["", "teacher", "student", "change"], rows), ""]
        lines.append(
            f"Evaluated on {ev.get('n_images')} test images at {ev.get('size')}²{_output_note(ev)}. "
            + (
                f"FID/KID skipped: {ev['fid_skipped']}"
                if ev.get("fid_skipped")
                else (f"FID weights: {ev.get('fid_weights')}." if ev.get("fid_weights") else "")
            )
        )
        if caveat and ({"fid", "kid"} & (set(t) | set(s))):
            lines += [
                "",
                f"⚠ FID and KID from {ev.get('n_images')} images are biased upwards and vary from sample to "
                f"sample; {SMALL_N_NOTE} (those use 10,000 or more).",
            ]
        lines.append("")
    elif sp:
        lines += [
            "## Speed-up",
            "",
            _table(
                ["machine", "backend", "batch", "size", "teacher ms", "student ms", "speed-up", "MAC reduction"],
                [
                    [
                        x["machine"],
                        x["backend"],
                        x["batch"],
                        x["size"],
                        sig(x["teacher_ms"]),
                        sig(x["student_ms"]),
                        f"{x['speedup']:.1f}×"
                        + (
                            f" ⚠ noisy (p90/p50 {x['noise_ratio']:.1f})"
                            if (x["noise_ratio"] or 0) > NOISY_RATIO
                            else ""
                        ),
                        f"{x['mac_reduction']:.1f}×" if x["mac_reduction"] else "–",
                    ]
                    for x in sp
                ],
            ),
            "",
        ]
    if profiles:
        table, machines, envs = _rows_by_config(profiles)
        keys = sorted(table, key=lambda k: (k[2], k[3], k[4], k[5], k[1], k[0]))
        lines += [
            "## Latency",
            "",
            "p50 (p90) in ms, one column per machine; each configuration was timed in its own "
            "process. ⚠ noisy: p90 more than 1.5× p50 (a busy machine or a cold cache); rerun before you "
            "quote it.",
            "",
        ]
        header = ["model", "backend", "batch", "size", "precision"] + machines
        rows, missing, noisy = [], [], []
        for key in keys:
            per = table[key]
            cells = []
            for m in machines:
                r = per.get(m)
                if r is None:
                    cells.append("–")
                elif r.get("status") == "ok":
                    lat = r["latency_ms"]
                    cells.append(f"{sig(lat['p50'])} ({sig(lat['p90'])}){noisy_mark(r)}")
                    if is_noisy(r):
                        noisy.append((key, m, noise_ratio(r)))
                else:
                    cells.append(r.get("status", "?"))
                    missing.append((key, m, r.get("reason", "")))
            rows.append([key[0], key[2], key[3], key[4], key[5]] + cells)
        lines += [_table(header, rows), ""]
        if noisy:
            lines.append(
                f"⚠ {len(noisy)} of {sum(1 for k in keys for m in machines if table[k].get(m, {}).get('status') == 'ok')}"
                " measurements are noisy (p90/p50 > 1.5): "
                + "; ".join(f"{k[0]} {k[2]} b{k[3]} on {m}: ×{q:.1f}" for k, m, q in noisy)
                + "."
            )
            lines.append("")
        mem_rows = []
        for key in keys:
            per = table[key]
            cells, any_ok = [], False
            for m in machines:
                r = per.get(m)
                if r and r.get("status") == "ok":
                    any_ok = True
                    lat = r["latency_ms"]
                    ips = r["batch"] * 1000.0 / lat["p50"] if lat.get("p50") else None
                    mem = r.get("peak_memory_mb")
                    rate = r.get("achieved_macs_per_s")
                    cells.append(
                        f"{sig(ips)} img/s"
                        + (f", {sig(rate / 1e9)} GMAC/s" if isinstance(rate, (int, float)) and rate > 0 else "")
                        + (f", {sig(mem)} MB" if mem else "")
                    )
                else:
                    cells.append("–")
            if any_ok:
                mem_rows.append([key[0], key[2], key[3], key[4], key[5]] + cells)
        if mem_rows:
            lines += [
                "### Throughput and memory",
                "",
                "img/s at p50 (batch × 1000 / p50 ms); achieved GMAC/s (MACs by input size × batch / p50: how "
                "well the backend uses the machine); peak memory of the measuring process itself (resident "
                "set on the CPU: runtime, model and activations; CUDA memory allocated on a GPU).",
                "",
                _table(header, mem_rows),
                "",
            ]
        if missing:
            lines += ["Not measured:", ""]
            seen = set()
            for key, _m, reason in missing:
                if (key[2], reason) in seen:
                    continue
                seen.add((key[2], reason))
                lines.append(f"- {key[2]} ({key[5]}): {reason}")
            lines.append("")
        lines += ["## Machines", ""]
        for m in machines:
            e = envs[m]
            peak = e.get("gemm_peak_macs_per_s")
            lines.append(
                f"- **{m}**: {e.get('cpu')}, {e.get('cores')} cores, {e.get('threads')} threads"
                + (f", GPU {e['gpu']}" if e.get("gpu") else "")
                + f"; torch {e.get('torch_version')}, onnxruntime {e.get('onnxruntime_version')}"
                + (f", TensorRT {e['tensorrt_version']}" if e.get("tensorrt_version") else "")
                + (f"; FP32 GEMM peak {peak / 1e9:.1f} GMAC/s" if peak and peak == peak else "")
            )
        lines.append("")
    for ex in exports:
        lines += ["## Export", ""]
        for _name, info in ex.get("onnx", {}).items():
            par = info["parity"]
            lines.append(
                f"- {info['path']}: {info['bytes'] / 2**20:.2f} MiB; parity against PyTorch: max abs error "
                f"{par['max_abs']:.2e} over {len(par['cases'])} input shapes (tolerance {par['tolerance']:g})"
                f" — {'passed' if par['passed'] else 'FAILED'}"
            )
        if "int8" in ex:
            q = ex["int8"]
            lines.append(
                f"- {q['path']}: PSNR against FP32 {q['psnr_vs_fp32']:.1f} dB; ONNX Runtime CPU latency "
                f"{sig(q['latency_ms_int8'])} ms vs {sig(q['latency_ms_fp32'])} ms FP32 (ratio "
                f"{q['latency_ratio_int8_over_fp32']:.2f})"
            )
        if "tensorrt_lint" in ex:
            lint = ex["tensorrt_lint"]
            lines.append(
                f"- TensorRT {lint['target']} compatibility lint: "
                + ("no problems" if not lint["problems"] else f"{len(lint['problems'])} problem(s)")
            )
        for note in ex.get("notes", []):
            lines.append(f"- {note}")
        lines.append("")
    if isinstance(samples, str):
        samples = [("", samples)]
    if samples:
        lines += ["## Samples", "", "input | teacher | student | target", ""]
        for caption, path in samples:
            if caption:
                lines += [f"{caption}:", ""]
            lines += [f"![samples]({path})", ""]
    lines += [
        "MACs are counted with torch's FlopCounterMode (MACs = FLOPs / 2), ConvTranspose by input size; the "
        "paper convention counts it by output size, as GAN-compression papers do.",
        "",
    ]
    return "\n".join(lines)


_IMG = re.compile(r"!\[([^\]]*)\]\(([^)]+)\)")


def build_html(markdown_text: str, plots: dict[str, str], title: str, samples_png=None) -> str:
    """A self-contained page: the markdown rendered to simple HTML, plus embedded plots. ``samples_png``: the
    bytes of every sample image, or {path in the markdown: bytes}."""
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
            body.append(
                "<tr>"
                + "".join(
                    f"<td class='noisy'>{html.escape(c)}</td>" if "⚠" in c else f"<td>{html.escape(c)}</td>"
                    for c in cells
                )
                + "</tr>"
            )
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("### "):
            body.append(f"<h3>{html.escape(line[4:])}</h3>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif m := _IMG.match(line):
            data = samples_png.get(m.group(2)) if isinstance(samples_png, dict) else samples_png
            if data:
                body.append(
                    f'<img alt="{html.escape(m.group(1))}" '
                    f'src="data:image/png;base64,{base64.b64encode(data).decode()}">'
                )
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:]).replace('**', '')}</li>")
        elif line.startswith("**") and line.endswith("**"):
            body.append(f"<p class='headline'>{html.escape(line.strip('*'))}</p>")
        elif line.startswith("⚠"):
            body.append(f"<p class='flag'>{html.escape(line)}</p>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    figs = "".join(
        f'<figure><img alt="{k}" src="data:image/png;base64,{v}">'
        f"<figcaption>{html.escape(PLOT_CAPTIONS.get(k, k))}</figcaption></figure>"
        for k, v in plots.items()
    )
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}"
        "th{background:#f3f3f3}td.noisy{background:#fff3e0}p.flag{background:#fff3e0;padding:6px 10px}"
        "p.headline{font-size:17px;font-weight:600;background:#eef5fb;padding:8px 12px}"
        "figure{display:block;margin:1.5em 0}figcaption{font-size:13px;color:#555}img{max-width:100%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(body)}"
        + (f"<h2>Plots</h2>{figs}" if figs else "")
        + "</body></html>"
    )


def _samples_for(eval_path: Path) -> Optional[Path]:
    """The sample grid a run's evaluate stage wrote next to its eval.json (samples/eval.png), when it lies inside
    that folder (a symlink out of it, say to ``~/.ssh/id_rsa``, is not read) and is a PNG of bounded size."""
    folder = Path(eval_path).parent
    p = folder / "samples" / "eval.png"
    if not p.exists() and not p.is_symlink():
        return None
    real = confined(p, folder)
    if real is None or not _is_png(real):
        log.warning("%s: not a PNG file inside %s; the report leaves it out", p, folder)
        return None
    return p


MAX_SAMPLE_BYTES = 64 << 20


def _is_png(path: Path) -> bool:
    try:
        if path.stat().st_size > MAX_SAMPLE_BYTES:
            return False
        with open(path, "rb") as f:
            return f.read(8) == b"\x89PNG\r\n\x1a\n"
    except OSError:
        return False


def write_report(
    profile_files: list,
    eval_files: list,
    out_dir: str | Path,
    title: str = "compressor report",
    export_files: list = (),
    samples: Optional[Path] = None,
) -> tuple[Path, Path]:
    """Merge JSON files (any order: they are told apart by content) into ``out_dir``/report.md and report.html.
    The sample grid of every run whose eval.json is given comes along (copied next to report.md, embedded in
    report.html), as does ``samples`` when given."""
    paths = list(profile_files) + list(eval_files) + list(export_files)
    profiles, evals, exports = classify(paths)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    grids: list[Path] = []
    if samples and (Path(samples).exists() or Path(samples).is_symlink()):
        if _is_png(Path(samples)):  # named by the caller: read wherever it is, if it is a PNG
            grids.append(Path(samples))
        else:
            log.warning("%s: not a PNG file; the report leaves it out", samples)
    for p in paths:
        doc = _load(p)
        if isinstance(doc, dict) and "teacher" in doc and "student" in doc:
            g = _samples_for(Path(p))
            if g and g.resolve() not in {x.resolve() for x in grids}:
                grids.append(g)
    refs, blobs = [], {}
    for g in grids:
        data = g.read_bytes()
        try:
            rel = str(g.resolve().relative_to(out.resolve()))
        except ValueError:  # another run's grid: copy it next to the report so report.md shows it
            rel = f"samples_{g.parent.parent.name or 'run'}.png"
            if (out / rel).exists() and (out / rel).read_bytes() != data:
                rel = f"samples_{g.parent.parent.name or 'run'}_{len(refs)}.png"
            atomic_write_bytes(out / rel, data)
        refs.append((g.parent.parent.name if len(grids) > 1 else "", rel))
        blobs[rel] = data
    md = build_markdown(profiles, evals, exports, title, refs or None)
    plots = make_plots(profiles, evals)
    md_path, html_path = out / "report.md", out / "report.html"
    atomic_write_text(md_path, md)
    atomic_write_text(html_path, build_html(md, plots, title, blobs))
    return md_path, html_path


def report_run(run) -> tuple[Path, Path]:
    files = [f for f in (run.profile_json, run.eval_json, run.export_json) if f.exists()]
    grid = _samples_for(run.eval_json)  # inside the run folder only
    return write_report(
        [f for f in files if f == run.profile_json],
        [f for f in files if f == run.eval_json],
        run.root,
        f"compressor report: {run.root.name}",
        [f for f in files if f == run.export_json],
        grid,
    )
