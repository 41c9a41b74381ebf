"""Per-layer widths: students with a width per channel group, the latency table, the search under a budget."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from compressor.app.commands import student_built
from compressor.app.layerwise import conv_layers, levels, load_table, plan_layers
from compressor.errors import UserError
from compressor.exporters.profile import time_artifacts
from compressor.models import build_generator
from compressor.recipe import BudgetSpec, StudentSpec
from compressor.slim import load_student, make_student, prunable_groups, save_student

SPEC = {"input_nc": 3, "output_nc": 3, "ngf": 8}


def _teacher(arch: str = "resnet_6blocks"):
    t = build_generator(arch, **SPEC)
    t.compressor_spec = {"arch": arch, "kwargs": dict(SPEC)}
    return t.eval()


@pytest.mark.parametrize("arch,size", [("resnet_6blocks", 32), ("unet_128", 128)])
def test_a_student_keeps_the_channels_asked_per_group_and_replays(arch, size, tmp_path):
    torch.manual_seed(0)
    t = _teacher(arch)
    x = torch.randn(1, 3, size, size)
    groups = prunable_groups(t, x)
    assert groups and all(len(g.importance) == g.channels for g in groups)
    assert all(abs(sum(g.importance) - g.channels) < 1e-3 * g.channels for g in groups)  # mean 1 per group
    if arch == "resnet_6blocks":  # the residual chain is one group: every block's second conv and the down conv
        assert max(len(g.outs) for g in groups) == 7
    else:  # a U-Net skip: an encoder layer feeds its decoder twin too
        assert any(len(g.ins) > 1 for g in groups)
    rng = np.random.default_rng(0)
    counts = {g.name: int(rng.choice(levels(g.channels))) for g in groups}
    student, plan = make_student(t, 1.0, "auto", "inherit", x, widths=counts)
    assert plan["method"] == "prune" and plan["widths"] == counts
    for g in groups:
        for name in g.outs:
            m = student.get_submodule(name)
            assert (m.out_channels if hasattr(m, "out_channels") else m.out_features) == counts[g.name], name
    save_student(student, plan, tmp_path / "s")
    again = load_student(tmp_path / "s")
    with torch.no_grad():
        assert torch.allclose(student.eval()(x), again(x), atol=1e-5)
    assert "per-layer widths" in student_built(plan)
    with pytest.raises(Exception, match="not a prunable group"):
        make_student(t, 1.0, "prune", "inherit", x, widths={"nope": 2})


def test_levels_are_eighths_rounded_and_never_empty():
    assert levels(64) == [8, 16, 24, 32, 40, 48, 56, 64]
    assert levels(64, 16) == [16, 32, 48, 64]
    assert levels(3) == [1, 2, 3]


def test_a_uniform_width_under_round_channels_is_the_student_that_width_builds(tmp_path):
    """The search's uniform width k/8 is the network ``student.width: k/8`` builds, also where
    ``student.round_channels`` makes several widths one network (measured once, and a check on another network)."""
    from compressor.app.layerwise import Search

    spec = {**SPEC, "ngf": 32}
    t = build_generator("resnet_6blocks", **spec)
    t.compressor_spec = {"arch": "resnet_6blocks", "kwargs": spec}
    x = torch.zeros(1, 3, 32, 32)
    groups = prunable_groups(t.eval(), x)
    search = Search(groups, lambda c: 0.0, 16)
    for k in range(3, 8):  # from width 1/2: 16 of the 32-channel group's channels
        student, _ = make_student(t, (k + 1) / 8, "prune", "inherit", x, round_to=16)
        built = {g.name: student.get_submodule(g.name).out_channels for g in groups}
        assert search.uniform(k) == built, (k + 1) / 8
    assert all(search.uniform(4)[g.name] == 16 for g in groups if g.channels == 32)  # 5/8 of 32 rounds down
    spec = {**SPEC, "ngf": 16}  # groups of 16, 32 and 64 channels: 4 networks at the 8 widths
    t = build_generator("resnet_6blocks", **spec)
    t.compressor_spec = {"arch": "resnet_6blocks", "kwargs": spec}
    search = Search(prunable_groups(t.eval(), x), lambda c: 0.0, 16)
    latency, measure, calls = _fake_target(t, 32)
    budget = BudgetSpec(latency_ms=latency({}) * 0.5)
    doc = plan_layers(t, budget, size=32, round_to=16, run_dir=tmp_path, measure=measure, fingerprint={"m": 1})
    table = json.loads((tmp_path / "latency_table.json").read_text())
    (net,) = table["networks"].values()
    distinct = {tuple(sorted(search.uniform(k).items())) for k in range(8)}
    assert calls[0] == len(distinct) == 4  # one measurement per network
    assert len(net["uniform"]) == 8  # every width has its row
    widths = [c["width"] for c in doc["per_layer"]["table"]["checks"]]
    configs = [tuple(sorted(search.uniform(round(w * 8) - 1).items())) for w in widths]
    ref = doc["per_layer"]["table"]["reference"]["level"] - 1
    assert len(set(configs)) == len(configs) and tuple(sorted(search.uniform(ref).items())) not in configs


def _fake_target(teacher, size, per_gmac=20.0, per_melem=0.05, base=0.01, noise=0.0):
    """A target whose latency is the convolutions' MACs plus the activations they write: bilinear in the widths,
    as a CPU's is to first order."""
    x = torch.zeros(1, 3, size, size)
    layers = conv_layers(teacher, prunable_groups(teacher, x), x)
    rng = np.random.default_rng(1)
    calls = []

    def latency(config: dict) -> float:
        macs = sum(la.macs(config.get(la.gin, la.cin), config.get(la.gout, la.cout)) for la in layers)
        elem = sum(config.get(la.gout, la.cout) * la.out_hw[0] * la.out_hw[1] for la in layers)
        return base + per_gmac * macs / 1e9 + per_melem * elem / 1e6

    def measure(configs, iters):
        calls.append(len(configs))
        out = []
        for _, c in configs:
            t = latency(c) * (1 + noise * rng.standard_normal())
            out.append({"p50": t, "p90": t * 1.05})
        return out

    return latency, measure, calls


