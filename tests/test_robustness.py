"""Drive the CLI as a user would, with bad input and interruptions: every case gets a clear answer."""

import errno
import os
import re

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, one_error_line, run_cli, tiny_recipe_text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from compressor.app.cli import main
from compressor.errors import UserError


def _one_line_error(res, *needles):
    return one_error_line(res.stderr, res.returncode, *needles)


def _write(tmp_path, text, name="r.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_yaml_syntax_error(tmp_path):
    p = _write(tmp_path, "name: x\nstudent: {width: 0.5\n")
    line = _one_line_error(run_cli(["validate", p]), "YAML syntax error")
    assert re.search(re.escape(str(p)) + r":\d+:", line)


@pytest.mark.parametrize(
    "old, new, key",
    [
        ("student: {width: 0.5}", "student: {width: 0.5, colour: red}", "student.colour"),
        ("student: {width: 0.5}", "student: {width: [1]}", "student.width"),
        ("student: {width: 0.5}", "student: {width: 1.7}", "student.width"),
        ("student: {width: 0.5}", "student: {width: 0}", "student.width"),
        ("steps: 6\n  checkpoint_every", "steps: -3\n  checkpoint_every", "distill.steps"),
    ],
)
def test_schema_errors_name_the_key(tmp_path, old, new, key):
    p = _write(tmp_path, tiny_recipe_text().replace(old, new, 1))
    _one_line_error(run_cli(["validate", p]), key)


def test_data_root_problems_fail_before_any_model(tmp_path):
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    notimg = tmp_path / "notimg"
    (notimg / "train").mkdir(parents=True)
    (notimg / "train" / "readme.txt").write_text("hi")
    for root, needle in ((tmp_path / "missing", "folder not found"), (empty, "no images"), (notimg, "no images")):
        p = _write(tmp_path, tiny_recipe_text().replace("kind: synthetic,", f"kind: paired, root: {root},"))
        _one_line_error(run_cli([p, "--out", tmp_path / "runs"]), "data.root", needle)
        assert not (tmp_path / "runs").exists()  # nothing was built


def _images(folder, n=4, size=(80, 40)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{i}.png")


def test_corrupt_image_skipped_or_fatal_when_strict(tmp_path, caplog):
    from compressor.data import PairedDataset
    from compressor.errors import DataError

    _images(tmp_path / "train")
    good = (tmp_path / "train" / "0.png").read_bytes()
    (tmp_path / "train" / "9_truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "train" / "8_garbage.jpg").write_bytes(b"not an image at all")
    ds = PairedDataset(tmp_path / "train", size=32)
    assert len(ds) == 4 and len(ds.skipped) == 2
    assert "skipped 2 unreadable image(s) of 6" in caplog.text
    with pytest.raises(DataError, match="unreadable image"):
        PairedDataset(tmp_path / "train", size=32, strict=True)
    # the same through the CLI with data.strict: true
    p = _write(
        tmp_path, tiny_recipe_text().replace("kind: synthetic,", f"kind: paired, root: {tmp_path}, strict: true,")
    )
    _one_line_error(run_cli([p, "--out", tmp_path / "runs", "--only", "teacher"]), "unreadable image")


def test_mixed_sizes_and_modes_are_converted(tmp_path):
    from compressor.data import FolderDataset, load_image

    d = tmp_path / "imgs"
    d.mkdir()
    Image.new("L", (50, 30), 128).save(d / "gray.png")
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 0))  # fully transparent red -> white background
    rgba.save(d / "rgba.png")
    Image.fromarray(np.full((16, 16), 65535, dtype=np.uint16)).save(d / "deep16.png")
    Image.new("P", (10, 12)).save(d / "palette.png")
    Image.new("CMYK", (24, 24), (0, 0, 0, 0)).save(d / "cmyk.jpg")
    for f in d.iterdir():
        assert load_image(f).mode == "RGB", f
    assert np.asarray(load_image(d / "deep16.png")).min() == 255  # 16-bit scaled to 8-bit, not clipped to noise
    assert np.asarray(load_image(d / "rgba.png")).min() == 255
    ds = FolderDataset(d, size=32, train=False)
    for i in range(len(ds)):
        x = ds[i]["input"]
        assert x.shape == (3, 32, 32) and x.min() >= -1 and x.max() <= 1


def _ckpt_recipe(tmp_path, ckpt, extra_teacher=""):
    text = tiny_recipe_text().replace("  train: {steps: 6}\n", f"  checkpoint: {ckpt}\n{extra_teacher}")
    return _write(tmp_path, text)


def test_teacher_checkpoint_problems(tmp_path):
    import reference_networks as ref

    from compressor.models import build_generator

    model = build_generator("resnet_6blocks", ngf=8, norm="instance")
    torch.save(ref.define_G(3, 3, 8, "resnet_6blocks", norm="instance"), tmp_path / "pickled.pth")
    torch.save(model.state_dict(), tmp_path / "good.pth")
    (tmp_path / "corrupt.pth").write_bytes((tmp_path / "good.pth").read_bytes()[:500])
    torch.save(build_generator("unet_128", ngf=8).state_dict(), tmp_path / "unet.pth")
    cases = [
        ("pickled.pth", "--trust-checkpoint"),
        ("corrupt.pth", "corrupt"),
        ("unet.pth", "does not match"),
        ("missing.pth", "file not found"),
    ]
    for name, needle in cases:
        p = _ckpt_recipe(tmp_path, tmp_path / name)
        _one_line_error(
            run_cli([p, "--out", tmp_path / f"runs_{name}", "--only", "teacher"]), "teacher.checkpoint", needle
        )
    p = _ckpt_recipe(tmp_path, tmp_path / "pickled.pth")
    res = run_cli([p, "--out", tmp_path / "runs_untrusted_import", "--only", "teacher", "--trust-checkpoint"])
    _one_line_error(res, "cannot be imported here")
    res = run_cli(
        [p, "--out", tmp_path / "runs_trusted", "--only", "teacher", "--trust-checkpoint", "--quiet"],
        env={"PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"},
    )
    assert res.returncode == 0, res.stderr


def test_teacher_import_problems(tmp_path):
    (tmp_path / "nets.py").write_text("import torch.nn as nn\ndef make():\n    return nn.Conv2d(3, 3, 1)\n")
    for path, needle in (
        ("no_such_pkg.nets:make", "no module named"),
        ("nets.py:missing", "no attribute"),
        ("gone.py:make", "file not found"),
    ):
        text = tiny_recipe_text().replace(
            "arch: resnet_6blocks\n  kwargs: {ngf: 8, norm: instance}\n  train: {steps: 6}", f"import: {path}"
        )
        p = _write(tmp_path, text)
        _one_line_error(run_cli([p, "--out", tmp_path / "runs", "--only", "teacher"]), "teacher.import", needle)


def test_run_dir_of_another_recipe_refused(tmp_path, tiny_recipe):
    out = tmp_path / "runs"
    assert run_cli([tiny_recipe, "--out", out, "--only", "teacher", "--quiet"]).returncode == 0
    other = _write(tmp_path, tiny_recipe_text(), "other.yaml")
    _one_line_error(run_cli([other, "--out", out, "--only", "teacher"]), "different recipe", "--force")
    assert run_cli([other, "--out", out, "--only", "teacher", "--force", "--quiet"]).returncode == 0
    assert any(p.name.startswith("tiny.old-") for p in out.iterdir())


def test_kill_while_writing_checkpoint_keeps_previous(tmp_path, monkeypatch):
    from compressor import io as cio
    from compressor.checkpoints import load_latest_checkpoint

    folder = tmp_path / "checkpoints"
    cio.atomic_torch_save({"step": 5, "w": torch.ones(3)}, folder / "step_00000005.pt")

    def killed(*a, **k):
        raise KeyboardInterrupt  # the process dies between writing the temporary file and the rename

    monkeypatch.setattr(cio.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        cio.atomic_torch_save({"step": 10, "w": torch.zeros(3)}, folder / "step_00000010.pt")
    monkeypatch.undo()
    assert not (folder / "step_00000010.pt").exists()
    state = load_latest_checkpoint(folder)
    assert state["step"] == 5 and torch.equal(state["w"], torch.ones(3))


def test_disk_full_is_a_clear_error_and_keeps_earlier_artifacts(tmp_path, monkeypatch):
    from compressor import io as cio

    target = tmp_path / "eval.json"
    cio.atomic_write_json(target, {"ok": 1})

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cio.os, "fsync", full)
    with pytest.raises(UserError, match="No space left on device"):
        cio.atomic_write_json(target, {"ok": 2})
    assert target.read_text().strip().endswith("}") and '"ok": 1' in target.read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_disk_full_during_a_stage_via_cli(tmp_path, tiny_recipe):
    """A real full filesystem is simulated with a sitecustomize that fails writes of eval.json."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import errno, os\n"
        "import compressor.io as cio\n"
        "_orig = cio.atomic_write_bytes.__wrapped__ if hasattr(cio.atomic_write_bytes, '__wrapped__') else None\n"
        "_fsync = os.fsync\n"
        "def fsync(fd):\n"
        "    name = os.readlink(f'/proc/self/fd/{fd}')\n"
        "    if 'eval.json' in name:\n"
        "        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
        "    return _fsync(fd)\n"
        "os.fsync = fsync\n"
    )
    out = tmp_path / "runs"
    res = run_cli(
        [tiny_recipe, "--out", out, "--only", "teacher,student,distill,evaluate", "--quiet"],
        env={"PYTHONPATH": f"{site}{os.pathsep}{ROOT}"},
    )
    _one_line_error(res, "eval.json", "No space left on device")
    assert (out / "tiny" / "student.safetensors").exists()  # earlier artifacts intact
    assert not (out / "tiny" / "eval.json").exists()


def test_parity_failure_marks_export_and_blocks_later_use(tmp_path, tiny_recipe):
    out = tmp_path / "runs"
    res = run_cli([tiny_recipe, "--out", out, "--set", "export.onnx.parity_tol=1e-15", "--quiet"])
    _one_line_error(res, "differs from PyTorch")
    assert (out / "tiny" / "student.onnx.failed").exists()
    res = run_cli([tiny_recipe, "--out", out, "--only", "profile", "--quiet"])
    assert res.returncode == 2 and "export" in res.stderr


def test_missing_backend_names_the_extra(tmp_path):
    res = run_cli(
        [
            "profile",
            "resnet_6blocks:ngf=4,norm=instance",
            "--backend",
            "tensorrt",
            "--size",
            "32",
            "--out",
            tmp_path / "p.json",
            "--quiet",
        ]
    )
    assert res.returncode == 0
    assert "compressor[trt]" in res.stdout or "CUDA" in res.stdout


def test_weights_only_everywhere():
    """No pickle loading and no unsafe YAML anywhere in the code (a walk of the files, not of git's index, so it
    also checks an unpacked source tree)."""
    files = [p for d in ("compressor", "tools") for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 20
    for pattern in (r"weights_only *= *False", r"yaml\.load\("):
        hits = [
            f"{p}:{i}"
            for p in files
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if re.search(pattern, line)
        ]
        assert hits == [], (pattern, hits)


_keys = st.sampled_from(
    [
        "name",
        "seed",
        "device",
        "data",
        "teacher",
        "student",
        "distill",
        "evaluate",
        "export",
        "profile",
        "width",
        "kind",
        "root",
        "arch",
        "steps",
        "losses",
        "srp",
        "layers",
        "import",
        "zzz",
        "size",
    ]
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["synthetic", "unet_256", "auto", "paired", "0.5"]),
)
_docs = st.recursive(
    _scalars,
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(_keys, children, max_size=5)),
    max_leaves=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.one_of(_docs, st.dictionaries(_keys, _docs, max_size=8)))
def test_fuzz_validate_never_shows_a_traceback(tmp_path, doc, capsys):
    p = tmp_path / "fuzz.yaml"
    try:
        p.write_text(yaml.safe_dump(doc))
    except Exception:
        p.write_text(str(doc))
    code = main(["validate", str(p)])  # raises if an exception escapes
    assert code in (0, 2)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if code == 2:
        assert err.startswith("error: ") and len([l for l in err.splitlines() if l.strip()]) == 1


# Hostile recipes: aliases (incl. alias bombs), deep nesting, huge numbers, arbitrary unicode and raw bytes.
_ALIAS_DOCS = st.builds(
    lambda width, depth, key: (
        "a0: &a0 ["
        + ", ".join(["x"] * width)
        + "]\n"
        + "".join(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]\n" for i in range(1, depth))
        + f"{key}: *a{depth - 1}\n"
    ),
    st.integers(1, 12),
    st.integers(1, 12),
    st.sampled_from(["name", "teacher", "distill", "zzz"]),
)
_DEEP_DOCS = st.builds(
    lambda n, o, c: o * n + c * min(n, 3),
    st.integers(1, 3000),
    st.sampled_from(["[", "{", "- ", "a: {"]),
    st.sampled_from(["]", "}", ""]),
)
_NUMBER_DOCS = st.builds(
    lambda key, digits, kind: (
        f"name: x\n{key}: "
        + {
            "int": "9" * digits,
            "neg": "-" + "7" * digits,
            "float": "1." + "5" * digits + "e" + str(digits),
            "hex": "0x" + "f" * digits,
        }[kind]
        + "\n"
    ),
    st.sampled_from(["seed", "name", "distill", "zzz"]),
    st.integers(1, 6000),
    st.sampled_from(["int", "neg", "float", "hex"]),
)
_SPLICE = st.builds(
    lambda head, junk: tiny_recipe_text()[:head] + junk, st.integers(0, len(tiny_recipe_text())), st.text(max_size=40)
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(doc=st.one_of(_ALIAS_DOCS, _DEEP_DOCS, _NUMBER_DOCS, _SPLICE, st.text(max_size=200), st.binary(max_size=200)))
def test_fuzz_validate_hostile_yaml_never_shows_a_traceback(tmp_path, doc, capsys):
    p = tmp_path / "hostile.yaml"
    p.write_bytes(doc if isinstance(doc, bytes) else doc.encode("utf-8", "surrogatepass"))
    code = main(["validate", str(p)])  # raises if an exception escapes
    assert code in (0, 2)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if code == 2:
        assert err.startswith("error: ") and len([l for l in err.splitlines() if l.strip()]) == 1, err
