"""``compress ablate RECIPE``: does SRP help on *my* network? The paired protocol on any recipe.

The recipe's data, teacher and student sections stay as they are; every run is the recipe's teacher, student and
distill stages with one arm's ``distill.losses``:

* ``scratch``: the ground truth only (``recon`` with KD's weight and loss kind), no teacher: what the student
  learns without one;
* ``kd``: KD alone (the recipe's KD);
* ``kd_srp``: KD + SRP, SRP's gradient on the student held at ``ratio`` times KD's (``srp.grad_ratio``);
* ``kd_matched``: KD alone, its weight raised by the gradient mass SRP added in the same seed's ``kd_srp`` run
  (``1 + mean |grad SRP| / |grad KD|``): the control that tells SRP's effect from "more gradient".

crossed with student inits (``inherit``, ``scratch``), students and seeds. A student is a width (every layer's
fraction of its channels) or a file holding per-layer widths (``compress plan``'s per-layer ``plan.json``, through
``student.widths``); with several students, each is compared with the first, arm by arm, paired by seed and image
(per-layer widths against the uniform width of the same measured latency). Seed k of every arm sees the same data
order, crops and noise (all drawn from the recipe seed) and, for the same init and width, starts from the same
student (the student stage is seeded); the adversarial term, when the recipe has one, gets a discriminator built
from the seed alone. Each student is evaluated image by image on the test split: PSNR/SSIM against the ground
truth and against the teacher's output; differences between arms are paired by seed and image, with two-level
bootstrap intervals (:mod:`compressor.stats`). The teacher's published figure (``teacher.expect``) is checked once.

Every run is an ordinary run folder under ``OUT``; finished runs are skipped and an interrupted one resumes from its
checkpoint, so an ablation may run across sessions. With ``distill.schedule: plateau`` students train until their
held-out loss is flat (the tool's rule, :mod:`compressor.schedule`).
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import yaml

from .. import stats as st
from ..data import make_dataset, target_key
from ..errors import RecipeError, UserError
from ..io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_bounded, refuse_link
from ..metrics import paired_metrics
from ..models import build_discriminator, teacher_spec
from ..recipe import Recipe, parse_recipe
from ..runfolder import RunDir, load_run_student, load_run_teacher
from .context import RunOptions
from .pipeline import run_pipeline

log = logging.getLogger(__name__)

ARMS = ("kd", "kd_srp", "kd_matched", "scratch")
INITS = ("inherit", "scratch")
DISC_SEED_OFFSET = 7919  # the discriminator of seed s draws from torch.manual_seed(s + this)
# (claim, arm, baseline, init of both): the difference is arm − baseline, paired by seed and image
CLAIMS = (
    ("KD helps over the ground truth alone", "kd", "scratch"),
    ("SRP helps over KD", "kd_srp", "kd"),
    ("SRP helps over KD with the same gradient mass", "kd_srp", "kd_matched"),
)
METRICS = (  # key, label, better
    ("psnr", "PSNR vs ground truth (dB)", "higher"),
    ("psnr_t", "PSNR vs teacher (dB)", "higher"),
    ("ssim", "SSIM vs ground truth", "higher"),
    ("ssim_t", "SSIM vs teacher", "higher"),
)


@dataclass
class AblateSpec:
    """What ``compress ablate`` runs: arms x inits x widths x seeds of one recipe."""

    arms: tuple[str, ...] = ARMS
    inits: tuple[str, ...] = ("inherit",)
    widths: tuple[float | str, ...] = ()  # the students: widths, or files of per-layer widths (empty: the recipe's)
    seeds: tuple[int, ...] = (0, 1000, 2000)
    ratio: float = 1.0  # kd_srp: SRP's gradient as this multiple of KD's
    layers: tuple[str, ...] = ()  # SRP taps (empty: the recipe's srp.layers)
    n_boot: int = 1000
    max_images: Optional[int] = None
    threads_note: str = ""
    log: list[str] = field(default_factory=list)


def check_spec(spec: AblateSpec, recipe: Recipe) -> None:
    """One ``error:`` line for settings the protocol cannot run."""
    bad = [a for a in spec.arms if a not in ARMS]
    if bad:
        raise RecipeError(f"--arms: unknown arm {bad[0]!r}; choose from {', '.join(ARMS)}")
    bad = [i for i in spec.inits if i not in INITS]
    if bad:
        raise RecipeError(f"--inits: unknown init {bad[0]!r}; choose from {', '.join(INITS)}")
    if len(set(spec.seeds)) < 2:
        raise RecipeError("--seeds: give at least two distinct seeds (three or more for the intervals)")
    if "scratch" in spec.arms and target_key(recipe.data.kind) is None:
        raise RecipeError(f"--arms: scratch needs a ground truth, and {recipe.data.kind} data has none")
    if "kd_matched" in spec.arms and "kd_srp" not in spec.arms:
        raise RecipeError("--arms: kd_matched is matched to kd_srp's gradient; run kd_srp too")
    if not (spec.layers or recipe.distill.losses.srp.layers) and "kd_srp" in spec.arms:
        raise RecipeError("--layers: name the layers SRP taps (or set distill.losses.srp.layers)")
    if not spec.widths and isinstance(recipe.student.widths, dict):
        raise RecipeError("--widths: the recipe names its per-layer widths inline; pass them as a plan.json file")
    labels = [student_label(w) for w in spec.widths]
    if len(set(labels)) < len(labels):
        raise RecipeError("--widths: two students share a name; give the files of per-layer widths distinct names")


# ------------------------------------------------------------------------------------------------ runs


def _fingerprint(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def paired_discriminator(seed: int, record: dict) -> Callable[..., torch.nn.Module]:
    """A discriminator builder (``RunOptions(build_discriminator=...)``) that builds every discriminator of a run
    from ``seed`` alone, in a forked RNG (nothing else in the run sees another stream), and fingerprints it."""

    def build(*args, **kwargs):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + DISC_SEED_OFFSET)
            net = build_discriminator(*args, **kwargs)
        h = hashlib.sha256()
        for k, v in sorted(net.state_dict().items()):
            h.update(k.encode() + v.detach().cpu().contiguous().numpy().tobytes())
        record["discriminator_init"] = h.hexdigest()[:16]
        return net

    return build


def student_label(width: float | str) -> str:
    """A student's name in run folders and tables: ``w0.5``, or ``w-NAME`` for a file of per-layer widths (its stem,
    or its folder's name for a ``plan.json`` or ``student.json``)."""
    if not isinstance(width, str):
        return f"w{width:g}"
    p = Path(width)
    stem = p.parent.name if p.stem in ("plan", "student") else p.stem
    return "w-" + "".join(c if c.isalnum() or c in "._-" else "_" for c in stem)[:40]


