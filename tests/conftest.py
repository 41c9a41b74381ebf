import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
FACADES = (ROOT.parent / "shared" / "datasets" / "facades").resolve()

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("COMPRESSOR_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def tiny_recipe_text(name="tiny", extra="") -> str:
    return f"""
name: {name}
seed: 0
device: cpu
data: {{kind: synthetic, direction: BtoA, size: 32, batch_size: 2, synthetic: {{train: 8, test: 4}}}}
teacher:
  arch: resnet_6blocks
  kwargs: {{ngf: 8, norm: instance}}
  train: {{steps: 6}}
student: {{width: 0.5}}
distill:
  steps: 6
  checkpoint_every: 2
  log_every: 2
  sample_every: 3
  losses: {{srp: {{weight: 10.0, layers: [encoder, res_mid]}}}}
  discriminator: {{ndf: 8, n_layers: 2}}
evaluate: {{metrics: [psnr, ssim], samples: 2}}
export: {{onnx: {{dynamic: [batch]}}}}
profile: {{backends: [ort-cpu], batch: [1], warmup: 1, iters: 3}}
{extra}
"""


@pytest.fixture
def tiny_recipe(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(tiny_recipe_text())
    return p


def run_cli(args, cwd=None, timeout=600, env=None):
    """Run the CLI in a subprocess as a user would; returns CompletedProcess."""
    import subprocess

    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.setdefault("OMP_NUM_THREADS", "2")
    if env:
        e.update(env)
    return subprocess.run(
        [sys.executable, "-m", "compressor"] + [str(a) for a in args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=e,
    )
