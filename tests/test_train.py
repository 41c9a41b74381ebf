import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from conftest import ROOT, THREADS, run_cli, sigint_default, tiny_recipe_text
from PIL import Image

from compressor.checkpoints import capture_rng, list_checkpoints, load_latest_checkpoint, restore_rng, save_checkpoint

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
    e = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(THREADS))
    return e


def _metrics(run):
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


def _start(args, cwd):
    return subprocess.Popen(
        [sys.executable, "-m", "compressor"] + [str(a) for a in args],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_default,
    )


def _wait_for_checkpoint(run, step, proc, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if any(s >= step for s, _ in list_checkpoints(run / "checkpoints")):
            return
        if proc.poll() is not None:
            raise AssertionError("training ended early: " + proc.stderr.read()[-2000:])
        time.sleep(0.05)
    proc.kill()  # a failed test leaves no training process behind
    proc.wait()
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
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
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
    res = run_cli(
        [p, "--out", tmp_path / "runs", "--quiet", "--only", "teacher,student,distill,evaluate"]
        + ["--set", "student.importance=sensitivity"],  # each student's channels by its own teacher's output
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    run = tmp_path / "runs" / "unp"
    assert (run / "student_reverse" / "student.safetensors").exists()
    for sub in ("student_init", "student_init/reverse"):
        assert json.loads((run / sub / "student.json").read_text())["importance"] == "sensitivity"
    m = _metrics(run)[-1]
    assert {"AB/srp", "BA/srp", "AB/kd", "BA/kd", "cycle", "AB/gan", "BA/disc"} <= set(m)


def test_two_process_gloo_training(tmp_path):
    recipe = _recipe(
        tmp_path,
        "ddp",
        distill=SLOW_DISTILL.replace("steps: 60", "steps: 30").replace("checkpoint_every: 5", "checkpoint_every: 15"),
    )
    res = run_cli(
        [recipe, "--out", tmp_path / "runs", "--quiet", "--nproc", "2", "--only", "teacher,student,distill"],
        cwd=tmp_path,
        timeout=900,
    )
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
    res = run_cli(
        [p, "--out", tmp_path / "runs", "--quiet", "--only", "teacher,student,distill,evaluate"], cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr[-2000:]
    m = _metrics(tmp_path / "runs" / "fold")[-1]
    assert {"G/kd", "G/srp", "G/gan", "G/disc"} <= set(m) and "G/recon" not in m
    ev = json.loads((tmp_path / "runs" / "fold" / "eval.json").read_text())
    assert "psnr_vs_teacher" in ev["student"]


# ------------------------------------------------------------------------------------ in-process trainer tests

import random  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from compressor.errors import Interrupted, RecipeError  # noqa: E402
from compressor.recipe import LossesSpec, parse_recipe  # noqa: E402
from compressor.train import DATA_KINDS, Direction, Trainer, TrainSetup, cpu_amp_dtype, cpu_bf16_native, seed_everything  # noqa: E402


class _NoisyPairs(torch.utils.data.Dataset):
    """A user's dataset that draws from the global numpy and Python random generators, as many do."""

    def __len__(self):
        return 5

    def __getitem__(self, i):
        i %= 5
        x = torch.from_numpy(np.random.rand(3, 16, 16).astype(np.float32)) * 2 - 1
        y = torch.tanh(x.flip(2) + random.random())
        return {"input": x, "target": y, "index": i}


def _tiny_net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Dropout2d(0.3),  # dropout: torch RNG
        nn.Conv2d(8, 3, 3, padding=1),
        nn.Tanh(),
    )


def _trainer(tmp_path, steps=6, cache=False, teacher=True, progress=None, srp=None):
    srp = srp or {"weight": 1.0}
    losses = LossesSpec.model_validate({"srp": srp, "recon": {"weight": 10}, "kd": {"weight": 1}})
    t = _tiny_net(1).eval() if teacher else None
    d = Direction("G", _tiny_net(2), t, "input", "target")
    setup = TrainSetup(
        kind="paired",
        directions=[d],
        dataset=_NoisyPairs(),
        losses=losses,
        steps=steps,
        batch_size=2,
        seed=3,
        taps={"enc": "0"},
        srp_layers=["enc"] if teacher else [],
        disc_spec={"ndf": 4, "n_layers": 1},
        checkpoint_every=100,
        log_every=1,
        sample_every=1000,
        cache_teacher=cache,
    )
    return Trainer(setup, tmp_path, torch.device("cpu"), progress)


def test_interrupted_and_resumed_run_equals_uninterrupted_bitwise(tmp_path):
    seed_everything(0)
    full = _trainer(tmp_path / "full")
    full.fit()

    seed_everything(0)
    part = _trainer(tmp_path / "part", progress=lambda step, total, _: setattr(part, "_stop", step == 3))
    with pytest.raises(Interrupted):
        part.fit()
    # a new process: every random generator somewhere else
    seed_everything(12345)
    random.random(), np.random.rand(7), torch.rand(3)
    resumed = _trainer(tmp_path / "part")
    resumed.fit(resume=True)
    assert resumed.step == full.step == 6
    for a, b in zip(
        full.s.directions[0].student.state_dict().values(), resumed.s.directions[0].student.state_dict().values()
    ):
        assert torch.equal(a, b)
    for a, b in zip(
        full.s.directions[0].disc.state_dict().values(), resumed.s.directions[0].disc.state_dict().values()
    ):
        assert torch.equal(a, b)
    lines = lambda p: [{k: v for k, v in m.items() if k != "time_s"} for m in _metrics(p)]  # noqa: E731
    assert lines(tmp_path / "full") == lines(tmp_path / "part")


def test_save_checkpoint_keeps_the_last_k_and_the_random_states_read_back(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    seed_everything(7)
    for step in range(1, 6):
        state = {"step": step, **capture_rng()}
        drawn = (random.random(), float(np.random.rand()), float(torch.rand(1)))
        path = save_checkpoint(state, folder, step, keep_last=2)
    assert path == folder / "step_00000005.pt"
    assert [s for s, _ in list_checkpoints(folder)] == [4, 5] and (folder / "config.json").exists()
    seed_everything(99)
    restore_rng(load_latest_checkpoint(folder))  # read back with weights_only=True
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == drawn


def test_resume_without_the_rng_restore_would_differ(tmp_path):
    """The bitwise test above can fail: training here does depend on the global random states."""
    seed_everything(0)
    a = _trainer(tmp_path / "a", steps=2)
    a.fit()
    seed_everything(1)
    b = _trainer(tmp_path / "b", steps=2)
    b.fit()
    wa, wb = (t.s.directions[0].student[0].weight for t in (a, b))
    assert not torch.equal(wa, wb)


def test_teacher_cache_gives_the_same_losses_with_one_teacher_call_per_image(tmp_path):
    class _Fixed(_NoisyPairs):
        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i % 5)
            x = torch.rand(3, 16, 16, generator=g) * 2 - 1
            return {"input": x, "target": torch.tanh(x.flip(2)), "index": i % 5}

    runs = {}
    for cache in (False, True):
        seed_everything(0)
        tr = _trainer(tmp_path / str(cache), steps=8, cache=cache)
        tr.s.dataset = _Fixed()
        calls = []
        tr.s.directions[0].teacher.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
        tr.fit()
        runs[cache] = (
            [{k: v for k, v in m.items() if k != "time_s"} for m in _metrics(tmp_path / str(cache))],
            sum(calls),
        )
    for a, b in zip(*(runs[c][0] for c in (True, False)), strict=True):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-5) for k in a)
    assert runs[False][1] == 16 and runs[True][1] < 16  # 8 steps of 2 images, 5 distinct images


