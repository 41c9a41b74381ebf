"""The SRP ablation on real facades (labels -> photo), with paired bootstrap intervals, in one command.

    python tools/ablation.py --scale cpu-long [--seeds 0,1000,2000,3000] [--widths 0.25] [--out runs/ablation]
                             [--bootstrap 1000] [--write-docs]

Trains one pix2pix teacher, then, at the same width, steps and seeds, five students:

1. scratch         GAN + L1, no teacher
2. kd              + KD (L1 to the teacher's output)
3. kd_srp          + KD + SRP (semantic relation matrix)
4. kd_feat         + KD + plain feature distillation through 1x1 adapters
5. kd_srp_inherit  kd_srp, starting from the teacher's strongest channels instead of random weights

and answers four claims with paired differences over the same seeds and test images:

    KD helps              kd − scratch
    SRP helps over KD     kd_srp − kd
    inheriting helps      kd_srp_inherit − kd_srp
    feature distillation  kd_feat − kd

**Scale ``cpu-srp``** asks whether SRP acts once it is weighted to reach the student: both zoo families (unet_128
at 128², resnet_6blocks at 64²), the pix2pix regime (GAN + L1 to the photo + KD + SRP) and a pure-distillation
regime (GAN + KD + SRP, no L1 to the photo, closer to the SRP paper's), and four arms per block: ``kd`` and SRP at
three weights, ``srp_old`` (10 per (HW)² entry, the old default), ``srp_bal`` (the balanced default per relation
row) and ``srp_10x``. Its primary metric is PSNR against the teacher; the held-out relation distance (the per-row
SRP loss between student and teacher features on the test pairs) checks that SRP acted, and the arms table shows
SRP's mean share of the student's gradient norm from metrics.jsonl.

**Pairing.** Seed k of every arm sees the same data order and augmentation (the sampler and the jitter depend on
the recipe seed alone), the same discriminator initialisation (built here from the seed alone; see
``paired_discriminator``), and, for the four scratch-initialised arms, the same student initialisation. Each run
records fingerprints of these in ``ablation_run.json`` and the tool checks them across arms before any table is
drawn. Seeds are spaced (0, 1000, ...) because the sampler draws epoch e of seed s from the permutation of s + e:
seeds 0 and 1 would share all but one epoch's order.

**Metrics.** Every student is evaluated image by image on the test pairs (``per_image.npz`` in its run folder):
Inception features (for KID and FID), PSNR/SSIM against the ground truth and against the teacher's output. KID
(unbiased) is the primary metric below 1,000 test images, FID is reported with its interval but is biased at
small n. Intervals are two-level percentile bootstraps over seeds and test images (``compressor/stats.py``)
with a fixed RNG, so a rerun prints the same digits. LPIPS is not reported: see ``LPIPS_ABSENT``.

**Convergence.** A run is converged when its generator loss is flat within ±5% over the last 20% of its steps
(least-squares line through the logged points); the tool prints the verdict for the teacher and every student
and plots the curves.

Every run is an ordinary compressor run folder; completed runs are skipped, so an interrupted ablation resumes
where it stopped. Scales: ``smoke`` is a plumbing check (seconds of training; numbers mean nothing); ``cpu`` the
first pass (128², 2k teacher / 800 student steps); ``cpu-long`` 128² with a teacher trained twice as long and
students 2.5x as long, at ngf/ndf 32 so that four seeds fit: about 1.5 hours on one core of this project's
machine (the command prints the time it took); ``gpu`` 256² with a tenth of the pix2pix schedule. On a machine shared with other jobs,
``OMP_NUM_THREADS=1`` avoids the spin-waiting of oversubscribed threads (several times faster there).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
# The bootstrap runs thousands of 106 x 106 SVDs; threaded OpenBLAS makes each of them up to 50x slower on a
# busy 2-core machine (its threads spin-wait for each other). numpy reads this before it loads OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import torch
import yaml

import compressor.stats as st
from compressor.app.pipeline import RunDir, RunOptions, load_run_teacher, run_pipeline
from compressor.data import ResumableSampler, make_dataset
from compressor.features import FeatureTaps, resolve_taps
from compressor.losses import srp_multi
from compressor.metrics import frechet_distance, load_inception, paired_metrics
from compressor.models import build_discriminator
from compressor.recipe import parse_recipe
from compressor.slim import load_student
from compressor.terms import SRP_DEFAULT_WEIGHT, SRP_OLD_DEFAULT_WEIGHT

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FACADES = ROOT.parent / "shared" / "datasets" / "facades"

SCALES = {
    "smoke": {
        "arch": "unet_128",
        "size": 128,
        "load_size": 136,
        "teacher_steps": 12,
        "student_steps": 10,
        "ngf": 8,
        "batch": 1,
        "ndf": 8,
        "log_every": 1,
        "max_test": 12,
        "eval_metrics": ["psnr", "ssim"],
        "seeds": "0,1000",
    },
    "smoke-srp": {  # the cpu-srp layout at plumbing scale (numbers mean nothing)
        "families": {
            "unet": {"arch": "unet_128", "ngf": 8, "size": 128, "load_size": 136, "layers": ["encoder", "mid"]},
            "resnet": {
                "arch": "resnet_6blocks",
                "ngf": 8,
                "size": 32,
                "load_size": 36,
                "layers": ["encoder", "res_mid"],
            },
        },
        "regimes": {"pix2pix": {"recon": 100.0}, "distill": {"recon": 0.0}},
        "teacher_steps": 8,
        "student_steps": 6,
        "batch": 1,
        "ndf": 8,
        "log_every": 2,
        "max_test": 8,
        "eval_metrics": ["psnr", "ssim"],
        "seeds": "0,1000",
        "kid": False,
        "primary": "psnr_t",
        "variants": "kd,srp_old,srp_bal,srp_10x",
        "stage_eval_images": 8,
    },
    "cpu": {
        "arch": "unet_128",
        "size": 128,
        "load_size": 143,
        "teacher_steps": 2000,
        "student_steps": 800,
        "ngf": 64,
        "batch": 1,
        "ndf": 64,
        "log_every": 100,
        "seeds": "0,1",
    },
    # a teacher trained for 10 epochs (400 pairs) and students for 5, at half the cpu scale's channels so that four
    # seeds x five arms fit in about 1.5 h on ONE core (measured steps: teacher 0.15 s, student 0.11 s at
    # OMP_NUM_THREADS=1; ngf 64 would cost 0.52 s and 0.28 s, about 4 h)
    "cpu-long": {
        "arch": "unet_128",
        "size": 128,
        "load_size": 143,
        "teacher_steps": 4000,
        "student_steps": 2000,
        "ngf": 32,
        "batch": 1,
        "ndf": 32,
        "log_every": 50,
        "eval_metrics": ["psnr", "ssim"],
        "seeds": "0,1000,2000,3000",
    },
    # SRP in the paper's regime as well as pix2pix's, both zoo families, three SRP weights (old default, balanced
    # default, 10x). Sized to the share of one core this project's 2-core machine gives one process while six
    # engineers work on it (15-30%; student steps measured there: unet 0.27 s to 1 s, resnet 0.12 s): about 10
    # minutes of an idle core, 35-60 minutes of wall time. Teachers of 1-1.5 epochs, students of 150 steps from
    # scratch, 2 seeds, 50 test pairs; teacher fidelity (PSNR/SSIM against the teacher) and held-out relation
    # distance. KID is not computed (Inception at 299² costs ~0.6 s per test image there, a minute per run).
    "cpu-srp": {
        "families": {
            "unet": {"arch": "unet_128", "ngf": 32, "size": 128, "load_size": 143, "layers": ["encoder", "mid"]},
            "resnet": {
                "arch": "resnet_6blocks",
                "ngf": 32,
                "size": 64,
                "load_size": 72,
                "layers": ["encoder", "res_mid"],
            },
        },
        "regimes": {"pix2pix": {"recon": 100.0}, "distill": {"recon": 0.0}},
        "teacher_steps": 500,
        "student_steps": 150,
        "batch": 1,
        "ndf": 16,
        "log_every": 50,
        "eval_metrics": ["psnr", "ssim"],
        "seeds": "0,1000",
        "kid": False,
        "primary": "psnr_t",
        "variants": "kd,srp_old,srp_bal,srp_10x",
        "stage_eval_images": 4,
        "max_test": 50,
    },
    "gpu": {
        "arch": "unet_256",
        "size": 256,
        "load_size": 286,
        "teacher_steps": 8000,
        "student_steps": 4000,
        "ngf": 64,
        "batch": 1,
        "ndf": 64,
        "log_every": 200,
        "eval_metrics": ["psnr", "ssim"],
        "seeds": "0,1000,2000,3000",
    },
}
VARIANTS = {
    "scratch": {"kd": 0.0, "srp": 0.0, "feat": 0.0},
    "kd": {"kd": 10.0, "srp": 0.0, "feat": 0.0},
    "kd_srp": {"kd": 10.0, "srp": 10.0, "normalize": "entries", "feat": 0.0},
    "kd_feat": {"kd": 10.0, "srp": 0.0, "feat": 10.0},
    "kd_srp_inherit": {"kd": 10.0, "srp": 10.0, "normalize": "entries", "feat": 0.0, "init": "inherit"},
    # the SRP weight sweep: the old default (10, per (HW)² entry), the balanced default (per row), 10x that
    "srp_old": {"kd": 10.0, "srp": SRP_OLD_DEFAULT_WEIGHT, "normalize": "entries", "feat": 0.0},
    "srp_bal": {"kd": 10.0, "srp": SRP_DEFAULT_WEIGHT, "normalize": "rows", "feat": 0.0},
    "srp_10x": {"kd": 10.0, "srp": 10 * SRP_DEFAULT_WEIGHT, "normalize": "rows", "feat": 0.0},
}
DEFAULT_VARIANTS = ["scratch", "kd", "kd_srp", "kd_feat", "kd_srp_inherit"]
LAYERS = ["encoder", "mid"]
# (claim, arm, baseline): the difference is arm − baseline
CLAIMS = [
    ("KD helps", "kd", "scratch"),
    ("SRP helps over KD", "kd_srp", "kd"),
    ("inheriting channels helps", "kd_srp_inherit", "kd_srp"),
    ("feature distillation helps over KD", "kd_feat", "kd"),
    (f"SRP at the old default ({SRP_OLD_DEFAULT_WEIGHT:g} per entry) helps over KD", "srp_old", "kd"),
    (f"SRP at the balanced default ({SRP_DEFAULT_WEIGHT:g} per row) helps over KD", "srp_bal", "kd"),
    (f"SRP at 10x the balanced default ({10 * SRP_DEFAULT_WEIGHT:g} per row) helps over KD", "srp_10x", "kd"),
]
# (key, label, better, per-image or set-level)
METRICS = [
    ("kid", "KID", "lower", "set"),
    ("fid", "FID", "lower", "set"),
    ("psnr_t", "PSNR vs teacher", "higher", "image"),
    ("ssim_t", "SSIM vs teacher", "higher", "image"),
    ("psnr", "PSNR vs photo", "higher", "image"),
    ("ssim", "SSIM vs photo", "higher", "image"),
    ("rel_t", "relation distance to teacher", "lower", "image"),
]
LPIPS_ABSENT = (
    "LPIPS is not reported: both maintained packages (`lpips` 0.1.4 and torchmetrics' LPIPS) ship only "
    "the small linear heads and build their AlexNet/VGG/SqueezeNet backbones through torchvision with "
    "ImageNet weights fetched from download.pytorch.org at first use; torchvision is not a dependency "
    "here and this toolkit downloads nothing at evaluation time. Teacher fidelity is PSNR and SSIM "
    "against the teacher's output."
)
DISC_SEED_OFFSET = 7919  # discriminator init of seed s draws from torch.manual_seed(s + this)
N_SAMPLES = 4  # test images kept per run for the sample grids
CONV_TAIL, CONV_TOL = 0.2, 0.05
log = logging.getLogger("ablation")


# ------------------------------------------------------------------------------------------------ running


def base_recipe(scale: dict, name: str, seed: int, data: Path) -> dict:
    return {
        "name": name,
        "seed": seed,
        "device": "auto",
        "data": {
            "kind": "paired",
            "root": str(data),
            "direction": "BtoA",
            "size": scale["size"],
            "load_size": scale["load_size"],
            "flip": True,
            "batch_size": scale["batch"],
        },
        "teacher": {"arch": scale["arch"], "kwargs": {"ngf": scale["ngf"], "norm": "batch"}},
        "student": {"width": 0.25, "method": "rebuild", "init": "scratch"},
        "distill": {
            "steps": scale["student_steps"],
            "checkpoint_every": 200,
            "log_every": scale["log_every"],
            "sample_every": 10**9,
            "discriminator": {"ndf": scale["ndf"], "n_layers": 3, "norm": "batch"},
        },
        "evaluate": {
            "metrics": scale.get("eval_metrics", ["fid", "kid", "psnr", "ssim"]),
            "samples": 4,
            "batch_size": 16,
            # the tool evaluates every test pair itself (evaluate_student); the stage's own pass can be short
            **({"max_images": scale["stage_eval_images"]} if "stage_eval_images" in scale else {}),
        },
    }


def fingerprint(obj) -> str:
    h = hashlib.sha256()
    if isinstance(obj, torch.nn.Module):
        for k, v in sorted(obj.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    elif isinstance(obj, Path):
        h.update(obj.read_bytes())
    else:
        h.update(json.dumps(obj).encode())
    return h.hexdigest()[:16]


def paired_discriminator(seed: int, record: dict) -> Callable[..., torch.nn.Module]:
    """A discriminator builder for the trainer (``RunOptions(build_discriminator=...)``) that builds every
    discriminator of a run from ``seed`` alone and fingerprints its initial weights into ``record``.

    The trainer builds its discriminator after loading the teacher, the student and (for SRP/feature arms) probing
    the taps, so from the global torch RNG the arms of one seed would start from different discriminators. The draw
    happens in a forked RNG, so nothing else in the run sees a different stream.
    """

    def build(*args, **kwargs):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + DISC_SEED_OFFSET)
            net = build_discriminator(*args, **kwargs)
        record["discriminator_init"] = fingerprint(net)
        return net

    return build


def data_order_fingerprint(n: int, seed: int, epochs: int) -> str:
    """The stream of training indices (epoch-encoded, so the augmentation draws are covered too)."""
    return fingerprint(list(itertools.islice(iter(ResumableSampler(n, seed)), n * max(1, epochs))))


def run(doc: dict, out: Path, only: list[str]) -> tuple[Path, dict]:
    """Run (or skip) one recipe; returns its folder and its pairing record."""
    recipe = parse_recipe(yaml.safe_dump(doc), source=f"{doc['name']}.yaml", base_dir=Path.cwd())
    src = out / "recipes" / f"{doc['name']}.yaml"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_text(yaml.safe_dump(doc, sort_keys=False))
    rd = out / doc["name"]
    info_file = rd / "ablation_run.json"
    info = json.loads(info_file.read_text()) if info_file.exists() else {}
    record: dict = {}
    options = RunOptions(
        resume=True, only=only, recipe_path=src, build_discriminator=paired_discriminator(doc["seed"], record)
    )
    run_pipeline(recipe, out, options)
    if record:  # the trainer built a discriminator: this invocation trained (or resumed) the run
        info["discriminator_init"] = record["discriminator_init"]
    # the pipeline's own record: the seconds of each stage's last completed run, kept across invocations
    info["seconds"] = {k: v.get("seconds", 0.0) for k, v in RunDir(rd).records().items()}
    if (rd / "student_init" / "student.safetensors").exists():
        info["student_init"] = fingerprint(rd / "student_init" / "student.safetensors")
    info_file.parent.mkdir(parents=True, exist_ok=True)
    info_file.write_text(json.dumps(info, indent=1))
    return rd, info


def recipe_of(doc: dict):
    return parse_recipe(yaml.safe_dump(doc), source=f"{doc['name']}.yaml", base_dir=Path.cwd())


def to_uint8(t: torch.Tensor) -> np.ndarray:
    return ((t.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu().numpy()


def relation_distance(feats_t: dict, feats_s: dict, layers: list[str]) -> np.ndarray:
    """Per image: the SRP loss between student and teacher features (per row, so in [0, 4]), mean over layers."""
    n = next(iter(feats_s.values())).shape[0]
    out = []
    for j in range(n):
        ft = {k: torch.as_tensor(feats_t[k][j : j + 1]).float() for k in layers}
        fs = {k: feats_s[k][j : j + 1].float() for k in layers}
        out.append(float(srp_multi(ft, fs, layers, normalize="rows", float64=True)) / len(layers))
    return np.asarray(out)


def evaluate_teacher(teacher_run: Path, recipe, inception, max_images, device, layers: list[str]) -> dict:
    """Real and teacher features, the teacher's outputs and tapped features on the test set, computed once."""
    path = teacher_run / "ablation_teacher.npz"
    digest = fingerprint(teacher_run / "teacher.safetensors")
    key = f"{digest}|{max_images}|{inception.digest if inception else None}|{','.join(layers)}"
    if path.exists():
        z = dict(np.load(path))
        if str(z["key"]) == key:
            return z
    teacher = load_run_teacher(RunDir(teacher_run)).to(device).eval()
    taps = resolve_taps(teacher, layers)
    ds = make_dataset(recipe.data, recipe.resolve_path(recipe.data.root), "test", recipe.seed, max_items=max_images)
    outs, real_f, teach_f, psnr, ssim, inputs, targets = [], [], [], [], [], [], []
    tapped: dict[str, list] = {k: [] for k in layers}
    with torch.no_grad():
        for i in range(0, len(ds), 16):
            items = [ds[j] for j in range(i, min(i + 16, len(ds)))]
            x = torch.stack([it["input"] for it in items]).to(device)
            y = torch.stack([it["target"] for it in items]).to(device)
            with FeatureTaps(teacher, taps) as tt:
                o = teacher(x)
            for k in layers:
                tapped[k].append(tt.features[k].float().cpu().numpy())
            outs.append(o.cpu().numpy())
            pm = paired_metrics(o, y)
            psnr.append(pm["psnr"].cpu().numpy())
            ssim.append(pm["ssim"].cpu().numpy())
            if inception is not None:
                real_f.append(inception(y).cpu().numpy())
                teach_f.append(inception(o).cpu().numpy())
            if i == 0:
                inputs, targets = to_uint8(x[:N_SAMPLES]), to_uint8(y[:N_SAMPLES])
    z = {
        "key": np.array(key),
        "outputs": np.concatenate(outs).astype(np.float32),
        "psnr": np.concatenate(psnr),
        "ssim": np.concatenate(ssim),
        "inputs": inputs,
        "targets": targets,
        "samples": to_uint8(torch.from_numpy(np.concatenate(outs)[:N_SAMPLES])),
        **{f"tap:{k}": np.concatenate(v) for k, v in tapped.items()},
    }
    if inception is not None:
        z["real_feats"], z["feats"] = np.concatenate(real_f), np.concatenate(teach_f)
    np.savez(path, **z)
    return z


