"""The backend table: every row names a Runner that exists and answers the same interface."""

import subprocess
import sys

import pytest

from exporters.runtimes import BACKENDS, Backend, Runner, backend_available, get_backend, make_runner


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_row_names_a_runner(name):
    row = BACKENDS[name]
    assert row.name == name and row.precisions and row.device in row.all_devices()
    cls = row.load()
    assert issubclass(cls, Runner), f"{row.runner} is not a Runner"
    ok, why = backend_available(name)
    assert ok or why, f"{name}: unavailable without a reason"
    if not ok and row.requires and "not installed" in why:
        assert row.extra in why  # the install line travels with the reason
    for prec in row.precisions:
        kind = row.artifact_for(prec)
        assert kind == row.artifact or kind.startswith(f"{prec}-")


def test_reading_the_table_imports_no_runtime():
    code = (
        "import sys; import exporters.runtimes as r; r.backend_help(); "
        "print(sorted(m for m in ('torch', 'onnxruntime', 'openvino', 'tensorrt') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_and_plan_only_names():
    with pytest.raises(ValueError, match="--backend: unknown backend 'ort-gpu'; choose from .*ort-cpu"):
        get_backend("ort-gpu")
    with pytest.raises(ValueError, match="student.budget.backend: unknown backend 'trtexec-json'"):
        get_backend("trtexec-json", "student.budget.backend", plan=True)
    assert backend_available("nope") == (False, backend_available("nope")[1])
    assert "unknown backend" in backend_available("nope")[1]


def test_missing_module_is_reported_with_the_pip_line(monkeypatch):
    from exporters import runtimes

    row = Backend("fake-rt", "exporters.runtimes:OrtRunner", "onnx", "cpu", ("fp32",), ("no_such_mod_xyz",), "pip x")
    monkeypatch.setitem(runtimes.BACKENDS, "fake-rt", row)
    assert backend_available("fake-rt") == (False, "no_such_mod_xyz is not installed: pip x")


def test_ort_runner_from_the_table(tmp_path):
    import numpy as np
    import torch

    from exporters.onnx import export_onnx

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.Tanh()).eval()
    path = tmp_path / "m.onnx"
    export_onnx(net, path, torch.zeros(1, 3, 16, 16))
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)
    ort = make_runner("ort-cpu", path, threads=1)
    ref = make_runner("torch", lambda: net, threads=1)
    assert ort.backend == "ort-cpu" and ref.backend == "torch"
    assert np.abs(ort(x) - ref(x)).max() < 1e-4
    assert ort.time_once(x) > 0