def test_data_kinds_carry_the_differences():
    paired, unpaired, folder = DATA_KINDS["paired"], DATA_KINDS["unpaired"], DATA_KINDS["folder"]
    d = Direction("AB", nn.Identity(), None, "A", "B")
    batch = {"A": torch.zeros(1, 3, 4, 4), "B": torch.ones(1, 3, 4, 4)}
    assert paired.recon_target(d, batch) == "B" and unpaired.recon_target(d, batch) is None
    assert paired.disc_input_channels(1, 3) == 4 and unpaired.disc_input_channels(1, 3) == 3
    real, fake = unpaired.gan_pair(d, batch, batch["A"], batch["A"] * 2, None, lambda t: t)
    assert real.shape[1] == 3 and torch.equal(real, batch["B"])
    real, fake = paired.gan_pair(d, batch, batch["A"], batch["A"] * 2, None, lambda t: t)
    assert real.shape[1] == 6
    assert not folder.gan_enabled(False) and folder.gan_enabled(True)
    with pytest.raises(ValueError, match="teacher"):
        folder.gan_pair(d, batch, batch["A"], batch["A"], None, lambda t: t)


def test_bf16_only_where_the_cpu_has_it():
    assert cpu_bf16_native(frozenset({"avx2", "avx512f", "avx512_bf16"}))
    assert cpu_bf16_native(frozenset({"avx2", "amx_bf16", "amx_tile"}))
    assert not cpu_bf16_native(frozenset({"avx2", "fma", "avx512f", "avx512_vnni"}))
    assert cpu_amp_dtype("bf16", frozenset({"avx512_bf16"})) == (torch.bfloat16, "")
    dtype, note = cpu_amp_dtype("bf16", frozenset({"avx2"}))
    assert dtype is None and "FP32" in note and "AVX512-BF16" in note
    dtype, note = cpu_amp_dtype("fp16", frozenset({"avx512_bf16"}))
    assert dtype is None and "CUDA" in note
    assert cpu_amp_dtype("none") == (None, "")