def evaluate_student(rd: Path, recipe, teacher_eval: dict, inception, max_images, device, layers: list[str]) -> dict:
    """Per-image metrics of one student: features, PSNR/SSIM vs photo and vs teacher, the relation distance to the
    teacher on the SRP taps (held-out: the test pairs), a few outputs."""
    path = rd / "per_image.npz"
    key = f"{fingerprint(rd / 'student.safetensors')}|{teacher_eval['key']}"
    if path.exists():
        z = dict(np.load(path))
        if str(z["key"]) == key and "rel_t" in z:
            return z
    student = load_student(rd).to(device).eval()
    taps = resolve_taps(student, layers)
    ds = make_dataset(recipe.data, recipe.resolve_path(recipe.data.root), "test", recipe.seed, max_items=max_images)
    cols: dict[str, list] = {k: [] for k in ("psnr", "ssim", "psnr_t", "ssim_t", "feats", "rel_t")}
    samples = None
    with torch.no_grad():
        for i in range(0, len(ds), 16):
            items = [ds[j] for j in range(i, min(i + 16, len(ds)))]
            x = torch.stack([it["input"] for it in items]).to(device)
            y = torch.stack([it["target"] for it in items]).to(device)
            t = torch.from_numpy(teacher_eval["outputs"][i : i + len(items)]).to(device)
            with FeatureTaps(student, taps) as ts:
                o = student(x)
            ft = {k: teacher_eval[f"tap:{k}"][i : i + len(items)] for k in layers}
            cols["rel_t"].append(relation_distance(ft, ts.features, layers))
            pm, pt = paired_metrics(o, y), paired_metrics(o, t)
            for k in ("psnr", "ssim"):
                cols[k].append(pm[k].cpu().numpy())
                cols[f"{k}_t"].append(pt[k].cpu().numpy())
            if inception is not None:
                cols["feats"].append(inception(o).cpu().numpy())
            if i == 0:
                samples = to_uint8(o[:N_SAMPLES])
    z = {"key": np.array(key), "samples": samples, **{k: np.concatenate(v) for k, v in cols.items() if v}}
    np.savez(path, **z)
    return z