def test_the_search_meets_the_budget_and_keeps_more_than_uniform(tmp_path):
    t = _teacher()
    size = 64
    latency, measure, calls = _fake_target(t, size)
    full = latency({})
    budget = BudgetSpec(latency_ms=full * 0.3)
    doc = plan_layers(t, budget, size=size, margin=0.05, run_dir=tmp_path, measure=measure, fingerprint={"m": 1})
    pl = doc["per_layer"]
    target = budget.latency_ms * 0.95
    assert latency(doc["widths"]) <= target
    # the table is exact on a bilinear target (one-at-a-time changes plus the fitted cross term)
    assert pl["table"]["worst_error"] < 0.01
    within = [u for u in pl["uniform_measured"] if u["p50"] <= target]
    assert within and pl["chosen"]["retained"] >= max(u["retained"] for u in within)
    assert pl["chosen"]["measured"]["p50"] <= target
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert saved["search"] == "per-layer" and saved["widths"] == doc["widths"]
    assert (tmp_path / "latency_table.json").is_file() and (tmp_path / "plan_layers.png").is_file()
    n = sum(calls)
    again = plan_layers(t, budget, size=size, margin=0.05, run_dir=tmp_path, measure=measure, fingerprint={"m": 1})
    assert again["cached"] and sum(calls) == n  # the same teacher, budget and machine: nothing measured again
    # a new budget on the same machine reuses the table's uniform widths
    plan_layers(
        t, BudgetSpec(latency_ms=full * 0.5), size=size, run_dir=tmp_path, measure=measure, fingerprint={"m": 1}
    )
    assert sum(calls) > n


def test_a_noisy_target_still_gets_a_student_within_the_budget(tmp_path):
    t = _teacher()
    latency, measure, _ = _fake_target(t, 64, noise=0.03)
    budget = BudgetSpec(latency_ms=latency({}) * 0.4)
    doc = plan_layers(t, budget, size=64, run_dir=tmp_path, measure=measure, fingerprint={"m": 1})
    assert doc["per_layer"]["chosen"]["measured"]["p50"] <= budget.latency_ms * 0.95


