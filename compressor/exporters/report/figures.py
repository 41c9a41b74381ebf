"""The report's plots, one function per figure (:func:`latency_figure`, :func:`speedup_figure`,
:func:`pareto_figure`), gathered by :func:`figures` and embedded in the HTML as PNG data (matplotlib is imported
only when a figure is drawn)."""

from __future__ import annotations

import base64
import io
from typing import Optional

from .summary import (
    BETTER,
    NOISY_RATIO,
    OTHER_COLOR,
    STUDENT_COLOR,
    TEACHER_COLOR,
    finite,
    is_noisy,
    report_order,
    rows_by_config,
    sig,
    speedups,
)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _color(role: str) -> str:
    return {"teacher": TEACHER_COLOR, "student": STUDENT_COLOR}.get(role, OTHER_COLOR)


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
    table, machines, _ = rows_by_config(profiles)
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
    _, machines, _ = rows_by_config(profiles)
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
        if metric and k[1] in ("teacher", "student") and finite(ev.get(k[1], {}).get(metric))
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
    ax.set_ylabel(f"{metric.upper()} ({'higher' if BETTER.get(metric) == 'higher' else 'lower'} is better)")
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
