"""Reports: merge profile, evaluation and export JSONs from any number of machines into report.md and a
self-contained report.html (the Markdown rendered by markdown-it-py; plots and sample grids embedded as PNG data
URIs).

The Markdown is a list of sections, :data:`REPORT_SECTIONS`, read top to bottom. A section is a function that takes
the :class:`ReportData` (the merged documents: ``profiles``, ``evals``, ``exports``, ``title``, ``samples``,
``benchmarks``, ``metrics``, plus shared views such as ``ev``, ``speedups``, ``by_config`` and ``config_keys``) and
returns Markdown lines, or ``[]`` when it has nothing to say. To add one, write the function and put it in the list
where it belongs::

    def section_file_sizes(d: ReportData) -> list[str]:
        rows = [[name, f"{info['bytes'] / 2**20:.2f} MB"] for ex in d.exports for name, info in ex["onnx"].items()]
        return ["## File sizes", "", _table(["file", "size"], rows), ""] if rows else []

    REPORT_SECTIONS = [..., section_export, section_file_sizes, section_samples, section_notes]

A section ends with an empty line. GitHub-flavoured tables (``_table``), ``- `` lists, ``**bold**`` and images work
in both files; a table cell holding ⚠ is shaded in the HTML, as is a paragraph that starts with ⚠. Plots are one
function per figure (:func:`latency_figure`, :func:`speedup_figure`, :func:`pareto_figure`), gathered by
:func:`figures`, and appear in the HTML only.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import unquote

from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml

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


def report_order(key: tuple) -> tuple:
    """Sort key of a configuration (model, role, backend, batch, size, precision) in tables and plots: backend,
    batch, size, precision, role, model."""
    return (key[2], key[3], key[4], key[5], key[1], key[0])


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
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
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


MARKERS = "osD^vP*X"  # one marker per backend


def _config_label(k: tuple) -> str:
    return f"{k[0]} · {k[2]} b{k[3]} {k[4]}² {k[5]}"


def _pyplot():
    """matplotlib's pyplot on the Agg backend (files, no window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def ok_rows_per_machine(profiles: list[dict]) -> dict[str, list[tuple[tuple, dict]]]:
    """{machine: [(config key, row)]} of the measured rows, in the report's order; machines without one left out."""
    table, machines, _ = _rows_by_config(profiles)
    keys = sorted(table, key=report_order)
    per_machine = {m: [(k, table[k][m]) for k in keys if table[k].get(m, {}).get("status") == "ok"] for m in machines}
    return {m: rows for m, rows in per_machine.items() if rows}


def _latency_bars(ax, rows: list[tuple[tuple, dict]], right: float) -> None:
    """One machine's horizontal bars (p50) with p10 → p90 whiskers and a label at each whisker's end."""
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
    ax.grid(axis="x", alpha=0.3)


def latency_figure(per_machine: dict[str, list[tuple[tuple, dict]]]):
    """How long does one call take? One panel per machine (see :func:`ok_rows_per_machine`); None without rows."""
    if not per_machine:
        return None
    from matplotlib.patches import Patch

    plt = _pyplot()
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
        _latency_bars(ax, rows, right)
        ax.set_title(m, fontsize=9, loc="left")
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
    return fig


