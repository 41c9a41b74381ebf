"""Teachers with other value ranges: [0, 255] and [0, 1] networks declared in the recipe, with no wrapper code."""

import json
import shutil

import pytest
import torch
from conftest import ROOT, run_cli

from compressor.features import resolve_taps
from compressor.models import build_from_spec, with_ranges
from compressor.models.ranges import RangeWrapper

FACADES = ROOT.parent / "shared" / "datasets" / "facades"


def test_a_declared_range_converts_at_the_edges():
    net = torch.nn.Conv2d(3, 3, 1)
    wrapped = with_ranges(net, {"input_range": [0, 255], "output_range": [0, 1]})
    assert isinstance(wrapped, RangeWrapper)
    x = torch.rand(1, 3, 4, 4) * 2 - 1
    native = net((x + 1) * 127.5)
    assert torch.allclose(wrapped(x), native * 2 - 1, atol=1e-4)
    assert with_ranges(net, {"input_range": [-1, 1], "output_range": [-1, 1]}) is net


def test_saved_spec_rebuilds_the_wrapper_and_module_names_still_resolve():
    spec = {
        "import": "published_nets:make_transformer_net",
        "kwargs": {"c": 8},
        "input_range": [0, 255],
        "output_range": [0, 255],
    }
    model = build_from_spec(spec, allow_import=True)
    assert isinstance(model, RangeWrapper) and model.compressor_spec == spec
    assert resolve_taps(model, ["res1"]) == {"res1": "model.res1"}  # the network's own names work


RECIPE = """
name: style255
seed: 0
device: cpu
data: {{kind: folder, root: {root}, size: 32, batch_size: 2, train_split: train, test_split: test}}
teacher:
  import: "nets.py:make_transformer_net"
  kwargs: {{c: 8}}
  checkpoint: teacher.pth
  input_range: [0, 255]
  output_range: [0, 255]
student: {{width: 0.5, method: prune}}
distill:
  steps: 4
  checkpoint_every: 2
  log_every: 2
  sample_every: 4
  losses: {{gan: {{weight: 0}}, recon: {{weight: 0}}, kd: {{weight: 10.0}}, srp: {{weight: 10.0, layers: [res1]}}}}
evaluate: {{metrics: [psnr], samples: 2, max_images: 4}}
export: {{onnx: {{dynamic: [batch]}}}}
profile: {{backends: [ort-cpu], batch: [1], size: [32], warmup: 1, iters: 3}}
"""


@pytest.mark.skipif(not FACADES.is_dir(), reason="../shared/datasets/facades is absent")
def test_a_0_255_fast_style_teacher_runs_end_to_end_on_facades(tmp_path):
    """`compress` on an imported fast-neural-style net that takes and returns [0, 255], on the facades photos as
    folder data: no wrapper code, the student keeps the teacher's ranges, the ONNX records them."""
    data = tmp_path / "facades"
    for split, n in (("train", 8), ("test", 4)):  # a few real photos; the set itself stays in ../shared
        (data / split).mkdir(parents=True)
        for f in sorted((FACADES / split).iterdir())[:n]:
            shutil.copy(f, data / split / f.name)
    shutil.copy(ROOT / "tests" / "published_nets.py", tmp_path / "nets.py")  # what the recipe imports
    from published_nets import make_transformer_net  # the same code, for the checkpoint

    torch.manual_seed(0)
    torch.save(make_transformer_net(8).state_dict(), tmp_path / "teacher.pth")
    (tmp_path / "style.yaml").write_text(RECIPE.format(root=data))
    res = run_cli(["style.yaml", "--out", str(tmp_path / "runs")], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "runs" / "style255"
    plan = json.loads((run / "student.json").read_text())
    assert plan["teacher"]["input_range"] == [0, 255] and plan["teacher"]["output_range"] == [0, 255]
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(run / "student.onnx")).metadata_props}
    assert meta["network_input_range"] == "[0.0, 255.0]" and meta["value_range"] == "[-1, 1]"
    ev = json.loads((run / "eval.json").read_text())
    assert ev["student"]["psnr_vs_teacher"] > 0 and ev["student"]["params"] < ev["teacher"]["params"]
    assert (run / "report.md").is_file()
