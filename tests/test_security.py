"""Hostile and careless input (issue "Trust"): loading a folder runs no code, hostile files are bounded, every
mistake is one line with exit code 2, one writer per run folder, children die with their parent.

One test per finding; each asserts exit code 2 (or the documented one), a single ``error:`` line, no traceback,
and that earlier artifacts are byte-identical afterwards.
"""

import errno
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from conftest import ROOT, one_error_line, run_cli, tiny_recipe_text

from compressor import trust
from compressor.app.cli import main
from compressor.errors import UserError

PWN = "import pathlib; pathlib.Path({path!r}).write_text('pwned')\n"


pytestmark = pytest.mark.usefixtures("no_consent")


def _one_line(capsys, code, *needles, expect=2):
    return one_error_line(capsys.readouterr().err, code, *needles, expect=expect)


def _one_line_proc(res, *needles):
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.stderr, res.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _tree_digest(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def _recipe(tmp_path, text, name="r.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


# ------------------------------------------------------------------------------ 1. code execution from data


def _hostile_student(folder: Path, marker: Path, via_file: bool) -> Path:
    folder.mkdir(parents=True)
    if via_file:
        evil = folder / "evil.py"
        evil.write_text(PWN.format(path=str(marker)) + "def make(**kw):\n    raise SystemExit\n")
        target = f"{evil}:make"
    else:
        target = "os:system"
    plan = {
        "teacher": {"import": target, "kwargs": {"command": f"touch {marker}"}},
        "method": "prune",
        "groups": [],
        "example_shape": [1, 3, 8, 8],
    }
    (folder / "student.json").write_text(json.dumps(plan))
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(folder / "student.safetensors"))
    (folder / "teacher.json").write_text(json.dumps({"spec": plan["teacher"]}))
    return folder


@pytest.mark.parametrize("via_file", [False, True])
def test_loading_a_folder_imports_no_code_without_consent(tmp_path, capsys, via_file):
    marker = tmp_path / "PWNED"
    folder = _hostile_student(tmp_path / "student", marker, via_file)
    before = _tree_digest(folder)
    for args in (
        ["export", folder],
        ["profile", folder, "--backend", "torch", "--out", tmp_path / "p.json"],
        ["evaluate", folder, "--data", tmp_path],
    ):
        line = _one_line(capsys, main([str(a) for a in args]), "--trust-code", "student.json")
        assert ("os:system" in line) != via_file
        assert not marker.exists()
    # the Python API: the same refusal unless the caller consents
    from compressor.slim import load_student
    from compressor.trust import UntrustedCode

    with pytest.raises(UntrustedCode, match="allow_import=True"):
        load_student(folder)
    # a run folder's teacher.json: refused the same way
    from compressor.app.pipeline import RunDir, load_run_teacher

    with pytest.raises(UntrustedCode, match="teacher"):
        load_run_teacher(RunDir(folder))
    assert not marker.exists() and _tree_digest(folder) == before


def test_consent_imports_an_architecture(tmp_path):
    """``allow_import=True`` (and --trust-code) loads an imported architecture; zoo students need no consent."""
    import torch
    from custom_archs import make_depthwise

    from compressor.models import build_generator
    from compressor.slim import load_student, make_student, save_student

    teacher = make_depthwise(8).eval()
    teacher.compressor_spec = {"import": "custom_archs:make_depthwise", "kwargs": {"ch": 8}}
    student, plan = make_student(teacher, 0.5, "prune", "inherit", torch.randn(1, 3, 16, 16))
    save_student(student, plan, tmp_path / "s")
    loaded = load_student(tmp_path / "s", allow_import=True)
    x = torch.randn(1, 3, 16, 16)
    assert torch.allclose(loaded(x), student.eval()(x), atol=1e-5)
    trust.trust_all_code()  # what --trust-code does
    load_student(tmp_path / "s")
    trust.revoke_all()
    trust.consent_to("custom_archs:make_depthwise")  # a recipe's own teacher.import
    load_student(tmp_path / "s")
    trust.revoke_all()
    zoo, zplan = make_student(build_generator("resnet_6blocks", ngf=8, norm="instance"), 0.5, "rebuild")
    save_student(zoo, zplan, tmp_path / "z")
    load_student(tmp_path / "z")  # data only, no consent needed


def test_student_json_with_absurd_zoo_kwargs_is_one_line(tmp_path):
    from compressor.errors import CheckpointError
    from compressor.slim import build_from_spec

    for kwargs in ({"ngf": 10**9}, {"norm": "instanec"}, {"bogus": 1}, {"use_dropout": "yes"}):
        with pytest.raises(CheckpointError):
            build_from_spec({"arch": "resnet_6blocks", "kwargs": kwargs})


def test_validate_locates_teacher_import_without_running_it(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    (tmp_path / "evil.py").write_text(PWN.format(path=str(marker)) + "def make(**kw):\n    pass\n")
    base = tiny_recipe_text().replace(
        "  arch: resnet_6blocks\n  kwargs: {ngf: 8, norm: instance}\n  train: {steps: 6}", "  import: evil.py:make"
    )
    base = base.replace("srp: {weight: 10.0, layers: [encoder, res_mid]}", "srp: {weight: 0}")
    p = _recipe(tmp_path, base)
    assert main(["validate", str(p)]) == 0
    assert "valid" in capsys.readouterr().out
    assert not marker.exists()
    for target, needle in (
        ("evil.py:nope", "does not define 'nope'"),
        ("missing.py:make", "file not found"),
        ("no_such_pkg_xyz.mod:f", "no module named"),
        ("os", "module:attribute"),
    ):
        p = _recipe(tmp_path, base.replace("import: evil.py:make", f"import: {target!r}"))
        _one_line(capsys, main(["validate", str(p)]), needle)
    assert not marker.exists()
    # a module inside a package: its package __init__ is not executed either
    pkg = tmp_path / "evilpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(PWN.format(path=str(marker)))
    (pkg / "nets.py").write_text("def make(**kw):\n    pass\n")
    sys.path.insert(0, str(tmp_path))
    try:
        p = _recipe(tmp_path, base.replace("import: evil.py:make", "import: evilpkg.nets:make"))
        assert main(["validate", str(p)]) == 0
    finally:
        sys.path.remove(str(tmp_path))
    assert not marker.exists() and "evilpkg" not in sys.modules


# ------------------------------------------------------------------------------ 2. bounded YAML

_BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{c}: &{c} [" + ", ".join([f"*{p}"] * 9) + "]\n" for p, c in zip("abcdefgh", "bcdefghi")
)


@pytest.mark.parametrize(
    "text, needle",
    [
        (_BOMB, "aliases"),
        ("[" * 100_000, "nesting"),
        ("name: x\nseed: " + "9" * 5000 + "\n", "digits"),
        ("x: &a [*a, *a]\n", ""),  # a recursive alias: finite, then refused by the schema
        ("name: x\n" + "k: *a\n" * 300, ""),
    ],
)
def test_hostile_yaml_is_bounded(tmp_path, text, needle):
    """Each runs under a 1 GiB address-space limit and finishes in under 10 s with one line."""
    p = _recipe(tmp_path, text)
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "from compressor.app.cli import main\n"
        f"sys.exit(main(['validate', {str(p)!r}]))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert time.monotonic() - t0 < 10, "took too long"
    _one_line_proc(res, needle)


# ------------------------------------------------------------------------------ 3. usage errors and bad values


@pytest.mark.parametrize(
    "args, needle",
    [
        ([], "missing command"),
        (["run"], "Missing argument"),
        (["--bogus"], "--bogus"),
        (["validate", "--bogus"], "--bogus"),
        (["run", "x.yaml", "--nproc", "0"], "--nproc"),
        (["profile", "m", "--iters", "abc"], "--iters"),
        (["profile", "m", "--iters", "0"], "--iters"),
        (["profile", "resnet_6blocks", "--batch", "0"], "--batch"),
        (["profile", "resnet_6blocks", "--size", "0,256"], "--size"),
        (["profile", "resnet_6blocks:width=abc"], "width"),
        (["profile", "resnet_6blocks:ngf=0"], "ngf"),
        (["profile", "resnet_6blocks:ngf=x"], "ngf"),
        (["profile", "resnet_6blocks:width=7"], "width"),
    ],
)
def test_usage_errors_are_one_line(tmp_path, capsys, args, needle):
    if args[:1] == ["profile"]:
        args = args + ["--out", str(tmp_path / "p.json")]
    _one_line(capsys, main(args), needle)
    assert not (tmp_path / "p.json").exists()


def test_usage_errors_through_the_installed_script():
    """The installed typer raises its bundled click's exceptions (typer._click): the real process answers."""
    res = run_cli(["--bogus"])
    _one_line_proc(res, "--bogus")
    res = run_cli(["--version"])
    assert res.returncode == 0 and res.stdout.startswith("compress ")


def test_both_click_families_are_caught(monkeypatch, capsys):
    import typer

    from compressor.app import cli

    families = []
    try:
        import typer._click.exceptions as bundled

        families.append(bundled)
    except ImportError:  # pragma: no cover - older typer
        pass
    try:
        import click.exceptions as plain

        families.append(plain)
    except ImportError:  # pragma: no cover - typer without click
        pass
    assert families
    if int(typer.__version__.split(".")[1]) >= 20:
        assert any(f.__name__.startswith("typer.") for f in families)
    for fam in families:

        def boom(*a, _fam=fam, **k):
            raise _fam.UsageError("bad usage\nsecond line")

        monkeypatch.setattr(cli, "app", boom)
        _one_line(capsys, cli.main(["validate", "x"]), "bad usage second line")

        def other(*a, _fam=fam, **k):
            raise _fam.FileError("f.txt", "denied")

        monkeypatch.setattr(cli, "app", other)
        _one_line(capsys, cli.main(["validate", "x"]), "f.txt")


@pytest.mark.parametrize(
    "old, new, needle",
    [
        ("kwargs: {ngf: 8, norm: instance}", "kwargs: {ngf: 8, norm: instanec}", "teacher.kwargs.norm"),
        ("kwargs: {ngf: 8, norm: instance}", "kwargs: {ngf: thirtytwo}", "teacher.kwargs.ngf"),
        ("kwargs: {ngf: 8, norm: instance}", "kwargs: {ngf: -4}", "teacher.kwargs.ngf"),
        ("kwargs: {ngf: 8, norm: instance}", "kwargs: {ngf: 8, use_dropout: maybe}", "use_dropout"),
        ("kwargs: {ngf: 8, norm: instance}", "kwargs: {ngf: 8, colour: red}", "colour"),
        ("seed: 0", "seed: -1", "seed"),
        ("seed: 0", "seed: 1.0e23", "seed"),
        ("seed: 0", "seed: 4294967296", "seed"),
        ("name: tiny", "name: " + "x" * 300, "name"),
        ("name: tiny", "name: ../../etc", "name"),
        ("size: 32", "size: 250", "data.size"),  # resnet with teacher.train: a multiple of 4
        ("arch: resnet_6blocks", "arch: unet_256", "data.size"),  # unet_256 needs multiples of 256
    ],
)
def test_recipe_values_the_run_would_trip_on(tmp_path, capsys, old, new, needle):
    p = _recipe(tmp_path, tiny_recipe_text().replace(old, new, 1))
    _one_line(capsys, main(["validate", str(p)]), needle)


def test_validate_reports_missing_checkpoints_and_reverse_teacher(tmp_path, capsys):
    text = tiny_recipe_text().replace("  train: {steps: 6}", f"  checkpoint: {tmp_path / 'nope.pth'}")
    _one_line(capsys, main(["validate", str(_recipe(tmp_path, text))]), "teacher.checkpoint", "nope.pth")
    unpaired = tmp_path / "u"
    for split in ("trainA", "trainB", "testA", "testB"):
        (unpaired / split).mkdir(parents=True)
    from PIL import Image

    for split in ("trainA", "trainB", "testA", "testB"):
        Image.new("RGB", (32, 32)).save(unpaired / split / "a.png")
    torch_ckpt = tmp_path / "t.pth"
    import torch

    from compressor.models import build_generator

    torch.save(build_generator("resnet_6blocks", ngf=8, norm="instance").state_dict(), torch_ckpt)
    text = (
        tiny_recipe_text()
        .replace("kind: synthetic", f"kind: unpaired, root: {unpaired}")
        .replace("  train: {steps: 6}", f"  checkpoint: {torch_ckpt}")
    )
    _one_line(capsys, main(["validate", str(_recipe(tmp_path, text))]), "teacher.reverse_checkpoint")


def _png_header_only(path: Path, w: int, h: int) -> None:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    )