def speedup_figure(profiles: list[dict]):
    """Does the student run as much faster as it has fewer MACs? None without a teacher/student pair with MACs."""
    sp = [s for s in speedups(profiles) if s["mac_reduction"]]
    if not sp:
        return None
    plt = _pyplot()
    _, machines, _ = _rows_by_config(profiles)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    backends = sorted({s["backend"] for s in sp})
    colors = plt.get_cmap("tab10")
    for s in sp:
        ax.scatter(
            s["mac_reduction"],
            s["speedup"],
            s=50,
            marker=MARKERS[backends.index(s["backend"]) % 8],
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
    return fig


def _pareto_points(ev: dict, per_machine: dict) -> tuple[Optional[str], list]:
    """The quality metric to plot (PSNR, else FID, else SSIM) and the (key, machine, row) of teacher and student."""
    metric = next((k for k in ("psnr", "fid", "ssim") if k in ev.get("student", {})), None)
    points = [
        (k, m, r)
        for m, rows in per_machine.items()
        for k, r in rows
        if metric and k[1] in ("teacher", "student") and _finite(ev.get(k[1], {}).get(metric))
    ]
    return metric, points


def pareto_figure(ev: Optional[dict], per_machine: dict):
    """What quality do you keep for the latency you gain? None without an evaluation and measured rows."""
    if not ev or not per_machine:
        return None
    metric, points = _pareto_points(ev, per_machine)
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    backends = sorted({k[2] for k, _, _ in points})
    for k, m, r in points:
        lo, mid, hi = whisker(r["latency_ms"])
        ax.errorbar(
            [mid],
            [ev[k[1]][metric]],
            xerr=[[mid - lo], [hi - mid]],
            fmt=MARKERS[backends.index(k[2]) % 8],
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
    ax.set_ylabel(f"{metric.upper()} ({'higher' if _BETTER.get(metric) == 'higher' else 'lower'} is better)")
    vals = [ev[k[1]][metric] for k, _, _ in points]
    pad = (max(vals) - min(vals)) * 0.2 or abs(max(vals)) * 0.05 or 1.0
    ax.set_ylim(min(vals) - pad, max(vals) + pad)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    ax.set_title("What quality do you keep for the latency you gain?", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def figures(profiles: list[dict], evals: list[dict]) -> dict:
    """One matplotlib figure per question: latency per backend and machine; speed-up against MAC reduction;
    quality against latency. Keys: latency, speedup, pareto (a figure without data is left out)."""
    per_machine = ok_rows_per_machine(profiles)
    figs = {
        "latency": latency_figure(per_machine),
        "speedup": speedup_figure(profiles),
        "pareto": pareto_figure(evals[0] if evals else None, per_machine),
    }
    return {k: f for k, f in figs.items() if f is not None}


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
    parts += _headline_speedups(speedups(profiles))
    if all(_finite(x) for x in (s.get("psnr"), t.get("psnr"))):
        vs_t = f"; {s['psnr_vs_teacher']:.1f} dB against the teacher" if _finite(s.get("psnr_vs_teacher")) else ""
        parts.append(
            f"PSNR {s['psnr']:.2f} dB ({s['psnr'] - t['psnr']:+.2f} dB from the teacher's {t['psnr']:.2f}{vs_t})"
        )
    if s.get("fid") is not None and t.get("fid") is not None:
        parts.append(f"FID {t['fid']:.1f} → {s['fid']:.1f} (n = {ev.get('n_images')})")
    return "; ".join(parts) if parts else None


def _headline_speedups(sp: list[dict]) -> list[str]:
    """Per backend of the first machine: the speed-up at the smallest batch; when that one is noisy, a steady one
    of the same backend (another batch or size), else "not measured reliably". A noisy ratio is never the
    headline."""
    if not sp:
        return []
    first = sp[0]["machine"]
    parts = []
    for backend in dict.fromkeys(x["backend"] for x in sp if x["machine"] == first):
        rows = sorted((x for x in sp if x["machine"] == first and x["backend"] == backend), key=lambda x: x["batch"])
        steady = [x for x in rows if not _noisy_speedup(x)]
        if steady and steady[0]["batch"] == rows[0]["batch"]:
            parts.append(f"{backend} {steady[0]['speedup']:.1f}× faster")
        elif steady:
            parts.append(f"{backend} {steady[0]['speedup']:.1f}× faster (batch {steady[0]['batch']})")
        else:
            worst = max(x["noise_ratio"] for x in rows)
            parts.append(f"{backend} speed-up not measured reliably (p90/p50 {worst:.1f}: rerun on a quiet machine)")
    return parts


def _fid_caveat(ev: dict) -> str:
    n = ev.get("n_images")
    return f"n = {n}: {SMALL_N_NOTE}" if isinstance(n, int) and n < SMALL_FID_N else ""


def _noisy_speedup(x: dict) -> bool:
    return (x["noise_ratio"] or 0) > NOISY_RATIO


@dataclass
class ReportData:
    """What a report section reads: the merged documents, plus views of them that several sections share."""

    profiles: list[dict]
    evals: list[dict]
    exports: list[dict]
    title: str
    samples: list[tuple[str, str]]  # (caption, image path relative to report.md)
    benchmarks: list[dict] = field(default_factory=list)  # compress benchmark documents
    metrics: list[Path] = field(default_factory=list)  # training runs' metrics.jsonl (the loss-terms table)

    @property
    def ev(self) -> Optional[dict]:
        """The first evaluation (teacher against student), or None."""
        return self.evals[0] if self.evals else None

    @cached_property
    def speedups(self) -> list[dict]:
        return speedups(self.profiles)

    @cached_property
    def by_config(self) -> tuple[dict, list[str], dict]:
        """:func:`_rows_by_config`: {config: {machine: row}}, the machines, their environments."""
        return _rows_by_config(self.profiles)

    @cached_property
    def config_keys(self) -> list[tuple]:
        """Configurations in the report's order: backend, batch, size, precision, role, model."""
        return sorted(self.by_config[0], key=report_order)

    @property
    def machines(self) -> list[str]:
        """One per profile column: see :func:`machine_key`."""
        return self.by_config[1]

    def row(self, key: tuple, machine: str) -> Optional[dict]:
        """The measurement of configuration ``key`` on ``machine``, or None."""
        return self.by_config[0][key].get(machine)


# ---- report sections: each takes the ReportData and returns Markdown lines ([] when it has nothing to say)


def section_title(d: ReportData) -> list[str]:
    return [f"# {d.title}", ""]


def section_headline(d: ReportData) -> list[str]:
    head = headline(d.ev, d.profiles)
    return [f"**Student against teacher: {head}.**", ""] if head and d.ev else []


def section_published(d: ReportData) -> list[str]:
    """The teacher's published figure, reproduced before anything was distilled (``teacher.expect``)."""
    check = (d.ev or {}).get("published_check")
    if not isinstance(check, dict) or not _finite(check.get("psnr")):
        return []
    t, s = d.ev.get("teacher", {}), d.ev.get("student", {})
    lines = [
        "## The teacher's published figure",
        "",
        f"Reproduced before distilling: the teacher scores {check['psnr']:.2f} dB on {check.get('split', 'the test set')} "
        f"({check.get('n_images', '?')} images) against the published {check.get('expected', float('nan')):g} ± "
        f"{check.get('tolerance', float('nan')):g} dB.",
        "",
    ]
    if _finite(s.get("psnr")) and _finite(t.get("psnr")):
        lines += [
            f"The student scores {s['psnr']:.2f} dB against the ground truth ({s['psnr'] - t['psnr']:+.2f} dB from the "
            f"teacher's {t['psnr']:.2f} dB on the same {d.ev.get('n_images', '?')} images)"
            + (
                f" and {s['psnr_vs_teacher']:.2f} dB against the teacher's output."
                if _finite(s.get("psnr_vs_teacher"))
                else "."
            ),
            "",
        ]
    return lines


def _size_rows(t: dict, s: dict) -> list[list]:
    """Params and MACs (both conventions), teacher against student."""
    return [
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


def _latency_rows(sp: list[dict]) -> list[list]:
    """One p50 row per speed-up (machine, backend, batch, size, precision)."""
    return [
        [
            f"latency p50, {x['backend']} b{x['batch']} {x['size']}² {x['precision']} ({x['machine']})",
            f"{sig(x['teacher_ms'])} ms",
            f"{sig(x['student_ms'])} ms",
            f"{x['speedup']:.1f}× faster"
            + (f" (MACs {x['mac_reduction']:.1f}×)" if x["mac_reduction"] else "")
            + (f" ⚠ noisy (p90/p50 {x['noise_ratio']:.1f})" if _noisy_speedup(x) else ""),
        ]
        for x in sp
    ]


def _quality_rows(ev: dict) -> list[list]:
    """One row per quality metric either model has (FID and KID with the small-sample caveat)."""
    t, s, caveat = ev["teacher"], ev["student"], _fid_caveat(ev)
    rows = []
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
    return rows


def _weights_text(weights: Optional[str]) -> Optional[str]:
    """The FID weights as eval.json names them; an older eval.json's ``how:/local/path/file`` becomes
    ``how: file`` (no local path in a report that travels)."""
    if not weights or not isinstance(weights, str):
        return None
    if "/" in weights or "\\" in weights:
        how, _, where = weights.partition(":")
        return f"{how}: {where.replace(chr(92), '/').rstrip('/').rpartition('/')[2]}"
    return weights


def _evaluation_notes(ev: dict) -> list[str]:
    """How the quality was measured, and the caveat for FID/KID from few images."""
    skipped, weights = ev.get("fid_skipped"), _weights_text(ev.get("fid_weights"))
    lines = [
        f"Evaluated on {ev.get('n_images')} test images at {ev.get('size')}²{_output_note(ev)}. "
        + (f"FID/KID skipped: {skipped}" if skipped else (f"FID weights: {weights}." if weights else ""))
    ]
    if _fid_caveat(ev) and ({"fid", "kid"} & (set(ev["teacher"]) | set(ev["student"]))):
        lines += [
            "",
            f"⚠ FID and KID from {ev.get('n_images')} images are biased upwards and vary from sample to "
            f"sample; {SMALL_N_NOTE} (those use 10,000 or more).",
        ]
    return lines


def section_comparison(d: ReportData) -> list[str]:
    """Teacher against student: size, latency per backend, quality (needs an eval.json)."""
    ev = d.ev
    if not ev:
        return []
    rows = _size_rows(ev["teacher"], ev["student"]) + _latency_rows(d.speedups) + _quality_rows(ev)
    table = _table(["", "teacher", "student", "change"], rows)
    return ["## Teacher against student", "", table, ""] + _evaluation_notes(ev) + [""]


def section_speedup(d: ReportData) -> list[str]:
    """Without an evaluation: the speed-ups alone."""
    if d.ev or not d.speedups:
        return []
    header = ["machine", "backend", "batch", "size", "teacher ms", "student ms", "speed-up", "MAC reduction"]
    rows = [
        [
            x["machine"],
            x["backend"],
            x["batch"],
            x["size"],
            sig(x["teacher_ms"]),
            sig(x["student_ms"]),
            f"{x['speedup']:.1f}×" + (f" ⚠ noisy (p90/p50 {x['noise_ratio']:.1f})" if _noisy_speedup(x) else ""),
            f"{x['mac_reduction']:.1f}×" if x["mac_reduction"] else "–",
        ]
        for x in d.speedups
    ]
    return ["## Speed-up", "", _table(header, rows), ""]


def _latency_cell(r: Optional[dict]) -> str:
    if r is None:
        return "–"
    if r.get("status") == "ok":
        lat = r["latency_ms"]
        return f"{sig(lat['p50'])} ({sig(lat['p90'])}){noisy_mark(r)}"
    return r.get("status", "?")


def _config_header(d: ReportData) -> list[str]:
    return ["model", "backend", "batch", "size", "precision"] + d.machines


def _config_cells(key: tuple) -> list:
    return [key[0], key[2], key[3], key[4], key[5]]


def _noisy_note(d: ReportData) -> list[str]:
    """⚠ how many measurements are noisy, and which."""
    machines = d.machines
    ok = [(k, m, d.row(k, m)) for k in d.config_keys for m in machines if (d.row(k, m) or {}).get("status") == "ok"]
    noisy = [(k, m, noise_ratio(r)) for k, m, r in ok if is_noisy(r)]
    if not noisy:
        return []
    return [
        f"⚠ {len(noisy)} of {len(ok)} measurements are noisy (p90/p50 > 1.5): "
        + "; ".join(f"{k[0]} {k[2]} b{k[3]} on {m}: ×{q:.1f}" for k, m, q in noisy)
        + ".",
        "",
    ]


def section_latency(d: ReportData) -> list[str]:
    """p50 (p90) per configuration, one column per machine."""
    if not d.profiles:
        return []
    machines = d.machines
    rows = [_config_cells(k) + [_latency_cell(d.row(k, m)) for m in machines] for k in d.config_keys]
    return [
        "## Latency",
        "",
        "p50 (p90) in ms, one column per machine; each configuration was timed in its own "
        "process. ⚠ noisy: p90 more than 1.5× p50 (a busy machine or a cold cache); rerun before you "
        "quote it.",
        "",
        _table(_config_header(d), rows),
        "",
    ] + _noisy_note(d)


def _throughput_cell(r: Optional[dict]) -> str:
    if not (r and r.get("status") == "ok"):
        return "–"
    lat = r["latency_ms"]
    ips = r["batch"] * 1000.0 / lat["p50"] if lat.get("p50") else None
    mem = r.get("peak_memory_mb")
    rate = r.get("achieved_macs_per_s")
    return (
        f"{sig(ips)} img/s"
        + (f", {sig(rate / 1e9)} GMAC/s" if isinstance(rate, (int, float)) and rate > 0 else "")
        + (f", {sig(mem)} MB" if mem else "")
    )


def section_throughput(d: ReportData) -> list[str]:
    """img/s, achieved GMAC/s and peak memory of every configuration measured on some machine."""
    machines = d.machines
    rows = [
        _config_cells(k) + [_throughput_cell(d.row(k, m)) for m in machines]
        for k in d.config_keys
        if any((d.row(k, m) or {}).get("status") == "ok" for m in machines)
    ]
    if not rows:
        return []
    return [
        "### Throughput and memory",
        "",
        "img/s at p50 (batch × 1000 / p50 ms); achieved GMAC/s (MACs by input size × batch / p50: how "
        "well the backend uses the machine); peak memory of the measuring process itself (resident "
        "set on the CPU: runtime, model and activations; CUDA memory allocated on a GPU).",
        "",
        _table(_config_header(d), rows),
        "",
    ]


def section_not_measured(d: ReportData) -> list[str]:
    """Configurations a machine could not measure, with the reason (once per backend and reason)."""
    seen: dict[tuple, str] = {}
    for k in d.config_keys:
        for m in d.machines:
            r = d.row(k, m)
            if r is not None and r.get("status") != "ok":
                seen.setdefault((k[2], r.get("reason", "")), f"- {k[2]} ({k[5]}): {r.get('reason', '')}")
    return ["Not measured:", ""] + list(seen.values()) + [""] if seen else []


def _machine_line(m: str, e: dict) -> str:
    peak = e.get("gemm_peak_macs_per_s")
    return (
        f"- **{m}**: {e.get('cpu')}, {e.get('cores')} cores, {e.get('threads')} threads"
        + (f", GPU {e['gpu']}" if e.get("gpu") else "")
        + f"; torch {e.get('torch_version')}, onnxruntime {e.get('onnxruntime_version')}"
        + (f", TensorRT {e['tensorrt_version']}" if e.get("tensorrt_version") else "")
        + (f"; FP32 GEMM peak {peak / 1e9:.1f} GMAC/s" if peak and peak == peak else "")
    )


def section_machines(d: ReportData) -> list[str]:
    """Each machine's CPU, GPU, threads and library versions."""
    if not d.profiles:
        return []
    _, machines, envs = d.by_config
    return ["## Machines", ""] + [_machine_line(m, envs[m]) for m in machines] + [""]


def _export_lines(ex: dict) -> list[str]:
    """One export.json: every ONNX file with its parity, INT8, the TensorRT lint, the notes."""
    lines = []
    for info in ex.get("onnx", {}).values():
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
        problems = lint["problems"]
        lines.append(
            f"- TensorRT {lint['target']} compatibility lint: "
            + ("no problems" if not problems else f"{len(problems)} problem(s)")
        )
    return lines + [f"- {note}" for note in ex.get("notes", [])]


def section_export(d: ReportData) -> list[str]:
    """One "Export" section per export.json."""
    return [line for ex in d.exports for line in ["## Export", ""] + _export_lines(ex) + [""]]


def _image_link(path: str) -> str:
    """A Markdown image destination: in angle brackets when the path holds a space or a parenthesis."""
    return f"<{path}>" if any(c in path for c in " ()") else path


def section_samples(d: ReportData) -> list[str]:
    """The sample grids (input | teacher | student | target), captioned by run when there are several."""
    if not d.samples:
        return []
    lines = ["## Samples", "", "input | teacher | student | target", ""]
    for caption, path in d.samples:
        if caption:
            lines += [f"{caption}:", ""]
        lines += [f"![samples]({_image_link(path)})", ""]
    return lines


def section_notes(d: ReportData) -> list[str]:
    return [
        "MACs are counted with torch's FlopCounterMode (MACs = FLOPs / 2), ConvTranspose by input size; the "
        "paper convention counts it by output size, as GAN-compression papers do.",
        "",
    ]


def section_benchmark(d: ReportData) -> list[str]:
    """Every format of each ``compress benchmark`` document: size, quality, speed, status."""
    return [benchmark_section(doc) for doc in d.benchmarks]


def section_loss_terms(d: ReportData) -> list[str]:
    """Each training run's loss terms: weight, mean value, share of the student's gradient."""
    return [line for path in d.metrics for line in loss_terms_table(path)]


# The report, top to bottom. A new section is one function (ReportData -> Markdown lines) and one entry here.
REPORT_SECTIONS: list[Callable[[ReportData], list[str]]] = [
    section_title,
    section_headline,
    section_published,
    section_comparison,
    section_speedup,
    section_latency,
    section_throughput,
    section_not_measured,
    section_machines,
    section_export,
    section_samples,
    section_notes,
    section_benchmark,
    section_loss_terms,
]


def build_markdown(
    profiles: list[dict],
    evals: list[dict],
    exports: list[dict],
    title: str,
    samples=None,
    benchmarks: list[dict] = (),
    metrics: list[Path] = (),
) -> str:
    """The report as Markdown: the :data:`REPORT_SECTIONS` in order. ``samples``: a relative image path, or a list
    of (caption, path) pairs; ``benchmarks``: compress benchmark documents; ``metrics``: metrics.jsonl files."""
    if isinstance(samples, str):
        samples = [("", samples)]
    d = ReportData(
        list(profiles), list(evals), list(exports), title, list(samples or []), list(benchmarks), list(metrics)
    )
    return "\n".join(line for section in REPORT_SECTIONS for line in section(d))


# ------------------------------------------------------------------------------------------------ HTML


def _cell_attrs(self, tokens, idx, options, env) -> str:
    """<td>: flagged when the cell carries ⚠ (a noisy measurement)."""
    if "⚠" in tokens[idx + 1].content:
        tokens[idx].attrJoin("class", "noisy")
    return self.renderToken(tokens, idx, options, env)


def _all_bold(inline) -> bool:
    """Whether an inline token is one ``**…**`` and nothing else."""
    kinds = [k.type for k in inline.children or [] if k.type != "text" or k.content]
    return kinds[:1] == ["strong_open"] and kinds[-1:] == ["strong_close"] and kinds.count("strong_open") == 1


def _paragraph_attrs(self, tokens, idx, options, env) -> str:
    """<p>: a ⚠ line is a flag; a paragraph that is all bold is the headline."""
    inline = tokens[idx + 1]
    if inline.content.startswith("⚠"):
        tokens[idx].attrJoin("class", "flag")
    elif _all_bold(inline):
        tokens[idx].attrJoin("class", "headline")
    return self.renderToken(tokens, idx, options, env)


def _embedded_image(self, tokens, idx, options, env) -> str:
    """An image of the Markdown, embedded as a data URI (dropped when its bytes are not at hand)."""
    token = tokens[idx]
    images = env.get("images")
    data = images.get(unquote(token.attrGet("src") or "")) if isinstance(images, dict) else images
    if not data:
        return ""
    alt = self.renderInlineAsText(token.children or [], options, env)
    return f'<img alt="{escapeHtml(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def markdown_renderer() -> MarkdownIt:
    """CommonMark with tables; raw HTML in the text is escaped; report classes on cells, flags and headline."""
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    md.add_render_rule("td_open", _cell_attrs)
    md.add_render_rule("paragraph_open", _paragraph_attrs)
    md.add_render_rule("image", _embedded_image)
    return md


REPORT_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}"
    "th{background:#f3f3f3}td.noisy{background:#fff3e0}p.flag{background:#fff3e0;padding:6px 10px}"
    "p.headline{font-size:17px;font-weight:600;background:#eef5fb;padding:8px 12px}"
    "figure{display:block;margin:1.5em 0}figcaption{font-size:13px;color:#555}img{max-width:100%}"
)


def build_html(markdown_text: str, plots: dict[str, str], title: str, samples_png=None) -> str:
    """A self-contained page: the Markdown rendered by markdown-it-py, plus embedded plots. ``samples_png``: the
    bytes of every sample image, or {path in the markdown: bytes}."""
    body = markdown_renderer().render(markdown_text, {"images": samples_png})
    figs = "".join(
        f'<figure><img alt="{k}" src="data:image/png;base64,{v}">'
        f"<figcaption>{html.escape(PLOT_CAPTIONS.get(k, k))}</figcaption></figure>"
        for k, v in plots.items()
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{REPORT_CSS}</style></head><body>{body}" + (f"<h2>Plots</h2>{figs}" if figs else "") + "</body></html>"
    )


def loss_terms_table(metrics_path: str | Path) -> list[str]:
    """A "Loss terms" section from a training run's metrics.jsonl: each generator term's weight, mean logged value
    and mean share of the student's gradient norm (logged at ``log_every`` steps). Empty when nothing was logged."""
    values: dict[str, list[float]] = defaultdict(list)
    shares: dict[str, list[float]] = defaultdict(list)
    weights: dict[str, float] = {}
    path = confined(metrics_path, Path(metrics_path).parent)  # a symlink out of the run folder is not read
    if path is None:
        return []
    try:
        lines = schemas.read_text_bounded(path).splitlines()
    except UserError:
        return []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict):
            continue
        for k, v in rec.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            if k.startswith("share:"):
                shares[k[6:]].append(float(v))
            elif k.startswith("weight:"):
                weights[k[7:]] = float(v)
            elif "/" in k and ":" not in k and not k.endswith("/disc"):
                values[k].append(float(v))
    if not shares:
        return []
    rows = [
        [
            term,
            f"{weights[term]:g}" if term in weights else "–",
            sig(sum(values[term]) / len(values[term])) if values.get(term) else "–",
            f"{100 * sum(shares[term]) / len(shares[term]):.2g}%",
        ]
        for term in shares
    ]
    n = max(len(v) for v in shares.values())
    return [
        "## Loss terms",
        "",
        f"Distillation, from metrics.jsonl: each term's weight, its mean logged value (weighted) and its mean share of "
        f"the student's gradient norm over {n} logged steps (each term's gradient alone; shares sum to 100%).",
        "",
        _table(["term", "weight", "mean value", "gradient share"], rows),
        "",
    ]


def _samples_for(eval_path: Path) -> Optional[Path]:
    """The sample grid a run's evaluate stage wrote next to its eval.json (samples/eval.png), when it lies inside
    that folder (a symlink out of it, say to ``~/.ssh/id_rsa``, is not read) and is a PNG of bounded size."""
    folder = Path(eval_path).parent
    p = _inside(folder / "samples" / "eval.png", folder)
    if p is not None and not _is_png(p.resolve()):
        log.warning("%s: not a PNG file; the report leaves it out", p)
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


def _read_image(path: Path) -> bytes:
    """The bytes of an image the report embeds (a sample grid)."""
    return Path(path).read_bytes()


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
    benchmarks = [d for d in (_load(p) for p in paths) if is_benchmark(d)]
    paths = [p for p in paths if not is_benchmark(_load(p))]
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
        data = _read_image(g)
        try:
            rel = str(g.resolve().relative_to(out.resolve()))
        except ValueError:  # another run's grid: copy it next to the report so report.md shows it
            rel = f"samples_{g.parent.parent.name or 'run'}.png"
            if (out / rel).exists() and (out / rel).read_bytes() != data:
                rel = f"samples_{g.parent.parent.name or 'run'}_{len(refs)}.png"
            atomic_write_bytes(out / rel, data)
        refs.append((g.parent.parent.name if len(grids) > 1 else "", rel))
        blobs[rel] = data
    metrics = [Path(p).parent / "metrics.jsonl" for p in eval_files]  # the loss terms of each run evaluated
    md = build_markdown(profiles, evals, exports, title, refs or None, benchmarks, metrics)
    plots = make_plots(profiles, evals)
    md_path, html_path = out / "report.md", out / "report.html"
    atomic_write_text(md_path, md)
    atomic_write_text(html_path, build_html(md, plots, title, blobs))
    return md_path, html_path


def report_run(run) -> tuple[Path, Path]:
    """The pipeline's report stage: the run's own profile, benchmark, eval and export JSON and sample grid, each
    read only when it is a plain file inside the run folder (a link out of it is left out with a warning)."""
    profile, bench, ev, export = (
        _inside(f, run.root) for f in (run.profile_json, run.root / "benchmark.json", run.eval_json, run.export_json)
    )
    grid = _samples_for(run.eval_json)  # inside the run folder only
    return write_report(
        [f for f in (profile, bench) if f],
        [ev] if ev else [],
        run.root,
        f"compressor report: {run.root.name}",
        [export] if export else [],
        grid,
    )


def _inside(path: Path, folder: Path) -> Optional[Path]:
    """``path`` when it is a plain file inside ``folder`` after every link is followed; None (with a warning
    when something is there) otherwise: a link to ``~/.ssh/id_rsa`` or a FIFO is not read into the report."""
    if not path.exists() and not path.is_symlink():
        return None
    if confined(path, folder) is None:
        log.warning("%s: not a plain file inside %s; the report leaves it out", path, folder)
        return None
    return path


# ------------------------------------------------------------------------------------------------ benchmark


def is_benchmark(doc) -> bool:
    return isinstance(doc, dict) and str(doc.get("schema", "")).startswith("compressor.benchmark")


BENCHMARK_HEADER = ["format", "precision", "size", "PSNR dB", "SSIM", "p50 ms", "p90/p50", "img/s", "status"]


def benchmark_cells(r: dict, markdown: bool = False) -> list[str]:
    """One ``compress benchmark`` row as printed (``markdown``: as the report shows it): format, precision, size
    on disk in MiB (every file of the format: an IR's .bin, ncnn's .param and .bin, a Core ML package's folder),
    PSNR, SSIM, p50, the spread p90/p50 (⚠ above :data:`NOISY_RATIO`), img/s, status."""
    psnr, lat = r.get("psnr"), r.get("latency_ms") or {}
    spread = lat["p90"] / lat["p50"] if lat.get("p50") and lat.get("p90") is not None else None
    status = r.get("status", "")
    if status == "not installed" and r.get("install"):
        status = f"not installed ({'`' if markdown else ''}{r['install']}{'`' if markdown else ''})"
    elif r.get("reason") and status in ("failed", "not installed", "export-only"):
        status = f"{status}: {r['reason']}"
    return [
        r.get("format", ""),
        r.get("precision", ""),
        f"{r['bytes'] / 2**20:.2f} MiB" if r.get("bytes") else "",
        "" if psnr is None else (("∞" if markdown else "inf") if not math.isfinite(psnr) else f"{psnr:.1f}"),
        "" if r.get("ssim") is None else f"{r['ssim']:.4f}",
        "" if r.get("p50_ms") is None else f"{r['p50_ms']:.2f}",
        "" if spread is None else f"{spread:.2f}" + (" ⚠ noisy" if spread > NOISY_RATIO else ""),
        "" if r.get("ips") is None else f"{r['ips']:.1f}",
        status.replace("|", "\\|") if markdown else status,
    ]


def benchmark_section(doc: dict) -> str:
    """``compress benchmark``'s table as a Markdown section (self-contained: the document in, text out)."""
    env = doc.get("environment", {})
    head = BENCHMARK_HEADER
    rows = [benchmark_cells(r, markdown=True) for r in doc.get("rows", [])]
    lines = [
        "## Every format: size, quality, speed",
        "",
        f"{doc.get('size')}², batch 1, {env.get('threads')} thread(s) on {env.get('cpu', '?')}; PSNR and SSIM "
        f"against the {doc.get('reference')} over {doc.get('images')} images (`compress benchmark`, "
        f"{doc.get('created', '')}).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n\n"