def test_a_uniform_width_that_keeps_more_within_the_target_wins():
    """Measured latency is not monotone along the path (blocked kernels): the bisection can land on a mixed step
    that keeps less of the teacher than a uniform width measured within the target. The uniform one is then chosen,
    after its own confirmation; never when it keeps less, or when the confirmation misses. Between the widest eighth
    within the target and the next, the widest uniform width measured within it is found (64ths, bisected)."""
    from compressor.app.layerwise import Search, _uniform_keeps_more

    t = _teacher()
    groups = prunable_groups(t, torch.zeros(1, 3, 64, 64))
    search = Search(groups, lambda c: 0.0, None)
    uniform = [{"p50": 1.0 + k, "p90": 1.1 + k} for k in range(8)]  # levels 1-4 within a 4.5 ms target
    thin = {g.name: levels(g.channels)[1] if i % 2 else levels(g.channels)[4] for i, g in enumerate(groups)}
    assert search.retained(thin) < search.retained(search.uniform(3))
    seen = []
    total = sum(g.channels for g in groups)

    def measure(config, iters):  # 1 ms per eighth of the channels kept, as the uniform rows say
        seen.append((config, iters))
        t = 8 * sum(config.values()) / total
        return {"p50": t, "p90": t * 1.05}

    (width, widths, m), tried = _uniform_keeps_more(search, uniform, 4.5, "p50", thin, measure, 10, 30)
    assert (
        0.5 < width < 0.625 and widths == search.uniform_at(width) and m["p50"] <= 4.5 < measure(widths, 1)["p50"] + 0.2
    )
    assert search.retained(widths) > search.retained(search.uniform(3))
    assert tried and all(u["level"] is None for u in tried) and seen[-2] == (widths, 30)
    wide = {g.name: g.channels for g in groups}  # keeps more than any uniform within the target: kept
    assert _uniform_keeps_more(search, uniform, 4.5, "p50", wide, measure, 10, 30) == (None, [])
    slow = lambda config, iters: {"p50": 9.0, "p90": 9.5}  # noqa: E731 - every measurement misses
    assert _uniform_keeps_more(search, uniform, 4.5, "p50", thin, slow, 10, 30)[0] is None
    assert _uniform_keeps_more(search, uniform, 0.5, "p50", thin, measure, 10, 30) == (None, [])  # none within


def test_the_table_predicts_a_count_between_its_measured_ones():
    from compressor.app.layerwise import _between

    by_count = {8: 2.0, 24: 6.0, 32: 9.0}  # the reference (16 channels) at 4.0
    assert _between(by_count, 24, 16, 4.0) == 6.0
    assert _between(by_count, 20, 16, 4.0) == pytest.approx(5.0)
    assert _between(by_count, 28, 16, 4.0) == pytest.approx(7.5)
    assert _between(by_count, 40, 16, 4.0) == 9.0 and _between(by_count, 4, 16, 4.0) == 2.0


def test_a_uniform_width_that_wins_is_widened_into_the_room_the_target_leaves():
    """Where a uniform width wins with time to spare, the groups that gain most step back up while they measure
    within the target (the widest such step, confirmed): more of the teacher, never over the target."""
    from compressor.app.layerwise import Search, _grow

    t = _teacher()
    x = torch.zeros(1, 3, 64, 64)
    latency, _, _ = _fake_target(t, 64)
    search = Search(prunable_groups(t, x), latency, None)
    start = search.uniform(3)
    start_ms = {"p50": latency(start)}
    seen = []

    def measure(configs, iters):
        seen.append(iters)
        return [{"p50": latency(c) * 1.2} for _, c in configs]  # the table predicts 20% low

    target = start_ms["p50"] * 1.3
    (config, m), probes = _grow(search, start, start_ms, target, "p50", measure, 10, 30)
    assert m["p50"] <= target and m["p50"] == pytest.approx(latency(config) * 1.2)
    assert search.retained(config) > search.retained(start) and config != start
    assert all(config[g] >= start[g] for g in start)  # only steps up
    assert seen[-1] == 30 and probes and all(p["grown"] for p in probes)
    assert _grow(search, start, start_ms, start_ms["p50"], "p50", measure, 10, 30)[0] is None  # no room: none
    assert _grow(search, start, start_ms, target, "p50", lambda c, n: [{"p50": 1e9}], 10, 30)[0] is None


