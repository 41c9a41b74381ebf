"""The report tells the truth at a glance: plot geometry read back from matplotlib, honesty flags, one column per
machine, sample grids carried into merged reports, consistent digits."""

import itertools
import json

import numpy as np
import pytest
from PIL import Image

from compressor.exporters import report as rp

HOST = {
    "hostname": "box",
    "cpu": "AMD EPYC",
    "cores": 2,
    "threads": 2,
    "torch_version": "2.13",
    "onnxruntime_version": "1.32",
    "gemm_peak_macs_per_s": 5e10,
}


def _lat(p50, p90, p10=None, n=20):
    p10 = p50 * 0.9 if p10 is None else p10
    return {
        "p10": p10,
        "p50": p50,
        "p90": p90,
        "p99": p90 * 1.1,
        "mean": (p50 + p90) / 2,
        "std": 1.0,
        "min": p10 * 0.95,
        "n": n,
        "throughput_ips": 1000 / p50,
    }


def _row(model, role, backend, lat, macs, batch=1, size=256, mem=300.0):
    return {
        "model": model,
        "role": role,
        "backend": backend,
        "batch": batch,
        "size": size,
        "precision": "fp32",
        "status": "ok",
        "latency_ms": lat,
        "macs": macs,
        "params": macs // 1000,
        "peak_memory_mb": mem,
        "achieved_macs_per_s": macs * batch * 1000.0 / lat["p50"] if lat and lat.get("p50") else None,
    }


def _profile(env=HOST, noisy=True):
    t90 = 202.41 if noisy else 26.0
    return {
        "schema": "compressor.profile/1",
        "environment": dict(env),
        "results": [
            _row("run/teacher", "teacher", "torch", _lat(23.79, t90, p10=22.0), 12_000_000_000),
            _row("run/student", "student", "torch", _lat(5.2, 5.9), 800_000_000, mem=120.0),
            _row("run/teacher", "teacher", "ort-cpu", _lat(19.0, 21.0), 12_000_000_000),
            _row("run/student", "student", "ort-cpu", _lat(3.1, 3.4), 800_000_000),
            {
                "model": "run/student",
                "role": "student",
                "backend": "tensorrt",
                "batch": 1,
                "size": 256,
                "precision": "fp32",
                "status": "unavailable",
                "reason": "TensorRT is not installed",
            },
        ],
    }


EVAL = {
    "teacher": {"params": 11_378_179, "macs": 12_000_000_000, "psnr": 18.0, "ssim": 0.52, "fid": 180.25, "kid": 0.1234},
    "student": {
        "params": 715_000,
        "macs": 800_000_000,
        "psnr": 18.43,
        "ssim": 0.5,
        "fid": 306.9231725643348,
        "kid": 0.2345,
        "psnr_vs_teacher": 22.1,
    },
    "student_pct_of_teacher": {"psnr": 102.4, "ssim": 96.2},
    "n_images": 16,
    "size": 256,
    "fid_weights": "pt_inception-2015-12-05",
    "fid_skipped": None,
}


def _draw(fig):
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _texts(fig):
    """Every label a reader must read: tick labels, annotations, legend entries (non-empty, visible)."""
    out = []
    for ax in fig.axes:
        out += [t for t in ax.get_yticklabels() + ax.texts if t.get_text().strip() and t.get_visible()]
        leg = ax.get_legend()
        if leg is not None:
            out += [t for t in leg.get_texts() if t.get_text().strip()]
    return out


@pytest.fixture
def figs():
    f = rp.figures([_profile(), _profile(env=dict(HOST, threads=1), noisy=False)], [EVAL])  # two machines
    yield f
    import matplotlib.pyplot as plt

    for fig in f.values():
        plt.close(fig)


def test_one_figure_per_question(figs):
    assert set(figs) == {"latency", "speedup", "pareto"}


def test_latency_bars_and_whiskers_never_cross_zero_and_are_asymmetric(figs):
    fig = figs["latency"]
    assert [a.get_title(loc="left") for a in fig.axes] == ["box · AMD EPYC · 2t", "box · AMD EPYC · 1t"]
    ax = fig.axes[0]
    from matplotlib.container import BarContainer

    bar_containers = [c for c in ax.containers if isinstance(c, BarContainer)]
    bars = [p for c in bar_containers for p in c.patches]
    assert len(bars) == 4
    assert all(b.get_x() >= 0 and b.get_width() > 0 for b in bars)
    assert ax.get_xlim()[0] >= 0
    segs = [s for c in bar_containers if c.errorbar for lc in c.errorbar.lines[2] for s in lc.get_segments()]
    assert len(segs) == 4
    lows = sorted(min(s[:, 0]) for s in segs)
    assert lows[0] >= 0, "a whisker extends left of zero"
    # the noisy teacher: p10 22.0, p50 23.79, p90 202.41 -> whisker from 22 to 202, not 23.79 ± 178
    seg = max(segs, key=lambda s: s[:, 0].max())
    assert seg[:, 0].min() == pytest.approx(22.0) and seg[:, 0].max() == pytest.approx(202.41)
    bar = next(b for b in bars if b.get_width() == pytest.approx(23.79))
    assert bar.get_width() - seg[:, 0].min() != pytest.approx(seg[:, 0].max() - bar.get_width())
    assert "linear" in ax.get_xlabel() or "linear" in fig.axes[-1].get_xlabel()


