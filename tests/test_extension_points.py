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


TOY_FORMAT = '''
"""Toy: TorchScript (``<stem>.toy.pt``), traced, checked against PyTorch, run by torch.jit."""

from __future__ import annotations

import time

import numpy as np
import torch

from ..records import record
from ..rows import Backend, Format, Request, Runner


def export_toy(req: Request) -> dict:
    t0 = time.perf_counter()
    x = torch.from_numpy(req.samples_array()[:1])
    traced = torch.jit.trace(req.model.eval(), x)
    traced.save(str(req.path))
    with torch.no_grad():
        diff = (torch.jit.load(str(req.path))(x) - req.model(x)).abs().max().item()
    parity = {"max_abs": diff, "against": "pytorch", "limit": {"max_abs": 1e-4}}
    return record(req.path, "toy", req.precision, parity=parity, seconds=time.perf_counter() - t0)


class ToyRunner(Runner):
    def __init__(self, artifact, *, backend, threads=None, device="cpu", precision="fp32"):
        self.backend, self.device = backend.name, device
        self.module = torch.jit.load(str(artifact))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


FORMAT = Format(
    "toy",
    ".toy.pt",
    ("fp32",),
    export_toy,
    backends=(
        Backend(
            "toy",
            "compressor.exporters.formats.toy:ToyRunner",
            "toy",
            "cpu",
            precisions=("fp32",),
            requires=("torch",),
            extra="pip install torch",
            help="TorchScript (a toy)",
        ),
    ),
    requires=("torch",),
    extra="pip install torch",
    help="TorchScript (a toy format added by one module)",
)
'''