def test_a_stepped_target_gets_the_room_it_leaves_spent(tmp_path, capsys):
    """A runtime whose time jumps at channel counts off its blocking (as ONNX Runtime's and OpenVINO's do): the
    widths chosen on the path leave room under the target, and the plan widens them into it, still within."""
    spec = {**SPEC, "ngf": 16}
    t = build_generator("resnet_6blocks", **spec).eval()
    t.compressor_spec = {"arch": "resnet_6blocks", "kwargs": spec}
    latency, _, _ = _fake_target(t, 32)

    def stepped(c: dict) -> float:
        return latency(c) + sum(0.2 for v in c.values() if v % 8)

    def measure(configs, iters):
        return [{"p50": stepped(c), "p90": stepped(c) * 1.05} for _, c in configs]

    budget = BudgetSpec(latency_ms=latency({}) * 0.5)
    doc = plan_layers(t, budget, size=32, run_dir=tmp_path, measure=measure, fingerprint={"m": 1})
    pl = doc["per_layer"]
    ch = pl["chosen"]
    assert ch["grown"] and ch["measured"]["p50"] <= pl["target"] and stepped(pl["widths"]) <= pl["target"]
    assert ch["retained"] > pl["tried"][ch["step"]]["retained"]  # more than the path's own choice
    within = [u["retained"] for u in pl["uniform_measured"] if u["p50"] <= pl["target"]]
    assert ch["retained"] >= max(within)
    assert any(p.get("grown") for p in pl["probes"])
    from compressor.app.cli import _print_per_layer

    _print_per_layer(doc)
    assert "per-layer widths chosen" in capsys.readouterr().out
    ch.update(step=None, grown_from=0.375)  # a uniform width chosen, then widened: not called uniform
    _print_per_layer(doc)
    said = capsys.readouterr().out
    assert "uniform width 0.375, which kept more" in said and "chosen: it keeps more" not in said


def test_the_plan_key_follows_the_teachers_weights(tmp_path):
    """Importance ranks the teacher's weights: other weights, another plan (never a cached one)."""
    t = _teacher()
    budget = BudgetSpec(macs=2e7)
    a = plan_layers(t, budget, size=32, run_dir=tmp_path)
    with torch.no_grad():
        next(t.parameters()).mul_(3.0)
    b = plan_layers(t, budget, size=32, run_dir=tmp_path)
    assert a["key"] != b["key"] and not b["cached"]


def test_sensitivity_ranks_across_groups_and_keys_its_plan(tmp_path):
    """``student.importance: sensitivity``: the plan says which importance ranked, its key follows the images (no
    cached magnitude plan answers it), and the widths differ from the magnitude's where the output says so."""
    t = _teacher()
    budget = BudgetSpec(macs=2e7)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    mag = plan_layers(t, budget, size=32, run_dir=tmp_path)
    sens = plan_layers(t, budget, size=32, run_dir=tmp_path, images=images)
    assert mag["per_layer"]["importance"] == "magnitude" and sens["per_layer"]["importance"] == "sensitivity"
    assert sens["key"] != mag["key"] and not sens["cached"]
    assert plan_layers(t, budget, size=32, run_dir=tmp_path, images=images)["cached"]
    other = plan_layers(t, budget, size=32, run_dir=tmp_path, images=images.flip(0) * 0.5)
    assert other["key"] != sens["key"]
    assert sens["per_layer"]["chosen"]["macs"] <= budget.macs
    meas = plan_layers(t, budget, size=32, run_dir=tmp_path, images=images, measured=True)
    assert meas["per_layer"]["importance"] == "measured" and meas["key"] != sens["key"] and not meas["cached"]
    assert meas["per_layer"]["chosen"]["macs"] <= budget.macs


def test_a_budget_no_width_meets_is_one_line(tmp_path):
    t = _teacher()
    latency, measure, _ = _fake_target(t, 64)
    thinnest = latency({g.name: levels(g.channels)[0] for g in prunable_groups(t, torch.zeros(1, 3, 64, 64))})
    with pytest.raises(UserError, match=r"student.budget: even the thinnest per-layer student runs in"):
        plan_layers(t, BudgetSpec(latency_ms=thinnest * 0.5), size=64, measure=measure, fingerprint={"m": 1})


def test_count_budgets_search_without_measuring():
    t = _teacher()
    from compressor.complexity import profile_model

    full = profile_model(t, (1, 3, 64, 64))["macs"]
    doc = plan_layers(t, BudgetSpec(macs=full * 0.3), size=64)
    assert doc["per_layer"]["chosen"]["macs"] <= full * 0.3
    with pytest.raises(UserError, match="even the thinnest per-layer student has about"):
        plan_layers(t, BudgetSpec(params=10), size=64)


