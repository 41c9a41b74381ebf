"""The backend table: every row names a Runner that exists and answers the same interface."""

import json
import subprocess
import sys

import pytest

from compressor.exporters.rows import Backend, Runner
from compressor.exporters.table import BACKENDS, backend_available, get_backend, make_runner


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


def test_a_timing_worker_imports_no_runtime_but_its_own():
    """The timing worker gets its backend's row as data and imports only that row's Runner module: an ONNX Runtime
    measurement never loads torch (their thread pools interfere when they share a process)."""
    row = BACKENDS["ort-cpu"].to_data()
    code = (
        "import sys, json; from compressor.exporters import timing; from compressor.exporters.rows import Backend; "
        f"Backend.from_data(json.loads({json.dumps(json.dumps(row))})).load(); "
        "print(sorted(m for m in ('torch', 'onnxruntime', 'openvino', 'tensorrt', 'onnx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert Backend.from_data(row) == BACKENDS["ort-cpu"]  # the row travels whole


def test_unknown_and_plan_only_names():
    with pytest.raises(ValueError, match="--backend: unknown backend 'ort-gpu'; choose from .*ort-cpu"):
        get_backend("ort-gpu")
    with pytest.raises(ValueError, match="student.budget.backend: unknown backend 'trtexec-json'"):
        get_backend("trtexec-json", "student.budget.backend", plan=True)
    assert backend_available("nope") == (False, backend_available("nope")[1])
    assert "unknown backend" in backend_available("nope")[1]


def test_missing_module_is_reported_with_the_pip_line(monkeypatch):
    from compressor.exporters import table

    row = Backend(
        "fake-rt", "compressor.exporters.runtimes:OrtRunner", "onnx", "cpu", ("fp32",), ("no_such_mod_xyz",), "pip x"
    )
    monkeypatch.setitem(table.BACKENDS, "fake-rt", row)
    assert backend_available("fake-rt") == (False, "no_such_mod_xyz is not installed: pip x")


def test_ort_and_torch_runners_from_the_table(tmp_path):
    import numpy as np
    import onnx
    import torch
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Tanh", ["input"], ["output"])],
        "tanh",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3, 8, 8])],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 8, 8)).astype(np.float32)
    ort = make_runner("ort-cpu", path, threads=1)
    ref = make_runner("torch", lambda: torch.nn.Tanh(), threads=1)
    assert ort.backend == "ort-cpu" and ref.backend == "torch" and ort.device == "cpu"
    assert np.abs(ort(x) - np.tanh(x)).max() < 1e-6 and np.abs(ref(x) - np.tanh(x)).max() < 1e-6
    assert ort.time_once(x) > 0


def test_budget_backends_come_from_the_table():
    from compressor.app.plan import ProfileMeasure
    from compressor.errors import UserError
    from compressor.recipe import BudgetSpec

    ProfileMeasure(BudgetSpec(latency_ms=5, backend="ort-cpu"), 32)  # available everywhere
    with pytest.raises(UserError, match="student.budget.backend: unknown backend 'nope'"):
        ProfileMeasure(BudgetSpec(latency_ms=5, backend="nope"), 32)
    ProfileMeasure(BudgetSpec(latency_ms=5, backend="ort-cpu", precision="int8"), 32)  # quantised by the plan
    with pytest.raises(UserError, match="fp16 in torch needs CUDA"):
        if torch_cuda():
            raise UserError("fp16 in torch needs CUDA (skipped: CUDA is present)")
        ProfileMeasure(BudgetSpec(latency_ms=5, backend="torch", precision="fp16"), 32)
    if backend_available("openvino")[0]:
        ProfileMeasure(BudgetSpec(latency_ms=5, backend="openvino"), 32)


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