def loss_curve(metrics_file: Path) -> tuple[np.ndarray, np.ndarray]:
    """(steps, generator loss): the sum of the logged generator terms (every term but the discriminator's)."""
    steps, total = [], []
    if metrics_file.exists():
        for line in metrics_file.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            terms = [
                v
                for k, v in rec.items()
                if k not in ("step", "lr", "time_s") and not k.endswith("/disc") and ":" not in k  # not shares
            ]
            steps.append(rec["step"])
            total.append(sum(terms))
    return np.asarray(steps, float), np.asarray(total, float)


# ------------------------------------------------------------------------------------------------ analysis


def mean_share(metrics_file: Path, term: str = "G/srp") -> float | None:
    """The mean of a term's logged share of the student's gradient norm over a run (None: never logged)."""
    vals = []
    if metrics_file.exists():
        for line in metrics_file.read_text().splitlines():
            try:
                v = json.loads(line).get(f"share:{term}")
            except json.JSONDecodeError:
                continue
            if isinstance(v, (int, float)):
                vals.append(float(v))
    return float(np.mean(vals)) if vals else None


def check_pairing(infos: dict, arms: list[str], seeds: list[int], data_orders: dict) -> list[str]:
    """Problems with the pairing (empty when arm A seed k and arm B seed k share what they should)."""
    problems = []
    for seed in seeds:
        disc = {a: infos[(a, seed)].get("discriminator_init") for a in arms}
        if len({v for v in disc.values() if v}) > 1:
            problems.append(f"seed {seed}: discriminator initialisations differ across arms ({disc})")
        if any(v is None for v in disc.values()):
            missing = [a for a, v in disc.items() if v is None]
            problems.append(
                f"seed {seed}: no discriminator fingerprint for {', '.join(missing)} (trained by an "
                f"older version of this tool; pairing of the discriminator not verified)"
            )
        scratch_init = {infos[(a, seed)].get("student_init") for a in arms if VARIANTS[a].get("init") != "inherit"}
        if len(scratch_init) > 1:
            problems.append(f"seed {seed}: scratch-initialised students differ across arms")
    if len(set(data_orders.values())) != len(data_orders):
        problems.append("two seeds share a data order")
    return problems


