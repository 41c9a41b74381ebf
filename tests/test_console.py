"""Terminal output: a heartbeat in logs and pipes, aligned tables, the closing summary, quiet INT8 export."""

import io
import json
import logging
import sys
import time

from compressor.app import console


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def _beat(every_s=30.0):
    clock, lines = FakeClock(), []
    return console.Heartbeat(lines.append, clock=clock, every_s=every_s), clock, lines


def test_heartbeat_speaks_within_30s_of_a_stage_start_even_before_its_first_step():
    hb, clock, lines = _beat()
    for _ in range(29):
        clock.t += 1
        hb.tick()
    assert lines == []
    clock.t += 1
    hb.tick()
    assert len(lines) == 1 and "30s since start" in lines[0]


def test_heartbeat_every_tenth_and_every_30s_with_step_loss_rate_eta():
    hb, clock, lines = _beat()
    hb.update("teacher", 1, 400, {"G/gan": 1.0, "G/recon": 2.0, "D/disc": 9.0})
    assert len(lines) == 1 and lines[0].startswith("teacher: step 1/400")
    for step in range(2, 401):
        clock.t += 0.5  # 2 steps/s: a tenth (40 steps) takes 20 s, so the 10% lines come first
        hb.update("teacher", step, 400, {"G/gan": 1.0, "G/recon": 2.0})
    tenths = [line for line in lines if "%)" in line]
    assert len(lines) == 11 and all(f"({10 * k}%)" in lines[k] for k in range(1, 11))
    assert "loss 3" in lines[5] and "2.00 step/s" in lines[5] and "ETA 1m40s" in lines[5]
    assert tenths


def test_heartbeat_slow_stage_lines_every_30s():
    hb, clock, lines = _beat()
    hb.update("distill", 1, 1000, {})
    for step in range(2, 40):  # 10 s per step: no tenth is reached for a long time
        clock.t += 10
        hb.update("distill", step, 1000, {})
        hb.tick()
    assert 12 <= len(lines) <= 14  # 380 s / 30 s, plus the first line
    assert "10.0 s/step" in lines[-1] and "ETA" in lines[-1]


def test_heartbeat_between_stages_names_the_last_one():
    hb, clock, lines = _beat()
    hb.update("distill", 10, 10, {})
    hb.stage_done("distill")
    clock.t += 31
    hb.tick()
    assert "since distill finished" in lines[-1]


def test_progress_on_a_pipe_uses_the_heartbeat_and_on_a_terminal_the_bars():
    buf = io.StringIO()
    with console.Progress(False, stream=buf, tty=False) as p:
        p("teacher", 1, 10, {"G/recon": 1.5})
        p("teacher", 10, 10, {"G/recon": 1.0})
    assert "teacher: step 1/10" in buf.getvalue() and "step 10/10 (100%)" in buf.getvalue()
    assert "\x1b[" not in buf.getvalue()
    quiet = io.StringIO()
    with console.Progress(True, stream=quiet, tty=False) as p:
        p("teacher", 1, 10, {})
    assert quiet.getvalue() == ""
    with console.Progress(False, stream=io.StringIO(), tty=True) as p:
        p("teacher", 1, 10, {})
        assert p.heartbeat is None and p.bar is not None


def test_piped_stage_prints_a_heartbeat_within_30s(tmp_path):
    """A real process, piped: a stage whose first step takes longer than the heartbeat period still speaks."""
    import subprocess

    code = (
        "import sys, time\nfrom compressor.app.console import Progress\n"
        "with Progress(False, every_s=1.0) as p:\n"
        "    p('teacher', 0, 100, {})\n    time.sleep(4.1)\n"
    )
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(tmp_path),
        env={**__import__("os").environ, "PYTHONPATH": str(__import__("pathlib").Path(__file__).parents[1])},
    )
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("teacher: step 0/100") and len(lines) >= 3, lines
    assert time.monotonic() - t0 < 30


