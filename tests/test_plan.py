"""The width planner: exact choice under a fake timing backend, the budget kinds, caching, the CLI on the real
ort-cpu harness, and the remote path over a loopback sshd."""

import json
import math
import sys
from pathlib import Path

import pytest
from conftest import loopback_sshd, run_cli, tiny_recipe_text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compressor.app.plan import plan_width, width_grid
from compressor.errors import UserError
from compressor.models import build_generator
from compressor.recipe import BudgetSpec, StudentSpec

SIZE = 16


@pytest.fixture(scope="module")
def teacher():
    return build_generator("resnet_6blocks", ngf=24, norm="instance", init=None)


class Fake:
    """A target whose latency is a known function of width; counts what it timed."""

    def __init__(self, f):
        self.f, self.timed = f, []

    def __call__(self, cands, warmup, iters):
        self.timed += [c.width for c in cands]
        return [{"p50": self.f(c.width), "p90": 1.2 * self.f(c.width)} for c in cands]


def expected(grid, f, limit):
    ok = [w for w in grid if f(w) <= limit]
    return max(ok) if ok else None


LATENCIES = {
    "quadratic": lambda w: 0.4 + 90 * w**2,
    "linear": lambda w: 2 + 50 * w,
    "steps": lambda w: 3 + 40 * math.ceil(w * 6) / 6,  # plateaus: equal latencies at neighbouring widths
    "steep": lambda w: 0.1 * math.exp(8 * w),
}


@pytest.mark.parametrize("name", sorted(LATENCIES))
@pytest.mark.parametrize("budget,margin", [(30.0, 0.0), (12.5, 0.1), (1000.0, 0.0)])
def test_fake_backend_picks_the_exact_width(teacher, name, budget, margin):
    f = LATENCIES[name]
    grid = width_grid(teacher, "auto")
    assert grid == [k / 24 for k in range(1, 25)]
    want = expected(grid, f, budget * (1 - margin))
    fake = Fake(f)
    if want is None:
        with pytest.raises(UserError, match="even width"):
            plan_width(teacher, {"latency_ms": budget}, size=SIZE, margin=margin, measure=fake, count_macs=False)
        return
    doc = plan_width(teacher, {"latency_ms": budget}, size=SIZE, margin=margin, measure=fake, count_macs=False)
    assert doc["width"] == want
    assert doc["choice"]["confirmed"] and doc["choice"]["p50"] <= budget * (1 - margin)
    i = grid.index(want)
    if i + 1 < len(grid):  # the next wider width was measured, confirmed, and misses the budget
        assert doc["next_wider"]["width"] == grid[i + 1] and doc["next_wider"]["confirmed"]
        assert doc["next_wider"]["p50"] > budget * (1 - margin)
    assert len(set(fake.timed)) <= 12  # a search, not a sweep of all 24 widths


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a=st.floats(0.05, 5), b=st.floats(1, 400), p=st.floats(0.5, 3), budget=st.floats(0.1, 500))
def test_fake_backend_exact_for_any_power_law(teacher, a, b, p, budget):
    f = lambda w: a + b * w**p
    grid = width_grid(teacher, "auto")
    want = expected(grid, f, budget)
    if want is None:
        with pytest.raises(UserError):
            plan_width(teacher, {"latency_ms": budget}, size=SIZE, margin=0, measure=Fake(f), count_macs=False)
    else:
        doc = plan_width(teacher, {"latency_ms": budget}, size=SIZE, margin=0, measure=Fake(f), count_macs=False)
        assert doc["width"] == want


def test_unreachable_budget_is_one_line(teacher):
    with pytest.raises(UserError) as e:
        plan_width(teacher, {"latency_ms": 2}, size=SIZE, margin=0, measure=Fake(lambda w: 3 + w), count_macs=False)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg == f"student.budget: even width {1 / 24:.4g} runs in {3 + 1 / 24:.3g} ms; the budget is 2 ms"


