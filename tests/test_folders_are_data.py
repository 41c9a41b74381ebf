"""Trust, round 2: folders from elsewhere are data, names never reach a shell, artifacts are replaced only by
checked ones, Ctrl-C of a several-process run exits 130 with its resume line.

One test per finding (numbered as in the findings); each fails on the code before the fix.
"""

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, one_error_line, sigint_default, tiny_recipe_text

from compressor.app.cli import main

pytestmark = pytest.mark.usefixtures("no_consent")


def _one_line(capsys, code, *needles, expect=2):
    return one_error_line(capsys.readouterr().err, code, *needles, expect=expect, skip_warnings=True)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A run folder as the pipeline leaves it (recipe, teacher, student, eval.json, samples), built without
    training by tools/fuzz.py's corpus builder; each test copies it."""
    folder = _fuzz().build_corpus(tmp_path_factory.mktemp("evaluated") / "c")
    return folder / "tiny.yaml", folder / "runs" / "tiny"


def _copy(evaluated, tmp_path) -> Path:
    run = tmp_path / "runs" / "tiny"
    shutil.copytree(evaluated[1], run, symlinks=True)
    return run


# ------------------------------------------------------------------------------ 1. no write through a symlink


def test_1_symlinks_in_a_run_folder_are_not_written_through(evaluated, tmp_path, capsys):
    run = _copy(evaluated, tmp_path)
    victims = {name: tmp_path / f"victim_{i}" for i, name in enumerate(("eval.json", "samples/eval.png"))}
    for name, victim in victims.items():
        victim.write_text(f"precious {name}\n")
        (run / name).unlink()
        (run / name).symlink_to(victim)
    lock_victim = tmp_path / "victim_lock"
    lock_victim.write_text("precious lock\n")
    (run / ".lock").unlink(missing_ok=True)
    (run / ".lock").symlink_to(lock_victim)
    _one_line(capsys, main(["evaluate", str(run), "--device", "cpu", "-q"]), ".lock", "symlink")
    assert lock_victim.read_text() == "precious lock\n"
    (run / ".lock").unlink()
    assert main(["evaluate", str(run), "--device", "cpu", "-q"]) == 0
    for name, victim in victims.items():
        assert victim.read_text() == f"precious {name}\n", name  # the link was replaced, not written through
        assert not (run / name).is_symlink()
    assert json.loads((run / "eval.json").read_text())["student"]

    from compressor.errors import UserError
    from compressor.io import append_line

    log_victim = tmp_path / "victim_log"
    log_victim.write_text("precious log\n")
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").symlink_to(log_victim)
    with pytest.raises(UserError, match="symlink"):
        append_line(run / "metrics.jsonl", "{}")
    assert log_victim.read_text() == "precious log\n"


# ------------------------------------------------------------------------------ 2. report reads inside the folder