def test_eval_table_is_aligned_and_rounded():
    res = {
        "teacher": {"params": 11_378_179, "psnr": 18.0, "fid": 180.25},
        "student": {"params": 715_000, "psnr": 18.43, "fid": 306.9231725643348},
        "n_images": 16,
    }
    buf = io.StringIO()
    console.print_table(console.eval_table(res, "t"), file=buf)
    out = buf.getvalue()
    assert "306.9231725643348" not in out and "306.9" in out and "18.0" in out and "18.4" in out
    assert "n = 16: compare rows with each other" in out
    rows = [line for line in out.splitlines() if "│" in line]
    assert len(rows) == 3
    # aligned: the column rules sit at the same positions on every row, numbers right-aligned against them
    assert len({tuple(i for i, ch in enumerate(line) if ch == "│") for line in rows}) == 1
    teacher_end = [line.index("│", line.index("│") + 1) for line in rows]
    assert (
        rows[1][teacher_end[1] - 6 : teacher_end[1] - 1] == "180.2"
        and rows[2][teacher_end[2] - 5 : teacher_end[2] - 1] == "18.0"
    )


def test_closing_summary_names_both_reports_and_a_headline(tmp_path):
    (tmp_path / "report.md").write_text("x")
    (tmp_path / "report.html").write_text("x")
    (tmp_path / "eval.json").write_text(
        json.dumps(
            {
                "teacher": {"params": 1000, "macs": 16e9, "psnr": 20.0},
                "student": {"params": 100, "macs": 1e9, "psnr": 19.0},
                "student_pct_of_teacher": {"psnr": 95.0},
                "n_images": 16,
            }
        )
    )
    lat = {"p10": 1, "p50": 1.0, "p90": 1.1, "min": 1}
    (tmp_path / "profile.json").write_text(
        json.dumps(
            {
                "schema": "compressor.profile/1",
                "environment": {"hostname": "h", "cpu": "c", "threads": 2},
                "results": [
                    {
                        "model": "t",
                        "role": "teacher",
                        "backend": "torch",
                        "batch": 1,
                        "size": 64,
                        "status": "ok",
                        "latency_ms": dict(lat, p50=8.0, p90=8.5),
                    },
                    {
                        "model": "s",
                        "role": "student",
                        "backend": "torch",
                        "batch": 1,
                        "size": 64,
                        "status": "ok",
                        "latency_ms": dict(lat, p50=2.0, p90=2.1),
                    },
                ],
            }
        )
    )
    lines = console.closing_summary(tmp_path)
    head = next(line for line in lines if line.startswith("student vs teacher"))
    assert "params 10.0× fewer" in head and "MACs 16.0× fewer" in head and "torch 4.0× faster" in head
    assert "PSNR 19.00 dB (-1.00 dB from the teacher's 20.00)" in head
    assert any(str(tmp_path / "report.md") in line and str(tmp_path / "report.html") in line for line in lines)


def test_quantization_axis_warnings_are_counted_and_explained(caplog):
    console.install_log_filters()
    console.QUANT_FILTER.count = 0  # the counter is process-wide: earlier quantisations in this worker counted too
    root = logging.getLogger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root.addHandler(handler)
    try:
        for i in range(17):
            logging.warning(f"Axis 1 is out-of-range for weight 'val_{i}' with rank 1")
        logging.warning("something else")
        assert "out-of-range" not in stream.getvalue() and "something else" in stream.getvalue()
        assert console.QUANT_FILTER.count == 17
        with caplog.at_level(logging.INFO, logger="compressor"):
            console.QUANT_FILTER.explain()
        assert "17 one-dimensional weights" in caplog.text and console.QUANT_FILTER.count == 0
    finally:
        root.removeHandler(handler)


def test_heartbeat_after_the_last_step_says_the_stage_is_finishing():
    hb, clock, lines = _beat()
    hb.update("evaluate", 1, 1, {})
    clock.t += 31
    hb.tick()
    assert lines[-1] == "evaluate: all 1 steps done, finishing the stage, elapsed 31s"
