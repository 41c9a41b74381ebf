"""Adding a stage, a loss term or a report section is a change to one module.

Each test copies the package, applies the diff a contributor would write (one function and one table row, in one
file), and checks, in a fresh interpreter on the copy, that everything else picks the addition up: the pipeline
and ``--only`` run the new stage and skip it when up to date; the recipe accepts the new term's entry, the trainer
sums and logs it, and stage digests stay as they were while it is off; the report shows the new section in both
files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _patched_copy(tmp_path: Path, module: str, edits: list[tuple[str, str]]) -> Path:
    """A copy of the ``compressor`` package with ``edits`` (old text, text put before it) applied to one
    file; returns the folder to put on PYTHONPATH."""
    dst = tmp_path / "src"
    for pkg in ("compressor",):
        shutil.copytree(ROOT / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    path = dst / module
    text = path.read_text()
    for anchor, before in edits:
        assert text.count(anchor) == 1, f"{module}: anchor not found once: {anchor!r}"
        text = text.replace(anchor, (textwrap.dedent(before) if before.startswith("\n") else before) + anchor)
    path.write_text(text)
    changed = [
        str(p.relative_to(dst))
        for p in sorted(dst.rglob("*.py"))
        if p.read_bytes() != (ROOT / p.relative_to(dst)).read_bytes()
    ]
    assert changed == [module], changed  # the whole diff is one module
    return dst


def _run(src: Path, code: str, cwd: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_new_stage_is_one_row(tmp_path):
    src = _patched_copy(
        tmp_path,
        "compressor/app/stages.py",
        [
            (
                "@dataclass(frozen=True)\nclass Stage:",
                '''
                def stage_inventory(ctx: Context) -> None:
                    """The image size the run was made at, in inventory.json."""
                    atomic_write_json(ctx.run.file("inventory.json"), {"size": ctx.recipe.data.size})


                ''',
            ),
            (
                ")\nSTAGE_BY_NAME: dict[str, Stage]",
                '    Stage("inventory", stage_inventory, sections=("data",), outputs=("inventory.json",)),\n',
            ),
        ],
    )
    out = _run(
        src,
        f"""
        import json
        from pathlib import Path
        import compressor.app.pipeline as p
        from compressor.errors import UserError
        from compressor.recipe import load_recipe
        assert p.__file__.startswith({str(src)!r}), p.__file__
        r = load_recipe({str(ROOT / "recipes" / "quickstart.yaml")!r})
        first = [s.status for s in p.run_pipeline(r, "runs", p.RunOptions(only=["inventory"]))]
        again = [s.status for s in p.run_pipeline(r, "runs", p.RunOptions(only=["inventory"]))]
        r2 = load_recipe({str(ROOT / "recipes" / "quickstart.yaml")!r}, ["data.size=32"])
        changed = [s.status for s in p.run_pipeline(r2, "runs", p.RunOptions(only=["inventory"]))]
        try:
            p.run_pipeline(r, "runs", p.RunOptions(only=["inventori"]))
            unknown = ""
        except UserError as exc:
            unknown = str(exc)
        doc = json.loads(Path("runs/quickstart/inventory.json").read_text())
        print(json.dumps({{"first": first, "again": again, "changed": changed, "doc": doc, "unknown": unknown}}))
        """,
        tmp_path,
    )
    assert out["first"] == ["ran"] and out["again"] == ["skipped"] and out["changed"] == ["ran"], out
    assert out["doc"] == {"size": 32}
    assert "unknown stage 'inventori'" in out["unknown"] and "report, inventory" in out["unknown"]


def test_a_new_loss_term_is_one_row(tmp_path):
    from compressor.recipe import load_recipe

    quickstart = ROOT / "recipes" / "quickstart.yaml"
    before = load_recipe(quickstart).section_hash("distill", "data")
    src = _patched_copy(
        tmp_path,
        "compressor/terms.py",
        [
            (
                "@dataclass(frozen=True)\nclass Term:",
                '''
                def tv_term(t: TermInputs, spec: WeightSpec) -> Optional[torch.Tensor]:
                    """Total variation of the student's output (smoothness)."""
                    o = t.out.float()
                    return (o[..., 1:, :] - o[..., :-1, :]).abs().mean() + (o[..., 1:] - o[..., :-1]).abs().mean()


                ''',
            ),
            (
                '    Term("cycle", cycle_term',
                '    Term("tv", tv_term, WeightSpec, "total variation of the output", {"weight": 0.0}, neutral=True),\n',
            ),
        ],
    )
    out = _run(
        src,
        f"""
        import json, sys
        sys.path.insert(0, {str(ROOT / "tests")!r})
        import torch
        from compressor.recipe import load_recipe
        from compressor.train import seed_everything
        import test_train
        r = load_recipe({str(quickstart)!r})
        on = load_recipe({str(quickstart)!r}, ["distill.losses.tv.weight=0.5"])
        seed_everything(0)
        tr = test_train._trainer(__import__("pathlib").Path("t"), steps=2)
        tr.s.losses = tr.s.losses.model_copy(update={{"tv": on.distill.losses.tv}})
        tr.fit()
        lines = [json.loads(x) for x in open("t/metrics.jsonl")]
        print(json.dumps({{
            "off": r.distill.losses.tv.weight,
            "digest_off": r.section_hash("distill", "data"),
            "digest_on": on.section_hash("distill", "data"),
            "keys": sorted(lines[-1]),
        }}))
        """,
        tmp_path,
    )
    assert out["off"] == 0.0
    assert out["digest_off"] == before != out["digest_on"]  # off: existing runs stay up to date
    assert {"G/tv", "share:G/tv", "weight:G/tv"} <= set(out["keys"]), out["keys"]


def test_a_new_report_section_is_one_function_and_one_entry(tmp_path):
    src = _patched_copy(
        tmp_path,
        "compressor/exporters/report/sections.py",
        [
            (
                "# The report, top to bottom.",
                """
                def section_inputs(d: ReportData) -> list[str]:
                    '''How many profiles and evaluations the report merges.'''
                    rows = [[str(len(d.profiles)), str(len(d.evals))]]
                    return ["## Inputs", "", md_table(["profiles", "evaluations"], rows), ""]


                """,
            ),
            ("    section_loss_terms,\n]", "    section_inputs,\n"),
        ],
    )
    out = _run(
        src,
        """
        import json
        from compressor.exporters import report
        md = report.build_markdown([{"environment": {}, "results": []}], [], [], "t")
        print(json.dumps({"md": md, "html": report.build_html(md, {}, "t")}))
        """,
        tmp_path,
    )
    assert "## Inputs\n\n| profiles | evaluations |\n|---|---|\n| 1 | 0 |" in out["md"]
    assert "Inputs</h2>" in out["html"] and "<td>1</td>" in out["html"]