def test_2_report_leaves_out_a_sample_grid_that_points_outside(evaluated, tmp_path, capsys):
    run = _copy(evaluated, tmp_path)
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG\r\n\x1a\n" + b"SECRET-KEY-MATERIAL" * 8)
    (run / "samples" / "eval.png").unlink()
    (run / "samples" / "eval.png").symlink_to(secret)
    out = tmp_path / "report"
    assert main(["report", str(run / "eval.json"), "--out", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert base64.b64encode(secret.read_bytes()).decode()[:40] not in page
    assert not any(b"SECRET" in p.read_bytes() for p in out.iterdir() if p.is_file())
    # a grid inside the folder still comes along
    (run / "samples" / "eval.png").unlink()
    shutil.copy(evaluated[1] / "samples" / "eval.png", run / "samples" / "eval.png")
    assert main(["report", str(run / "eval.json"), "--out", str(out)]) == 0
    assert (
        "data:image/png;base64," + base64.b64encode((run / "samples" / "eval.png").read_bytes()).decode()[:40]
        in (out / "report.html").read_text()
    )


# ------------------------------------------------------------------------------ 3. remote commands are quoted


def _fake_ssh(bin_dir: Path) -> None:
    """ssh and scp stand-ins: ssh runs its command through ``sh -c`` here (the remote shell), scp copies."""
    bin_dir.mkdir()
    ssh = bin_dir / "ssh"
    ssh.write_text(
        "#!/usr/bin/env python3\n"
        "import subprocess, sys\n"
        "a = sys.argv[1:]\n"
        "while a and a[0].startswith('-'):\n"
        "    if a[0] == '--':\n"
        "        a = a[1:]\n"
        "        break\n"
        "    a = a[2:] if a[0] in ('-o', '-p') else a[1:]\n"
        "sys.exit(subprocess.call(['sh', '-c', ' '.join(a[1:])]))\n"
    )
    scp = bin_dir / "scp"
    scp.write_text(
        "#!/usr/bin/env python3\n"
        "import shutil, sys\n"
        "a = [x for x in sys.argv[1:] if x != '-q']\n"
        "while a and a[0].startswith('-'):\n"
        "    if a[0] == '--':\n"
        "        a = a[1:]\n"
        "        break\n"
        "    a = a[2:] if a[0] in ('-o', '-P') else a[1:]\n"
        "strip = lambda s: s.split(':', 1)[1] if ':' in s and not s.startswith('/') else s\n"
        "for src in a[:-1]:\n"
        "    shutil.copy(strip(src), strip(a[-1]))\n"
    )
    fake = bin_dir / "fake-compress"
    fake.write_text(
        "#!/usr/bin/env python3\n"
        "import json, sys\n"
        "out = sys.argv[sys.argv.index('--out') + 1]\n"
        "json.dump({'schema': 'compressor.profile/1', 'environment': {}, 'results': [], 'argv': sys.argv}, "
        "open(out, 'w'))\n"
    )
    for f in (ssh, scp, fake):
        f.chmod(0o755)


def test_3_remote_profile_quotes_every_piece_and_refuses_local_commands(tmp_path, monkeypatch, capsys):
    bin_dir = tmp_path / "bin"
    _fake_ssh(bin_dir)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "a;touch PWNED;b.onnx"
    model.write_bytes(b"onnx")
    out = tmp_path / "remote.json"
    base = ["profile", str(model), "--host", "me@board", "--remote-compress", str(bin_dir / "fake-compress")]
    code = main(base + ["--backend", "ort-cpu", "--size", "32", "--out", str(out)])
    assert not (tmp_path / "PWNED").exists()
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    code = main(base + ["--precision", "fp32;touch PWNED", "--out", str(tmp_path / "r2.json")])
    assert not (tmp_path / "PWNED").exists()
    _one_line(capsys, code, "--precision")
    code = main(base + ["--ssh-option", "ProxyCommand=touch PWNED", "--out", str(tmp_path / "r3.json")])
    assert not (tmp_path / "PWNED").exists()
    _one_line(capsys, code, "ProxyCommand")
    # a recipe's budget that would run a local command is not "valid"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        tiny_recipe_text().replace(
            "student: {width: 0.5}",
            "student: {width: auto, budget: {latency_ms: 5, host: me@board, "
            "ssh_options: ['ProxyCommand=touch PWNED']}}",
        )
    )
    _one_line(capsys, main(["validate", str(recipe)]), "ssh_options", "ProxyCommand")
    assert not (tmp_path / "PWNED").exists()


# ------------------------------------------------------------------------------ 4. recorded recipe names no code


def test_4_recorded_inception_weights_do_not_run(evaluated, tmp_path, capsys):
    run = _copy(evaluated, tmp_path)

    class Forged(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], 2048)

    weights = tmp_path / "forged.pt"
    torch.jit.script(Forged()).save(str(weights))
    text = (run / "recipe.resolved.yaml").read_text()
    assert "inception_weights: null" in text
    text = text.replace("inception_weights: null", f"inception_weights: {weights}")
    assert "metrics:\n  - psnr\n" in text
    text = text.replace("metrics:\n  - psnr\n", "metrics:\n  - fid\n  - psnr\n")
    (run / "recipe.resolved.yaml").write_text(text)
    assert main(["evaluate", str(run), "--device", "cpu", "-q"]) == 0
    doc = json.loads((run / "eval.json").read_text())
    assert str(weights) not in json.dumps(doc)
    assert doc["student"].get("fid") != 0.0
    assert "inception_weights" in capsys.readouterr().err  # one warning line says why


# ------------------------------------------------------------------------------ 5. replaced only when checked


