import hashlib
import json
import os
import time

import pytest
import torch
from conftest import FACADES, ROOT, run_cli, tiny_recipe_text

from compressor.app.pipeline import STAGES, RunOptions, run_pipeline, stage_digest
from compressor.app.stages import Context
from compressor.errors import UserError
from compressor.recipe import load_recipe
from compressor.runfolder import RunDir


def test_tiny_end_to_end_then_everything_skipped(tmp_path, tiny_recipe):
    res = run_cli([tiny_recipe, "--out", tmp_path / "runs"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "runs" / "tiny"
    for f in (
        "report.md",
        "report.html",
        "student.onnx",
        "student.safetensors",
        "student.json",
        "eval.json",
        "profile.json",
        "metrics.jsonl",
        "recipe.resolved.yaml",
    ):
        assert (run / f).exists(), f
    md = (run / "report.md").read_text()
    for needle in ("params", "MACs (ours", "PSNR", "SSIM", "latency p50, ort-cpu", "faster"):
        assert needle in md, needle
    t0 = time.perf_counter()
    res2 = run_cli([tiny_recipe, "--out", tmp_path / "runs"], cwd=tmp_path)
    assert res2.returncode == 0
    asked = [s for s in STAGES if s.applies_to(load_recipe(tiny_recipe))]  # no distill.quantize: no quantize stage
    assert res2.stderr.count("up to date, skipped") == len(asked) == len(STAGES) - 1
    assert time.perf_counter() - t0 < 20


def test_changed_section_reruns_only_downstream(tmp_path, tiny_recipe):
    out = tmp_path / "runs"
    run_pipeline(load_recipe(tiny_recipe), out, RunOptions(recipe_path=tiny_recipe, only=None, device="cpu"))
    changed = load_recipe(tiny_recipe, ["evaluate.samples=1"])
    res = {r.stage: r.status for r in run_pipeline(changed, out, RunOptions(recipe_path=tiny_recipe))}
    assert res["teacher"] == res["student"] == res["distill"] == "skipped"
    assert res["evaluate"] == "ran" and res["report"] == "ran"
    assert res["export"] == "skipped" and res["profile"] == "skipped"
    # --force redoes a stage; --only limits the stages
    res = {
        r.stage: r.status
        for r in run_pipeline(changed, out, RunOptions(recipe_path=tiny_recipe, only=["export"], force=True))
    }
    assert res == {"export": "ran"}


def test_different_recipe_refused_unless_force(tmp_path, tiny_recipe):
    out = tmp_path / "runs"
    run_pipeline(load_recipe(tiny_recipe), out, RunOptions(recipe_path=tiny_recipe, only=["teacher"]))
    other = tmp_path / "other.yaml"
    other.write_text(tiny_recipe_text())
    with pytest.raises(UserError, match="different recipe"):
        run_pipeline(load_recipe(other), out, RunOptions(recipe_path=other, only=["teacher"]))
    lock_inode = (out / "tiny" / ".lock").stat().st_ino
    run_pipeline(load_recipe(other), out, RunOptions(recipe_path=other, only=["teacher"], force=True))
    aside = [p for p in out.iterdir() if p.name.startswith("tiny.old-")]
    assert len(aside) == 1 and (aside[0] / "teacher.safetensors").exists()  # nothing lost
    # the lock the run held stayed where a second writer looks for it: the same file, not moved aside
    assert (out / "tiny" / ".lock").stat().st_ino == lock_inode and not (aside[0] / ".lock").exists()
    assert json.loads((out / "tiny" / "run.json").read_text())["recipe_source"] == str(other.resolve())


def test_only_needs_upstream(tmp_path, tiny_recipe):
    with pytest.raises(UserError, match="has not produced its artifacts"):
        run_pipeline(load_recipe(tiny_recipe), tmp_path / "runs", RunOptions(recipe_path=tiny_recipe, only=["distill"]))
    with pytest.raises(UserError, match="unknown stage"):
        run_pipeline(load_recipe(tiny_recipe), tmp_path / "runs", RunOptions(recipe_path=tiny_recipe, only=["bogus"]))


@pytest.mark.skipif(not (ROOT.parent / "shared").exists(), reason="../shared (datasets, teachers) is absent")
def test_every_shipped_recipe_validates():
    """Each recipe in recipes/ parses and finds its data and weights beside the repository (in-process: the CLI's
    validate is exercised on pix2pix_facades.yaml below)."""
    recipes = sorted((ROOT / "recipes").glob("*.yaml"))
    assert len(recipes) >= 4
    for path in recipes:
        assert load_recipe(path).name, path


@pytest.mark.skipif(not FACADES.exists(), reason="../shared/datasets/facades is absent")
def test_pix2pix_facades_recipe_runs_as_written(tmp_path):
    """The recipe users copy: every stage on real facades, with the schedule shortened by --set only."""
    recipe = ROOT / "recipes" / "pix2pix_facades.yaml"
    res = run_cli(["validate", recipe], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    res = run_cli(
        [
            recipe,
            "--out",
            tmp_path / "runs",
            "--quiet",
            "--set",
            "teacher.train.steps=2",
            "--set",
            "distill.steps=2",
            "--set",
            "evaluate.max_images=4",
            "--set",
            "profile.iters=2",
            "--set",
            "profile.warmup=0",
            "--set",
            "profile.batch=[1]",
            "--set",
            "export.int8.calib_images=2",
        ],
        cwd=tmp_path,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "runs" / "pix2pix-facades-w025"
    ev = json.loads((run / "eval.json").read_text())
    assert ev["n_images"] == 4 and "fid" in ev["student"]
    files = json.loads((run / "export.json").read_text())["files"]
    assert files["student.int8.onnx"]["parity"]["psnr_mean"] > 0
    engine = next(r for r in files.values() if r["format"] == "tensorrt")
    assert engine["lint"]["ok"] and engine["status"] in ("passed", "skipped")
    md = (run / "report.md").read_text()
    assert f"`{engine['path']}` | tensorrt |" in md  # the engine's row, built or skipped with the reason


def test_student_init_depends_on_the_seed_alone(tmp_path, tiny_recipe):
    """Two runs of the same recipe in one process give the same scratch student, whatever ran before."""
    import torch
    from safetensors.torch import load_file

    r = load_recipe(tiny_recipe, ["student.init=scratch"])
    run_pipeline(r, tmp_path / "a", RunOptions(recipe_path=tiny_recipe, only=["teacher", "student"]))
    torch.randn(1000)  # disturb the global RNG
    run_pipeline(r, tmp_path / "b", RunOptions(recipe_path=tiny_recipe, only=["teacher", "student"]))
    a = load_file(str(tmp_path / "a" / "tiny" / "student_init" / "student.safetensors"))
    b = load_file(str(tmp_path / "b" / "tiny" / "student_init" / "student.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


# Stage digests as the pipeline computed them before the stage table existed: a run folder made earlier must
# not look changed. Recorded from the code at c16e694; the quickstart's distill stage and those after it since
# recipes/quickstart.yaml moved to the balanced SRP weight (srp: {weight: 5, normalize: rows}): a changed recipe
# section, so an earlier quickstart run redoes distillation on purpose.
GOLDEN_DIGESTS = {
    "quickstart": {
        "teacher": "bfc4da360ad572c2",
        "student": "1b85baf911aaf603",
        "distill": "6c0cce87ad0c8901",
        "evaluate": "e61754de90e41ddc",
        "export": "23663c0c25e6e6e7",
        "profile": "c309f115ff84e88e",
        "report": "337c6b3338307e9e",
    },
    "tiny": {
        "teacher": "f6ce343b08208b71",
        "student": "587f4f4cd3c1fbf6",
        "distill": "499350feb982f3db",
        "evaluate": "27e7f870f0c2ea0b",
        "export": "74f2e1d4aa34828b",
        "profile": "9cccaf123e2bdc9d",
        "report": "4e737a6800433af3",
    },
    "tiny, random teacher": {
        "teacher": "c8548733f9bc70d4",
        "student": "580c8fb21b81bf51",
        "distill": "30c72964e93d79df",
        "evaluate": "27f4fa169c309386",
        "export": "f4713ac490c9a018",
        "profile": "c43c4a031e3256f8",
        "report": "d111628e3b8760c7",
    },
}


def _digests(recipe) -> dict:
    ctx = Context(recipe, RunDir("/nonexistent"), torch.device("cpu"))
    return {s: stage_digest(ctx, s) for s in GOLDEN_DIGESTS["tiny"]}


def test_stage_digests_are_unchanged(tiny_recipe):
    assert _digests(load_recipe(ROOT / "recipes" / "quickstart.yaml")) == GOLDEN_DIGESTS["quickstart"]
    assert _digests(load_recipe(tiny_recipe)) == GOLDEN_DIGESTS["tiny"]
    assert _digests(load_recipe(tiny_recipe, ["teacher.train=null"])) == GOLDEN_DIGESTS["tiny, random teacher"]


def test_teacher_digest_fingerprints_its_checkpoint(tmp_path, tiny_recipe):
    """The teacher's digest: its name, its checkpoints (size and SHA-256 of the content), its recipe sections: the
    same file provisioned again (another modification time) is the same teacher, changed bytes are another."""
    ckpt = tmp_path / "t.pth"
    ckpt.write_bytes(b"0123456789")
    os.utime(ckpt, (1_700_000_000.7, 1_700_000_000.7))
    recipe = load_recipe(tiny_recipe, ["teacher.train=null", f"teacher.checkpoint={ckpt}"])
    h = hashlib.sha256(b"teacher")
    h.update(f"10:{hashlib.sha256(b'0123456789').hexdigest()}".encode())
    h.update(b"none")
    h.update(recipe.section_hash("teacher").encode())
    assert _digests(recipe)["teacher"] == h.hexdigest()[:16]
    os.utime(ckpt, (1_800_000_000.2, 1_800_000_000.2))
    assert _digests(recipe)["teacher"] == h.hexdigest()[:16]
    ckpt.write_bytes(b"0123456780")
    assert _digests(recipe)["teacher"] != h.hexdigest()[:16]


def test_the_stage_table_is_consistent(tmp_path):
    """Every upstream stage comes earlier; every output and checkpoint folder lies inside the run folder, and the
    outputs the library also reads are the files RunDir names."""
    run = RunDir(tmp_path)
    named = {getattr(run, k) for k, v in vars(RunDir).items() if isinstance(v, property)}
    seen = set()
    for st in STAGES:
        assert set(st.upstream) <= seen, st.name
        seen.add(st.name)
        assert st.outputs and all(p.is_relative_to(tmp_path) for p in run.artifacts(st.outputs)), st.name
        assert set(run.artifacts(st.outputs)) <= named, st.name
        if st.checkpoints:
            assert run.file(st.checkpoints).is_relative_to(tmp_path)
    for bad in ("/etc/passwd", "../x.json", "a/../../x"):
        with pytest.raises(ValueError, match="relative path inside the run folder"):
            run.file(bad)
    with pytest.raises(UserError, match="--only: unknown stage 'distil'; stages are teacher, student, distill"):
        run_pipeline(load_recipe(ROOT / "recipes" / "quickstart.yaml"), tmp_path, RunOptions(only=["distil"]))