def test_whisker_clamps_to_zero_even_for_odd_records():
    assert rp.whisker({"p50": 5.0, "p90": 4.0, "min": -3.0}) == (0.0, 5.0, 5.0)
    assert rp.whisker({"p50": 5.0, "p90": 9.0}) == (5.0, 5.0, 9.0)


@pytest.mark.parametrize("name", ["latency", "speedup", "pareto"])
def test_labels_never_overlap(figs, name):
    fig = figs[name]
    renderer = _draw(fig)
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in _texts(fig)]
    assert boxes
    for (ta, a), (tb, b) in itertools.combinations(boxes, 2):
        assert not _overlap(a, b), f"{ta!r} overlaps {tb!r}"


def test_two_teachers_with_equal_quality_stay_readable():
    """Two teacher points at the same PSNR (the smear in the old plot) are told apart by the legend."""
    f = rp.figures([_profile()], [EVAL])
    fig = f["pareto"]
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and "log" in ax.get_xlabel()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sum(lab.startswith("teacher") for lab in labels) == 2 and not ax.texts
    import matplotlib.pyplot as plt

    for fig in f.values():
        plt.close(fig)


def test_noisy_and_small_n_flags_in_markdown_and_html(tmp_path):
    p, e = tmp_path / "profile.json", tmp_path / "eval.json"
    p.write_text(json.dumps(_profile()))
    e.write_text(json.dumps(EVAL))
    md, page = rp.write_report([p], [e], tmp_path / "rep", "flags")
    text, html = md.read_text(), page.read_text()
    for doc in (text, html):
        assert "noisy (p90/p50 8.5)" in doc
        assert "n = 16: compare rows with each other, not with published FIDs" in doc
    teacher_torch = next(line for line in text.splitlines() if line.startswith("| run/teacher | torch"))
    assert "⚠ noisy" in teacher_torch
    assert "⚠" not in next(line for line in text.splitlines() if line.startswith("| run/student | ort-cpu"))
    fid = next(line for line in text.splitlines() if line.startswith("| FID"))
    assert "180.2" in fid and "306.9" in fid and "+126.7 (worse)" in fid and "306.923" not in fid
    kid = next(line for line in text.splitlines() if line.startswith("| KID"))
    assert "+0.1111 (worse)" in kid
    psnr = next(line for line in text.splitlines() if line.startswith("| PSNR, dB"))
    assert "| 18.0 | 18.4 |" in psnr and "+0.4 (better, 102% of teacher)" in psnr
    assert 'class="noisy"' in html


def test_large_n_and_steady_runs_carry_no_flags(tmp_path):
    ev = dict(EVAL, n_images=5000)
    md = rp.build_markdown([_profile(noisy=False)], [ev], [], "quiet")
    assert "noisy" not in md.replace("⚠ noisy: p90 more", "") and "published FIDs" not in md


def test_one_column_per_machine(tmp_path):
    files = []
    for i, env in enumerate([HOST, HOST, dict(HOST, threads=1), dict(HOST, hostname="jetson", gpu="Orin")]):
        f = tmp_path / f"p{i}.json"
        f.write_text(json.dumps(_profile(env=dict(env, machine="ignored label"))))
        files.append(f)
    md, _ = rp.write_report(files, [], tmp_path / "rep", "machines")
    header = next(line for line in md.read_text().splitlines() if line.startswith("| model"))
    assert header.count("box · AMD EPYC · 2t") == 1 and "box · AMD EPYC · 1t" in header
    assert "jetson · Orin · 2t" in header and "(2)" not in header and "(3)" not in header


def test_throughput_is_named_and_taken_at_p50():
    md = rp.build_markdown([_profile()], [], [], "t")
    assert "img/s at p50" in md
    row = next(line for line in md.splitlines() if line.startswith("| run/teacher | torch") and "img/s" in line)
    assert "42.0 img/s" in row  # 1000 / 23.79, not 1000 / mean
    assert "504 GMAC/s" in row and "achieved GMAC/s" in md  # 12 GMAC / 23.79 ms