def test_speedup_budget_against_the_teacher(teacher):
    f = LATENCIES["quadratic"]
    fake = Fake(f)
    doc = plan_width(teacher, {"speedup": 8}, size=SIZE, margin=0.05, measure=fake, count_macs=False)
    grid = width_grid(teacher, "auto")
    assert doc["teacher"]["latency_ms"] == f(1.0)
    assert doc["width"] == expected(grid, f, f(1.0) / 8 * 0.95)
    with pytest.raises(UserError, match=r"even width .* the budget is .*faster than the teacher's"):
        plan_width(teacher, {"speedup": 1000}, size=SIZE, margin=0, measure=Fake(f), count_macs=False)


@pytest.mark.parametrize("kind", ["macs", "params"])
def test_count_budgets_need_no_measurement(kind):
    from compressor.complexity import profile_model
    from compressor.slim import make_student

    teacher = build_generator("resnet_6blocks", ngf=8, norm="instance", init=None)
    grid = width_grid(teacher, "auto")
    counts = {}
    for w in (grid[0], grid[3], grid[4]):
        s, _ = make_student(teacher, w, "rebuild", "scratch")
        counts[w] = profile_model(s, (1, 3, SIZE, SIZE))[kind]
    limit = (counts[grid[3]] + counts[grid[4]]) / 2
    doc = plan_width(
        teacher, {kind: limit}, size=SIZE, measure=Fake(lambda w: pytest.fail("measured")), count_macs=False
    )
    assert doc["width"] == grid[3] and doc["choice"][kind] == counts[grid[3]]
    assert doc["next_wider"][kind] == counts[grid[4]] > limit
    with pytest.raises(UserError, match=f"even width .* has .* {kind}; the budget is"):
        plan_width(teacher, {kind: counts[grid[0]] - 1}, size=SIZE, count_macs=False)


def test_pruned_imported_model_on_its_grid():
    from custom_archs import DepthwiseSeparableNet

    net = DepthwiseSeparableNet(ch=16).eval()
    grid = width_grid(net, "auto")
    assert grid == [k / 32 for k in range(1, 33)]
    f = lambda w: 1 + 40 * w
    doc = plan_width(net, {"latency_ms": 21}, size=SIZE, margin=0, measure=Fake(f), count_macs=False)
    assert doc["method"] == "prune" and doc["width"] == expected(grid, f, 21) == 0.5
    with pytest.raises(UserError, match="rebuild works for zoo teachers only"):
        plan_width(net, {"latency_ms": 21}, size=SIZE, method="rebuild", measure=Fake(f))


def test_plan_is_cached_by_teacher_budget_and_fingerprint(teacher, tmp_path):
    f = LATENCIES["linear"]
    fake = Fake(f)
    kw = {
        "size": SIZE,
        "margin": 0,
        "measure": fake,
        "run_dir": tmp_path,
        "fingerprint": {"machine": "a"},
        "plot": False,
        "count_macs": False,
    }
    first = plan_width(teacher, {"latency_ms": 30}, **kw)
    assert not first["cached"] and fake.timed
    doc = json.loads((tmp_path / "plan.json").read_text())
    assert doc["width"] == first["width"] and doc["fingerprint"] == {"machine": "a"}
    assert all({"width", "params", "macs", "p50", "p90"} <= set(c) for c in doc["candidates"])
    fake.timed.clear()
    assert plan_width(teacher, {"latency_ms": 30}, **kw)["cached"] and not fake.timed
    plan_width(teacher, {"latency_ms": 31}, **kw)  # another budget
    assert fake.timed
    fake.timed.clear()
    plan_width(teacher, {"latency_ms": 31}, **{**kw, "fingerprint": {"machine": "b"}})  # another machine
    assert fake.timed
    fake.timed.clear()
    other = build_generator("resnet_6blocks", ngf=24, norm="batch", init=None)  # another teacher
    plan_width(other, {"latency_ms": 31}, **{**kw, "fingerprint": {"machine": "b"}})
    assert fake.timed


