"""The report's Markdown: a list of sections, :data:`REPORT_SECTIONS`, read top to bottom.

A section is a function that takes the :class:`ReportData` (the merged documents: ``profiles``, ``evals``,
``exports``, ``title``, ``samples``, ``benchmarks``, ``metrics``, plus shared views such as ``ev``, ``speedups``,
``by_config`` and ``config_keys``) and returns Markdown lines, or ``[]`` when it has nothing to say. To add one,
write the function and put it in the list where it belongs::

    def section_file_sizes(d: ReportData) -> list[str]:
        rows = [[r["path"], f"{r['bytes'] / 2**20:.2f} MB"] for ex in d.exports for r in ex["files"].values()]
        return ["## File sizes", "", md_table(["file", "size"], rows), ""] if rows else []

    REPORT_SECTIONS = [..., section_export, section_file_sizes, section_samples, section_notes]

A section ends with an empty line. GitHub-flavoured tables (:func:`~.tables.md_table`), ``- `` lists, ``**bold**``
and images work in both files; a table cell holding ⚠ is shaded in the HTML, as is a paragraph that starts with ⚠.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Optional

from compressor import schemas
from compressor.errors import UserError
from compressor.io import confined

from .summary import (
    METRICS,
    SMALL_N_NOTE,
    change_text,
    fid_caveat,
    finite,
    giga_text,
    headline,
    is_noisy,
    metric_text,
    noise_ratio,
    noisy_mark,
    noisy_speedup,
    output_note,
    report_order,
    rows_by_config,
    sig,
    speedups,
)
from .tables import benchmark_section, export_table, md_table


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
        """:func:`rows_by_config`: {config: {machine: row}}, the machines, their environments."""
        return rows_by_config(self.profiles)

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
    if not isinstance(check, dict) or not finite(check.get("psnr")):
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
    if finite(s.get("psnr")) and finite(t.get("psnr")):
        lines += [
            f"The student scores {s['psnr']:.2f} dB against the ground truth ({s['psnr'] - t['psnr']:+.2f} dB from the "
            f"teacher's {t['psnr']:.2f} dB on the same {d.ev.get('n_images', '?')} images)"
            + (
                f" and {s['psnr_vs_teacher']:.2f} dB against the teacher's output."
                if finite(s.get("psnr_vs_teacher"))
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
            giga_text(t.get("macs")),
            giga_text(s.get("macs")),
            change_text("macs", t.get("macs"), s.get("macs")),
        ],
        [
            "MACs (paper convention: by output size)",
            giga_text(t.get("macs_paper_convention")),
            giga_text(s.get("macs_paper_convention")),
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
            + (f" ⚠ noisy (p90/p50 {x['noise_ratio']:.1f})" if noisy_speedup(x) else ""),
        ]
        for x in sp
    ]


def _quality_rows(ev: dict) -> list[list]:
    """One row per quality metric either model has (FID and KID with the small-sample caveat)."""
    t, s, caveat = ev["teacher"], ev["student"], fid_caveat(ev)
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
    built = ev.get("student_built")
    lines = [f"Student: {built}.", ""] if isinstance(built, str) else []
    lines += [
        f"Evaluated on {ev.get('n_images')} test images at {ev.get('size')}²{output_note(ev)}. "
        + (f"FID/KID skipped: {skipped}" if skipped else (f"FID weights: {weights}." if weights else ""))
    ]
    if fid_caveat(ev) and ({"fid", "kid"} & (set(ev["teacher"]) | set(ev["student"]))):
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
    table = md_table(["", "teacher", "student", "change"], rows)
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
            f"{x['speedup']:.1f}×" + (f" ⚠ noisy (p90/p50 {x['noise_ratio']:.1f})" if noisy_speedup(x) else ""),
            f"{x['mac_reduction']:.1f}×" if x["mac_reduction"] else "–",
        ]
        for x in d.speedups
    ]
    return ["## Speed-up", "", md_table(header, rows), ""]


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
        md_table(_config_header(d), rows),
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
        md_table(_config_header(d), rows),
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
    """One export.json: a row for every exported file (file, format, precision, size, parity, status), then the
    TensorRT lint of the files TensorRT reads, then the notes."""
    lines = export_table(ex) if ex.get("files") else []
    bullets = []
    for rec in (ex.get("files") or {}).values():
        lint = rec.get("lint")
        if isinstance(lint, dict):
            problems = lint.get("problems") or []
            bullets.append(
                f"- TensorRT {lint.get('target')} compatibility lint of {lint.get('file')}: "
                + ("no problems" if not problems else f"{len(problems)} problem(s)")
            )
    bullets += [f"- {note}" for note in ex.get("notes", [])]
    return lines + ([""] if lines and bullets else []) + bullets


def section_export(d: ReportData) -> list[str]:
    """One "Export" section per export.json: every format's files."""
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
    quantised = Path(metrics_path).parent.name == "quantize"
    phase = "Quantisation-aware distillation (distill.quantize), from quantize/" if quantised else "Distillation, from "
    return [
        "## Loss terms" + (": the quantised phase" if quantised else ""),
        "",
        f"{phase}metrics.jsonl: each term's weight, its mean logged value (weighted) and its mean share of "
        f"the student's gradient norm over {n} logged steps (each term's gradient alone; shares sum to 100%).",
        "",
        md_table(["term", "weight", "mean value", "gradient share"], rows),
        "",
    ]


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