def test_merged_report_carries_the_runs_sample_grid(tmp_path):
    run = tmp_path / "runs" / "demo"
    (run / "samples").mkdir(parents=True)
    Image.fromarray(np.full((8, 32, 3), 200, np.uint8)).save(run / "samples" / "eval.png")
    (run / "eval.json").write_text(json.dumps(EVAL))
    (run / "profile.json").write_text(json.dumps(_profile()))
    md, page = rp.write_report([run / "profile.json", run / "eval.json"], [], tmp_path / "merged", "merged")
    text = md.read_text()
    assert "## Samples" in text and "![samples](samples_demo.png)" in text
    assert (tmp_path / "merged" / "samples_demo.png").read_bytes() == (run / "samples" / "eval.png").read_bytes()
    assert page.read_text().count('alt="samples"') == 1


def test_consistent_digits():
    assert rp.sig(18.0) == "18.0" and rp.sig(18.43) == "18.4" and rp.sig(202.41) == "202"
    assert rp.sig(0.012345) == "0.0123" and rp.sig(None) == "–" and rp.sig(float("nan")) == "–"
    assert rp.metric_text("psnr", 18) == "18.0" and rp.metric_text("ssim", 0.5) == "0.500"
    assert rp.change_text("fid", 180.0, None) == "–"


def test_html_is_the_markdown_rendered_with_the_report_classes():
    prof = _profile()
    prof["results"][-1]["reason"] = "<script>alert(1)</script> not installed"
    md = rp.build_markdown([prof], [EVAL], [], "page <1>", [("run a", "samples_run a.png")])
    page = rp.build_html(md, {}, "page <1>", {"samples_run a.png": b"\x89PNG grid"})
    assert "<title>page &lt;1&gt;</title>" in page and "<h1>page &lt;1&gt;</h1>" in page
    assert '<p class="headline"><strong>Student against teacher: params 15.9× fewer' in page
    assert '<p class="flag">⚠ FID and KID from 16 images' in page
    assert "<th>teacher</th>" in page and page.count("<table>") == 3  # comparison, latency, throughput
    assert '<td class="noisy">23.8 (202) ⚠ noisy (p90/p50 8.5)</td>' in page
    assert "<li><strong>box · AMD EPYC · 2t</strong>: AMD EPYC" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert page.count('<img alt="samples" src="data:image/png;base64,iVBORyBncmlk">') == 1
    assert "<h2>Plots</h2>" not in page and "td.noisy{background:#fff3e0}" in page
    assert "<img" not in rp.build_html(md, {}, "no image bytes")  # an image whose bytes are absent is left out


def test_a_new_section_is_one_function_and_one_entry(monkeypatch):
    def section_benchmark(d: rp.ReportData) -> list[str]:
        rows = [[b["format"], rp.sig(b["ms"])] for ex in d.exports for b in ex.get("benchmark", [])]
        return ["## Benchmark", "", rp.md_table(["format", "p50 ms"], rows), ""] if rows else []

    sections = list(rp.REPORT_SECTIONS)
    sections.insert(sections.index(rp.section_export) + 1, section_benchmark)
    monkeypatch.setattr(rp.sections, "REPORT_SECTIONS", sections)  # the list lives in the sections module
    export = {"files": {}, "benchmark": [{"format": "onnx", "ms": 3.14159}]}
    md = rp.build_markdown([], [], [export], "bench")
    assert "## Export\n\n\n## Benchmark\n\n| format | p50 ms |\n|---|---|\n| onnx | 3.14 |\n" in md
    assert "<td>3.14</td>" in rp.build_html(md, {}, "bench")
    assert "## Benchmark" not in rp.build_markdown([], [], [], "no exports")


def test_loss_terms_table_from_metrics_jsonl(tmp_path):
    from compressor.exporters.report import loss_terms_table

    f = tmp_path / "metrics.jsonl"
    rows = [
        {"step": 1, "lr": 1e-3, "time_s": 0.1, "G/kd": 2.0, "G/srp": 0.5, "G/disc": 0.3},
        {
            "step": 2,
            "lr": 1e-3,
            "time_s": 0.2,
            "G/kd": 4.0,
            "G/srp": 1.5,
            "G/disc": 0.3,
            **{"weight:G/kd": 10.0, "weight:G/srp": 5.0, "share:G/kd": 0.75, "share:G/srp": 0.25},
            **{"gradnorm:G/kd": 3.0, "gradnorm:G/srp": 1.0},
        },
    ]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n{cut")
    text = "\n".join(loss_terms_table(f))
    assert "## Loss terms" in text and "| G/kd | 10 | 3.00 | 75% |" in text and "| G/srp | 5 | 1.00 | 25% |" in text
    assert "disc" not in text.split("|---")[1]
    assert loss_terms_table(tmp_path / "none.jsonl") == []  # no file, no section
    f.write_text(json.dumps(rows[0]) + "\n")
    assert loss_terms_table(f) == []  # nothing measured (older runs): no section
