"""What the report reads and says in numbers: the documents told apart by their content (:func:`classify`; an
``export.json`` of the earlier layout is read as records), the metric rules (:data:`METRICS`, :func:`metric_text`,
:func:`change_text`, :func:`sig`), the profile rows by configuration and machine, the speed-ups, the noise flag, and
the one-line headline that the report and a run's closing summary share."""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Optional

from compressor import schemas
from compressor.errors import UserError

from ..records import upgrade

log = logging.getLogger(__name__)


PROFILE_ROW_KEYS = ("model", "backend", "batch", "size")


def load_json(path: str | Path) -> dict:
    return schemas.read_json(path)  # bounded size and depth; one line naming the file otherwise


def classify(paths: list[str | Path]) -> tuple[list[dict], list[dict], list[dict]]:
    """Split JSON files into profile, eval and export documents by their content."""
    profiles, evals, exports = [], [], []
    for p in paths:
        doc = load_json(p)
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
        elif isinstance(doc, dict) and ("files" in doc or "onnx" in doc):
            exports.append(schemas.check(upgrade(doc), schemas.ExportDoc, str(p)))
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


DECIMALS = {k: d for k, _, d, _ in METRICS}


BETTER = {k: b for k, _, _, b in METRICS}


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


def output_note(ev: dict) -> str:
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
    d = DECIMALS.get(key)
    return f"{v:.{d}f}" if d is not None else sig(v)


def change_text(key: str, teacher, student) -> str:
    """Student against teacher wherever both exist: ×-fold for size; difference, direction and % for quality."""
    ok = [isinstance(v, (int, float)) and v == v for v in (teacher, student)]
    if not all(ok):
        return "–"
    if key in ("params", "macs"):
        return f"{teacher / student:.1f}× fewer" if student else "–"
    diff = student - teacher
    d = DECIMALS.get(key) or 3
    if round(diff, d) == 0:
        word = "same"
    else:
        word = "better" if (diff > 0) == (BETTER.get(key, "higher") == "higher") else "worse"
    pct = f", {100 * student / teacher:.0f}% of teacher" if BETTER.get(key) == "higher" and teacher else ""
    return f"{diff:+.{d}f} ({word}{pct})"


def value_text(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return sig(v)
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def giga_text(n) -> str:
    return "–" if n is None else f"{sig(n / 1e9)} G"


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


def rows_by_config(profiles: list[dict]):
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
    table, _, _ = rows_by_config(profiles)
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


def finite(v) -> bool:
    """A number a plot can place (not None, NaN or infinite: PSNR of identical images is +inf)."""
    return isinstance(v, (int, float)) and math.isfinite(v)


def headline(ev: Optional[dict], profiles: list[dict]) -> Optional[str]:
    """One line: params ×, MACs ×, latency × per backend (smallest batch; first machine), quality kept."""
    parts = []
    t, s = (ev or {}).get("teacher", {}), (ev or {}).get("student", {})
    for k, name in (("params", "params"), ("macs", "MACs")):
        if t.get(k) and s.get(k):
            parts.append(f"{name} {t[k] / s[k]:.1f}× fewer")
    parts += _headline_speedups(speedups(profiles))
    if all(finite(x) for x in (s.get("psnr"), t.get("psnr"))):
        vs_t = f"; {s['psnr_vs_teacher']:.1f} dB against the teacher" if finite(s.get("psnr_vs_teacher")) else ""
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
        steady = [x for x in rows if not noisy_speedup(x)]
        if steady and steady[0]["batch"] == rows[0]["batch"]:
            parts.append(f"{backend} {steady[0]['speedup']:.1f}× faster")
        elif steady:
            parts.append(f"{backend} {steady[0]['speedup']:.1f}× faster (batch {steady[0]['batch']})")
        else:
            worst = max(x["noise_ratio"] for x in rows)
            parts.append(f"{backend} speed-up not measured reliably (p90/p50 {worst:.1f}: rerun on a quiet machine)")
    return parts


def fid_caveat(ev: dict) -> str:
    n = ev.get("n_images")
    return f"n = {n}: {SMALL_N_NOTE}" if isinstance(n, int) and n < SMALL_FID_N else ""


def noisy_speedup(x: dict) -> bool:
    return (x["noise_ratio"] or 0) > NOISY_RATIO


def is_benchmark(doc) -> bool:
    return isinstance(doc, dict) and str(doc.get("schema", "")).startswith("compressor.benchmark")