def analyse(
    per: dict,
    teacher_eval: dict,
    arms: list[str],
    seeds: list[int],
    n_boot: int,
    rng_seed: int,
    primary: str | None = None,
) -> dict:
    """Per-arm estimates and per-claim paired differences, each with its two-level bootstrap interval."""
    has_feats = "real_feats" in teacher_eval
    real = teacher_eval.get("real_feats")
    n = len(teacher_eval["psnr"])
    resamples = st.resample_indices(len(seeds), n, n_boot, rng_seed)
    metrics = [m for m in METRICS if has_feats or m[3] == "image"]

    fid_cache: dict = {}

    def fid_values(arm: str, s: int, idx: np.ndarray) -> np.ndarray:
        """FID of one run on each row of draws; cached, as the arm table and the claims share the draws."""
        key = (arm, s, hashlib.sha1(np.ascontiguousarray(idx).tobytes()).hexdigest())
        if key not in fid_cache:
            fid_cache[key] = st.fid_statistic(real, [per[(arm, seeds[s])]["feats"]])(0, idx)
        return fid_cache[key]

    def stat(key: str, arm: str, base: str | None = None):
        if key == "kid":
            return st.kid_statistic(
                real,
                [per[(arm, s)]["feats"] for s in seeds],
                [per[(base, s)]["feats"] for s in seeds] if base else None,
            )
        if key == "fid":
            if base:
                return lambda s, idx: fid_values(arm, s, idx) - fid_values(base, s, idx)
            return lambda s, idx: fid_values(arm, s, idx)
        a = np.stack([per[(arm, s)][key] for s in seeds])
        d = a - np.stack([per[(base, s)][key] for s in seeds]) if base else a
        return lambda s, idx: d[s][idx].mean(-1)

    def interval(key, arm, base=None) -> st.Interval:
        return st.two_level_bootstrap(stat(key, arm, base), len(seeds), n, resamples=resamples)

    arms_out = {}
    for arm in arms:
        row = {key: interval(key, arm) for key, *_ in metrics}
        per_seed = {}
        for s in seeds:
            z = per[(arm, s)]
            per_seed[s] = {k: float(z[k].mean()) for k in ("psnr", "ssim", "psnr_t", "ssim_t", "rel_t") if k in z}
            if has_feats:
                per_seed[s]["kid"] = st.kid(real, z["feats"])
                per_seed[s]["fid"] = frechet_distance(real, z["feats"])
        arms_out[arm] = {"intervals": row, "per_seed": per_seed}
    teacher = {"psnr": float(teacher_eval["psnr"].mean()), "ssim": float(teacher_eval["ssim"].mean())}
    if has_feats:
        teacher["kid"] = st.kid(real, teacher_eval["feats"])
        teacher["fid"] = frechet_distance(real, teacher_eval["feats"])
    primary = primary or ("kid" if has_feats and n < 1000 else ("fid" if has_feats else "psnr_t"))
    claims = []
    for claim, arm, base in CLAIMS:
        if arm not in arms or base not in arms:
            continue
        diffs = {key: interval(key, arm, base) for key, *_ in metrics}
        better = {key: b for key, _, b, _ in metrics}
        claims.append(
            {
                "claim": claim,
                "arm": arm,
                "baseline": base,
                "diffs": diffs,
                "verdicts": {k: st.verdict(iv, better[k]) for k, iv in diffs.items()},
                "against": {k: st.against(iv, better[k]) for k, iv in diffs.items()},
                "verdict": st.verdict(diffs[primary], better[primary]),
            }
        )
    return {
        "arms": arms_out,
        "teacher": teacher,
        "claims": claims,
        "primary": primary,
        "n_images": n,
        "metrics": [m[0] for m in metrics],
        "n_boot": n_boot,
        "rng_seed": rng_seed,
    }


