"""Trust, round 3 (issue 40): temporary names, linked sub-folders, reads confined to the run, FIFOs, the lock for
report/profile, SIGKILL leftovers, and side commands that add to a run's records instead of erasing them.

One test (or a few) per numbered item; each fails on the code before the fix (603092b).
"""

import hashlib
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
import yaml
from conftest import ROOT, load_fuzz, one_error_line

from compressor.app.cli import main

pytestmark = pytest.mark.usefixtures("no_consent")


FUZZ = load_fuzz()


def _recipe_text() -> str:
    """tools/fuzz.py's tiny recipe, trained a little longer: checkpoints at steps 2 and 4, both kept."""
    doc = yaml.safe_load(FUZZ.RECIPE)
    doc["teacher"]["kwargs"]["ngf"] = 4
    doc["distill"].update(steps=4, checkpoint_every=2, keep_last=2, sample_every=2)
    doc["evaluate"]["metrics"] = ["psnr", "ssim"]
    return yaml.safe_dump(doc)


STAGES = "teacher,student,distill,evaluate,export"


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _tree(folder: Path) -> dict:
    """Every file under ``folder`` and its digest: a foreign folder must come out byte for byte the same."""
    return {str(p.relative_to(folder)): _sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line(capsys, code, *needles):
    return one_error_line(capsys.readouterr().err, code, *needles, skip_warnings=True)


def _hidden(folder: Path) -> list[str]:
    """Temporary files and folders left in ``folder`` (the lock is not one)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != ".lock")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run the pipeline made (teacher, student, distill with checkpoints at steps 2 and 4, evaluate, export)."""
    from compressor.app.pipeline import RunOptions, run_pipeline
    from compressor.recipe import load_recipe

    base = tmp_path_factory.mktemp("trained")
    recipe = base / "tiny.yaml"
    recipe.write_text(_recipe_text())
    run_pipeline(load_recipe(recipe), base / "runs", RunOptions(only=STAGES.split(","), recipe_path=recipe))
    return recipe, base / "runs" / "tiny"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A run folder as the pipeline leaves it, built without training by tools/fuzz.py's corpus builder."""
    folder = FUZZ.build_corpus(tmp_path_factory.mktemp("corpus") / "c")
    return folder / "tiny.yaml", folder / "runs" / "tiny"


def _copy(src: Path, tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "tiny"
    shutil.copytree(src, run, symlinks=True)
    return run


def _foreign(tmp_path: Path, files: dict) -> Path:
    folder = tmp_path / "foreign"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


# ------------------------------------------------------------------------------ 0. temporary names


OLD_FIXED_TEMPS = (  # the names exporters used before: links there pointed writes at any file the user can write
    ".tmp.student.ncnn.param",
    ".tmp.student.ncnn.bin",
    ".student.safetensors.tmp",
    ".student.int8.onnx.tmp.onnx",
    ".tmp.student.pte",
    ".tmp.student.tflite",
)


def test_0_temporary_names_are_fresh_and_links_there_survive(corpus, tmp_path, capsys):
    import numpy as np

    from compressor.exporters.export import export_file
    from compressor.exporters.mobile import checked_write
    from compressor.slim import load_student

    folder = tmp_path / "student"
    shutil.copytree(corpus[1].parent.parent / "pruned", folder)
    out = tmp_path / "out"
    out.mkdir()
    victims = {}
    for i, name in enumerate(OLD_FIXED_TEMPS):
        victims[name] = tmp_path / f"victim_{i}"
        victims[name].write_bytes(f"precious {name}\n".encode())
        (out / name).symlink_to(victims[name])
    code = main(["export", str(folder), "--format", "ncnn", "--size", "32", "--out", str(out), "-q"])
    assert code == 0, capsys.readouterr().err[-2000:]
    assert (out / "student.ncnn.param").is_file() and (out / "student.ncnn.bin").is_file()
    export_file("torch", load_student(folder), out / "student.safetensors", None)  # the weights are staged fresh too
    ref = [np.zeros((1, 3, 4, 4), np.float32)]
    checked_write("executorch", out / "student.pte", "fp32", lambda t: t.write_bytes(b"pte"), lambda t: ref, ref)
    for name, victim in victims.items():
        assert victim.read_bytes() == f"precious {name}\n".encode(), name  # never written through
    assert (out / "student.pte").read_bytes() == b"pte" and (out / "student.safetensors").stat().st_size > 1000
    assert sorted(set(_hidden(out)) - set(OLD_FIXED_TEMPS)) == []  # no temporary left behind


def test_0_temporary_names_are_exclusive_and_recognisable(tmp_path):
    from compressor.io import staged, temp_dir, temp_file

    a, b = temp_file(tmp_path / "x.onnx"), temp_file(tmp_path / "x.onnx")
    assert a != b and a.name.endswith(".x.onnx") and a.name.startswith(f".~{os.getpid()}.")
    d = temp_dir(tmp_path)
    assert d.is_dir() and d.name.startswith(f".~{os.getpid()}.")
    with pytest.raises(RuntimeError), staged(tmp_path / "y.bin") as t:
        t.write_bytes(b"half")
        raise RuntimeError("check failed")
    assert not (tmp_path / "y.bin").exists() and not any("y.bin" in p.name for p in tmp_path.iterdir())


# ------------------------------------------------------------------------------ 1. linked sub-folders and inputs


def test_1_linked_checkpoints_are_not_resumed_written_or_pruned(trained, tmp_path, capsys):
    recipe, src = trained
    run = _copy(src, tmp_path)
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step_*.pt")) == ["step_00000002.pt", "step_00000004.pt"]
    foreign = tmp_path / "foreign"
    shutil.copytree(ckpts, foreign)
    (foreign / "step_00000004.pt").unlink()  # the foreign folder looks like an interrupted run at step 2
    (foreign / "step_00000001.pt").write_bytes(b"someone else's checkpoint")
    before = _tree(foreign)
    shutil.rmtree(ckpts)
    ckpts.symlink_to(foreign, target_is_directory=True)
    stages = json.loads((run / "stages.json").read_text())
    del stages["distill"]
    (run / "stages.json").write_text(json.dumps(stages))
    code = main([str(recipe), "--out", str(run.parent), "--resume", "--only", "distill", "-q"])
    _one_line(capsys, code, "checkpoints", "symlink")
    assert _tree(foreign) == before  # not resumed from, not written, nothing pruned (step_00000001.pt is there)
    assert ckpts.is_symlink()

    from compressor.checkpoints import save_checkpoint
    from compressor.errors import UserError

    with pytest.raises(UserError, match="symlink"):  # the library refuses too
        save_checkpoint({"step": 9}, ckpts, 9, keep_last=1)
    assert _tree(foreign) == before


def test_1_linked_samples_and_benchmark_folders_are_refused(corpus, tmp_path, capsys):
    run = _copy(corpus[1], tmp_path)
    foreign = _foreign(tmp_path, {"eval.png": b"foreign picture", "student.onnx": b"foreign model"})
    before = _tree(foreign)
    shutil.rmtree(run / "samples")
    (run / "samples").symlink_to(foreign, target_is_directory=True)
    _one_line(capsys, main(["evaluate", str(run), "--device", "cpu", "-q"]), "samples", "symlink")
    (run / "samples").unlink()
    (run / "benchmark").symlink_to(foreign, target_is_directory=True)
    _one_line(capsys, main(["benchmark", str(run), "--format", "onnx", "--iters", "1", "-q"]), "benchmark")
    assert _tree(foreign) == before


def test_1_linked_inputs_of_a_run_are_not_trusted(corpus, tmp_path, capsys):
    run = _copy(corpus[1], tmp_path)
    other = tmp_path / "other"
    shutil.copytree(corpus[1].parent.parent / "pruned", other)
    # a student.onnx that links to another model: --no-onnx would quantise it and call it passing
    assert main(["export", str(other), "--size", "32", "-q"]) == 0
    (run / "student.onnx").symlink_to(other / "student.onnx")
    code = main(["export", str(run), "--no-onnx", "--precision", "int8", "-q"])
    _one_line(capsys, code, "student.onnx", "symlink")
    assert not (run / "student.int8.onnx").exists()
    # a student.safetensors that links elsewhere is not exported as this run's student
    (run / "student.onnx").unlink()
    (run / "student.safetensors").unlink()
    (run / "student.safetensors").symlink_to(other / "student.safetensors")
    _one_line(capsys, main(["export", str(run), "-q"]), "student.safetensors", "symlink")
    assert not (run / "student.onnx").exists()


def test_1_a_linked_plan_is_not_the_plan_cache(corpus, tmp_path, capsys):
    recipe, src = corpus
    run = _copy(src, tmp_path)
    (run / "plan.json").unlink()
    args = ["plan", str(recipe), "--out", str(run.parent), "--set", "student.budget.macs=3000000", "-q"]
    assert main(args) == 0
    doc = json.loads((run / "plan.json").read_text())
    forged = tmp_path / "forged_plan.json"
    forged.write_text(json.dumps({**doc, "width": 0.99}))  # the right key, another width
    before = forged.read_bytes()
    (run / "plan.json").unlink()
    (run / "plan.json").symlink_to(forged)
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "chosen width 0.99" not in out and f"chosen width {doc['width']:.6g}" in out
    assert forged.read_bytes() == before and not (run / "plan.json").is_symlink()


# ------------------------------------------------------------------------------ 2. the report reads inside the run


def test_2_report_stage_leaves_out_json_that_points_outside(corpus, tmp_path):
    recipe, src = corpus
    run = _copy(src, tmp_path)
    secret_profile = json.loads((run / "profile.json").read_text())
    secret_profile["environment"]["hostname"] = "SECRET-HOST-NAME"
    (tmp_path / "p.json").write_text(json.dumps(secret_profile))
    bench = {"schema": "compressor.benchmark/1", "size": 32, "images": 1, "reference": "SECRET-BENCH", "rows": []}
    (tmp_path / "b.json").write_text(json.dumps(bench))
    (run / "profile.json").unlink()
    (run / "profile.json").symlink_to(tmp_path / "p.json")
    (run / "benchmark.json").symlink_to(tmp_path / "b.json")
    code = main([str(recipe), "--out", str(run.parent), "--only", "report", "--force", "-q"])
    assert code == 0
    text = (run / "report.md").read_text() + (run / "report.html").read_text()
    assert "SECRET" not in text


# ------------------------------------------------------------------------------ 5. FIFOs never block


def _within(seconds: float, fifo: Path, fn):
    """``fn()``'s result (or exception) when it returns within ``seconds``; a reader blocked on ``fifo`` is set
    free (a writer opens it) and the test fails."""
    box = {}

    def call():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    t = threading.Thread(target=call, daemon=True)
    t0 = time.monotonic()
    t.start()
    t.join(seconds)
    if t.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # the blocked open returns; the reader gets EOF
        t.join(10)
        pytest.fail(f"{fifo.name}: still blocked after {seconds} s")
    return box, time.monotonic() - t0


FIFO_CASES = [  # (file in the run, command line)
    ("eval.json", ["report", "{run}/eval.json", "--out", "{tmp}/r"]),
    ("export.json", ["report", "{run}/export.json", "--out", "{tmp}/r"]),
    ("profile.json", ["report", "{run}/profile.json", "--out", "{tmp}/r"]),
    ("benchmark.json", ["report", "{run}/benchmark.json", "--out", "{tmp}/r"]),
    ("teacher.json", ["evaluate", "{run}", "--device", "cpu"]),
    ("student.json", ["export", "{run}"]),
    ("stages.json", ["{recipe}", "--out", "{runs}", "--only", "report"]),
    ("recipe.resolved.yaml", ["evaluate", "{run}", "--device", "cpu"]),
]


@pytest.mark.parametrize("name,args", FIFO_CASES, ids=[c[0] for c in FIFO_CASES])
def test_5_a_fifo_is_one_line_within_2s(corpus, tmp_path, capsys, name, args):
    recipe, src = corpus
    run = _copy(src, tmp_path)
    (run / name).unlink(missing_ok=True)
    os.mkfifo(run / name)
    fill = {"run": run, "runs": run.parent, "tmp": tmp_path, "recipe": recipe}
    box, took = _within(2.0, run / name, lambda: main([a.format(**fill) for a in args]))
    assert "error" not in box, box.get("error")
    _one_line(capsys, box["value"], name)
    assert took < 2.0


def test_5_every_folder_reader_refuses_a_fifo(corpus, tmp_path):
    from types import SimpleNamespace

    from compressor.errors import UserError
    from compressor.recipe import load_recipe
    from compressor.runfolder import RunDir, read_teacher_meta
    from compressor.schemas import PlanJson, read_json
    from compressor.train import Trainer

    run = _copy(corpus[1], tmp_path)
    readers = {
        "plan.json": lambda p: read_json(p, PlanJson),
        "teacher.json": lambda p: read_teacher_meta(RunDir(run)),
        "stages.json": lambda p: RunDir(run).records(),
        "recipe.resolved.yaml": lambda p: load_recipe(p),
        "metrics.jsonl": lambda p: Trainer._truncate_metrics(SimpleNamespace(rank=0, metrics_file=p, step=2)),
        "eval.json": lambda p: read_json(p),
    }
    for name, read in readers.items():
        (run / name).unlink()
        os.mkfifo(run / name)
        box, _ = _within(2.0, run / name, lambda: read(run / name))
        assert isinstance(box.get("error"), UserError), (name, box)
        assert name in str(box["error"]) and "\n" not in str(box["error"]), box["error"]


# ------------------------------------------------------------------------------ 6. the lock covers report/profile


def test_6_report_and_profile_refuse_to_write_into_a_locked_run(corpus, tmp_path, capsys):
    run = _copy(corpus[1], tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom compressor.lock import run_lock\n"
         "with run_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n", str(run)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        profile_before = _sha(run / "profile.json")
        code = main(["report", str(run / "eval.json"), "--out", str(run)])
        _one_line(capsys, code, "in use")
        assert not (run / "report.md").exists()
        code = main(
            [
                "profile",
                "resnet_6blocks",
                "--backend",
                "torch",
                "--iters",
                "1",
                "--force",
                "--out",
                str(run / "profile.json"),
            ]
        )
        _one_line(capsys, code, "in use")
        code = main(["report", str(run / "eval.json"), "--out", str(run / "samples" / "r")])  # inside the run
        _one_line(capsys, code, "in use")
        assert _sha(run / "profile.json") == profile_before
    finally:
        holder.kill()
        holder.wait()
    assert main(["report", str(run / "eval.json"), "--out", str(run)]) == 0  # free again


# ------------------------------------------------------------------------------ 8. SIGKILL leftovers


KILL_DURING = """
import os, signal, sys
import compressor.exporters.formats.onnx as ex
def die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)
ex.compare_int8 = die  # the slow step after INT8 quantisation
from compressor.app.cli import main
main(["export", sys.argv[1], "--precision", "int8", "-q"])
"""


def _claimed(doc: dict) -> set:
    return {e["path"] for e in doc.get("files", {}).values() if e.get("status") == "passed"}


def _exported(folder: Path) -> set:
    kinds = (".onnx", ".xml", ".pte", ".tflite", ".plan")
    return {p.name for p in folder.iterdir() if p.name.endswith(kinds) and not p.name.startswith(".")}


def test_8_a_killed_export_leaves_true_records_and_its_temporaries_are_removed(trained, tmp_path, capsys):
    run = _copy(trained[1], tmp_path)
    assert _claimed(json.loads((run / "export.json").read_text())) == _exported(run)
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_DURING, str(run)],
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        stderr=subprocess.PIPE,
        text=True,
    )
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    doc = json.loads((run / "export.json").read_text())
    assert _claimed(doc) == _exported(run)  # no INT8 file without its record, no record without its file
    assert _hidden(run) and all(n.startswith(f".~{proc.pid}.") for n in _hidden(run)), _hidden(run)
    (run / f".~{_dead_pid()}.abcdefgh.student.onnx").write_bytes(b"")  # as a kill -9 mid-export leaves it
    assert main(["export", str(run), "-q"]) == 0
    assert _hidden(run) == []  # the rerun removed what dead processes left
    assert _claimed(json.loads((run / "export.json").read_text())) == _exported(run)


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


# ------------------------------------------------------------------------------ 9. side commands add to records


def test_9_export_and_evaluate_on_a_run_keep_every_earlier_record(trained, tmp_path, capsys):
    from compressor.app.pipeline import RunOptions, run_pipeline
    from compressor.recipe import load_recipe

    recipe, src = trained
    run = _copy(src, tmp_path)
    before = json.loads((run / "export.json").read_text())
    assert {k for k, r in before["files"].items() if r["format"] == "onnx"} == {"student.onnx", "teacher.onnx"}
    code = main(["export", str(run), "--format", "openvino", "--precision", "int8", "--calib-images", "4", "-q"])
    assert code == 0, capsys.readouterr().err[-2000:]
    after = json.loads((run / "export.json").read_text())
    for name in ("student.onnx", "teacher.onnx"):  # the pipeline's ONNX parity records are kept
        assert after["files"][name] == before["files"][name]
    assert after["files"]["student.int8.xml"]["format"] == "openvino"

    ev = json.loads((run / "eval.json").read_text())
    for side, fid in (("teacher", 80.5), ("student", 90.1)):  # as an evaluation with FID/KID left them
        ev[side].update(fid=fid, kid=0.02)
    (run / "eval.json").write_text(json.dumps(ev))
    assert main(["evaluate", str(run), "--metrics", "psnr,ssim", "--device", "cpu", "-q"]) == 0
    now = json.loads((run / "eval.json").read_text())
    assert now["student"]["fid"] == 90.1 and now["teacher"]["kid"] == 0.02  # kept
    assert now["student"]["psnr"] == ev["student"]["psnr"]  # re-measured: the same model, the same images

    results = run_pipeline(load_recipe(recipe), run.parent, RunOptions(only=STAGES.split(","), recipe_path=recipe))
    assert {r.stage: r.status for r in results} == dict.fromkeys(STAGES.split(","), "skipped")