def arm_doc(base: dict, spec: AblateSpec, arm: str, init: str, width: float | str, seed: int, kd_scale: float) -> dict:
    """The recipe document of one run: the base recipe with this arm's losses, init, student and seed."""
    doc = copy.deepcopy(base)
    doc["name"] = f"{base['name']}-{student_label(width)}-{init}-{arm}-s{seed}"
    doc["seed"] = seed
    doc["teacher"].pop("expect", None)  # checked once, in the teacher run
    student = {k: v for k, v in doc.get("student", {}).items() if k not in ("width", "widths", "search")}
    student.update({"widths": width} if isinstance(width, str) else {"width": width})
    doc["student"] = {**student, "init": init}
    for key in ("budget", "latency_table"):
        doc["student"].pop(key, None)
    if isinstance(width, str) and doc["student"].get("method") == "rebuild":
        doc["student"]["method"] = "prune"
    losses = doc.setdefault("distill", {}).setdefault("losses", {})
    kd = dict(losses.get("kd") or {"weight": 10.0})
    srp = dict(losses.get("srp") or {})
    srp["layers"] = list(spec.layers or srp.get("layers") or [])
    if arm == "scratch":
        losses["recon"] = {"weight": kd.get("weight", 10.0), "loss": kd.get("loss", "l1")}
        losses["kd"], losses["srp"] = {**kd, "weight": 0.0}, {**srp, "weight": 0.0}
    elif arm == "kd_srp":
        losses["kd"] = kd
        losses["srp"] = {**srp, "weight": srp.get("weight") or 5.0, "normalize": "rows", "grad_ratio": spec.ratio}
    else:  # kd, kd_matched
        losses["kd"] = {**kd, "weight": kd.get("weight", 10.0) * kd_scale}
        losses["srp"] = {**srp, "weight": 0.0}
    losses.setdefault("feat", {"weight": 0.0})
    return doc


