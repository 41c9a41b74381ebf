"""The report's tables: the Markdown table, the benchmark table (rendered here once, for the terminal and for the
report alike) and the export table (one row per exported file's record, whatever its format)."""

from __future__ import annotations

import math

from ..records import parity_text
from .summary import NOISY_RATIO, value_text


def md_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(value_text(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows]
    return "\n".join(out)


def plain_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Columns padded to their widest cell; text left, numbers right; the last column (long reasons) unpadded."""
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    out = []
    for r in [header] + rows:
        cells = [
            str(c).ljust(w) if i < 2 or i == len(r) - 1 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))
        ]
        out.append("  ".join(cells).rstrip())
    return out


def size_text(n) -> str:
    return f"{n / 2**20:.2f} MiB" if isinstance(n, (int, float)) and n else ""


# ------------------------------------------------------------------------------------------------ benchmark

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
        size_text(r.get("bytes")),
        "" if psnr is None else (("∞" if markdown else "inf") if not math.isfinite(psnr) else f"{psnr:.1f}"),
        "" if r.get("ssim") is None else f"{r['ssim']:.4f}",
        "" if r.get("p50_ms") is None else f"{r['p50_ms']:.2f}",
        "" if spread is None else f"{spread:.2f}" + (" ⚠ noisy" if spread > NOISY_RATIO else ""),
        "" if r.get("ips") is None else f"{r['ips']:.1f}",
        status.replace("|", "\\|") if markdown else status,
    ]


def benchmark_caption(doc: dict) -> str:
    """What the table measured: size, threads, machine, reference and images."""
    env = doc.get("environment", {})
    return (
        f"{doc.get('size')}², batch 1, {env.get('threads')} thread(s) on {env.get('cpu', '?')}; PSNR and SSIM "
        f"against the {doc.get('reference')} over {doc.get('images')} images"
    )


def benchmark_table(doc: dict, markdown: bool = False) -> list[str]:
    """``compress benchmark``'s table, the one rendering of it: aligned text for the terminal, or a Markdown table
    for the report. A run with a quantisation-aware student (``distill.quantize``) shows its INT8 rows as ``int8
    qad`` beside the calibrated ``int8 ptq`` ones, with their PSNR against the FP32 student in one more column."""
    header, rows = list(BENCHMARK_HEADER), [benchmark_cells(r, markdown) for r in doc.get("rows", [])]
    if any("quantization" in r for r in doc.get("rows", [])):
        header.insert(4, "vs FP32 dB")
        for cells, r in zip(rows, doc.get("rows", [])):
            if r.get("quantization"):
                cells[1] = f"{cells[1]} {r['quantization']}"
            if r.get("note"):
                cells[-1] = f"{cells[-1]} ({r['note']})"
            v = r.get("psnr_vs_fp32")
            cells.insert(4, "" if v is None else ("inf" if not math.isfinite(v) else f"{v:.1f}"))
    if not markdown:
        return plain_table(header, rows)
    return md_table(header, rows).splitlines()


def benchmark_section(doc: dict) -> str:
    """``compress benchmark``'s table as a Markdown section (self-contained: the document in, text out)."""
    lines = [
        "## Every format: size, quality, speed",
        "",
        f"{benchmark_caption(doc)} (`compress benchmark`, {doc.get('created', '')}).",
        "",
        *benchmark_table(doc, markdown=True),
    ]
    return "\n".join(lines) + "\n\n"


# ------------------------------------------------------------------------------------------------ export

EXPORT_HEADER = ["file", "format", "precision", "size", "parity", "status"]


def export_cells(rec: dict) -> list[str]:
    """One exported file's record as a table row: file, format, precision, size on disk, its parity figures
    (against PyTorch, or the file it was converted from), status (with the reason)."""
    status = rec.get("status", "")
    if rec.get("reason") and status != "passed":
        status = f"{status}: {rec['reason']}"
    return [
        f"`{rec.get('path', '')}`",
        str(rec.get("format", "")),
        str(rec.get("precision", "")),
        size_text(rec.get("bytes")),
        parity_text(rec.get("parity") or {}).replace("|", "\\|"),
        status.replace("|", "\\|"),
    ]


def export_table(doc: dict) -> list[str]:
    """Every file of one ``export.json``, one row each, as a Markdown table."""
    return md_table(EXPORT_HEADER, [export_cells(r) for r in (doc.get("files") or {}).values()]).splitlines()
