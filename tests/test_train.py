import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from compressor.train import list_checkpoints, load_latest_checkpoint
from conftest import ROOT, run_cli, tiny_recipe_text

SLOW_DISTILL = """
distill:
  steps: 60
  checkpoint_every: 5
  log_every: 5
  sample_every: 20
  losses: {srp: {weight: 10.0, layers: [encoder]}}
  discriminator: {ndf: 8, n_layers: 2}
"""


def _recipe(tmp_path, name="t", distill=SLOW_DISTILL, extra=""):
    text = tiny_recipe_text(name)
    head, _, rest = text.partition("distill:")
    rest = rest.split("evaluate:", 1)[1]
    text = head + distill.strip() + "\nevaluate:" + rest + extra
    text = text.replace("size: 32, batch_size: 2", "size: 64, batch_size: 4").replace("ngf: 8", "ngf: 16")
    p = tmp_path / f"{name}.yaml"
    p.write_text(text)
    return p


def _env():
    e = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="2")
    return e


def _metrics(run):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


def _start(args, cwd):
    return subprocess.Popen([sys.executable, "-m", "compressor"] + [str(a) for a in args], cwd=cwd, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(run, step, proc, timeout=180):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if any(s >= step for s, _ in list_checkpoints(run / "checkpoints")):
            return
        if proc.poll() is not None:
            raise AssertionError("training ended early: " + proc.stderr.read()[-2000:])
        time.sleep(0.05)
    raise AssertionError("no checkpoint in time")


def test_sigkill_then_resume_continues_without_double_counting(tmp_path):
    recipe = _recipe(tmp_path)
    out = tmp_path / "runs"
    run = out / "t"
    proc = _start([recipe, "--out", out, "--quiet"], tmp_path)
    _wait_for_checkpoint(run, 10, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(s for s, _ in list_checkpoints(run / "checkpoints"))
    assert killed_at < 60
    # without --resume, the unfinished run is not overwritten silently
    res = run_cli([recipe, "--out", out, "--quiet"], cwd=tmp_path)
    assert res.returncode == 2 and "--resume" in res.stderr
    res = run_cli([recipe, "--out", out, "--quiet", "--resume"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    steps = [m["step"] for m in _metrics(run)]
    assert steps == list(range(5, 61, 5))  # continuous, no step counted twice
    assert json.loads((run / "distill.json").read_text())["step"] == 60


def test_truncated_checkpoint_falls_back(tmp_path, caplog):
    recipe = _recipe(tmp_path, distill=SLOW_DISTILL.replace("steps: 60", "steps: 10"))
    res = run_cli([recipe, "--out", tmp_path / "runs", "--quiet", "--only", "teacher,student,distill"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    ckpts = list_checkpoints(tmp_path / "runs" / "t" / "checkpoints")
    newest = ckpts[-1][1]
    newest.write_bytes(newest.read_bytes()[:1000])
    state = load_latest_checkpoint(newest.parent)
    assert state["step"] == ckpts[-2][0]
    assert "truncated or corrupt" in caplog.text and newest.name in caplog.text


def test_sigint_writes_checkpoint_and_exits_130(tmp_path):
    recipe = _recipe(tmp_path, distill=SLOW_DISTILL.replace("steps: 60", "steps: 400"))
    out = tmp_path / "runs"
    proc = _start([recipe, "--out", out, "--quiet"], tmp_path)
    _wait_for_checkpoint(out / "t", 5, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "resume with: compress" in err and "--resume" in err
    import re

    m = re.search(r"interrupted at step (\d+); checkpoint written to (\S+)", err)
    assert m, err[-2000:]
    assert Path(m.group(2)).exists()
    assert list_checkpoints(out / "t" / "checkpoints")[-1][0] == int(m.group(1))
    assert "Traceback" not in err


def test_nan_loss_stops_and_names_term(tmp_path):
    recipe = _recipe(tmp_path, distill=SLOW_DISTILL.replace("losses: {", "losses: {kd: {weight: 1.0e+39}, "))
    res = run_cli([recipe, "--out", tmp_path / "runs", "--quiet"], cwd=tmp_path)
    assert res.returncode == 2
    assert "G/kd" in res.stderr and ("inf" in res.stderr or "nan" in res.stderr)
    assert "Traceback" not in res.stderr


def _write_images(folder: Path, n: int, size: int, seed: int):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def test_unpaired_run_on_tiny_tree(tmp_path):
    root = tmp_path / "horses2zebras"
    for k, sub in enumerate(("trainA", "trainB", "testA", "testB")):
        _write_images(root / sub, 4, 40, k)
    text = tiny_recipe_text("unp").replace("kind: synthetic,", f"kind: unpaired, root: {root},")
    p = tmp_path / "unp.yaml"
    p.write_text(text)
    res = run_cli([p, "--out", tmp_path / "runs", "--quiet", "--only", "teacher,student,distill,evaluate"],
                  cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    run = tmp_path / "runs" / "unp"
    assert (run / "student_reverse" / "student.safetensors").exists()
    m = _metrics(run)[-1]
    assert {"AB/srp", "BA/srp", "AB/kd", "BA/kd", "cycle", "AB/gan", "BA/disc"} <= set(m)


def test_two_process_gloo_training(tmp_path):
    recipe = _recipe(tmp_path, "ddp", distill=SLOW_DISTILL.replace("steps: 60", "steps: 30")
                     .replace("checkpoint_every: 5", "checkpoint_every: 15"))
    res = run_cli([recipe, "--out", tmp_path / "runs", "--quiet", "--nproc", "2", "--only",
                   "teacher,student,distill"], cwd=tmp_path, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "runs" / "ddp"
    summary = json.loads((run / "distill.json").read_text())
    assert summary["world_size"] == 2
    ranks = summary["weight_checksums_per_rank"]
    assert len(ranks) == 2 and ranks[0] == ranks[1]
    m = _metrics(run)
    first = sum(r["G/recon"] + r["G/kd"] for r in m[:2]) / 2
    last = sum(r["G/recon"] + r["G/kd"] for r in m[-2:]) / 2
    assert last < first, (first, last)


def test_folder_data_distills_with_teacher_as_real(tmp_path):
    _write_images(tmp_path / "inputs" / "train", 4, 40, 0)
    text = tiny_recipe_text("fold").replace("kind: synthetic,", f"kind: folder, root: {tmp_path / 'inputs'},")
    text = text.replace("distill:\n", "distill:\n  teacher_as_real: true\n").replace("train: {steps: 6}", "")
    p = tmp_path / "fold.yaml"
    p.write_text(text)
    res = run_cli([p, "--out", tmp_path / "runs", "--quiet", "--only", "teacher,student,distill,evaluate"],
                  cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    m = _metrics(tmp_path / "runs" / "fold")[-1]
    assert {"G/kd", "G/srp", "G/gan", "G/disc"} <= set(m) and "G/recon" not in m
    ev = json.loads((tmp_path / "runs" / "fold" / "eval.json").read_text())
    assert "psnr_vs_teacher" in ev["student"]