@pytest.mark.slow
def test_5_failed_export_keeps_the_good_file_and_the_bookkeeping(evaluated, tmp_path, monkeypatch, capsys):
    from PIL import Image

    import compressor.exporters.formats.onnx as onnx_mod

    run = _copy(evaluated, tmp_path)
    (run / "student.onnx").write_bytes(b"the earlier, checked export")
    good, stages = _sha(run / "student.onnx"), _sha(run / "stages.json")
    real_parity = onnx_mod.parity

    def failing(model, path, inputs, tol=1e-4):
        return {"tolerance": tol, "max_abs": 0.659, "passed": False, "cases": [{"shape": [1], "max_abs": 0.659}]}

    monkeypatch.setattr(onnx_mod, "parity", failing)
    code = main(["export", str(run), "-q"])
    assert _sha(run / "student.onnx") == good and _sha(run / "stages.json") == stages
    _one_line(capsys, code, "differs from PyTorch", "kept")
    assert (run / "student.rejected.onnx").exists()
    onnx_mod.check_not_failed(run / "student.onnx")  # the earlier file stays usable (profile times it)
    assert not [p for p in run.iterdir() if p.name.startswith(".student.onnx.")]  # no temporary left

    # two flat-colour images (calibration data): instance normalisation is no false parity failure
    monkeypatch.setattr(onnx_mod, "parity", real_parity)
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, colour in enumerate(((200, 30, 30), (20, 20, 20))):
        Image.new("RGB", (32, 32), colour).save(flat / f"{i}.png")
    assert main(["export", str(run), "--data", str(flat), "-q"]) == 0, capsys.readouterr().err
    assert _sha(run / "student.onnx") != good and not (run / "student.rejected.onnx").exists()


# ------------------------------------------------------------------------------ 6. --force keeps foreign files


def test_6_force_moves_files_compressor_did_not_write_aside(tmp_path):
    from compressor.app.pipeline import prepare_run_dir
    from compressor.recipe import load_recipe

    recipe_path = tmp_path / "tiny.yaml"
    recipe_path.write_text(tiny_recipe_text())
    mine = tmp_path / "runs" / "tiny" / "teacher.json"
    mine.parent.mkdir(parents=True)
    mine.write_text('{"my": "own notes"}')
    prepare_run_dir(load_recipe(recipe_path), tmp_path / "runs", True, recipe_path)
    assert not mine.exists()
    aside = [p for p in (tmp_path / "runs").iterdir() if p.name.startswith("tiny.old-")]
    assert len(aside) == 1 and (aside[0] / "teacher.json").read_text() == '{"my": "own notes"}'


# ------------------------------------------------------------------------------ 7. Ctrl-C of --nproc 2


@pytest.mark.slow
def test_7_ctrl_c_of_a_distributed_run_exits_130_with_the_resume_line(evaluated, tmp_path):
    recipe, _ = evaluated
    run = _copy(evaluated, tmp_path)
    shutil.rmtree(run / "checkpoints")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "compressor", str(recipe), "--out", str(run.parent), "--only", "distill"]
    cmd += ["--force", "--nproc", "2", "-q", "--set", "distill.steps=5000", "--set", "distill.checkpoint_every=2"]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default
    )
    try:
        deadline = time.monotonic() + 240
        ckpts = run / "checkpoints"
        while time.monotonic() < deadline and proc.poll() is None:
            if ckpts.is_dir() and any(p.name.startswith("step_") for p in ckpts.iterdir()):
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        proc.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C does: the workers are in their own session
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert any(line.startswith("resume with: ") and "--resume" in line for line in err.splitlines()), err
    assert "interrupted at step" in err
    assert not (run / ".stop").exists()


# ------------------------------------------------------------------------------ the traceback list: one line each


