"""tools/bench_all.py renders the README's benchmark block from the benchmark scripts' JSON."""

import importlib.util

import pytest
from conftest import ROOT

spec = importlib.util.spec_from_file_location("bench_all", ROOT / "tools" / "bench_all.py")
bench_all = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_all)

EXPORT = {
    "date": "2026-11-23 01:00 UTC",
    "threads": 2,
    "source": "facades (16 calibration, 8 test images)",
    "cpu": {
        "model": "AMD EPYC",
        "cores": 2,
        "isa": ["avx2", "fma"],
        "torch_cpu_capability": "AVX2",
        "vnni": False,
        "load_avg_1min": 9.0,
    },
    "load_avg_end": 8.0,
    "loaded": True,
    "families": [
        {
            "family": "unet",
            "arch": "unet_256",
            "norm": "batch",
            "student_gmacs": 1.2,
            "teacher_gmacs": 18.0,
            "fp32": {"median_ms": 40.0, "per_op_ms": {"Conv": 30.0, "ConvTranspose": 10.0}},
            "variants": {
                "default": {
                    "config": "QDQ U8S8",
                    "median_ms": 32.0,
                    "speedup": 1.25,
                    "psnr_db": 41.1,
                    "psnr_min_db": 40.0,
                    "per_op_ms": {"QLinearConv": 20.0, "ConvTranspose": 12.0},
                }
            },
        }
    ],
}
DISTILL = {
    "arch": "resnet_9blocks",
    "width": 0.25,
    "size": 256,
    "native_bf16": False,
    "loaded": True,
    "runs": [
        {"amp": "none", "step_ms": 700.0, "parts_ms": {"teacher forward": 560.0}},
        {"amp": "bf16", "step_ms": 2800.0, "parts_ms": {"teacher forward": 2660.0}},
    ],
    "step_speedup_bf16": 0.25,
    "teacher_speedup_bf16": 0.21,
    "teacher_max_diff_bf16": 0.05,
}


def test_render_names_cpu_flags_load_and_every_number():
    block = bench_all.render(EXPORT, DISTILL)
    for text in (
        "2026-11-23 01:00 UTC",
        "AMD EPYC",
        "avx2 fma",
        "VNNI no",
        "loaded by other work",
        "1.25x (1.5x)",
        "41.1 dB",
        "Conv 75%",
        "QLinearConv 62%",
        "| teacher in FP32 | 700 | 560 | 80% |",
        "0.25x",
        "trains in FP32 here",
        "vpmaddubsw",
    ):
        assert text in block, text
    doc = bench_all.render_doc(EXPORT, DISTILL)
    assert "| ConvTranspose | 10.00 | 12.00 |" in doc


def test_update_readme_replaces_only_the_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\nbefore\n{bench_all.BEGIN}\nold numbers\n{bench_all.END}\nafter\n")
    bench_all.update_readme(readme, "new numbers")
    assert readme.read_text() == f"# x\nbefore\n{bench_all.BEGIN}\nnew numbers\n{bench_all.END}\nafter\n"
    readme.write_text("no markers")
    with pytest.raises(SystemExit, match="markers"):
        bench_all.update_readme(readme, "x")


def test_project_readme_has_the_markers():
    text = (ROOT / "README.md").read_text()
    assert text.count(bench_all.BEGIN) == 1 and text.count(bench_all.END) == 1
    assert text.index(bench_all.BEGIN) > text.index("## Benchmarks")


def test_bench_students_times_untrained_widths_of_a_runs_teacher(tmp_path, capsys):
    """tools/bench_students.py --teacher RUN: uniform widths and a plan's widths pruned from the run's teacher,
    timed side by side (how the uniform width of a per-layer student's latency is found); a bad argument is one
    line, exit 2."""
    import json

    from conftest import run_cli, tiny_recipe_text

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(tiny_recipe_text())
    res = run_cli([recipe, "--out", tmp_path / "runs", "--only", "teacher", "--quiet"])
    assert res.returncode == 0, res.stderr[-2000:]
    run = tmp_path / "runs" / "tiny"
    spec = importlib.util.spec_from_file_location("bench_students", ROOT / "tools" / "bench_students.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"widths": {}}))
    args = ["--teacher", str(run), "--size", "32", "--rounds", "2", "--iters", "2"]
    assert tool.main(args + ["0.5", "1.0"]) == 0
    out = capsys.readouterr().out
    assert "| 0.5 |" in out and "| 1.0 |" in out and "paired ratio" in out
    assert tool.main(args + ["0.5", "half"]) == 2
    assert capsys.readouterr().err.strip() == "error: half: neither a width nor a plan.json"
    assert tool.main(args + ["0.5", str(plan)]) == 2
    assert capsys.readouterr().err.strip().startswith("error: ")