def run_arm(doc: dict, out: Path, stages: list[str]) -> tuple[Path, dict]:
    """Run (or skip, or resume) one recipe document's stages; its folder and its pairing record."""
    src = out / "recipes" / f"{doc['name']}.yaml"
    src.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(src, yaml.safe_dump(doc, sort_keys=False))
    recipe = parse_recipe(yaml.safe_dump(doc), source=str(src), base_dir=Path.cwd())
    record: dict = {}
    options = RunOptions(
        resume=True, only=stages, recipe_path=src, build_discriminator=paired_discriminator(doc["seed"], record)
    )
    run_pipeline(recipe, out, options)
    rd = out / doc["name"]
    info_file = rd / "ablate_run.json"
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    info.update(record)
    init = rd / "student_init" / "student.safetensors"
    if init.is_file():
        info["student_init"] = _fingerprint(init)
    atomic_write_json(info_file, info)
    return rd, info


def gradient_mass(metrics_file: Path) -> Optional[float]:
    """kd_srp's mean ``|grad SRP| / |grad KD|`` over its logged steps (None: never logged)."""
    ratios = []
    if metrics_file.is_file():
        for line in metrics_file.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            kd, srp = rec.get("gradnorm:G/kd"), rec.get("gradnorm:G/srp")
            if isinstance(kd, (int, float)) and isinstance(srp, (int, float)) and kd > 0:
                ratios.append(srp / kd)
    return float(np.mean(ratios)) if ratios else None


# ------------------------------------------------------------------------------------------------ evaluation


MAX_CACHE_BYTES = 4 << 30  # a cached .npz of per-image outputs and metrics


def _load_cached(path: Path, key: str) -> Optional[dict]:
    """The arrays cached at ``path`` when they were computed for ``key``; None when absent, stale or unreadable.
    A link there is refused (one line), never followed; the file is read bounded, without pickles."""
    refuse_link(path)
    if not path.exists():
        return None
    try:
        z = dict(np.load(io.BytesIO(read_bounded(path, MAX_CACHE_BYTES)), allow_pickle=False))
    except (OSError, ValueError, UserError):
        log.warning("%s is unreadable; computing it again", path)
        return None
    return z if str(z.get("key")) == key else None


def _save_cached(path: Path, arrays: dict) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())  # write-then-rename: a link at path is replaced, not written through


def _test_set(recipe: Recipe, max_images: Optional[int]):
    return make_dataset(recipe.data, recipe.resolve_path(recipe.data.root), "test", recipe.seed, max_items=max_images)