def test_bf16_step_keeps_losses_and_weights_fp32(tmp_path, monkeypatch):
    monkeypatch.setattr("compressor.train.cpu_bf16_native", lambda flags=None: True)  # as on an AMX CPU
    seed_everything(0)
    tr = _trainer(tmp_path, steps=1)
    tr.s.amp = "bf16"
    tr._setup_precision()  # the whole step under bf16 autocast on such a CPU, as on CUDA
    assert tr.amp_dtype == tr.teacher_amp_dtype == torch.bfloat16
    batch = {k: v[None] if isinstance(v, torch.Tensor) else torch.tensor([v]) for k, v in _NoisyPairs()[0].items()}
    t = tr.teacher_forward(tr.s.directions[0], batch["input"], batch)
    assert t.image.dtype == torch.float32 and all(f.dtype == torch.float32 for f in t.features.values())
    with tr._autocast():
        assert tr.s.directions[0].student(batch["input"]).dtype == torch.bfloat16
    terms = tr.train_step(batch)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in terms.values())
    assert all(p.dtype == torch.float32 for p in tr.s.directions[0].student.parameters())


@pytest.mark.parametrize("data", ["flip: true", "load_size: 40", "kind: unpaired"])
def test_teacher_cache_refused_with_random_augmentation(data):
    kind = "unpaired, root: /nowhere" if data == "kind: unpaired" else "synthetic"
    extra = "" if data == "kind: unpaired" else ", " + data
    text = (
        f"name: x\ndata: {{kind: {kind}, size: 32{extra}}}\nteacher: {{arch: resnet_6blocks, train: {{steps: 2}}}}\n"
        "distill: {cache_teacher: true}\n"
    )
    with pytest.raises(RecipeError, match="distill.cache_teacher"):
        parse_recipe(text, check_paths=False)
    parse_recipe(text.replace("cache_teacher: true", "cache_teacher: false"), check_paths=False)


def _share_trainer(tmp_path, srp_weight, steps=4):
    return _trainer(tmp_path, steps=steps, srp={"weight": srp_weight, "normalize": "rows"})


def test_gradient_shares_are_logged_and_a_swamped_distillation_term_is_warned_once(tmp_path, caplog):
    seed_everything(0)
    with caplog.at_level("WARNING", logger="compressor.train"):
        _share_trainer(tmp_path / "swamped", 1e-6).fit()
    warned = [r.getMessage() for r in caplog.records if "gradient norm stayed below 1%" in r.getMessage()]
    assert len(warned) == 1 and "G/srp" in warned[0] and "distill.losses.srp.weight" in warned[0]
    rows = [json.loads(l) for l in (tmp_path / "swamped" / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    terms = ("G/recon", "G/kd", "G/srp", "G/gan")
    assert all(f"share:{t}" in last and f"gradnorm:{t}" in last for t in terms)
    assert abs(sum(last[f"share:{t}"] for t in terms) - 1) < 1e-4 and last["weight:G/srp"] == 1e-6
    assert last["share:G/srp"] < 0.01

    caplog.clear()
    seed_everything(0)
    with caplog.at_level("WARNING", logger="compressor.train"):
        tr = _share_trainer(tmp_path / "balanced", 5.0)
        tr.fit()
    assert not [r for r in caplog.records if "stayed below" in r.getMessage()]
    assert all(tr.shares[f"G/{t}"] > 0.01 for t in ("kd", "srp"))


def test_the_trainer_builds_discriminators_with_the_builder_it_is_given(tmp_path):
    calls = []

    def build(**kwargs):
        calls.append(kwargs)
        return nn.Sequential(nn.Conv2d(kwargs["input_nc"], 1, 3, padding=1))

    seed_everything(0)
    losses = LossesSpec.model_validate({"srp": {"weight": 0}, "kd": {"weight": 1}})
    d = Direction("G", _tiny_net(2), _tiny_net(1).eval(), "input", "target")
    setup = TrainSetup(
        kind="paired",
        directions=[d],
        dataset=_NoisyPairs(),
        losses=losses,
        steps=1,
        disc_spec={"ndf": 4, "n_layers": 1},
        build_discriminator=build,
    )
    Trainer(setup, tmp_path, torch.device("cpu"))
    assert calls == [{"input_nc": 6, "ndf": 4, "n_layers": 1}] and isinstance(d.disc, nn.Sequential)