def test_decompression_bomb_image_is_one_line(tmp_path, caplog):
    from PIL import Image

    from compressor.data import load_image, make_dataset
    from compressor.errors import DataError
    from compressor.recipe import DataSpec

    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, 20000, 20000)
    with pytest.raises(DataError, match="too large"):
        load_image(bomb)
    root = tmp_path / "d"
    (root / "train").mkdir(parents=True)
    shutil.copy(bomb, root / "train" / "bomb.png")
    Image.new("RGB", (64, 32)).save(root / "train" / "ok.png")
    ds = make_dataset(DataSpec(kind="paired", root=str(root), size=32), root, "train", 0)
    assert len(ds) == 1  # skipped with a warning
    with pytest.raises(DataError, match="bomb.png"):
        make_dataset(DataSpec(kind="paired", root=str(root), size=32, strict=True), root, "train", 0)


def test_file_where_the_run_folder_should_be(tmp_path, capsys):
    p = _recipe(tmp_path, tiny_recipe_text())
    out = tmp_path / "runs"
    out.mkdir()
    (out / "tiny").write_text("not a folder")
    _one_line(capsys, main(["run", str(p), "--out", str(out)]), "not a folder")
    assert (out / "tiny").read_text() == "not a folder"
    blocker = tmp_path / "file_out"
    blocker.write_text("x")
    _one_line(capsys, main(["run", str(p), "--out", str(blocker)]), str(blocker))
    assert blocker.read_text() == "x"