def test_noisy_target_still_ends_in_an_adjacent_bracket(teacher):
    """Search measurements are noisy, confirmations are not: the choice rests on confirmed numbers."""
    import random

    rng = random.Random(0)
    f = LATENCIES["quadratic"]

    def noisy(cands, warmup, iters):
        return [{"p50": f(c.width) * (1 + (0 if iters >= 30 else rng.uniform(-0.3, 0.3))), "p90": 0} for c in cands]

    doc = plan_width(teacher, {"latency_ms": 30}, size=SIZE, margin=0, measure=noisy, count_macs=False)
    assert doc["width"] == expected(width_grid(teacher, "auto"), f, 30)


def test_an_outlier_does_not_turn_the_search_into_a_sweep(teacher):
    """A flat curve with one huge outlier at width 1 (seen on a loaded machine): bisection takes over."""
    f = lambda w: 100.0 if w == 1.0 else 0.5 + 0.2 * w
    fake = Fake(f)
    doc = plan_width(teacher, {"latency_ms": 3}, size=SIZE, margin=0, measure=fake, count_macs=False)
    assert doc["width"] == 23 / 24 and len(set(fake.timed)) <= 12


def test_each_width_gets_its_own_onnx(teacher, tmp_path):
    from compressor.app.plan import Candidate, ProfileMeasure
    from compressor.slim import make_student

    pm = ProfileMeasure(BudgetSpec(latency_ms=1), SIZE, tmp_path)
    paths = []
    for w in (0.25, 0.5):
        c = Candidate(w)
        c.model, c.plan = make_student(teacher, w, "rebuild", "scratch")
        paths.append(pm._artifacts(c)["onnx"])
    assert len(set(paths)) == 2 and all(Path(p).is_file() for p in paths)


def test_recipe_schema_for_auto_width(tmp_path):
    from compressor.recipe import RecipeError, parse_recipe

    base = tiny_recipe_text().replace("student: {width: 0.5}", "student: {width: auto}")
    with pytest.raises(RecipeError) as e:
        parse_recipe(base, check_paths=False)
    assert "student.width auto needs student.budget" in str(e.value) and "\n" not in str(e.value)
    r = parse_recipe(base, check_paths=False, overrides=["student.budget.latency_ms=8", "student.margin=0.1"])
    assert r.student.width == "auto" and r.student.budget.latency_ms == 8 and r.student.margin == 0.1
    with pytest.raises(RecipeError, match="exactly one of latency_ms, speedup, macs or params"):
        parse_recipe(base, check_paths=False, overrides=["student.budget={latency_ms: 8, speedup: 3}"])
    # backend names are checked against the backend table in pre-flight (the schema imports no exporter)
    from compressor.app.preflight import check_backends

    with pytest.raises(RecipeError, match="student.budget.backend: unknown backend 'ort-gpu'"):
        check_backends(
            parse_recipe(base, check_paths=False, overrides=["student.budget={latency_ms: 8, backend: ort-gpu}"])
        )
    with pytest.raises(RecipeError, match="only ONNX files travel"):
        check_backends(
            parse_recipe(
                base, check_paths=False, overrides=["student.budget={latency_ms: 8, backend: torch, host: a@b}"]
            )
        )
    check_backends(
        parse_recipe(base, check_paths=False, overrides=["student.budget={latency_ms: 8, backend: openvino}"])
    )
    with pytest.raises(RecipeError, match="student.margin"):
        parse_recipe(base, check_paths=False, overrides=["student.budget.latency_ms=8", "student.margin=1.5"])
    with pytest.raises(RecipeError, match=r"student.width: .* or auto"):
        parse_recipe(base.replace("width: auto", "width: automatic"), check_paths=False)
    assert StudentSpec(width="0.5").width == 0.5 and BudgetSpec(macs=1e9).backend == "ort-cpu"