def test_a_table_from_another_machine_or_target_is_refused(tmp_path):
    here = {"backend": "ort-cpu", "precision": "fp32", "batch": 1, "size": 64, "threads": 2, "cpu": "X", "cores": 2}
    f = tmp_path / "latency_table.json"
    f.write_text(
        json.dumps({"schema": "compressor.latency_table/1", "fingerprint": {**here, "cpu": "Y"}, "networks": {}})
    )
    with pytest.raises(UserError, match=r"student.latency_table: .* measured on another machine \(cpu 'Y', here 'X'\)"):
        load_table(f, here)
    f.write_text(
        json.dumps({"schema": "compressor.latency_table/1", "fingerprint": {**here, "size": 128}, "networks": {}})
    )
    with pytest.raises(UserError, match="for another target"):
        load_table(f, here)
    f.write_text(
        json.dumps(
            {"schema": "compressor.latency_table/1", "fingerprint": here, "networks": {"n": {"u": {"p50": "x"}}}}
        )
    )
    with pytest.raises(UserError, match="no time"):
        load_table(f, here)
    with pytest.raises(UserError, match="file not found"):
        load_table(tmp_path / "missing.json", here)


def test_recipe_settings_for_the_search():
    assert StudentSpec(width="auto", search="per-layer", budget={"latency_ms": 5}).search == "per-layer"
    assert StudentSpec(width="auto", search="per-layer", importance="sensitivity", budget={"macs": 1}).importance
    assert StudentSpec(width=0.5, importance="sensitivity").importance == "sensitivity"  # a uniform student's channels
    for bad, msg in [
        ({"width": 0.5, "search": "per-layer"}, "set student.width: auto"),
        ({"width": "auto", "search": "per-layer", "method": "rebuild", "budget": {"macs": 1e9}}, "prune the teacher"),
        ({"width": "auto", "latency_table": "t.json", "budget": {"macs": 1e9}}, "only with student.search"),
        ({"width": "auto", "search": "layers", "budget": {"macs": 1e9}}, "search"),
        ({"width": 0.5, "init": "scratch", "importance": "sensitivity"}, "it inherits none"),
        ({"width": "auto", "search": "per-layer", "importance": "fisher", "budget": {"macs": 1e9}}, "importance"),
    ]:
        with pytest.raises(ValueError, match=msg):
            StudentSpec(**bad)


def test_a_backend_that_is_not_installed_is_one_line(tmp_path):
    with pytest.raises(UserError, match=r"^student.budget.backend: ort-cuda is not available here"):
        plan_layers(_teacher(), BudgetSpec(latency_ms=1, backend="ort-cuda"), size=64, run_dir=tmp_path)
    with pytest.raises(UserError, match=r"^student.budget.backend: the per-layer search times ONNX files; tensorrt"):
        plan_layers(_teacher(), BudgetSpec(latency_ms=1, backend="tensorrt"), size=64, run_dir=tmp_path)
    with pytest.raises(UserError, match="on this machine only"):
        plan_layers(_teacher(), BudgetSpec(latency_ms=1, host="user@board"), size=64, run_dir=tmp_path)


def _one_conv(path, c):
    w = helper.make_tensor("w", TensorProto.FLOAT, [c, c, 3, 3], np.zeros(c * c * 9, np.float32))
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    g = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 16, 16])],
        [w],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def test_several_files_timed_in_one_process(tmp_path):
    items = [{"artifact": _one_conv(tmp_path / f"c{c}.onnx", c), "size": 16, "input_nc": c} for c in (4, 8)]
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    items.append({"artifact": bad, "size": 16, "input_nc": 4})
    rows = time_artifacts("ort-cpu", items, warmup=1, iters=3, threads=1)
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    assert rows[0]["latency_ms"]["n"] == 3 and rows[2]["reason"]


