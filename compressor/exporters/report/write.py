"""Writing a report: the JSON files merged (:func:`write_report`, behind ``compress report``) or a run's own files
(:func:`report_run`, the pipeline's report stage), each read only when it is a plain file inside its folder, and
the sample grids copied next to report.md and embedded in report.html."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from compressor.io import atomic_write_bytes, atomic_write_text, confined

from .figures import make_plots
from .html import build_html
from .sections import build_markdown
from .summary import classify, is_benchmark, load_json

log = logging.getLogger(__name__)


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
    benchmarks = [d for d in (load_json(p) for p in paths) if is_benchmark(d)]
    paths = [p for p in paths if not is_benchmark(load_json(p))]
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
        doc = load_json(p)
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
    # the loss terms of each run evaluated: distillation, and its quantised phase where there is one
    metrics = [Path(p).parent / sub / "metrics.jsonl" for p in eval_files for sub in (".", "quantize")]
    metrics = [m for m in metrics if m.parent.name != "quantize" or m.is_file()]
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
