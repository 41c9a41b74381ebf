"""Feed every reader and the CLI commands mutated versions of real files and random arguments.

A finding is a traceback (an exception other than ``UserError`` escaping), an exit code other than 0 or 2, or the
process's peak memory passing ``--max-rss-mb``; the ``links``, ``fifo`` and ``stale`` targets also count a write
through a link out of the run, a FIFO that blocks its reader, and a temporary left behind (or a file removed that
was not one). The corpus is a small run folder built here in a second (zoo
teacher and student, no training) plus hand-written profile/eval/export documents shaped as compressor writes
them; each case copies it, mutates one file (or draws the command-line arguments) and runs one target.

    OMP_NUM_THREADS=1 python tools/fuzz.py --minutes 10
    python tools/fuzz.py --cases 200 --seed 3 --target report

``tests/test_fuzz.py`` runs the same targets under hypothesis with a bounded number of examples.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import logging
import os
import random
import resource
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RECIPE = """
name: tiny
seed: 0
device: cpu
data: {kind: synthetic, direction: BtoA, size: 32, batch_size: 2, synthetic: {train: 4, test: 2}}
teacher:
  arch: resnet_6blocks
  kwargs: {ngf: 8, norm: instance}
  train: {steps: 2}
student: {width: 0.5}
distill: {steps: 2, checkpoint_every: 2, log_every: 1, sample_every: 2}
evaluate: {metrics: [psnr], samples: 1}
export: {onnx: {dynamic: [batch]}}
profile: {backends: [ort-cpu], batch: [1], warmup: 1, iters: 3}
"""

LATENCY = {"p10": 1.0, "p50": 1.2, "p90": 1.5, "p99": 1.9, "mean": 1.3, "std": 0.1, "min": 0.9, "n": 5}
PROFILE = {
    "schema": "compressor.profile/1",
    "created": "2026-01-01T00:00:00",
    "environment": {"hostname": "box", "machine": "x86_64", "gemm_peak_macs_per_s": 1e11},
    "results": [
        {"model": "tiny/teacher", "role": "teacher", "backend": "ort-cpu", "batch": 1, "size": 32,
         "precision": "fp32", "status": "ok", "latency_ms": dict(LATENCY, p50=2.4), "macs": 10665984,
         "params": 124931},
        {"model": "tiny/student", "role": "student", "backend": "ort-cpu", "batch": 1, "size": 32,
         "precision": "fp32", "status": "ok", "latency_ms": LATENCY, "macs": 3268608, "params": 31939},
        {"model": "tiny/student", "role": "student", "backend": "torch", "batch": 4, "size": 32,
         "status": "failed", "reason": "no such backend"},
    ],
}  # fmt: skip
EVAL = {
    "teacher": {"psnr": 12.0, "ssim": 0.03, "fid": 80.5, "kid": 0.02, "n_images": 2, "params": 124931,
                "macs": 10665984},
    "student": {"psnr": 12.3, "ssim": 0.032, "fid": 90.1, "kid": 0.03, "psnr_vs_teacher": 16.8,
                "ssim_vs_teacher": 0.13, "n_images": 2, "params": 31939, "macs": 3268608},
    "student_pct_of_teacher": {"psnr": 102.4, "ssim": 108.9},
    "n_images": 2, "fid_weights": None, "fid_skipped": None, "size": 32, "output_size": [32, 32],
    "direction": "BtoA",
}  # fmt: skip
EXPORT = {
    "onnx": {"student": {"path": "student.onnx", "bytes": 241972, "parity": {
        "tolerance": 1e-4, "max_abs": 1.2e-6, "passed": True,
        "cases": [{"shape": [1, 3, 32, 32], "max_abs": 1.2e-6, "passed": True}]}}},
    "notes": [],
}  # fmt: skip
PLAN = {"key": "abc", "width": 0.5, "candidates": [{"width": 0.5, "params": 31939, "macs": 3268608}]}


def build_corpus(folder: Path) -> Path:
    """A run folder (no training), a pruned student folder, report documents, a checkpoint. About a second."""
    import torch
    from safetensors.torch import save_file

    from compressor.models import build_generator, spec_of_model
    from compressor.recipe import load_recipe
    from compressor.slim import make_student, save_student

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny.yaml").write_text(RECIPE)
    run = folder / "runs" / "tiny"
    run.mkdir(parents=True)
    recipe = load_recipe(folder / "tiny.yaml")
    (run / "recipe.resolved.yaml").write_text(recipe.to_yaml())
    (run / "run.json").write_text(json.dumps({"recipe_source": str(folder / "tiny.yaml"), "name": "tiny"}))
    torch.manual_seed(0)
    teacher = build_generator("resnet_6blocks", ngf=8, norm="instance").eval()
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(run / "teacher.safetensors"))
    (run / "teacher.json").write_text(json.dumps({"spec": spec_of_model(teacher), "source": "trained"}))
    student, plan = make_student(teacher, 0.5, "rebuild")
    save_student(student, plan, run)
    save_student(student, plan, run / "student_init")
    pruned, pplan = make_student(teacher, 0.5, "prune", example_input=torch.zeros(1, 3, 32, 32))
    save_student(pruned, pplan, folder / "pruned")
    stages = {s: {"hash": "0" * 16, "seconds": 1.0, "finished": "2026-01-01T00:00:00"} for s in ("teacher",)}
    (run / "stages.json").write_text(json.dumps(stages))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "G/kd": 0.5}) + "\n" for i in (1, 2, 3)))
    for name, doc in (("eval.json", EVAL), ("export.json", EXPORT), ("profile.json", PROFILE), ("plan.json", PLAN)):
        (run / name).write_text(json.dumps(doc, indent=1))
    (run / "samples").mkdir()
    from PIL import Image

    Image.new("RGB", (16, 8), (10, 200, 30)).save(run / "samples" / "eval.png")
    ckpts = run / "checkpoints"
    ckpts.mkdir()
    opt = torch.optim.Adam(student.parameters())
    state = {
        "step": 2,
        "students": {"AtoB": student.state_dict()},
        "discriminators": {},
        "adapters": None,
        "opt_g": opt.state_dict(),
        "sched_g": {"last_epoch": 2},
        "rng_cpu": torch.get_rng_state(),
    }
    torch.save(state, ckpts / "step_00000002.pt")
    return folder


# ------------------------------------------------------------------------------------------------ mutation

WEIRD = [
    None, True, False, 0, -1, -5, 7.5, 2**70, -(2**70), 10**400 // 10**300, 1e308, float("nan"), float("inf"),
    float("-inf"), "", "ab", "abc", "fp32;touch X", "../../etc/passwd", "/etc/passwd", [], [5], [1, 2, 3], {},
    {"a": 1}, [[[[[]]]]], "x" * 5000, [-1, 3, 12000, 12000], [1, 3, 12000, 12000],
]  # fmt: skip


def _deep(n: int):
    v: object = []
    for _ in range(n):
        v = [v]
    return v


def weird_value(rng: random.Random):
    r = rng.random()
    if r < 0.05:
        return _deep(rng.choice([70, 200, 800]))
    if r < 0.1:
        return {"spec": _deep(rng.choice([70, 300]))}
    return copy.deepcopy(rng.choice(WEIRD))  # never one object in two places (a cycle once nested)


def _paths(doc, prefix=()):
    yield prefix
    if len(prefix) > 12:
        return
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:5]):
            yield from _paths(v, prefix + (i,))


def mutate_json(doc, rng: random.Random):
    """A copy of ``doc`` with one to three values replaced, deleted or retyped (the top level included)."""
    doc = json.loads(json.dumps(doc))
    for _ in range(rng.randint(1, 3)):
        paths = list(_paths(doc))
        path = rng.choice(paths)
        if not path:
            if rng.random() < 0.3:
                return weird_value(rng)
            continue
        parent = doc
        for p in path[:-1]:
            parent = parent[p]
        key = path[-1]
        if isinstance(parent, dict) and rng.random() < 0.25:
            del parent[key]
        elif isinstance(parent, list) and rng.random() < 0.15:
            parent.pop(key)
        else:
            parent[key] = weird_value(rng)
    return doc


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.25:
        return data[: rng.randint(0, len(data))]
    if r < 0.4:
        return b""
    if r < 0.5:
        return b"\xff\xfe" + data
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if b:
            b[rng.randrange(len(b))] = rng.randrange(256)
    return bytes(b)


def mutate_file(path: Path, rng: random.Random) -> None:
    text = path.read_bytes()
    try:
        json.loads(text)
        parsed = True
    except (ValueError, RecursionError):
        parsed = False
    if rng.random() < 0.15 or not parsed:
        path.write_bytes(mutate_bytes(text, rng))
        return
    if path.suffix == ".jsonl":
        lines = text.decode().splitlines()
        i = rng.randrange(len(lines))
        lines[i] = json.dumps(mutate_json(json.loads(lines[i]), rng))
        path.write_text("\n".join(lines) + "\n")
        return
    path.write_text(json.dumps(mutate_json(json.loads(text), rng)))


# ------------------------------------------------------------------------------------------------ targets


def _cli(args: list) -> int:
    from compressor.app.cli import main

    return main([str(a) for a in args])


def _call(fn: Callable[[], object]) -> int:
    from compressor.errors import UserError

    try:
        fn()
    except UserError:
        return 2
    return 0


def t_report(d: Path, rng: random.Random) -> int:
    run = d / "runs" / "tiny"
    names = ["eval.json", "export.json", "profile.json"]
    victim = run / rng.choice(names)
    mutate_file(victim, rng)
    files = [run / n for n in names if rng.random() < 0.6 or run / n == victim]
    return _cli(["report", *files, "--out", d / "report"])


def t_student(d: Path, rng: random.Random) -> int:
    from compressor.slim import load_student

    folder = d / rng.choice(["pruned", "runs/tiny"])
    mutate_file(folder / "student.json", rng)
    return _call(lambda: load_student(folder))


def t_teacher(d: Path, rng: random.Random) -> int:
    from compressor.runfolder import RunDir, load_run_teacher, profile_refs

    run = RunDir(d / "runs" / "tiny")
    mutate_file(run.teacher_json, rng)
    return _call(lambda: (load_run_teacher(run), profile_refs(run)))


def t_run_folder(d: Path, rng: random.Random) -> int:
    from compressor.app.stages import STAGE_BY_NAME
    from compressor.runfolder import RunDir, load_run_recipe, read_run_json

    run = RunDir(d / "runs" / "tiny")
    mutate_file(rng.choice([run.stages_json, run.run_json]), rng)
    teacher = STAGE_BY_NAME["teacher"].outputs
    return _call(
        lambda: (run.records(), run.up_to_date("teacher", "0", teacher), read_run_json(run), load_run_recipe(run))
    )


def t_plan(d: Path, rng: random.Random) -> int:
    from compressor.schemas import PlanJson, read_json

    p = d / "runs" / "tiny" / "plan.json"
    mutate_file(p, rng)
    return _call(lambda: read_json(p, PlanJson))


def t_metrics(d: Path, rng: random.Random) -> int:
    from compressor.train import Trainer

    p = d / "runs" / "tiny" / "metrics.jsonl"
    mutate_file(p, rng)
    return _call(lambda: Trainer._truncate_metrics(SimpleNamespace(rank=0, metrics_file=p, step=2)))


def t_checkpoint(d: Path, rng: random.Random) -> int:
    import torch

    from compressor.checkpoints import resumable_checkpoint

    folder = d / "runs" / "tiny" / "checkpoints"
    path = folder / "step_00000002.pt"
    state = torch.load(path, weights_only=True)
    key = rng.choice(["students", "discriminators", "opt_g", "sched_g", "rng_cpu", "step", "adapters"])
    state[key] = rng.choice([torch.zeros(3), {"AtoB": torch.zeros(2)}, {"AtoB": {"w": 5}}, [1, 2], None, "x", 5])
    torch.save(state, path)
    return _call(lambda: resumable_checkpoint(folder))


def t_recipe(d: Path, rng: random.Random) -> int:
    import yaml

    from compressor.recipe import load_recipe

    doc = yaml.safe_load(RECIPE)
    try:
        text = yaml.safe_dump(mutate_json(doc, rng)) if rng.random() < 0.8 else RECIPE + "name: again\n"
    except RecursionError:  # a value too deep for the YAML writer: written as JSON (YAML reads JSON)
        text = "data: " + json.dumps(_deep(300)) + "\n" + RECIPE
    p = d / "mutated.yaml"
    p.write_text(text)
    return _call(lambda: load_recipe(p, check_paths=False))


# ------------------------------------------------------------------------------------------------ links, FIFOs, temps

LINKED = {  # a run's sub-folders and own files, replaced by a link to a place outside the run
    "checkpoints": "dir", "samples": "dir", "benchmark": "dir", "student_init": "dir", "teacher_train": "dir",
    "student.safetensors": "file", "student.json": "file", "teacher.json": "file", "teacher.safetensors": "file",
    "stages.json": "file", "plan.json": "file", "profile.json": "file", "eval.json": "file", "export.json": "file",
    "benchmark.json": "file",
}  # fmt: skip


def _outside(d: Path) -> Path:
    """A folder outside the run with files someone else owns (a checkpoint the pruning must not delete...)."""
    out = d / "outside"
    out.mkdir()
    for name in ("step_00000001.pt", "eval.png", "student.onnx", "student.json", "plan.json", "x.json"):
        (out / name).write_bytes(f"foreign {name}\n".encode())
    return out


def _snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def t_links(d: Path, rng: random.Random) -> int:
    """Link a sub-folder or an own file of the run out of it, then read, write, prune and report the run: each
    refuses (one line) or replaces the link; the place outside is byte for byte the same."""
    from compressor.checkpoints import resumable_checkpoint, save_checkpoint
    from compressor.exporters.report import report_run
    from compressor.resume import prepare_checkpoints
    from compressor.runfolder import RunDir, load_run_student, load_run_teacher

    run = RunDir(d / "runs" / "tiny")
    outside = _outside(d)
    for name in rng.sample(sorted(LINKED), rng.randint(1, 3)):
        p = run.root / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
        p.symlink_to(outside if LINKED[name] == "dir" else outside / rng.choice(sorted(_snapshot(outside))))
    before = _snapshot(outside)
    action = rng.choice(
        [
            lambda: load_run_student(run),
            lambda: load_run_teacher(run),
            lambda: report_run(run),
            lambda: save_checkpoint({"step": 3}, run.checkpoints, 3, keep_last=1),
            lambda: resumable_checkpoint(run.checkpoints),
            lambda: prepare_checkpoints(run.root, "abc", resume=rng.random() < 0.5, force=rng.random() < 0.5),
            lambda: _cli(["report", run.eval_json, run.profile_json, "--out", run.root]),
        ]
    )
    code = _call(action)
    if _snapshot(outside) != before:
        raise AssertionError(f"written or deleted through a link: {sorted(set(before) ^ set(_snapshot(outside)))}")
    return code


FIFO_FILES = (  # files of the run the toolkit reads, each replaced by a FIFO in turn
    "eval.json", "profile.json", "export.json", "teacher.json", "stages.json", "run.json", "recipe.resolved.yaml",
    "student.json", "plan.json", "metrics.jsonl", "checkpoints/config.json", "student.onnx.failed",
)  # fmt: skip


def _read_as_the_toolkit_does(run, name: str) -> int:
    """Read ``name`` of the run with the reader the commands use."""
    from compressor.exporters.formats.onnx import check_not_failed
    from compressor.resume import recorded_digest
    from compressor.runfolder import load_run_teacher, read_run_json
    from compressor.schemas import read_json
    from compressor.train import Trainer

    if name in ("eval.json", "profile.json", "export.json"):
        return _cli(["report", run.root / name, "--out", run.root.parent / "r"])
    if name in ("recipe.resolved.yaml", "student.json"):
        return _cli(["evaluate", run.root, "--device", "cpu"] if name.endswith("yaml") else ["export", run.root])
    readers = {
        "teacher.json": lambda: load_run_teacher(run),
        "stages.json": run.records,
        "run.json": lambda: read_run_json(run),
        "plan.json": lambda: read_json(run.root / name),
        "metrics.jsonl": lambda: Trainer._truncate_metrics(SimpleNamespace(rank=0, metrics_file=run.metrics, step=2)),
        "checkpoints/config.json": lambda: recorded_digest(run.checkpoints),
        "student.onnx.failed": lambda: check_not_failed(run.student_onnx),
    }
    return _call(readers[name])


def t_fifo(d: Path, rng: random.Random) -> int:
    """A FIFO where the toolkit reads a file: one line (or the file treated as absent) within 2 s, never a
    blocked open."""
    import threading

    from compressor.runfolder import RunDir

    run = RunDir(d / "runs" / "tiny")
    name = rng.choice(FIFO_FILES)
    fifo = run.root / name
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo)
    box: dict = {}

    def read():
        try:
            box["code"] = _read_as_the_toolkit_does(run, name)
        except BaseException as exc:  # noqa: BLE001 - handed back below
            box["exc"] = exc

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(2.0)
    if t.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # set the blocked reader free
        t.join(10)
        raise AssertionError(f"{name}: a FIFO blocked its reader for more than 2 s")
    if "exc" in box:
        raise box["exc"]
    return box["code"]


_DEAD: list[int] = []


def _dead_pid() -> int:
    """The id of a process that has ended (a kill -9 leaves its temporaries named after it)."""
    if not _DEAD:
        import subprocess

        p = subprocess.Popen(["true"])
        p.wait()
        _DEAD.append(p.pid)
    return _DEAD[0]


def t_stale(d: Path, rng: random.Random) -> int:
    """Temporaries that dead processes left (files, folders, links), lookalikes and live ones; staging a write
    removes exactly the dead processes' own, follows no link, and keeps everything else."""
    from compressor.io import atomic_write_json, temp_file

    folder = d / "runs" / "tiny" / rng.choice([".", "checkpoints", "samples"])
    outside = _outside(d)
    before = _snapshot(outside)
    dead, alive = _dead_pid(), os.getppid()
    stale, kept = [], []
    for i in range(rng.randint(1, 6)):
        kind = rng.choice(["dead", "dead", "alive", "zero", "huge", "lookalike", "legacy"])
        name = {
            "dead": f".~{dead}.abcdef{i:02d}.student.onnx",
            "alive": f".~{alive}.abcdef{i:02d}.student.onnx",
            "zero": f".~0.abcdef{i:02d}.x",
            "huge": f".~{10**9 + i}9999999999.abcdef{i:02d}.x",
            "lookalike": f".~{dead}.ab.student.onnx{i}",
            "legacy": f".student.onnx.abcdef{i:02d}.onnx",
        }[kind]
        p = folder / name
        shape = rng.choice(["file", "dir", "link"])
        if shape == "file":
            p.write_bytes(b"")
        elif shape == "dir":
            p.mkdir()
            (p / "inner").write_bytes(b"x")
        else:
            p.symlink_to(outside if rng.random() < 0.5 else outside / "x.json")
        (stale if kind == "dead" else kept).append(name)
    if rng.random() < 0.5:
        atomic_write_json(folder / "x.json", {"a": 1})
    else:
        temp_file(folder / "y.bin").unlink()
    names = set(os.listdir(folder))
    if names & set(stale) or set(kept) - names or _snapshot(outside) != before:
        raise AssertionError(f"stale {sorted(names & set(stale))}, lost {sorted(set(kept) - names)}")
    return 0