def best_worst(res: dict, arm: str) -> tuple[int, int]:
    """(best seed, worst seed) of an arm on the primary metric."""
    key = res["primary"]
    better = {k: b for k, _, b, _ in METRICS}[key]
    vals = res["arms"][arm]["per_seed"]
    order = sorted(vals, key=lambda s: vals[s][key], reverse=better == "higher")
    return order[0], order[-1]


def fmt_iv(iv: st.Interval, key: str, diff: bool) -> str:
    """Fixed-point, with two significant digits of the interval's width (KID in units of 10⁻³)."""
    scale = 1e3 if key == "kid" else 1.0
    e, lo, hi = iv.estimate * scale, iv.lo * scale, iv.hi * scale
    spread = hi - lo if hi > lo else abs(e)
    decimals = min(6, max(0, 1 - int(np.floor(np.log10(spread))))) if spread > 0 else 2
    while decimals < 6 and (lo > 0 or hi < 0) and 0 in (round(lo, decimals), round(hi, decimals)):
        decimals += 1  # an interval that excludes zero must not print an end point of 0
    sign = "+" if diff else ""
    return f"{e:{sign}.{decimals}f} [{lo:{sign}.{decimals}f}, {hi:{sign}.{decimals}f}]"


def render(
    res: dict,
    scale_name: str,
    scale: dict,
    seeds: list[int],
    width: float,
    params: dict,
    convergence: dict,
    shares: dict | None = None,
    title: str = "",
) -> str:
    """``shares``: per arm, SRP's mean share of the student's gradient norm over training (from metrics.jsonl)."""
    labels = {k: lab for k, lab, _, _ in METRICS}
    arrows = {k: "↓" if b == "lower" else "↑" for k, _, b, _ in METRICS}
    keys = res["metrics"]
    shares = shares or {}
    share_col = ["SRP grad share"] if shares else []
    head = (
        ["arm", "params"]
        + share_col
        + [f"{labels[k]}{' ×10³' if k == 'kid' else ''} {arrows[k]}" for k in keys]
        + ["converged", "best / worst seed"]
    )
    lines = [
        f"### {title}Arms (width {width:g}, {len(seeds)} seeds, {res['n_images']} test pairs)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    t = res["teacher"]
    tcells = [f"{t[k] * (1e3 if k == 'kid' else 1):.4g}" if k in t else "–" for k in keys]
    lines.append(
        f"| teacher ({scale['arch']}, ngf {scale['ngf']}) | {params.get('teacher', 0):,} | "
        + ("– | " if shares else "")
        + " | ".join(tcells)
        + f" | {convergence.get('teacher', '–')} | – |"
    )
    for arm, a in res["arms"].items():
        cells = [fmt_iv(a["intervals"][k], k, False) for k in keys]
        conv = convergence.get(arm, "–")
        b, w = best_worst(res, arm)
        share = ""
        if shares:
            v = shares.get(arm)
            share = ("–" if v is None else f"{100 * v:.2g}%") + " | "
        lines.append(f"| {arm} | {params.get(arm, 0):,} | {share}" + " | ".join(cells) + f" | {conv} | {b} / {w} |")
    lines += [
        "",
        (
            "Each cell: mean over seeds [95% two-level bootstrap interval over seeds and test images]. "
            f"KID ×10³. Converged: runs whose generator loss is flat within ±{100 * CONV_TOL:.0f}% over the "
            f"last {100 * CONV_TAIL:.0f}% of steps."
            + (
                " SRP grad share: SRP's share of the student's gradient norm (sum of the terms' norms), mean over "
                "the logged steps and seeds. Relation distance: the SRP loss (per row, in [0, 4], mean over the "
                "taps) between student and teacher features on the test pairs."
                if shares
                else ""
            )
        ),
        "",
    ]
    lines += [
        f"### {title}Claims (paired differences, arm − baseline; verdict on {labels[res['primary']]})",
        "",
        "| claim | arm − baseline | verdict | "
        + " | ".join(f"Δ {labels[k]}{' ×10³' if k == 'kid' else ''}" for k in keys)
        + " |",
        "|" + "---|" * (3 + len(keys)),
    ]
    for c in res["claims"]:
        cells = []
        for k in keys:
            mark = " ✓" if c["verdicts"][k] == st.HOLDS else (" ✗" if c["against"][k] else "")
            cells.append(fmt_iv(c["diffs"][k], k, True) + mark)
        lines.append(
            f"| {c['claim']} | {c['arm']} − {c['baseline']} | **{c['verdict']}** | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        (
            "✓: the interval excludes zero in the claimed direction; ✗: it excludes zero against the claim. "
            f'Verdict: "{st.HOLDS}" when the {labels[res["primary"]]} interval excludes zero in the favourable '
            f'direction, else "{st.NOT_SHOWN}". {res["n_boot"]} bootstrap replicates, RNG seed '
            f"{res['rng_seed']}; seeds {', '.join(map(str, seeds))}."
        ),
        "",
        LPIPS_ABSENT,
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ figures


def plot_curves(curves: dict, teacher_curve, dst: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = sorted({a for a, _ in curves}, key=list(VARIANTS).index)
    fig, axes = plt.subplots(1, len(arms) + 1, figsize=(3.2 * (len(arms) + 1), 3), squeeze=False)
    ax = axes[0][0]
    ax.plot(*teacher_curve, lw=0.8, color="k")
    ax.set_title("teacher")
    ax.set_xlabel("step")
    ax.set_ylabel("generator loss")
    for ax, arm in zip(axes[0][1:], arms):
        last = 0.0
        for (a, seed), (s, y) in sorted(curves.items()):
            if a == arm and len(s):
                ax.plot(s, y, lw=0.8, label=f"seed {seed}")
                last = max(last, float(s[-1]))
        if last:
            ax.axvspan(last * (1 - CONV_TAIL), last, color="0.9", zorder=0)
        ax.set_title(arm)
        ax.set_xlabel("step")
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    dst.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(dst, dpi=110)
    plt.close(fig)


def sample_grid(teacher_eval: dict, per: dict, res: dict, arms: list[str], dst: Path) -> str:
    """Rows: test images; columns: input, teacher, best and worst seed of each arm, photo. Returns the caption."""
    from PIL import Image

    cols = [teacher_eval["inputs"], teacher_eval["samples"]]
    names = ["input label map", "teacher"]
    for arm in arms:
        b, w = best_worst(res, arm)
        cols += [per[(arm, b)]["samples"], per[(arm, w)]["samples"]]
        names += [f"{arm} best (seed {b})", f"{arm} worst (seed {w})"]
    cols.append(teacher_eval["targets"])
    names.append("photo")
    k = min(len(c) for c in cols)
    rows = [np.concatenate([c[i] for c in cols], axis=2) for i in range(k)]  # (3, H, W * cols)
    img = np.concatenate(rows, axis=1).transpose(1, 2, 0)
    dst.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(dst)
    return "Columns: " + " | ".join(names) + "."


def write_docs_block(scale_name: str, text: str, results_md: Path) -> None:
    """Replace this scale's block in docs/results.md (between its markers), or append it."""
    begin, end = f"<!-- ablation:{scale_name}:begin -->", f"<!-- ablation:{scale_name}:end -->"
    doc = results_md.read_text() if results_md.exists() else ""
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in doc and end in doc:
        doc = doc[: doc.index(begin)] + block + doc[doc.index(end) + len(end) :]
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    results_md.write_text(doc)


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", choices=sorted(SCALES), default="cpu-long")
    ap.add_argument("--seeds", default=None, help="recipe seeds, comma-separated (default: the scale's; ≥ 4)")
    ap.add_argument("--widths", default="0.25")
    ap.add_argument(
        "--variants",
        default=None,
        help=f"from {', '.join(VARIANTS)} (default: the scale's, else {','.join(DEFAULT_VARIANTS)})",
    )
    ap.add_argument("--data", default=str(FACADES))
    ap.add_argument("--out", default="runs/ablation")
    ap.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates (default 1000)")
    ap.add_argument("--bootstrap-seed", type=int, default=0)
    ap.add_argument("--max-images", type=int, default=None, help="test pairs to evaluate (default: all)")
    ap.add_argument("--docs", default=str(DOCS), help="where --write-docs writes (default: docs/)")
    ap.add_argument(
        "--write-docs",
        action="store_true",
        help="write this scale's tables into docs/results.md, its loss curves and sample grid",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    scale = SCALES[args.scale]
    data = Path(args.data)
    if not (data / "train").is_dir():
        print(f"error: {data}: facades not found (pass --data)", file=sys.stderr)
        return 2
    try:
        seeds = [int(s) for s in (args.seeds or scale["seeds"]).split(",")]
        widths = [float(w) for w in args.widths.split(",")]
    except ValueError as exc:
        print(f"error: --seeds/--widths: {exc}", file=sys.stderr)
        return 2
    arms = (args.variants or scale.get("variants") or ",".join(DEFAULT_VARIANTS)).split(",")
    bad = [a for a in arms if a not in VARIANTS]
    if bad:
        print(f"error: --variants: unknown arm {bad[0]!r}; choose from {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    if len(set(seeds)) != len(seeds) or len(seeds) < 2:
        print("error: --seeds: give at least two distinct seeds (four or more for the intervals)", file=sys.stderr)
        return 2
    if len(seeds) < 4:
        print(f"warning: {len(seeds)} seeds; the protocol asks for at least 4", flush=True)
    max_images = args.max_images or scale.get("max_test")
    out = Path(args.out) / args.scale
    t0 = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    families = scale.get("families") or {
        "unet": {
            "arch": scale["arch"],
            "ngf": scale["ngf"],
            "size": scale["size"],
            "load_size": scale["load_size"],
            "layers": LAYERS,
        }
    }
    regimes = scale.get("regimes") or {"pix2pix": {}}
    legacy = "families" not in scale  # the earlier scales keep their run names, so that they resume
    inception = None
    if scale.get("kid", True):
        inception, why = load_inception(None, device)
        if inception is None:
            print(f"warning: KID/FID skipped: {why}", flush=True)
    summary: dict = {
        "scale": args.scale,
        "seeds": seeds,
        "widths": widths,
        "arms": arms,
        "lpips": LPIPS_ABSENT,
        "blocks": {},
    }
    blocks = []
    teacher_infos = []
    fams: dict = {}
    for fam, fspec in families.items():  # 1. every family's teacher first
        fscale = {**scale, **fspec}
        layers = fspec["layers"]
        tname = "teacher" if legacy else f"teacher-{fam}"
        tdoc = base_recipe(fscale, tname, 0, data)
        tdoc["teacher"]["train"] = {"steps": fscale["teacher_steps"]}
        tdoc["distill"]["checkpoint_every"] = 400
        teacher_run, teacher_info = run(tdoc, out, ["teacher"])
        teacher_infos.append(teacher_info)
        teacher_ckpt = (teacher_run / "teacher.safetensors").resolve()
        trecipe = recipe_of(tdoc)
        teacher_eval = evaluate_teacher(teacher_run, trecipe, inception, max_images, device, layers)
        n_train = len(make_dataset(trecipe.data, trecipe.resolve_path(trecipe.data.root), "train", 0))
        epochs = -(-fscale["student_steps"] * fscale["batch"] // n_train)
        close = [(a, b) for a, b in itertools.combinations(sorted(seeds), 2) if b - a <= epochs]
        if close:
            print(
                f"warning: seeds {close[0]} are within {epochs} epochs of each other and share epoch orders "
                f"(the sampler draws epoch e of seed s from s + e); space them out",
                flush=True,
            )
        print(f"teacher {fam} ready ({time.perf_counter() - t0:.0f} s)", flush=True)
        tsteps, tloss = loss_curve(teacher_run / "teacher_train" / "metrics.jsonl")
        tconv = st.convergence(tsteps, tloss, CONV_TAIL, CONV_TOL) if len(tsteps) else None
        if tconv is not None:
            print(f"teacher {fam}: {tconv.describe()}", flush=True)
        fams[fam] = dict(
            fscale=fscale,
            layers=layers,
            teacher_ckpt=teacher_ckpt,
            teacher_eval=teacher_eval,
            n_train=n_train,
            epochs=epochs,
            tconv=tconv,
            tsteps=tsteps,
            tloss=tloss,
        )
    # 2. the students, seed-major: an interrupted ablation leaves whole seeds behind it (pass the finished ones as
    # --seeds to write their tables)
    acc: dict = {}
    for seed in seeds:
        for fam, fx in fams.items():
            fscale, layers, teacher_eval = fx["fscale"], fx["layers"], fx["teacher_eval"]
            for regime, rspec in regimes.items():
                for width in widths:
                    per, infos, curves, convs, params, shares = acc.setdefault(
                        (fam, regime, width), ({}, {}, {}, {}, {"teacher": None}, {})
                    )
                    for arm in arms:
                        w = VARIANTS[arm]
                        name = f"w{width:g}-{arm}-s{seed}" if legacy else f"{fam}-{regime}-w{width:g}-{arm}-s{seed}"
                        doc = base_recipe(fscale, name, seed, data)
                        doc["teacher"]["checkpoint"] = str(fx["teacher_ckpt"])
                        doc["student"]["width"] = width
                        doc["student"]["init"] = w.get("init", "scratch")
                        srp = {"weight": w["srp"], "layers": layers}
                        if "normalize" in w:
                            srp["normalize"] = w["normalize"]
                        doc["distill"]["losses"] = {
                            "kd": {"weight": w["kd"]},
                            "srp": srp,
                            "feat": {"weight": w["feat"], "layers": layers},
                        }
                        if "recon" in rspec:
                            doc["distill"]["losses"]["recon"] = {"weight": rspec["recon"]}
                        t1 = time.perf_counter()
                        rd, info = run(doc, out, ["teacher", "student", "distill", "evaluate"])
                        z = evaluate_student(rd, recipe_of(doc), teacher_eval, inception, max_images, device, layers)
                        per[(arm, seed)], infos[(arm, seed)] = z, info
                        ev = json.loads((rd / "eval.json").read_text())
                        params[arm], params["teacher"] = ev["student"]["params"], ev["teacher"]["params"]
                        s, y = loss_curve(rd / "metrics.jsonl")
                        curves[(arm, seed)] = (s, y)
                        shares[(arm, seed)] = mean_share(rd / "metrics.jsonl")
                        c = st.convergence(s, y, CONV_TAIL, CONV_TOL) if len(s) else None
                        convs[(arm, seed)] = c
                        kid_s = f" kid {st.kid(teacher_eval['real_feats'], z['feats']):.4f}" if "feats" in z else ""
                        print(
                            f"{name}: ready ({time.perf_counter() - t1:.0f} s){kid_s} psnr_vs_teacher "
                            f"{z['psnr_t'].mean():.2f} relation_distance {z['rel_t'].mean():.4f}; "
                            f"{c.describe() if c else 'no loss log'}",
                            flush=True,
                        )
    # 3. the tables: one block per family, regime and width
    for fam, fx in fams.items():
        fscale, teacher_eval, tconv = fx["fscale"], fx["teacher_eval"], fx["tconv"]
        n_train, epochs, fspec = fx["n_train"], fx["epochs"], families[fam]
        tsteps, tloss = fx["tsteps"], fx["tloss"]
        for regime, rspec in regimes.items():
            for width in widths:
                per, infos, curves, convs, params, shares = acc[(fam, regime, width)]
                orders = {s: data_order_fingerprint(n_train, s, epochs) for s in seeds}
                problems = check_pairing(infos, arms, seeds, orders)
                for p in problems:
                    print(f"pairing: {p}", flush=True)
                if not problems:
                    print(
                        f"pairing: verified for seeds {', '.join(map(str, seeds))} (data order, discriminator init, "
                        f"scratch student init)",
                        flush=True,
                    )
                res = analyse(per, teacher_eval, arms, seeds, args.bootstrap, args.bootstrap_seed, scale.get("primary"))
                conv_cells = {"teacher": ("yes" if tconv.converged else "no") if tconv is not None else "–"}
                for arm in arms:
                    ok = sum(bool(convs[(arm, s)] and convs[(arm, s)].converged) for s in seeds)
                    conv_cells[arm] = f"{ok}/{len(seeds)}"
                arm_shares = {}
                for arm in arms:
                    vals = [shares[(arm, s)] for s in seeds if shares[(arm, s)] is not None]
                    arm_shares[arm] = float(np.mean(vals)) if vals else None
                if not any(v for v in arm_shares.values()):
                    arm_shares = {}
                regime_text = {
                    "pix2pix": f"pix2pix regime (GAN + {rspec.get('recon', 100):g}·L1 to the photo + KD + SRP)",
                    "distill": "pure-distillation regime (GAN + KD + SRP, no L1 to the photo)",
                }.get(regime, regime)
                title = (
                    "" if legacy else f"{fam} ({fspec['arch']}, ngf {fspec['ngf']}, {fspec['size']}²), {regime_text}: "
                )
                text = render(res, args.scale, fscale, seeds, width, params, conv_cells, arm_shares, title)
                print(text, flush=True)
                tag = f"{args.scale}-w{width:g}" if legacy else f"{args.scale}-{fam}-{regime}-w{width:g}"
                blocks.append(
                    {
                        "tag": tag,
                        "title": title,
                        "text": text,
                        "per": per,
                        "res": res,
                        "curves": curves,
                        "teacher_curve": (tsteps, tloss),
                        "problems": problems,
                        "teacher_eval": teacher_eval,
                    }
                )
                summary["blocks"][tag] = {
                    "family": fam,
                    "regime": regime,
                    "width": width,
                    "teacher": res["teacher"],
                    "teacher_convergence": tconv.__dict__ if tconv is not None else None,
                    "primary": res["primary"],
                    "n_images": res["n_images"],
                    "pairing_problems": problems,
                    "srp_grad_share": arm_shares,
                    "arms": {
                        a: {
                            "intervals": {k: iv.__dict__ for k, iv in v["intervals"].items()},
                            "per_seed": v["per_seed"],
                        }
                        for a, v in res["arms"].items()
                    },
                    "claims": [
                        {
                            **{k: v for k, v in c.items() if k != "diffs"},
                            "diffs": {k: iv.__dict__ for k, iv in c["diffs"].items()},
                        }
                        for c in res["claims"]
                    ],
                    "convergence": {f"{a}-s{s}": c.__dict__ if c else None for (a, s), c in convs.items()},
                    "compute_seconds": sum(sum(i.get("seconds", {}).values()) for i in infos.values()),
                }
    wall = time.perf_counter() - t0
    compute = sum(sum(i.get("seconds", {}).values()) for i in teacher_infos) + sum(
        v["compute_seconds"] for v in summary["blocks"].values()
    )
    summary["wall_seconds_this_invocation"], summary["compute_seconds"] = wall, compute
    (out / "ablation.json").write_text(json.dumps(summary, indent=1, default=str))
    print(
        f"this invocation: {wall / 60:.1f} min; pipeline compute recorded in the run folders: {compute / 60:.1f} min",
        flush=True,
    )
    if args.write_docs:
        docs = Path(args.docs)
        sizes = ", ".join(f"{f} {v['arch']} ngf {v['ngf']} at {v['size']}²" for f, v in families.items())
        seeds_arg = f" --seeds {args.seeds}" if args.seeds else ""
        parts = [
            f"## Paired ablation, scale `{args.scale}` (written by `tools/ablation.py`)",
            "",
            (
                f"`python tools/ablation.py --scale {args.scale} --widths {args.widths} --variants {','.join(arms)}"
                f"{seeds_arg} --write-docs`; machine: {platform.machine()}, {os.cpu_count()} cores, torch "
                f"{torch.__version__}; pipeline compute recorded in the run folders: {compute / 60:.0f} min ("
                f"{sizes}; teacher {scale['teacher_steps']} steps, students {scale['student_steps']} steps)."
            ),
            "",
        ]
        for b in blocks:
            tag = b["tag"]
            plot_curves(
                b["curves"],
                b["teacher_curve"],
                docs / f"ablation_{tag}_curves.png",
                f"{tag}: generator loss (shaded: the convergence window)",
            )
            caption = sample_grid(b["teacher_eval"], b["per"], b["res"], arms, docs / f"ablation_{tag}_samples.png")
            parts += [
                b["text"],
                "",
                f"![loss curves](ablation_{tag}_curves.png)",
                "",
                f"![best and worst seed of each arm](ablation_{tag}_samples.png)",
                "",
                caption,
                "",
            ]
            if b["problems"]:
                parts += ["**Pairing problems:** " + "; ".join(b["problems"]), ""]
        write_docs_block(args.scale, "\n".join(parts), docs / "results.md")
        print(f"wrote {docs / 'results.md'} (block {args.scale})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