def test_report_on_rows_lacking_backend(tmp_path, capsys):
    doc = {"schema": "compressor.profile/1", "results": [{"model": "m", "batch": 1, "size": 64}]}
    f = tmp_path / "p.json"
    f.write_text(json.dumps(doc))
    _one_line(capsys, main(["report", str(f), "--out", str(tmp_path / "rep")]), "backend")
    f.write_text(json.dumps({"schema": "compressor.profile/1", "results": "nope"}))
    _one_line(capsys, main(["report", str(f), "--out", str(tmp_path / "rep")]), "results")
    assert not (tmp_path / "rep" / "report.md").exists()


def test_zoo_table_matches_the_models():
    """The recipe's data-only table of zoo parameters agrees with the real generators."""
    from compressor.models import GENERATOR_ARGS, ZOO, build_generator, size_multiple
    from compressor.recipe import ZOO_ARCHS, ZOO_KWARGS

    assert set(ZOO_ARCHS) == set(ZOO) and set(ZOO_KWARGS) == set(GENERATOR_ARGS)
    for arch, row in ZOO_ARCHS.items():
        assert size_multiple(build_generator(arch, ngf=2, init=None)) == row["size_multiple"], arch


# ------------------------------------------------------------------------------ 4. resume


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run trained up to distill, shared by the resume tests (each works on a copy)."""
    d = tmp_path_factory.mktemp("trained")
    p = d / "tiny.yaml"
    p.write_text(tiny_recipe_text())
    res = run_cli([p, "--out", d / "runs", "--only", "teacher,student,distill", "-q"])
    assert res.returncode == 0, res.stderr[-2000:]
    return p, d / "runs"


def test_resume_only_matching_checkpoints(trained, tmp_path):
    recipe, runs = trained
    out = tmp_path / "runs"
    shutil.copytree(runs, out)
    before = _tree_digest(out)
    for extra in (
        ["--set", "distill.lr=0.001"],
        ["--set", "distill.lr=0.001", "--resume"],
        ["--set", "student.width=0.25", "--resume"],
        ["--set", "distill.steps=9", "--resume"],
    ):
        res = run_cli([recipe, "--out", out, "--only", "distill", "-q"] + extra)
        _one_line_proc(res, "--force", "checkpoints")
        assert "--resume" not in res.stderr  # never the advice that trains 0 steps on old weights
    assert _tree_digest(out) == before
    # --force keeps the old checkpoints aside
    res = run_cli([recipe, "--out", out, "--only", "distill", "-q", "--force", "--set", "distill.steps=2"])
    assert res.returncode == 0, res.stderr[-2000:]
    aside = [p for p in (out / "tiny").iterdir() if p.name.startswith("checkpoints.old-")]
    assert len(aside) == 1 and (aside[0] / "step_00000006.pt").exists()


def test_changed_width_in_checkpoint_is_one_line(trained, tmp_path):
    """Even with a matching digest, a checkpoint of another shape is one line, not a state_dict traceback."""
    import torch

    from compressor.checkpoints import load_latest_checkpoint
    from compressor.errors import CheckpointError

    recipe, runs = trained
    state = load_latest_checkpoint(runs / "tiny" / "checkpoints")
    name = next(iter(state["students"]))
    key = next(iter(state["students"][name]))
    state["students"][name][key] = torch.zeros(1)
    from compressor.train import Trainer

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    torch.save(state, ckpts / f"step_{state['step']:08d}.pt")
    t = object.__new__(Trainer)  # only what fit() needs before it loads the checkpoint
    t.ckpt_dir = ckpts
    student = type("D", (), {"name": name, "student": torch.nn.Linear(1, 1), "disc": None})()
    t.s = type("S", (), {"directions": [student], "steps": 99})()
    with pytest.raises(CheckpointError, match="--force"):
        t.fit(resume=True)


def test_printed_resume_command_keeps_every_flag(monkeypatch, capsys, tmp_path):
    from compressor.app import cli, pipeline
    from compressor.errors import Interrupted

    p = _recipe(tmp_path, tiny_recipe_text())

    def interrupted(*a, **k):
        raise Interrupted("interrupted at step 3", pipeline.resume_command(None))

    monkeypatch.setattr(cli, "run_pipeline", interrupted)  # the function the command calls
    args = [
        "run",
        str(p),
        "--out",
        str(tmp_path / "o u t"),
        "--set",
        "distill.lr=0.001",
        "--only",
        "teacher,student,distill",
        "--device",
        "cpu",
        "--nproc",
        "1",
        "--force",
        "-q",
    ]
    assert main(args) == 130
    err = capsys.readouterr().err
    hint = [l for l in err.splitlines() if l.startswith("resume with: ")][0]
    for piece in (
        "--set distill.lr=0.001",
        "--only teacher,student,distill",
        "--device cpu",
        "--nproc 1",
        "'" + str(tmp_path / "o u t") + "'",
        "--resume",
    ):
        assert piece in hint, (piece, hint)
    assert "--force" not in hint


# ------------------------------------------------------------------------------ 5. one writer, no orphans


def _pids_with(needle: str) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = [l for l in (d / "status").read_text().splitlines() if l.startswith("State:")]
            except OSError:
                continue
            if needle in cmd and not (state and "Z" in state[0]):
                out.append(int(d.name))
    return out


def test_two_runs_on_one_folder(trained, tmp_path, capsys):
    recipe, runs = trained
    out = tmp_path / "runs"
    shutil.copytree(runs, out)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    a = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "compressor",
            str(recipe),
            "--out",
            str(out),
            "--only",
            "distill",
            "--force",
            "-q",
            "--set",
            "distill.steps=30",
            "--set",
            "distill.log_every=1",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lock = out / "tiny" / ".lock"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (lock.exists() and lock.read_text().strip()):
        time.sleep(0.1)
    assert lock.read_text().strip() == str(a.pid)
    t0 = time.monotonic()
    code = main([str(recipe), "--out", str(out), "--only", "distill", "--force", "-q"])
    assert time.monotonic() - t0 < 1.0
    _one_line(capsys, code, str(a.pid), "in use")
    _, err = a.communicate(timeout=300)
    assert a.returncode == 0, err[-2000:]
    steps = [json.loads(l)["step"] for l in (out / "tiny" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 31))


def test_sigkill_of_distributed_run_leaves_no_worker(trained, tmp_path):
    recipe, runs = trained
    out = tmp_path / "runs"
    shutil.copytree(runs, out)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "compressor",
            str(recipe),
            "--out",
            str(out),
            "--only",
            "distill",
            "--force",
            "--nproc",
            "2",
            "-q",
            "--set",
            "distill.steps=2000",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    needle = f"compressor.app.worker {out / 'tiny'}"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(_pids_with(needle)) < 2:
        time.sleep(0.2)
    assert len(_pids_with(needle)) >= 2, "workers never started"
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(5.0)
    alive = _pids_with(needle) + _pids_with(
        f"torch.distributed.run --standalone --nproc_per_node=2 -m compressor.app.worker {out / 'tiny'}"
    )
    for pid in alive:  # clean up before failing
        os.kill(pid, signal.SIGKILL)
    assert alive == []


def test_lock_is_released_by_the_kernel(tmp_path):
    from compressor.lock import RunLocked, run_lock

    code = (
        f"import sys, time; sys.path.insert(0, {str(ROOT)!r})\n"
        "from compressor.lock import run_lock\n"
        f"with run_lock({str(tmp_path / 'r')!r}):\n    print('held', flush=True); time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    with pytest.raises(RunLocked, match=str(child.pid)):
        with run_lock(tmp_path / "r"):
            pass
    child.kill()
    child.wait()
    with run_lock(tmp_path / "r"):  # a dead holder's lock is free
        pass


def test_profile_worker_dies_with_its_parent(tmp_path):
    """A worker started through procs.start_group dies when its parent is SIGKILLed."""
    worker = tmp_path / "worker.py"
    worker.write_text(
        f"import sys, time; sys.path.insert(0, {str(ROOT)!r})\n"
        "from compressor.procs import die_with_parent\ndie_with_parent()\ntime.sleep(120)\n"
    )
    code = (
        f"import sys, time; sys.path.insert(0, {str(ROOT)!r})\n"
        "from compressor.procs import start_group\n"
        f"p = start_group([sys.executable, {str(worker)!r}])\n"
        "print(p.pid, flush=True); time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
            if "Z" in [l for l in Path(f"/proc/{child}/status").read_text().splitlines() if l.startswith("State:")][0]:
                break
        except (ProcessLookupError, FileNotFoundError):
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the worker outlived its parent")


# ------------------------------------------------------------------------------ 6. smaller losses


def test_metrics_append_is_whole_lines_or_nothing(tmp_path, monkeypatch):
    from compressor import io as cio

    f = tmp_path / "metrics.jsonl"
    cio.append_line(f, json.dumps({"step": 1}))
    before = f.read_bytes()
    real = os.write

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cio.os, "write", full)
    with pytest.raises(cio.DiskWriteError, match="No space left"):
        cio.append_line(f, json.dumps({"step": 2}))
    assert f.read_bytes() == before

    def short(fd, data):
        return real(fd, data[: len(data) // 2])

    monkeypatch.setattr(cio.os, "write", short)
    with pytest.raises(cio.DiskWriteError, match="short write"):
        cio.append_line(f, json.dumps({"step": 2, "loss": 0.5}))
    assert f.read_bytes() == before


def test_sample_png_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
    import torch

    from compressor import io as cio
    from compressor.train import Trainer

    t = object.__new__(Trainer)
    t.samples_dir = tmp_path / "samples"
    t.step = 3
    t.device = torch.device("cpu")
    t.memory_format = torch.contiguous_format
    t.amp_dtype = None
    net = torch.nn.Conv2d(3, 3, 1)
    t.s = type(
        "S",
        (),
        {
            "sample_batch": {"input": torch.zeros(1, 3, 8, 8)},
            "directions": [type("D", (), {"src": "input", "tgt": "target", "student": net, "teacher": None})()],
        },
    )()
    assert t.write_samples().is_file()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cio.os, "fsync", full)
    t.step = 6
    with pytest.raises(UserError, match="No space left"):
        t.write_samples()
    assert sorted(p.name for p in t.samples_dir.iterdir()) == ["step_00000003.png"]
