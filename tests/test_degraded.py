"""Published teachers as they are: degraded data (clean images + a named degradation), grayscale, residual outputs,
the published-figure check, the plateau rule, the SRP gradient ratio and ``compress ablate``.

The DnCNN tests read ``../shared/teachers/dncnn`` (the published weights and test sets) and skip where it is absent.
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import ROOT, one_error_line, run_cli
from PIL import Image

from compressor.data import TEST_NOISE_SEED, make_dataset
from compressor.models.ranges import RangeWrapper
from compressor.recipe import DataSpec
from compressor.schedule import Plateau

DNCNN = ROOT.parent / "shared" / "teachers" / "dncnn"
needs_dncnn = pytest.mark.skipif(
    not (DNCNN / "dncnn_s25.pth").is_file(), reason=f"the published DnCNN teacher is not at {DNCNN}"
)


def _clean_folder(root: Path, n: int = 4, size=(48, 40), mode="L") -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("test", 2)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / split / f"{i}.png")
    return root


# ------------------------------------------------------------------------------------------------ data


def test_noise_is_fresh_per_visit_and_fixed_for_test_images(tmp_path):
    root = _clean_folder(tmp_path / "d")
    spec = DataSpec(kind="degraded", root=str(root), size=16, channels=1, degrade={"noise_sigma": 25})
    train = make_dataset(spec, root, "train", seed=3)
    a, b = train[1], train[1 + len(train)]  # the same image in the next epoch
    assert a["input"].shape == (1, 16, 16) and a["target"].shape == (1, 16, 16)
    assert not torch.equal(a["input"] - a["target"], b["input"] - b["target"])  # fresh noise (and crop)
    noise = (a["input"] - a["target"]) * 255 / 2  # [-1, 1] is twice [0, 1]
    assert abs(float(noise.std()) - 25) < 4
    test1 = make_dataset(spec, root, "test", seed=3)[0]
    test2 = make_dataset(spec, root, "test", seed=99)[0]  # another recipe seed: the same noisy test input
    assert test1["input"].shape == (1, 40, 48)  # whole image, no resize
    assert torch.equal(test1["input"], test2["input"])
    clean = np.asarray(Image.open(root / "test" / "0.png"), np.float32) / 255.0
    want = clean + np.random.default_rng([TEST_NOISE_SEED, 0]).standard_normal((1, 40, 48), dtype=np.float32)[0] * (
        25 / 255
    )
    assert np.allclose((test1["input"][0].numpy() + 1) / 2, want, atol=1e-5)  # σ/255 on [0, 1], not clipped


def test_downscale_and_jpeg_make_smaller_inputs_of_rgb_images(tmp_path):
    root = _clean_folder(tmp_path / "d", size=(50, 42), mode="RGB")
    spec = DataSpec(kind="degraded", root=str(root), size=8, degrade={"downscale": 4, "jpeg_quality": 30})
    item = make_dataset(spec, root, "train", 0)[0]
    assert item["input"].shape == (3, 8, 8) and item["target"].shape == (3, 32, 32)
    test = make_dataset(spec, root, "test", 0)[0]
    assert test["target"].shape == (3, 40, 48) and test["input"].shape == (3, 10, 12)  # cropped to a multiple of 4


def test_degraded_recipe_errors_are_one_line(tmp_path):
    root = _clean_folder(tmp_path / "d")
    for bad, needle in (
        ("{kind: degraded, root: d, size: 16}", "data.degrade"),
        ("{kind: degraded, root: d, size: 16, degrade: {}}", "noise_sigma"),
        ("{kind: degraded, root: d, size: 16, degrade: {noise_sigma: 300}}", "noise_sigma"),
        ("{kind: paired, root: d, size: 16, degrade: {noise_sigma: 25}}", "data.degrade"),
        ("{kind: degraded, root: d, size: 16, channels: 2, degrade: {noise_sigma: 25}}", "data.channels"),
    ):
        p = root.parent / "r.yaml"
        p.write_text(f"name: x\ndata: {bad}\nteacher: {{arch: resnet_6blocks}}\n")
        res = run_cli(["validate", p])
        one_error_line(res.stderr, res.returncode, needle)
    p = root.parent / "r.yaml"
    p.write_text(
        "name: x\ndata: {kind: degraded, root: d, size: 16, test_split: Set99, degrade: {noise_sigma: 25}}\n"
        "teacher: {arch: resnet_6blocks}\n"
    )
    res = run_cli(["validate", p])
    one_error_line(res.stderr, res.returncode, "Set99")  # a missing test folder


# ------------------------------------------------------------------------------------------------ residual


class NoiseNet(nn.Module):
    """Returns a fixed fraction of its input, like a denoiser that returns the noise."""

    def __init__(self, channels=1):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("residual", ["subtract", "add", "upsample_add"])
def test_residual_outputs_are_combined_in_the_native_range(residual):
    net = NoiseNet()
    w = RangeWrapper(net, (0, 1), (0, 1), None, residual)
    x = torch.rand(1, 1, 8, 8) * 2 - 1
    native = (x + 1) / 2
    out = net(native)
    image = {"subtract": native - out, "add": native + out, "upsample_add": native + out}[residual]
    assert torch.allclose(w(x), image * 2 - 1, atol=1e-6)


def test_upsample_add_enlarges_the_input():
    class Sr(nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], x.shape[1], x.shape[2] * 2, x.shape[3] * 2)

    w = RangeWrapper(Sr(), residual="upsample_add")
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    assert torch.allclose(w(x), nn.functional.interpolate(x, size=(16, 16), mode="bicubic", align_corners=False))


def test_residual_of_another_shape_is_one_line():
    from compressor.errors import RecipeError

    class Sr(nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], x.shape[1], x.shape[2] * 2, x.shape[3] * 2)

    with pytest.raises(RecipeError, match="upsample_add"):
        RangeWrapper(Sr(), residual="subtract")(torch.zeros(1, 3, 8, 8))


# ------------------------------------------------------------------------------------------------ DnCNN


def _dncnn_recipe(tmp_path, extra_teacher="", data_extra="", name="dn", test_split="Set12", n=3) -> Path:
    net = ROOT / "recipes" / "published" / "dncnn.py"
    p = tmp_path / "dn.yaml"
    p.write_text(
        f"name: {name}\ndevice: cpu\n"
        f"data: {{kind: degraded, root: {DNCNN}, test_split: {test_split}, channels: 1, size: 24, batch_size: 2, "
        f"degrade: {{noise_sigma: 25}}{data_extra}}}\n"
        f"teacher: {{import: '{net}:DnCNN', kwargs: {{channels: 1}}, checkpoint: {DNCNN / 'dncnn_s25.pth'}, "
        f"input_range: [0, 1], output_range: [0, 1], residual: subtract{extra_teacher}}}\n"
        "student: {width: 0.5, method: prune}\n"
        "distill: {steps: 2, log_every: 1, checkpoint_every: 2, sample_every: 100, lr: 0.001, beta1: 0.9, "
        "losses: {gan: {weight: 0}, recon: {weight: 0}, kd: {weight: 1, loss: mse}, srp: {weight: 0}}}\n"
        f"evaluate: {{metrics: [psnr, ssim], batch_size: 1, max_images: {n}, samples: 1}}\n"
        "export: {onnx: {dynamic: [batch, hw]}}\n"
        "profile: {backends: [ort-cpu], size: [32], warmup: 1, iters: 2}\n"
    )
    return p


def _reference_psnr(split: str, n: int, sigma: float = 25) -> float:
    """DnCNN's PSNR on the first ``n`` images of a test set, computed here without the toolkit's wrapper, data or
    metrics: the published network, ``x - net(x)`` clamped to [0, 1], PSNR on floats (as its repository does)."""
    sys.path.insert(0, str(ROOT / "recipes" / "published"))
    from dncnn import DnCNN

    net = DnCNN(1).eval()
    state = torch.load(DNCNN / "dncnn_s25.pth", map_location="cpu", weights_only=True)
    net.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=False)
    vals = []
    for i, f in enumerate(sorted((DNCNN / split).glob("*.png"))[:n]):
        clean = np.asarray(Image.open(f).convert("L"), np.float32) / 255.0
        noise = np.random.default_rng([TEST_NOISE_SEED, i]).standard_normal((1,) + clean.shape, dtype=np.float32)
        x = torch.from_numpy(clean + noise[0] * sigma / 255)[None, None]
        with torch.no_grad():
            y = (x - net(x)).clamp(0, 1)[0, 0].numpy()
        vals.append(10 * math.log10(1.0 / float(np.mean((y.astype(np.float64) - clean) ** 2))))
    return float(np.mean(vals))


@needs_dncnn
def test_published_dncnn_reproduces_its_figure_through_the_toolkit(tmp_path):
    ref = _reference_psnr("Set12", 3)
    p = _dncnn_recipe(tmp_path, extra_teacher=f", expect: {{psnr: {ref:.4f}, tolerance: 0.01}}")
    res = run_cli([p, "--out", tmp_path / "runs", "--only", "teacher", "-q"])
    assert res.returncode == 0, res.stderr[-3000:]
    check = json.loads((tmp_path / "runs" / "dn" / "teacher.json").read_text())["published_check"]
    assert abs(check["psnr"] - ref) < 1e-3 and check["n_images"] == 3


@needs_dncnn
@pytest.mark.parametrize("mistake", ["residual sign", "sigma", "range"])
def test_a_teacher_that_misses_its_figure_is_never_distilled(tmp_path, mistake):
    ref = _reference_psnr("Set12", 3)
    p = _dncnn_recipe(tmp_path, extra_teacher=f", expect: {{psnr: {ref:.4f}, tolerance: 0.05}}")
    text = p.read_text()
    if mistake == "residual sign":
        text = text.replace("residual: subtract", "residual: add")
    elif mistake == "sigma":
        text = text.replace("noise_sigma: 25", "noise_sigma: 15")
    else:  # the network's [0, 1] not declared: the toolkit would feed it [-1, 1]
        text = text.replace("input_range: [0, 1], output_range: [0, 1], ", "")
    p.write_text(text)
    res = run_cli([p, "--out", tmp_path / "runs", "-q"])
    one_error_line(res.stderr, res.returncode, "teacher.expect.psnr", "not distilled")
    assert not (tmp_path / "runs" / "dn" / "teacher.safetensors").exists()


@needs_dncnn
def test_an_rgb_checkpoint_on_grayscale_data_is_one_line(tmp_path):
    sys.path.insert(0, str(ROOT / "recipes" / "published"))
    from dncnn import DnCNN

    torch.save(DnCNN(3, num_of_layers=5).state_dict(), tmp_path / "rgb.pth")
    p = _dncnn_recipe(tmp_path)
    p.write_text(
        p.read_text()
        .replace("kwargs: {channels: 1}", "kwargs: {channels: 3, num_of_layers: 5}")
        .replace(str(DNCNN / "dncnn_s25.pth"), str(tmp_path / "rgb.pth"))
    )
    res = run_cli([p, "--out", tmp_path / "runs", "-q"])
    one_error_line(res.stderr, res.returncode, "data.channels", "RGB (3-channel)", "grayscale")


@needs_dncnn
def test_dncnn_student_goes_through_the_whole_pipeline(tmp_path):
    """Width 0.5 of the published teacher: distil (2 steps), evaluate against the clean images and the teacher on
    whole Set12 images, export (parity) and profile; the student keeps the residual and the ranges; the report shows
    the published-figure check and the student against the ground truth and the teacher."""
    ref = _reference_psnr("Set12", 2)
    p = _dncnn_recipe(tmp_path, n=2, extra_teacher=f", expect: {{psnr: {ref:.3f}, tolerance: 0.01}}")
    res = run_cli([p, "--out", tmp_path / "runs", "-q"])
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "runs" / "dn"
    ev = json.loads((run / "eval.json").read_text())
    assert ev["teacher"]["psnr"] > 29 and "psnr_vs_teacher" in ev["student"]
    assert ev["output_size"] == [256, 256]
    plan = json.loads((run / "student.json").read_text())
    assert plan["teacher"]["residual"] == "subtract" and plan["teacher"]["input_range"] == [0.0, 1.0]
    exp = json.loads((run / "export.json").read_text())
    assert exp["files"]["student.onnx"]["parity"]["passed"]
    report = (run / "report.md").read_text()
    assert "The teacher's published figure" in report and f"{ref:.2f} dB on Set12 (2 images)" in report
    assert "dB from the teacher's" in report


# ------------------------------------------------------------------------------------------------ schedules


def test_plateau_lowers_the_rate_then_stops_when_flat():
    p = Plateau(every=10, patience=2, min_delta=0.01, factor=0.1, decays=1)
    actions = [p.update(10 * (i + 1), v) for i, v in enumerate([1.0, 0.9, 0.899, 0.898, 0.5, 0.499, 0.4991])]
    assert actions == [None, None, None, "decay", None, None, "stop"]
    assert p.scale == pytest.approx(0.1) and p.converged
    q = Plateau(10, 2, 0.01, 0.1, 1)
    q.load_state_dict(json.loads(json.dumps(p.state_dict())))
    assert q.state_dict() == p.state_dict()


def _synthetic_recipe(tmp_path, distill: str) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(
        "name: s\ndevice: cpu\ndata: {kind: synthetic, direction: BtoA, size: 32, batch_size: 2, "
        "synthetic: {train: 8, test: 2}}\n"
        "teacher: {arch: resnet_6blocks, kwargs: {ngf: 8, norm: instance}, train: {steps: 2}}\n"
        "student: {width: 0.5}\n"
        f"distill: {{{distill}, checkpoint_every: 5, sample_every: 1000, discriminator: {{ndf: 8, n_layers: 2}}}}\n"
        "evaluate: {metrics: [psnr], samples: 1}\n"
    )
    return p


def test_schedule_plateau_stops_a_run_that_is_flat_and_resume_keeps_the_decision(tmp_path):
    p = _synthetic_recipe(
        tmp_path,
        "steps: 200, lr: 0.00001, schedule: plateau, log_every: 5, "
        "plateau: {every: 2, patience: 1, min_delta: 0.5, decays: 1, val_images: 2}",
    )
    res = run_cli([p, "--out", tmp_path / "runs", "--only", "teacher,student,distill", "-q"])
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "s" / "distill.json").read_text())
    assert summary["converged"] and summary["step"] == 6  # flat at 4 (decay), flat again at 6 (stop)
    assert summary["plateau"]["done_decays"] == 1
    res = run_cli([p, "--out", tmp_path / "runs", "--only", "distill", "--force", "-q"])
    assert res.returncode == 0 and json.loads((tmp_path / "runs" / "s" / "distill.json").read_text())["step"] == 6


def test_srp_grad_ratio_holds_srp_at_a_multiple_of_kd(tmp_path):
    p = _synthetic_recipe(
        tmp_path,
        "steps: 12, log_every: 3, losses: {gan: {weight: 0}, recon: {weight: 0}, kd: {weight: 10}, "
        "srp: {weight: 5, normalize: rows, layers: [encoder, res_mid], grad_ratio: 0.5}}",
    )
    res = run_cli([p, "--out", tmp_path / "runs", "--only", "teacher,student,distill", "-q"])
    assert res.returncode == 0, res.stderr[-3000:]
    recs = [json.loads(line) for line in (tmp_path / "runs" / "s" / "metrics.jsonl").read_text().splitlines()]
    ratios = [r["gradnorm:G/srp"] / r["gradnorm:G/kd"] for r in recs if "gradnorm:G/srp" in r]
    assert len(ratios) == 4 and all(0.2 < r < 1.25 for r in ratios), ratios  # 0.5 kept, within batch noise
    assert recs[-1]["weight:G/srp"] != 5  # the weight moved to keep it


def test_compress_ablate_runs_the_paired_protocol(tmp_path):
    p = _synthetic_recipe(
        tmp_path,
        "steps: 3, log_every: 1, losses: {gan: {weight: 0}, recon: {weight: 0}, kd: {weight: 10}, "
        "srp: {weight: 5, normalize: rows, layers: [encoder]}}",
    )
    out = tmp_path / "abl"
    res = run_cli(["ablate", p, "--out", out, "--seeds", "0,1000", "-q"], timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads((out / "s" / "ablate.json").read_text())
    (cell,) = doc["cells"]
    assert set(cell["arms"]) == {"scratch", "kd", "kd_srp", "kd_matched"} and cell["seeds"] == [0, 1000]
    assert cell["arms"]["kd_matched"]["kd_scale"] > 1  # KD raised by SRP's measured gradient mass
    claims = {(c["arm"], c["base"]) for c in cell["claims"]}
    assert {("kd", "scratch"), ("kd_srp", "kd"), ("kd_srp", "kd_matched")} <= claims
    md = (out / "s" / "ablate.md").read_text()
    assert "kd_srp − kd_matched" in md
    # a second call trains nothing and writes the same tables
    res = run_cli(["ablate", p, "--out", out, "--seeds", "0,1000", "--tables-only", "-q"])
    assert res.returncode == 0 and (out / "s" / "ablate.md").read_text() == md
    res = run_cli(["ablate", p, "--out", out, "--arms", "kd,bogus", "-q"])
    one_error_line(res.stderr, res.returncode, "--arms", "bogus")
    _per_layer_against_uniform(tmp_path, p, out)


def _per_layer_against_uniform(tmp_path, p, out):
    """``--widths 0.5,plan.json``: the per-layer student of a plan trained beside the uniform one (whose kd runs the
    ablation above finished) with the same seeds, and compared with it, paired by seed and image."""
    from compressor.app.layerwise import plan_layers
    from compressor.complexity import profile_model
    from compressor.models import build_generator
    from compressor.recipe import BudgetSpec

    t = build_generator("resnet_6blocks", ngf=8, norm="instance").eval()
    t.compressor_spec = {"arch": "resnet_6blocks", "kwargs": {"ngf": 8, "norm": "instance"}}
    full = profile_model(t, (1, 3, 32, 32))["macs"]
    plan = plan_layers(t, BudgetSpec(macs=full * 0.3), size=32, run_dir=tmp_path / "layers-30")
    args = ["ablate", p, "--out", out, "--arms", "kd", "--seeds", "0,1000", "-q"]
    res = run_cli(args + ["--widths", f"0.5,{tmp_path / 'layers-30' / 'plan.json'}"], timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    built = json.loads((out / "s" / "s-w-layers-30-inherit-kd-s0" / "student_init" / "student.json").read_text())
    assert built["widths"] == plan["widths"]
    doc = json.loads((out / "s" / "ablate.json").read_text())
    assert [c["student"] for c in doc["cells"]] == ["w0.5", "w-layers-30"]
    claims = doc["student_claims"]
    assert {(c["student"], c["base"], c["arm"]) for c in claims} == {("w-layers-30", "w0.5", "kd")}
    assert all(c["seeds"] == [0, 1000] and c["lo"] <= c["estimate"] <= c["hi"] for c in claims)
    assert "| w-layers-30 − w0.5 (kd, inherit; 2 seeds) |" in (out / "s" / "ablate.md").read_text()
    res = run_cli(args + ["--widths", "0.5,nothere.json"])
    one_error_line(res.stderr, res.returncode, "--widths", "nothere.json")


def test_ablation_caches_refuse_links_and_never_write_through_them(tmp_path):
    """The ablation's per-image caches sit in run folders: a link there is one error line (never read), a stale or
    broken file is computed again, and a write replaces the file instead of going through a link."""
    import numpy as np

    from compressor.app.ablate import _load_cached, _save_cached
    from compressor.errors import UserError

    path = tmp_path / "per_image.npz"
    assert _load_cached(path, "k") is None
    _save_cached(path, {"key": np.array("k"), "psnr": np.arange(3.0)})
    assert _load_cached(path, "k")["psnr"].tolist() == [0.0, 1.0, 2.0]
    assert _load_cached(path, "other") is None  # stale: computed again
    path.write_bytes(b"not an npz")
    assert _load_cached(path, "k") is None  # broken: computed again
    foreign = tmp_path / "foreign.npz"
    foreign.write_bytes(b"someone else's")
    path.unlink()
    path.symlink_to(foreign)
    with pytest.raises(UserError, match="is a symlink"):
        _load_cached(path, "k")
    _save_cached(path, {"key": np.array("k")})
    assert foreign.read_bytes() == b"someone else's" and not path.is_symlink()
