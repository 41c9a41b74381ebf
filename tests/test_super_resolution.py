"""A super-resolution teacher (output 2x the input) through the whole pipeline: folder data, KD + SRP + a GAN
whose real samples are the teacher's outputs, evaluation at the output resolution, ONNX export and profiling."""

import json
import shutil

import numpy as np
import torch
from conftest import ROOT, run_cli
from PIL import Image

from compressor.data import image_row

RECIPE = """
name: sr2
seed: 0
device: cpu
data: {kind: folder, root: images, size: 32, batch_size: 2}
teacher:
  import: "nets.py:SRVGGNetCompact"
  kwargs: {num_feat: 16, num_conv: 2, upscale: 2}
  checkpoint: realesr.pth
  input_range: [0, 1]
  output_range: [0, 1]
student: {width: 0.5, method: prune}
distill:
  steps: 2
  checkpoint_every: 2
  log_every: 1
  sample_every: 2
  teacher_as_real: true
  discriminator: {ndf: 8, n_layers: 2}
  losses: {kd: {weight: 10.0}, srp: {weight: 10.0, layers: [body.2]}}
evaluate: {metrics: [psnr, ssim], samples: 2, max_images: 3}
export: {onnx: {dynamic: [batch]}}
profile: {backends: [ort-cpu], batch: [1], size: [32], warmup: 1, iters: 2}
"""


def test_image_row_enlarges_the_input_next_to_an_x2_output():
    row = image_row([torch.zeros(3, 8, 8), torch.ones(3, 16, 16)])
    assert row.shape == (3, 16, 32)
    assert row[:, :, :16].abs().max() == 0 and row[:, :, 16:].min() == 1


def test_an_x2_super_resolution_teacher_runs_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 3)):
        (tmp_path / "images" / split).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / "images" / split / f"{i}.png")
    shutil.copy(ROOT / "tests" / "published_nets.py", tmp_path / "nets.py")  # what the recipe imports
    from published_nets import make_srvgg  # the same code, for the checkpoint

    torch.manual_seed(0)
    # the layout Real-ESRGAN publishes: weights under 'params_ema'
    torch.save({"params_ema": make_srvgg(num_feat=16, num_conv=2, upscale=2).state_dict()}, tmp_path / "realesr.pth")
    (tmp_path / "sr.yaml").write_text(RECIPE)
    res = run_cli(["sr.yaml", "--out", str(tmp_path / "runs")], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "runs" / "sr2"

    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"G/kd", "G/srp", "G/gan", "G/disc"} <= set(logged[-1]), logged[-1]
    assert all(np.isfinite(v) for row in logged for v in row.values())

    ev = json.loads((run / "eval.json").read_text())
    assert ev["size"] == 32 and ev["output_size"] == [64, 64]
    assert ev["student"]["psnr_vs_teacher"] > 10 and 0 < ev["student"]["ssim_vs_teacher"] <= 1
    assert ev["student"]["params"] < ev["teacher"]["params"]
    assert "at 32² (output 64²)" in (run / "report.md").read_text()

    # the sample grids put the enlarged input beside the x2 outputs: rows of 64 px
    step = Image.open(next((run / "samples").glob("step_*.png")))
    assert step.size[1] == 2 * 64 and step.size[0] % 64 == 0

    import onnxruntime as ort

    sess = ort.InferenceSession(str(run / "student.onnx"), providers=["CPUExecutionProvider"])
    x = np.zeros((1, 3, 32, 32), np.float32)
    assert sess.run(None, {sess.get_inputs()[0].name: x})[0].shape == (1, 3, 64, 64)
    prof = json.loads((run / "profile.json").read_text())
    assert prof and "student" in json.dumps(prof)

    # the student folder exported again in a fresh process, at a size of the user's choosing, no wrapper code
    res = run_cli(["export", str(run), "--out", "exp", "--size", "48", "--trust-code"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    sess = ort.InferenceSession(str(tmp_path / "exp" / "student.onnx"), providers=["CPUExecutionProvider"])
    x = np.zeros((2, 3, 48, 48), np.float32)
    assert sess.run(None, {sess.get_inputs()[0].name: x})[0].shape == (2, 3, 96, 96)