@pytest.mark.parametrize("backend", ["ort-cpu", "openvino"])
def test_an_int8_budget_times_the_int8_files_the_target_runs(backend, tmp_path):
    from compressor.app.layerwise import TableMeasure
    from compressor.exporters.table import backend_available

    ok, why = backend_available(backend)
    if not ok:
        pytest.skip(f"{backend} is not installed here: {why}")
    seen = []
    budget = BudgetSpec(latency_ms=5, backend=backend, precision="int8", threads=1)
    meas = TableMeasure(budget, 32, tmp_path, build=lambda cfg: _teacher(), warmup=1)
    real = meas._time

    def spy(items, warmup, iters):
        seen.extend(str(i["artifact"]) for i in items)
        if backend == "openvino":
            from compressor.exporters.formats.openvino import ir_precision

            assert all(ir_precision(i["artifact"]) == "int8" for i in items)
        else:
            ops = {n.op_type for i in items for n in onnx.load(str(i["artifact"])).graph.node}
            assert ops & {"QLinearConv", "QuantizeLinear", "ConvInteger"}
        return real(items, warmup, iters)

    meas._time = spy
    rows = meas.networks([("a", {}), ("b", {})], iters=2)
    assert len(rows) == 2 and all(r["p50"] > 0 for r in rows)
    assert seen[0].endswith(".int8.xml" if backend == "openvino" else ".int8.onnx")
    assert not list(tmp_path.iterdir())  # the timed files are removed with their FP32 sources


def test_an_int8_budget_it_cannot_quantise_for_is_one_line(tmp_path):
    from compressor.app.plan import ProfileMeasure

    with pytest.raises(UserError, match=r"^student.budget.precision: the plan quantises its candidates for ort-cpu"):
        ProfileMeasure(BudgetSpec(latency_ms=5, backend="ort-cuda", precision="int8"), 32)
    with pytest.raises(UserError, match=r"for ort-cpu over SSH plan at fp32"):
        ProfileMeasure(BudgetSpec(latency_ms=5, backend="ort-cpu", precision="int8", host="u@b"), 32)