def test_a_new_export_format_is_one_module(tmp_path):
    """A format is one module in exporters/formats/: compress export, the recipe's export.formats, compress
    benchmark and the report's export section pick it up, and nothing else names it."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "compressor", src / "compressor", ignore=shutil.ignore_patterns("__pycache__"))
    (src / "compressor/exporters/formats/toy.py").write_text(TOY_FORMAT)
    out = _run(
        src,
        f"""
        import json, subprocess, sys
        from pathlib import Path
        import torch
        import compressor
        from compressor import benchmark, make_student, save_student
        from compressor.app.preflight import check_backends
        from compressor.errors import RecipeError
        from compressor.exporters.report import write_report
        from compressor.models import build_generator
        from compressor.recipe import load_recipe
        assert compressor.__file__.startswith({str(src)!r}), compressor.__file__
        torch.manual_seed(0)
        teacher = build_generator("resnet_6blocks", ngf=8, norm="instance").eval()
        student, plan = make_student(teacher, width=0.5)
        save_student(student, plan, "st")
        cli = subprocess.run([sys.executable, "-m", "compressor", "export", "st", "--format", "onnx,toy",
                              "--size", "32", "--quiet"], capture_output=True, text=True)
        assert cli.returncode == 0, cli.stderr
        records = json.loads(Path("st/export.json").read_text())["files"]
        quickstart = {str(ROOT / "recipes" / "quickstart.yaml")!r}
        check_backends(load_recipe(quickstart, ["export.formats=[onnx,toy]"]))
        try:
            check_backends(load_recipe(quickstart, ["export.formats=[onnx,tot]"]))
            refused = ""
        except RecipeError as exc:
            refused = str(exc)
        doc = benchmark("st", ["toy"], size=32, images=2, warmup=1, iters=2)
        md, _ = write_report([], [], "rep", export_files=["st/export.json", "st/benchmark.json"])
        print(json.dumps({{"cli": cli.stdout, "records": records, "refused": refused, "rows": doc["rows"],
                           "md": Path(md).read_text()}}))
        """,
        tmp_path,
    )
    rec = out["records"]["student.toy.pt"]
    assert rec["format"] == "toy" and rec["status"] == "passed" and rec["parity"]["max_abs"] < 1e-4, rec
    assert "student.toy.pt" in out["cli"]
    assert "toy" in out["refused"] and "unknown format 'tot'" in out["refused"]
    assert [(r["format"], r["status"]) for r in out["rows"]] == [("toy", "passed")], out["rows"]
    export_rows = [line for line in out["md"].splitlines() if "student.toy.pt" in line]
    assert export_rows and "passed" in export_rows[0], out["md"]
    assert any(line.startswith("| toy") or "| toy |" in line for line in out["md"].splitlines()), out["md"]


def test_a_stateful_loss_term_is_one_entry(tmp_path):
    """A term with its own taps and trainable state (a 1x1 projection of the student's features onto the
    teacher's) is one function and one row in terms.py: the recipe's schema takes its entry, the distill stage taps
    its layers, trains and checkpoints its state and logs it, the teacher's own training leaves it out, the report
    shows it, and stage digests stay as they were while it is off."""
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
                class ProjLossSpec(TeacherWeightSpec):
                    weight: float = Field(0.0, ge=0)
                    layers: list[str] = Field(default_factory=lambda: ["encoder"], description="taps")


                def proj_state(spec: ProjLossSpec, channels: dict) -> nn.Module:
                    """A 1x1 convolution per tap, student channels to the teacher's."""
                    return nn.ModuleDict({k: nn.Conv2d(channels[k][1], channels[k][0], 1) for k in spec.layers})


                def proj_term(t: TermInputs, spec: ProjLossSpec) -> Optional[torch.Tensor]:
                    """The student's projected features against the teacher's (MSE)."""
                    return sum(
                        nn.functional.mse_loss(t.state[k](t.features[k]), t.teacher.features[k]) for k in spec.layers
                    )


                ''',
            ),
            (
                '    Term("cycle", cycle_term',
                '    Term("proj", proj_term, ProjLossSpec, "projected features", neutral=True, state=proj_state),\n',
            ),
        ],
    )
    out = _run(
        src,
        f"""
        import glob, json
        from pathlib import Path
        import torch
        import compressor.app.pipeline as p
        from compressor.exporters.report import loss_terms_table
        from compressor.recipe import load_recipe, schema_reference
        small = ["teacher.train.steps=2", "distill.steps=3", "distill.log_every=1", "data.size=32",
                 "data.synthetic.train=8", "data.synthetic.test=4"]
        r = load_recipe({str(quickstart)!r})
        on = load_recipe({str(quickstart)!r}, small + ["distill.losses.proj.weight=1.0"])
        p.run_pipeline(on, "runs", p.RunOptions(only=["teacher", "student", "distill"]))
        run = Path("runs/quickstart")
        last = [json.loads(x) for x in open(run / "metrics.jsonl")][-1]
        teacher_logs = [json.loads(x) for x in open(run / "teacher_train" / "metrics.jsonl")]
        ckpt = torch.load(sorted(glob.glob(str(run / "checkpoints" / "step_*.pt")))[-1], weights_only=False)
        print(json.dumps({{
            "schema": [k for k, _, _ in schema_reference() if k.startswith("distill.losses.proj")],
            "digest_off": r.section_hash("distill", "data"),
            "keys": sorted(last),
            "teacher_keys": sorted(set().union(*teacher_logs)),
            "state": sorted(ckpt.get("terms", {{}}).get("proj", {{}})),
            "report": loss_terms_table(run / "metrics.jsonl"),
        }}))
        """,
        tmp_path,
    )
    assert "distill.losses.proj.weight" in out["schema"] and "distill.losses.proj.layers" in out["schema"]
    assert out["digest_off"] == before  # off: existing runs stay up to date
    assert {"G/proj", "share:G/proj", "weight:G/proj"} <= set(out["keys"]), out["keys"]
    assert not [k for k in out["teacher_keys"] if "proj" in k], out["teacher_keys"]
    assert out["state"] == ["G.encoder.bias", "G.encoder.weight"], out["state"]
    assert any("proj" in line for line in out["report"]), out["report"]