def _fuzz():
    import importlib.util

    spec = importlib.util.spec_from_file_location("compressor_fuzz", ROOT / "tools" / "fuzz.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _fuzz().build_corpus(tmp_path_factory.mktemp("corpus") / "c")


DEEP = "[" * 5000 + "]" * 5000
FILE_CASES = [  # (file in the corpus, new content, needle in the error line)
    ("pruned/student.json", lambda d: {**d, "ngf": 10**400 // 10**300}, "ngf"),
    ("pruned/student.json", lambda d: DEEP, "nested"),
    ("pruned/student.json", lambda d: {**d, "history": [5]}, "history"),
    ("pruned/student.json", lambda d: {**d, "example_shape": "abc"}, "example_shape"),
    ("pruned/student.json", lambda d: {**d, "example_shape": [1, 3, -32, 32]}, "example_shape"),
    ("pruned/student.json", lambda d: {**d, "example_shape": [1, 3, 12000, 12000]}, "example_shape"),
    ("pruned/student.json", lambda d: {**d, "teacher": {**d["teacher"], "input_range": "ab"}}, "input_range"),
    ("runs/tiny/teacher.json", lambda d: {"source": "trained"}, "spec"),
    ("runs/tiny/teacher.json", lambda d: "not json {", "JSON"),
    ("runs/tiny/teacher.json", lambda d: DEEP, "nested"),
    ("runs/tiny/stages.json", lambda d: [1], "stages.json"),
    ("runs/tiny/run.json", lambda d: [1], "run.json"),
    ("runs/tiny/plan.json", lambda d: [1], "plan.json"),
    ("runs/tiny/plan.json", lambda d: {**d, "width": "abc"}, "width"),
    ("runs/tiny/plan.json", lambda d: {**d, "width": 7.5}, "width"),
    ("runs/tiny/metrics.jsonl", lambda d: "5\n", "line 1"),
    ("runs/tiny/profile.json", lambda d: _row(d, latency_ms={"p50": float("nan")}), "p50"),
    ("runs/tiny/profile.json", lambda d: _row(d, latency_ms={"p50": -1}), "p50"),
    ("runs/tiny/profile.json", lambda d: _row(d, latency_ms=None), "latency_ms"),
    ("runs/tiny/profile.json", lambda d: _row(d, batch="4"), "batch"),
    ("runs/tiny/profile.json", lambda d: _row(d, macs="many"), "macs"),
    ("runs/tiny/profile.json", lambda d: {**d, "environment": "box"}, "environment"),
    ("runs/tiny/profile.json", lambda d: {**d, "results": {"a": 1}}, "results"),
    ("runs/tiny/eval.json", lambda d: {**d, "student": [1]}, "student"),
    ("runs/tiny/eval.json", lambda d: {**d, "teacher": {**d["teacher"], "fid": float("inf")}}, "fid"),
    ("runs/tiny/export.json", lambda d: {**d, "files": {"student.onnx": {"path": "s.onnx"}}}, "files"),
    ("runs/tiny/export.json", lambda d: {**d, "files": [1]}, "files"),
]


def _row(doc, **change):
    doc["results"][0].update(change)
    return doc


def _read(corpus: Path, rel: str):
    """The reader each file has in the toolkit, run as the commands run it."""
    from compressor.runfolder import RunDir, load_run_recipe, load_run_teacher
    from compressor.schemas import PlanJson, read_json
    from compressor.slim import load_student
    from compressor.train import Trainer

    path = corpus / rel
    run = RunDir(corpus / "runs" / "tiny")
    if rel.endswith("student.json"):
        return lambda: load_student(path.parent)
    if rel.endswith("teacher.json"):
        return lambda: load_run_teacher(run)
    if rel.endswith(("stages.json", "run.json")):
        return lambda: (run.records(), load_run_recipe(run))
    if rel.endswith("plan.json"):
        return lambda: read_json(path, PlanJson)
    if rel.endswith("metrics.jsonl"):
        from types import SimpleNamespace

        return lambda: Trainer._truncate_metrics(SimpleNamespace(rank=0, metrics_file=path, step=2))
    return lambda: main(["report", str(path), "--out", str(corpus / "report")])


@pytest.mark.parametrize(
    "rel,change,needle", FILE_CASES, ids=[f"{c[0].split('/')[-1]}-{i}" for i, c in enumerate(FILE_CASES)]
)
def test_every_json_read_is_checked_one_line(corpus, tmp_path, capsys, rel, change, needle):
    from compressor.errors import UserError

    work = tmp_path / "c"
    shutil.copytree(corpus, work)
    path = work / rel
    doc = json.loads(path.read_text().splitlines()[0]) if rel.endswith(".jsonl") else json.loads(path.read_text())
    new = change(doc)
    path.write_text(new if isinstance(new, str) else json.dumps(new))
    try:
        code = _read(work, rel)()
    except UserError as exc:
        line = str(exc)
    else:
        assert code == 2, (rel, needle)
        line = capsys.readouterr().err.strip()
        assert line.startswith("error: ") and "\n" not in line, line
    assert needle in line and (Path(rel).name in line or rel.endswith("student.json")), line


@pytest.mark.parametrize(
    "args,needle",
    [
        (["evaluate", "{run}", "--device", "tpu"], "--device"),
        (["evaluate", "{run}", "--data", "/nonexistent"], "--data"),
        (["evaluate", "{pruned}", "--data", "{c}", "--size", "33"], "multiple of"),
        (["evaluate", "{pruned}", "--data", "{c}", "--size", "0"], "--size"),
        (["evaluate", "{pruned}", "--data", "{c}", "--size", "-5"], "--size"),
        (["export", "{run}", "--out", "/etc/passwd"], "--out"),
        (["export", "{run}", "--size", "0"], "--size"),
        (["export", "{run}", "--precision", "fp7"], "--precision"),
        (["report", "{run}/eval.json", "--out", "/etc/passwd"], "--out"),
        (["profile", "{run}", "--size", "3"], "--size"),
        (["profile", "{run}", "--seconds", "-1"], "--seconds"),
        (["profile", "{run}", "--precision", "fp7"], "--precision"),
        (["profile", "{run}/student.json", "--host", ""], "--host"),
        (["profile", "{run}/student.json", "--host", "-oProxyCommand=touch X"], "--host"),
    ],
)
def test_listed_arguments_are_one_line(corpus, capsys, args, needle):
    fill = {"run": corpus / "runs" / "tiny", "pruned": corpus / "pruned", "c": corpus}
    _one_line(capsys, main([a.format(**fill) for a in args]), needle)


def test_duplicate_yaml_keys_and_cast_weights_are_refused(tmp_path, corpus):
    from safetensors.torch import load_file, save_file

    from compressor.errors import UserError
    from compressor.recipe import load_recipe
    from compressor.runfolder import RunDir, load_run_teacher

    p = tmp_path / "dup.yaml"
    p.write_text(tiny_recipe_text() + "seed: 3\n")
    with pytest.raises(UserError, match="given twice"):
        load_recipe(p)
    work = tmp_path / "c"
    shutil.copytree(corpus, work)
    weights = work / "runs" / "tiny" / "teacher.safetensors"
    state = load_file(str(weights))
    first = next(k for k, v in state.items() if v.is_floating_point())
    for bad in (state[first].to(torch.int64), state[first] > 0, state[first].to(torch.complex64)):
        save_file({**state, first: bad}, str(weights))
        with pytest.raises(UserError, match=str(bad.dtype)):
            load_run_teacher(RunDir(work / "runs" / "tiny"))


def test_bounds_before_allocation(tmp_path):
    import struct
    import zipfile
    import zlib

    from compressor.data import load_image
    from compressor.errors import UserError
    from compressor.models.checkpoint import read_checkpoint

    png = tmp_path / "big.png"  # a header promising 13300x13300 16-bit pixels, and no data
    ihdr = struct.pack(">IIBBBBB", 13300, 13300, 16, 2, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    with pytest.raises(UserError, match="too large"):
        load_image(png)
    bomb = tmp_path / "bomb.pth"  # deflated zeros: 32 KB on disk, 32 MB unpacked
    torch.save({"w": torch.zeros(4)}, bomb)
    with zipfile.ZipFile(bomb, "a", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data/99", b"\0" * (32 << 20))
    with pytest.raises(UserError, match="unpacks to"):
        read_checkpoint(bomb, False, "teacher.checkpoint")


@pytest.mark.parametrize("config", ["dev-zero", "list", "deep"])
def test_a_hostile_checkpoint_config_is_read_bounded(tmp_path, config):
    """checkpoints/config.json from elsewhere: a link to /dev/zero (an endless read before), a list, deep nesting.
    Each is an unknown configuration: one line offering --force, nothing read past the bound."""
    from compressor.errors import UserError
    from compressor.resume import check_checkpoints

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / "step_00000001.pt").write_bytes(b"x")
    if config == "dev-zero":
        (ckpts / "config.json").symlink_to("/dev/zero")
    else:
        (ckpts / "config.json").write_text("[1, 2]" if config == "list" else "[" * 100_000 + "]" * 100_000)
    with pytest.raises(UserError, match="an unknown configuration .* pass --force to start over"):
        check_checkpoints(tmp_path, "abc", resume=True, force=False)


def test_files_beside_artifacts_that_never_end_are_read_bounded(tmp_path):
    """A failed-export marker, a trtexec times file and a run's eval.json that link to /dev/zero: each read stops at
    its bound (one line, or no headline), never an endless read."""
    from compressor.app.console import headline
    from compressor.errors import UserError
    from compressor.exporters.formats.onnx import check_not_failed, failed_marker
    from compressor.exporters.profile import import_trtexec_times

    onnx_file = tmp_path / "student.onnx"
    onnx_file.write_bytes(b"")
    failed_marker(onnx_file).symlink_to("/dev/zero")
    with pytest.raises(UserError, match=r"this export failed its checks \(unknown\)"):
        check_not_failed(onnx_file)
    (tmp_path / "times.json").symlink_to("/dev/zero")
    with pytest.raises(UserError, match="not a trtexec --exportTimes JSON file"):
        import_trtexec_times(tmp_path / "times.json")
    (tmp_path / "eval.json").symlink_to("/dev/zero")
    (tmp_path / "profile.json").write_text("{}")
    assert headline(tmp_path) is None