def test_compress_plan_ranks_a_checkpoint_teacher_and_its_widths_build_the_run_student(tmp_path):
    """``compress plan`` on a teacher given by its checkpoint and its value ranges: the weights are loaded for the
    importance, and the groups it names are the run's (the teacher wrapped once for its ranges, as the run loads
    it)."""
    from conftest import run_cli, tiny_recipe_text

    from compressor.complexity import profile_model

    t = build_generator("resnet_6blocks", ngf=8, norm="instance")
    torch.save(t.state_dict(), tmp_path / "t.pth")
    full = profile_model(t, (1, 3, 32, 32))["macs"]
    ranges = "checkpoint: t.pth\n  input_range: [0, 1]\n  output_range: [0, 1]"  # a wrapped teacher
    text = tiny_recipe_text().replace("train: {steps: 6}", ranges)
    (tmp_path / "r.yaml").write_text(text.replace("student: {width: 0.5}", "student: {width: 0.5, method: prune}"))
    per_layer = ["student.width=auto", "student.search=per-layer", f"student.budget={{macs: {int(full * 0.4)}}}"]
    res = run_cli(["plan", "r.yaml", "--out", "runs"] + [a for k in per_layer for a in ("--set", k)], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "loaded teacher weights" in res.stderr and "initial weights" not in res.stderr
    plan = json.loads((tmp_path / "runs" / "tiny" / "plan.json").read_text())
    (tmp_path / "again.yaml").write_text(
        text.replace("student: {width: 0.5}", "student: {widths: runs/tiny/plan.json, method: prune}")
    )
    res = run_cli(["again.yaml", "--out", "runs2", "--only", "teacher,student", "-q"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    built = json.loads((tmp_path / "runs2" / "tiny" / "student_init" / "student.json").read_text())
    assert built["widths"] == plan["widths"]


def test_student_widths_from_a_plan_build_that_student_and_bad_ones_are_one_line(tmp_path):
    """``student.widths: plan.json``: a per-layer student chosen once (here on a MACs budget), trained again and
    again with the same channels; a missing file, a file without widths and widths beside a width are one line."""
    from conftest import run_cli, tiny_recipe_text

    from compressor.complexity import profile_model

    t = _teacher()
    full = profile_model(t, (1, 3, 32, 32))["macs"]
    plan = plan_layers(t, BudgetSpec(macs=full * 0.4), size=32, run_dir=tmp_path / "planned")
    assert (tmp_path / "planned" / "plan.json").is_file()
    text = tiny_recipe_text().replace("student: {width: 0.5}", "student: {widths: planned/plan.json, method: prune}")
    (tmp_path / "r.yaml").write_text(text)
    res = run_cli(["r.yaml", "--out", "runs", "--only", "teacher,student", "-q"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    built = json.loads((tmp_path / "runs" / "tiny" / "student_init" / "student.json").read_text())
    assert built["widths"] == plan["widths"] and abs(built["width"] - plan["width"]) < 1e-6
    (tmp_path / "nowidths.json").write_text("{}")
    for widths, msg in [
        ("missing.json", r"^error: student.widths: .*missing.json: file not found$"),
        ("nowidths.json", r"^error: student.widths: .*nowidths.json holds no per-layer widths"),
        ("{encoder.1: 0}", r"^error: .*student.widths: 'encoder.1' must keep at least one channel"),
    ]:
        (tmp_path / "bad.yaml").write_text(text.replace("widths: planned/plan.json", f"widths: {widths}"))
        res = run_cli(["bad.yaml", "--out", "runs2", "-q"], cwd=tmp_path)
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert __import__("re").search(msg, res.stderr.strip()), res.stderr
    with pytest.raises(ValueError, match="leave student.width"):
        StudentSpec(width=0.5, widths={"a": 1})


def test_widths_ranked_by_sensitivity_say_so_when_the_student_keeps_the_magnitudes(tmp_path, caplog):
    """A plan.json ranked by output sensitivity, given to a recipe that keeps channels by magnitude: the widths
    are taken and a warning says the channels differ from the ones the plan ranked; asking for the sensitivity
    silences it."""
    from conftest import tiny_recipe_text

    from compressor.app.preflight import given_widths
    from compressor.recipe import load_recipe

    plan = {"widths": {"encoder.1": 4}, "per_layer": {"importance": "sensitivity"}}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    text = tiny_recipe_text().replace("student: {width: 0.5}", "student: {widths: plan.json, method: prune}")
    (tmp_path / "r.yaml").write_text(text)
    with caplog.at_level("WARNING"):
        assert given_widths(load_recipe(tmp_path / "r.yaml")) == {"encoder.1": 4}
    assert "most output-sensitive channels" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        given_widths(load_recipe(tmp_path / "r.yaml", ["student.importance=sensitivity"]))
    assert "most output-sensitive" not in caplog.text
    plan["per_layer"]["importance"] = "measured"  # chosen by the measured loss: the channels are the same
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    for given, warned in (("measured", False), ("sensitivity", False), ("magnitude", True)):
        caplog.clear()
        with caplog.at_level("WARNING"):
            given_widths(load_recipe(tmp_path / "r.yaml", [f"student.importance={given}"]))
        assert ("most output-sensitive" in caplog.text) == warned, given


def test_the_recipe_asks_for_the_sensitivity_and_the_plan_ranks_its_training_images(tmp_path):
    """``student.importance: sensitivity`` in a recipe: ``compress plan`` (in process) ranks the teacher on the
    recipe's training images and says so in plan.json."""
    from conftest import tiny_recipe_text

    from compressor.app.commands import importance_images, plan_student
    from compressor.recipe import load_recipe
    from compressor.runfolder import RunDir

    p = tmp_path / "tiny.yaml"
    p.write_text(tiny_recipe_text())
    sets = ["teacher.train=null", "student.width=auto", "student.search=per-layer", "student.budget.macs=2e7"]
    recipe = load_recipe(p, sets + ["student.importance=sensitivity"])
    images = importance_images(recipe)
    assert images.shape == (8, 3, 32, 32) and images.min() >= -1 and images.max() <= 1  # the 8 synthetic pairs
    doc = plan_student(recipe, RunDir(tmp_path / "runs" / "tiny"))
    assert doc["per_layer"]["importance"] == "sensitivity" and doc["widths"]
    mag = plan_student(load_recipe(p, sets), RunDir(tmp_path / "runs" / "tiny"))
    assert mag["per_layer"]["importance"] == "magnitude" and mag["key"] != doc["key"]
    meas = plan_student(load_recipe(p, sets + ["student.importance=measured"]), RunDir(tmp_path / "runs" / "tiny"))
    assert meas["per_layer"]["importance"] == "measured" and meas["key"] not in (doc["key"], mag["key"])