@torch.no_grad()
def teacher_outputs(teacher_run: Path, recipe: Recipe, max_images: Optional[int], device) -> dict:
    """The teacher's output on every test image and its PSNR/SSIM against the ground truth, computed once
    (``ablate_teacher.npz`` in the teacher run, keyed by the teacher's weights and the test set)."""
    path = teacher_run / "ablate_teacher.npz"
    ds = _test_set(recipe, max_images)
    key = f"{_fingerprint(teacher_run / 'teacher.safetensors')}|{len(ds)}|{recipe.data.model_dump_json()}"
    cached = _load_cached(path, key)
    if cached is not None:
        return cached
    teacher = load_run_teacher(RunDir(teacher_run)).to(device).eval()
    z: dict = {"key": np.array(key)}
    psnr, ssim = [], []
    for i in range(len(ds)):
        item = ds[i]
        o = teacher(item["input"][None].to(device)).float()
        m = paired_metrics(o, item["target"][None].to(device))
        psnr.append(float(m["psnr"][0]))
        ssim.append(float(m["ssim"][0]))
        z[f"out{i}"] = o[0].cpu().numpy()
    z["psnr"], z["ssim"] = np.asarray(psnr), np.asarray(ssim)
    _save_cached(path, z)
    return z


@torch.no_grad()
def student_metrics(rd: Path, recipe: Recipe, teacher_eval: dict, max_images: Optional[int], device) -> dict:
    """Per test image: PSNR/SSIM of one student against the ground truth and against the teacher
    (``per_image.npz`` in its run, keyed by the student's weights and the teacher's outputs)."""
    path = rd / "per_image.npz"
    key = f"{_fingerprint(rd / 'student.safetensors')}|{teacher_eval['key']}"
    cached = _load_cached(path, key)
    if cached is not None:
        return cached
    student = load_run_student(RunDir(rd)).to(device).eval()
    ds = _test_set(recipe, max_images)
    cols: dict[str, list] = {k: [] for k, *_ in METRICS}
    for i in range(len(ds)):
        item = ds[i]
        o = student(item["input"][None].to(device)).float()
        m = paired_metrics(o, item["target"][None].to(device))
        mt = paired_metrics(o, torch.from_numpy(teacher_eval[f"out{i}"])[None].to(device))
        for k in ("psnr", "ssim"):
            cols[k].append(float(m[k][0]))
            cols[f"{k}_t"].append(float(mt[k][0]))
    z = {"key": np.array(key), **{k: np.asarray(v) for k, v in cols.items()}}
    _save_cached(path, z)
    return z


# ------------------------------------------------------------------------------------------------ the protocol


@dataclass
class Cell:
    """The runs of one width and init: per-image metrics, pairing records and training summaries by (arm, seed)."""

    width: float | str
    init: str
    per: dict = field(default_factory=dict)
    infos: dict = field(default_factory=dict)
    summaries: dict = field(default_factory=dict)


def _finished(rd: Path) -> bool:
    return (rd / "distill.json").is_file() and (rd / "student.safetensors").is_file()


def run_cell_arm(ctx: dict, cell: Cell, arm: str, seed: int) -> None:
    """Train (unless ``ctx['train']`` is off and the run is not finished) and evaluate one arm of one seed."""
    spec, out = ctx["spec"], ctx["out"]
    scale = 1.0
    if arm == "kd_matched":
        src = out / arm_doc(ctx["base"], spec, "kd_srp", cell.init, cell.width, seed, 1.0)["name"] / "metrics.jsonl"
        mass = gradient_mass(src)
        scale = 1.0 + (mass if mass is not None else spec.ratio)
    doc = arm_doc(ctx["base"], spec, arm, cell.init, cell.width, seed, scale)
    rd = out / doc["name"]
    if not ctx["train"] and not _finished(rd):
        return
    t0 = time.perf_counter()
    if ctx["train"]:
        rd, info = run_arm(doc, out, ["teacher", "student", "distill"])
    else:
        info = json.loads((rd / "ablate_run.json").read_text()) if (rd / "ablate_run.json").is_file() else {}
    recipe = parse_recipe(yaml.safe_dump(doc), source=doc["name"], base_dir=Path.cwd())
    z = student_metrics(rd, recipe, ctx["teacher_eval"], spec.max_images, ctx["device"])
    summary = json.loads((rd / "distill.json").read_text())
    summary["kd_scale"] = scale
    cell.per[(arm, seed)], cell.infos[(arm, seed)], cell.summaries[(arm, seed)] = z, info, summary
    ctx["say"](
        f"{doc['name']}: {z['psnr'].mean():.3f} dB vs ground truth, {z['psnr_t'].mean():.2f} dB vs teacher; "
        f"{summary['step']} steps{' (converged)' if summary.get('converged') else ''} "
        f"({time.perf_counter() - t0:.0f} s)"
    )