POOL = [
    "0", "-5", "3", "33", "7.5", "12000", "abc", "", "fp7", "fp32;touch X", "tpu", "cuda:99", "/etc/passwd",
    "/nonexistent", "-oProxyCommand=touch X", "ProxyCommand=touch X", "a b", "1,0", "nan", "inf", "-1",
    "1e309", "-1e309", "1e400", "99999", "4294967297", "1e-320",
]  # fmt: skip
FLAGS = {
    "evaluate": ["--size", "--device", "--data", "--max-images", "--metrics", "--kind", "--direction",
                 "--inception-weights"],
    "export": ["--size", "--precision", "--dynamic", "--opset", "--out", "--data", "--trt-version", "--arch",
               "--max-drop", "--calib-images"],
    "benchmark": ["--size", "--format", "--data", "--images", "--calib-images", "--threads", "--iters", "--warmup"],
    "profile": ["--size", "--batch", "--precision", "--seconds", "--host", "--port", "--ssh-option", "--device",
                "--backend", "--out", "--threads", "--iters", "--warmup"],
    "report": ["--out", "--title"],
    "validate": ["--set"],
}  # fmt: skip


def t_cli(d: Path, rng: random.Random) -> int:
    """Random flags and values for each command; targets are files of the corpus or bad paths, and an invalid
    value among the flags keeps a run from doing real work (one is always drawn)."""
    cmd = rng.choice(sorted(FLAGS))
    run = d / "runs" / "tiny"
    target = {
        "evaluate": [d / "pruned", run / "eval.json", "/nonexistent"],
        "export": ["/etc/passwd", d / "nonexistent", run / "student.json"],
        "profile": ["/nonexistent.onnx", "not_a_zoo:width=2"],
        "benchmark": ["/nonexistent", run / "student.json", d / "afile/under"],
        "report": [run / "eval.json", run / "profile.json", "/etc/passwd", run / "student.json"],
        "validate": [d / "tiny.yaml", run / "recipe.resolved.yaml", "/etc/passwd"],
    }[cmd]
    args = [cmd, rng.choice(target)]
    for _ in range(rng.randint(1, 4)):
        flag = rng.choice(FLAGS[cmd])
        outs = ["/etc/passwd", "/etc", str(d / "o"), "", str(run / "eval.json" / "sub")]  # the last: below a file
        value = rng.choice(POOL) if flag != "--out" else rng.choice(outs)
        if flag == "--set":
            value = rng.choice(
                ["data.size=abc", "student.width=7", "name=", "x.y=1", "distill.steps=-1", "distill.lr=1e400",
                 "student.budget.macs=.inf", "profile.threads=99999", "export.onnx.parity_tol=.nan"]
            )  # fmt: skip
        args += [flag, value]
    if cmd == "evaluate":
        args += ["--device", "tpu"] if rng.random() < 0.5 else ["--size", "0"]
    return _cli(args)


