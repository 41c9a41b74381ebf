"""The README's Python example, run as a user's script: its own loop with the SRP module, then export and
benchmark; and the names the public API hands on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## From Python, with your own training loop", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_example_runs_as_a_script(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(_readme_example())
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "{'student.onnx': 'passed'}", lines
    assert "('torch', 'fp32', 'passed')" in lines[1] and "('onnx', 'fp32', 'passed')" in lines[1], lines
    record = json.loads((tmp_path / "out/export/export.json").read_text())["files"]["student.onnx"]
    assert record["format"] == "onnx" and record["status"] == "passed" and record["parity"]["max_abs"] < 1e-3
    assert (tmp_path / "out/student/student.json").is_file()
    rows = json.loads((tmp_path / "out/student/benchmark.json").read_text())["rows"]
    assert [r["format"] for r in rows if r["status"] == "passed"] == ["torch", "onnx"]


def test_the_public_names_and_the_distill_loop():
    import compressor
    from compressor import SRPLoss, distill, make_student
    from compressor.models import build_generator

    assert set(compressor.API) <= set(dir(compressor.app.api))
    torch.manual_seed(0)
    teacher = build_generator("resnet_6blocks", ngf=8, norm="instance").eval()
    student, _ = make_student(teacher, width=0.5)
    images = [torch.rand(1, 3, 32, 32) * 2 - 1 for _ in range(2)]
    history = distill(teacher, student, images, steps=3, layers=["encoder"])
    assert [h["step"] for h in history] == [0, 1, 2] and all(h["srp"] >= 0 for h in history)
    srp = SRPLoss(teacher, student, layers=["encoder"])
    assert list(srp.parameters()) == []  # neither network is the loss's own
    try:
        srp()
        raise AssertionError("SRPLoss ran without features")
    except RuntimeError as exc:
        assert "run the teacher and the student first" in str(exc)
    with torch.no_grad():
        teacher(images[0]), student(images[0])
    assert srp().item() >= 0
    srp.remove()