def test_plan_cli_on_ort_cpu(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        tiny_recipe_text("planrun").replace(
            "student: {width: 0.5}", "student: {width: auto, budget: {latency_ms: 1000}}"
        )
    )
    args = ["plan", recipe, "--out", tmp_path / "runs", "--set", "teacher.kwargs.ngf=4"]
    res = run_cli(args, cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads((tmp_path / "runs" / "planrun" / "plan.json").read_text())
    assert doc["width"] == 1.0 and doc["fingerprint"]["backend"] == "ort-cpu" and "cpu" in doc["fingerprint"]
    assert doc["choice"]["p50"] > 0 and doc["environment"]["onnxruntime_version"]
    assert (tmp_path / "runs" / "planrun" / "plan.png").stat().st_size > 5000
    assert "chosen width 1" in res.stdout
    res = run_cli(args, cwd=tmp_path)
    assert res.returncode == 0 and "cached" in res.stdout
    res = run_cli(
        ["plan", recipe, "--out", tmp_path / "runs", "--set", "student.budget=null", "--set", "student.width=0.5"],
        cwd=tmp_path,
    )
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "student.budget" in res.stderr
    res = run_cli(args + ["--set", "student.budget={macs: 1}", "--quiet"], cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.startswith("error: student.budget: even width 0.25 has ")
    assert res.stderr.count("\n") == 1 and "the budget is 1" in res.stderr
    # per-layer widths rank the teacher's weights: a teacher this recipe trains must be trained first
    per_layer = [
        "--set",
        "student.search=per-layer",
        "--set",
        "student.method=prune",
        "--set",
        "student.budget={macs: 1e6}",
    ]
    res = run_cli(args + per_layer, cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith("error: student.search: the per-layer search ranks the teacher's channels")
    assert "--only teacher" in res.stderr


# ------------------------------------------------------------------------------------------- remote (--host)


def test_remote_plan_over_loopback_ssh(tmp_path):
    import getpass

    compress = str(Path(sys.executable).parent / "compress")
    if not Path(compress).exists():
        pytest.skip("the compress console script is not installed (pip install -e .)")
    teacher = build_generator("resnet_6blocks", ngf=4, norm="instance", init=None)
    with loopback_sshd(tmp_path) as (port, opts):
        budget = {
            "latency_ms": 1000,
            "backend": "ort-cpu",
            "host": f"{getpass.getuser()}@127.0.0.1",
            "port": port,
            "ssh_options": opts,
            "remote_compress": compress,
        }
        doc = plan_width(
            teacher, budget, size=32, margin=0, run_dir=tmp_path / "run", warmup=1, iters=2, confirm_iters=3, plot=False
        )
        assert doc["width"] == 1.0 and doc["choice"]["confirmed"] and doc["choice"]["p50"] > 0
        assert doc["fingerprint"]["host"] == budget["host"] and doc["environment"]["onnxruntime_version"]
        assert {c["width"] for c in doc["candidates"]} == {0.25, 1.0}
        # a board without the toolkit: one clear line
        with pytest.raises(UserError) as e:
            plan_width(
                teacher,
                {**budget, "remote_compress": "/nonexistent/compress"},
                size=32,
                margin=0,
                warmup=1,
                iters=2,
                confirm_iters=3,
            )
        assert "student.budget.host" in str(e.value) and "toolkit" in str(e.value) and "\n" not in str(e.value)


def test_a_uniform_int8_budget_times_the_quantised_candidates(tmp_path, monkeypatch):
    """``precision: int8`` on ort-cpu: each candidate is quantised as the export quantises, then timed."""
    import compressor.app.plan as plan

    made = []
    real = plan.quantize_onnx
    monkeypatch.setattr(plan, "quantize_onnx", lambda src, out, *a: made.append(out) or real(src, out, *a))
    teacher = build_generator("resnet_6blocks", input_nc=3, output_nc=3, ngf=8).eval()
    teacher.compressor_spec = {"arch": "resnet_6blocks", "kwargs": {"input_nc": 3, "output_nc": 3, "ngf": 8}}
    budget = BudgetSpec(latency_ms=1000, backend="ort-cpu", precision="int8", threads=1)
    doc = plan_width(teacher, budget, size=32, run_dir=tmp_path, warmup=1, iters=2)
    assert doc["width"] == 1.0 and doc["fingerprint"]["precision"] == "int8"
    assert len(made) == len(doc["candidates"]) and all(c["p50"] > 0 for c in doc["candidates"])
    assert all(Path(m).name.endswith(".int8.onnx") for m in made)