TARGETS: dict[str, Callable[[Path, random.Random], int]] = {
    "report": t_report,
    "student": t_student,
    "teacher": t_teacher,
    "run_folder": t_run_folder,
    "plan": t_plan,
    "metrics": t_metrics,
    "checkpoint": t_checkpoint,
    "recipe": t_recipe,
    "cli": t_cli,
    "links": t_links,
    "fifo": t_fifo,
    "stale": t_stale,
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(corpus: Path, target: str, rng: random.Random) -> int:
    """Copy the corpus, run one target on it; returns the exit code. Exceptions other than UserError propagate
    (the caller counts them as findings); stdout/stderr of the case are swallowed."""
    from compressor import trust

    trust.revoke_all()
    work = Path(tempfile.mkdtemp(prefix="fuzz-"))
    here = Path.cwd()
    try:
        shutil.copytree(corpus, work / "c", symlinks=True)
        sink = io.StringIO()
        os.chdir(work)  # a relative --out ("", ".") writes here, not into the caller's folder
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            return TARGETS[target](work / "c", rng)
    finally:
        os.chdir(here)
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=1.0)
    ap.add_argument("--cases", type=int, default=0, help="stop after this many cases (0: run for --minutes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", action="append", choices=sorted(TARGETS), help="only these targets")
    ap.add_argument("--max-rss-mb", type=float, default=3072)
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)
    import torch

    torch.set_num_threads(1)
    targets = args.target or sorted(TARGETS)
    corpus = build_corpus(Path(tempfile.mkdtemp(prefix="fuzz-corpus-")) / "c")
    rng = random.Random(args.seed)
    deadline = time.monotonic() + args.minutes * 60
    counts: dict[str, dict[int, int]] = {t: {} for t in targets}
    findings = []
    n = 0
    while (n < args.cases) if args.cases else (time.monotonic() < deadline):
        target = targets[n % len(targets)]
        seed = rng.randrange(2**32)
        try:
            code = run_case(corpus, target, random.Random(seed))
        except BaseException as exc:  # noqa: BLE001 - every escape is a finding
            if isinstance(exc, KeyboardInterrupt):
                raise
            code = None
            findings.append((target, seed, "".join(traceback.format_exception(exc))[-1500:]))
        if code not in (0, 2, None):
            findings.append((target, seed, f"exit code {code}"))
        counts[target][code] = counts[target].get(code, 0) + 1
        if peak_rss_mb() > args.max_rss_mb:
            findings.append((target, seed, f"peak memory {peak_rss_mb():.0f} MB"))
            break
        n += 1
    shutil.rmtree(corpus.parent, ignore_errors=True)
    for target, seed, what in findings:
        print(f"FINDING {target} seed={seed}:\n{what}\n")
    summary = ", ".join(f"{t} {sum(c.values())} ({c.get(0, 0)} ok, {c.get(2, 0)} refused)" for t, c in counts.items())
    print(
        f"{n} cases in {args.minutes if not args.cases else 'n/a'} min, peak memory {peak_rss_mb():.0f} MB: {summary}"
    )
    print(f"{len(findings)} finding(s)" if findings else "no traceback")
    return 1 if findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