def run_ablation(
    base: dict,
    spec: AblateSpec,
    out: Path,
    device: torch.device,
    train: bool = True,
    say: Callable[[str], None] = log.info,
) -> dict:
    """The whole protocol on a recipe document ``base`` (see the module docstring); returns the summary written to
    ``OUT/ablate.json`` (and ``OUT/ablate.md``). ``train=False`` only evaluates and tabulates the finished runs."""
    recipe = parse_recipe(yaml.safe_dump(base), source=base["name"], base_dir=Path.cwd())
    check_spec(spec, recipe)
    out = Path(out)
    t0 = time.perf_counter()
    tdoc = {**copy.deepcopy(base), "name": f"{base['name']}-teacher"}
    teacher_run = out / tdoc["name"]
    if train or not (teacher_run / "teacher.safetensors").is_file():
        teacher_run, _ = run_arm(tdoc, out, ["teacher"])
    teacher_eval = teacher_outputs(teacher_run, recipe, spec.max_images, device)
    if base["teacher"].get("train") is not None:  # a teacher trained here: every arm distils that same one
        base = copy.deepcopy(base)
        base["teacher"].pop("train")
        base["teacher"]["checkpoint"] = str((teacher_run / "teacher.safetensors").resolve())
    say(f"teacher: {teacher_eval['psnr'].mean():.3f} dB on {len(teacher_eval['psnr'])} test images")
    ctx = {"spec": spec, "out": out, "base": base, "train": train, "device": device, "say": say}
    ctx["teacher_eval"] = teacher_eval
    widths = spec.widths or (recipe.student.widths or float(recipe.student.width),)
    cells = {(w, i): Cell(w, i) for w in widths for i in spec.inits}
    for seed in spec.seeds:  # seed-major: an interrupted ablation leaves whole seeds behind it
        for cell in cells.values():
            for arm in ARMS:
                if arm in spec.arms:
                    run_cell_arm(ctx, cell, arm, seed)
    doc = analyse(cells, teacher_eval, spec, recipe)
    doc["wall_seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(out / "ablate.json", doc)
    atomic_write_text(out / "ablate.md", render(doc))
    return doc


# ------------------------------------------------------------------------------------------------ analysis


def _complete_seeds(cell: Cell, arms: tuple[str, ...], seeds: tuple[int, ...]) -> list[int]:
    return [s for s in seeds if all((a, s) in cell.per for a in arms)]


def _iv(x: st.Interval) -> dict:
    return {"estimate": x.estimate, "lo": x.lo, "hi": x.hi}


def analyse_cell(cell: Cell, teacher_eval: dict, spec: AblateSpec) -> Optional[dict]:
    """Arm estimates and paired claims of one cell, over the seeds every arm finished (None: fewer than two)."""
    arms = tuple(a for a in ARMS if a in spec.arms)
    seeds = _complete_seeds(cell, arms, spec.seeds)
    if len(seeds) < 2:
        return None
    n = len(teacher_eval["psnr"])
    draws = st.resample_indices(len(seeds), n, spec.n_boot, 0)
    kw = {"resamples": draws}

    def col(arm: str, key: str) -> np.ndarray:
        return np.stack([cell.per[(arm, s)][key] for s in seeds])

    teacher = np.broadcast_to(teacher_eval["psnr"], (len(seeds), n))
    rows = {}
    for arm in arms:
        rows[arm] = {k: _iv(st.mean_interval(col(arm, k), **kw)) for k, *_ in METRICS}
        rows[arm]["gap"] = _iv(st.paired_mean_difference(col(arm, "psnr"), teacher, **kw))
        rows[arm]["steps"] = [int(cell.summaries[(arm, s)]["step"]) for s in seeds]
        rows[arm]["converged"] = sum(bool(cell.summaries[(arm, s)].get("converged")) for s in seeds)
        rows[arm]["kd_scale"] = float(np.mean([cell.summaries[(arm, s)].get("kd_scale", 1.0) for s in seeds]))
    claims = []
    for claim, a, b in CLAIMS:
        if a in arms and b in arms:
            for key, label, better in METRICS[:2]:
                d = st.paired_mean_difference(col(a, key), col(b, key), **kw)
                claims.append(
                    {"claim": claim, "arm": a, "base": b, "metric": label, **_iv(d), "verdict": st.verdict3(d, better)}
                )
    label = student_label(cell.width)
    return {
        "width": cell.width,
        "student": label,
        "init": cell.init,
        "seeds": seeds,
        "n_images": n,
        "arms": rows,
        "claims": claims,
    }


def _paired(a: Cell, b: Cell, arm: str, key: str, seeds: list[int], n_boot: int) -> dict:
    """``key`` of cell ``a`` minus cell ``b`` in one arm, paired by seed and image (two-level bootstrap)."""
    return st.paired_mean_difference(
        np.stack([a.per[(arm, s)][key] for s in seeds]), np.stack([b.per[(arm, s)][key] for s in seeds]), n_boot=n_boot
    )


def student_claims(cells: dict, spec: AblateSpec) -> list[dict]:
    """Each student against the first one (``--widths`` order), arm by arm and init by init: the difference in PSNR
    against the ground truth and against the teacher, paired by seed and image."""
    out = []
    students = list(dict.fromkeys(c.width for c in cells.values()))
    for init in spec.inits:
        base = cells.get((students[0], init))
        for other in students[1:]:
            cell = cells.get((other, init))
            for arm in (a for a in ARMS if a in spec.arms):
                seeds = [s for s in spec.seeds if (arm, s) in cell.per and (arm, s) in base.per]
                if len(seeds) < 2:
                    continue
                for key, label, better in METRICS[:2]:
                    d = _paired(cell, base, arm, key, seeds, spec.n_boot)
                    out.append(
                        {
                            "student": student_label(other),
                            "base": student_label(students[0]),
                            "init": init,
                            "arm": arm,
                            "metric": label,
                            "seeds": seeds,
                            **_iv(d),
                            "verdict": st.verdict3(d, better),
                        }
                    )
    return out


def analyse(cells: dict, teacher_eval: dict, spec: AblateSpec, recipe: Recipe) -> dict:
    """Every cell's tables, plus the inherit − scratch difference where both inits ran."""
    out = {
        "recipe": recipe.name,
        "teacher_psnr": float(teacher_eval["psnr"].mean()),
        "teacher_ssim": float(teacher_eval["ssim"].mean()),
        "ratio": spec.ratio,
        "n_boot": spec.n_boot,
        "cells": [],
        "init_claims": [],
        "student_claims": student_claims(cells, spec),
    }
    for cell in cells.values():
        res = analyse_cell(cell, teacher_eval, spec)
        if res is not None:
            out["cells"].append(res)
    for w in {c.width for c in cells.values()}:
        a, b = cells.get((w, "inherit")), cells.get((w, "scratch"))
        if a is None or b is None:
            continue
        for arm in spec.arms:
            seeds = [s for s in spec.seeds if (arm, s) in a.per and (arm, s) in b.per]
            if len(seeds) >= 2:
                d = _paired(a, b, arm, "psnr", seeds, spec.n_boot)
                out["init_claims"].append({"width": w, "arm": arm, "seeds": seeds, **_iv(d)})
    return out


def _fmt(iv: dict, digits: int = 2) -> str:
    return f"{iv['estimate']:+.{digits}f} [{iv['lo']:+.{digits}f}, {iv['hi']:+.{digits}f}]"


def render(doc: dict) -> str:
    """The ablation as Markdown: one arm table and one claims table per width and init."""
    lines = [f"Teacher on the test split: {doc['teacher_psnr']:.3f} dB, SSIM {doc['teacher_ssim']:.4f}.", ""]
    for c in doc["cells"]:
        lines += [
            f"**{_student_title(c['width'])}, student init {c['init']}** ({len(c['seeds'])} seeds: "
            f"{', '.join(map(str, c['seeds']))}; {c['n_images']} test images; 95% two-level bootstrap intervals)",
            "",
            "| arm | PSNR vs ground truth | gap to the teacher | PSNR vs teacher | SSIM | steps (converged) |",
            "|---|---|---|---|---|---|",
        ]
        for arm, r in c["arms"].items():
            p, g, t, s = r["psnr"], r["gap"], r["psnr_t"], r["ssim"]
            note = f" (KD ×{r['kd_scale']:.2f})" if arm == "kd_matched" else ""
            lines.append(
                f"| {arm}{note} | {p['estimate']:.3f} [{p['lo']:.3f}, {p['hi']:.3f}] | {_fmt(g, 3)} | "
                f"{t['estimate']:.2f} [{t['lo']:.2f}, {t['hi']:.2f}] | {s['estimate']:.4f} | "
                f"{'/'.join(map(str, r['steps']))} ({r['converged']}/{len(c['seeds'])}) |"
            )
        if c["claims"]:
            lines += ["", "| claim | metric | difference | verdict |", "|---|---|---|---|"]
        for cl in c["claims"]:
            lines.append(
                f"| {cl['claim']} ({cl['arm']} − {cl['base']}) | {cl['metric']} | {_fmt(cl, 3)} | {cl['verdict']} |"
            )
        lines.append("")
    for cl in doc["init_claims"]:
        lines.append(
            f"Inheriting the teacher's channels, {_student_title(cl['width']).lower()}, {cl['arm']}: PSNR "
            f"{_fmt(cl, 3)} dB over a "
            f"scratch init ({len(cl['seeds'])} seeds)."
        )
    if doc.get("student_claims"):
        lines += [
            "The students against the first (claim: the student beats the base; paired by seed and image):",
            "",
            "| student − base (arm, init) | metric | difference | verdict |",
            "|---|---|---|---|",
        ]
        for cl in doc["student_claims"]:
            lines.append(
                f"| {cl['student']} − {cl['base']} ({cl['arm']}, {cl['init']}; {len(cl['seeds'])} seeds) | "
                f"{cl['metric']} | {_fmt(cl, 3)} | {cl['verdict']} |"
            )
    return "\n".join(lines) + "\n"


def _student_title(width: float | str) -> str:
    return f"Width {width:g}" if not isinstance(width, str) else f"Per-layer widths {student_label(width)[2:]}"


def recipe_document(recipe: Recipe) -> dict:
    """The recipe as a document whose paths are absolute (the arms' recipes are written elsewhere)."""
    doc = recipe.model_dump(mode="json", by_alias=True, exclude_none=True)
    if recipe.data.root:
        doc["data"]["root"] = str(recipe.resolve_path(recipe.data.root))
    t = recipe.teacher
    for key in ("checkpoint", "reverse_checkpoint"):
        if getattr(t, key):
            doc["teacher"][key] = str(recipe.resolve_path(getattr(t, key)))
    if t.import_:
        doc["teacher"]["import"] = teacher_spec(t, recipe.base_dir)["import"]
    if isinstance(recipe.student.widths, str):
        doc["student"]["widths"] = str(recipe.resolve_path(recipe.student.widths))
    return doc
