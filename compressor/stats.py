"""Statistics for ablations (``compress ablate``, ``tools/ablation.py``): paired differences with two-level
bootstrap intervals, KID from kernel matrices with per-image weights, verdicts, and the convergence test for loss
curves.

The ablation's design is crossed: every arm is trained with the same seeds (seed k of arm A and seed k of arm B
share data order, augmentation and discriminator initialisation) and evaluated on the same test images. A claim
"arm A beats arm B" is the paired difference A − B, averaged over seeds, of a metric computed on the test set.
Its uncertainty has two sources, the seed (training noise) and the finite test set (sample noise), and the
bootstrap resamples both: each replicate draws the seeds with replacement and, once, the test images with
replacement, and evaluates the difference for the drawn seeds on the drawn images. The image draw is shared by
the seeds and the two arms of a replicate because the test images are the same images for all of them (a crossed
factor, not one nested in the seed); drawing them afresh per seed would average the image noise away and make
the interval too narrow. The interval is the percentile interval of the replicates; the RNG is seeded, so the
same inputs give the same interval to the last digit.

Only numpy is used: this module knows nothing of runs, models or images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

HOLDS = "holds"
NOT_SHOWN = "not shown at this scale"
REVERSED = "the opposite holds"


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap percentile interval (``level`` = 0.95 by default)."""

    estimate: float
    lo: float
    hi: float
    n_boot: int
    level: float = 0.95

    def excludes_zero(self) -> bool:
        return self.lo > 0 or self.hi < 0

    def fmt(self, digits: int = 3, scale: float = 1.0) -> str:
        e, lo, hi = (v * scale for v in (self.estimate, self.lo, self.hi))
        return f"{e:+.{digits}g} [{lo:+.{digits}g}, {hi:+.{digits}g}]"


def resample_indices(
    n_seeds: int, n_images: int, n_boot: int = 1000, rng_seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Two-level resamples: (seed draws (B, S), image draws (B, N)), both with replacement, from a fixed RNG."""
    if n_seeds < 1 or n_images < 1 or n_boot < 1:
        raise ValueError("n_seeds, n_images and n_boot must be positive")
    rng = np.random.default_rng(rng_seed)
    seeds = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    images = rng.integers(0, n_images, size=(n_boot, n_images))
    return seeds, images


def percentile_interval(replicates: np.ndarray, estimate: float, level: float = 0.95) -> Interval:
    """The percentile interval of bootstrap replicates (numpy's default linear interpolation)."""
    reps = np.asarray(replicates, dtype=np.float64)
    a = (1 - level) / 2 * 100
    lo, hi = np.percentile(reps, [a, 100 - a])
    return Interval(float(estimate), float(lo), float(hi), len(reps), level)


def two_level_bootstrap(
    per_seed: Callable[[int, np.ndarray], np.ndarray],
    n_seeds: int,
    n_images: int,
    n_boot: int = 1000,
    rng_seed: int = 0,
    level: float = 0.95,
    resamples: tuple[np.ndarray, np.ndarray] | None = None,
) -> Interval:
    """Mean over seeds of a per-seed statistic, with its two-level bootstrap interval.

    ``per_seed(s, img_idx)`` returns the statistic of seed ``s`` on each row of image indices ``img_idx``
    ((B, N) -> (B,)). The estimate is the mean over seeds on all images; replicate ``r`` is the mean over the
    seeds drawn in ``seed_idx[r]`` (with repeats) on the images ``img_idx[r]``. ``resamples`` replaces the
    random draws (for tests, or to share draws between statistics).
    """
    seed_idx, img_idx = resamples if resamples is not None else resample_indices(n_seeds, n_images, n_boot, rng_seed)
    seed_idx, img_idx = np.asarray(seed_idx), np.asarray(img_idx)
    full = np.arange(n_images)[None]
    estimate = float(np.mean([per_seed(s, full)[0] for s in range(n_seeds)]))
    per = np.stack([np.asarray(per_seed(s, img_idx), dtype=np.float64) for s in range(n_seeds)])  # (S, B)
    reps = per[seed_idx, np.arange(len(seed_idx))[:, None]].mean(1)
    return percentile_interval(reps, estimate, level)


def paired_mean_difference(a: np.ndarray, b: np.ndarray, **kw) -> Interval:
    """Mean of per-image values of arm A minus arm B, (S, N) each, paired by seed and image."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"paired arrays must both be (seeds, images); got {a.shape} and {b.shape}")
    d = a - b
    return two_level_bootstrap(lambda s, idx: d[s][idx].mean(-1), d.shape[0], d.shape[1], **kw)


def mean_interval(a: np.ndarray, **kw) -> Interval:
    """Mean of per-image values (S, N) of one arm, with its two-level interval."""
    a = np.asarray(a, np.float64)
    return two_level_bootstrap(lambda s, idx: a[s][idx].mean(-1), a.shape[0], a.shape[1], **kw)


# ------------------------------------------------------------------------------------------------ KID and FID


def polynomial_kernels(
    real: np.ndarray, fake: np.ndarray, degree: int = 3, gamma: float | None = None, coef: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(K_rr, K_ff, K_rf): the KID kernel k(x, y) = (γ x·y + c)^d between all image pairs, in float64."""
    r, f = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    g = gamma if gamma is not None else 1.0 / r.shape[1]
    return (r @ r.T * g + coef) ** degree, (f @ f.T * g + coef) ** degree, (r @ f.T * g + coef) ** degree


def kid_weighted(kernels: tuple[np.ndarray, np.ndarray, np.ndarray], counts: np.ndarray) -> np.ndarray:
    """Unbiased KID (MMD²) of image multisets given by ``counts`` ((B, N): how often each image is drawn).

    Every image contributes through its row of the kernel matrices, weighted by its count. Within-set sums run
    over pairs of *different* images (a drawn twice is not compared with itself), so with all counts 1 this is
    exactly the usual unbiased estimator on the whole set.
    """
    krr, kff, krf = kernels
    c = np.atleast_2d(np.asarray(counts, np.float64))
    m = c.sum(1)
    pairs = m * m - (c * c).sum(1)
    within_r = np.einsum("bi,ij,bj->b", c, krr, c) - (c * c) @ np.diag(krr)
    within_f = np.einsum("bi,ij,bj->b", c, kff, c) - (c * c) @ np.diag(kff)
    cross = np.einsum("bi,ij,bj->b", c, krf, c)
    return within_r / pairs + within_f / pairs - 2 * cross / (m * m)


def counts_of(img_idx: np.ndarray, n_images: int) -> np.ndarray:
    """(B, N) index draws -> (B, N) counts per image."""
    idx = np.atleast_2d(img_idx)
    c = np.zeros((len(idx), n_images))
    np.add.at(c, (np.repeat(np.arange(len(idx)), idx.shape[1]), idx.ravel()), 1)
    return c


def kid(real: np.ndarray, fake: np.ndarray) -> float:
    """Unbiased KID on the whole sets (paired: image i of each set is the same test input)."""
    return float(kid_weighted(polynomial_kernels(real, fake), np.ones((1, len(real))))[0])


def kid_statistic(
    real: np.ndarray, fakes: Sequence[np.ndarray], others: Sequence[np.ndarray] | None = None
) -> Callable[[int, np.ndarray], np.ndarray]:
    """``per_seed`` for KID of ``fakes[s]`` (minus KID of ``others[s]`` when given) against ``real``."""
    ka = [polynomial_kernels(real, f) for f in fakes]
    kb = [polynomial_kernels(real, f) for f in others] if others is not None else None
    n = len(real)

    def per_seed(s: int, idx: np.ndarray) -> np.ndarray:
        c = counts_of(idx, n)
        v = kid_weighted(ka[s], c)
        return v - kid_weighted(kb[s], c) if kb is not None else v

    return per_seed


def fid_grams(real: np.ndarray, fake: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(G_rr, G_ff, G_rf): the Gram matrices from which :func:`fid_weighted` computes FID of any resample."""
    r, f = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    return r @ r.T, f @ f.T, r @ f.T


def fid_weighted(grams: tuple[np.ndarray, np.ndarray, np.ndarray], counts: np.ndarray, chunk: int = 200) -> np.ndarray:
    """FID of image multisets given by ``counts`` ((B, N)), real image i paired with fake image i.

    Equal to :func:`compressor.metrics.frechet_distance` on the repeated rows (``real[idx]``, ``fake[idx]``),
    but from N x N Gram matrices instead of N x 2048 features: the means, traces and the nuclear norm of the
    centred cross-product C½ Xr Xfᵀ C½ (whose singular values are those of the repeated rows' cross-product)
    are all expressions in the Grams and the counts C, so a thousand replicates cost a thousand small SVDs.
    """
    grr, gff, grf = grams
    c = np.atleast_2d(np.asarray(counts, np.float64))
    out = np.empty(len(c))
    for start in range(0, len(c), chunk):
        cc = c[start : start + chunk]
        m = cc.sum(1)
        grr_c, gff_c, grf_c = cc @ grr, cc @ gff, cc @ grf  # (b, N): Gᵀc rows
        qrr = np.einsum("bi,bi->b", grr_c, cc)  # cᵀ G c
        qff = np.einsum("bi,bi->b", gff_c, cc)
        qrf = np.einsum("bi,bi->b", grf_c, cc)
        mean_sq = (qrr + qff - 2 * qrf) / m**2
        tr_r = (cc @ np.diag(grr) - qrr / m) / (m - 1)
        tr_f = (cc @ np.diag(gff) - qff / m) / (m - 1)
        # centred cross-product: G_rf - (G_rf c) 1ᵀ / m - 1 (cᵀ G_rf) / m + (cᵀ G_rf c) 11ᵀ / m²
        rf_c = cc @ grf.T  # rows: G_rf c
        a = (
            grf[None]
            - rf_c[:, :, None] / m[:, None, None]
            - grf_c[:, None, :] / m[:, None, None]
            + (qrf / m**2)[:, None, None]
        )
        w = np.sqrt(cc)
        k = a * w[:, :, None] * w[:, None, :] / (m - 1)[:, None, None]
        tr_cov = np.linalg.svd(k, compute_uv=False).sum(1)
        out[start : start + chunk] = mean_sq + tr_r + tr_f - 2 * tr_cov
    return out


def fid_statistic(
    real: np.ndarray, fakes: Sequence[np.ndarray], others: Sequence[np.ndarray] | None = None
) -> Callable[[int, np.ndarray], np.ndarray]:
    """``per_seed`` for FID of ``fakes[s]`` (minus FID of ``others[s]``) against ``real``, on drawn images."""
    ga = [fid_grams(real, f) for f in fakes]
    gb = [fid_grams(real, f) for f in others] if others is not None else None
    n = len(real)

    def per_seed(s: int, idx: np.ndarray) -> np.ndarray:
        c = counts_of(idx, n)
        v = fid_weighted(ga[s], c)
        return v - fid_weighted(gb[s], c) if gb is not None else v

    return per_seed


# ------------------------------------------------------------------------------------------------ verdicts


def verdict(diff: Interval, better: Literal["lower", "higher"]) -> str:
    """ "holds" when the interval of (claimed arm − baseline) excludes zero on the favourable side."""
    if better not in ("lower", "higher"):
        raise ValueError(f"better must be 'lower' or 'higher', not {better!r}")
    ok = diff.hi < 0 if better == "lower" else diff.lo > 0
    return HOLDS if ok else NOT_SHOWN


def against(diff: Interval, better: Literal["lower", "higher"]) -> bool:
    """Whether the interval excludes zero on the unfavourable side (the arm is worse, not just not better)."""
    return diff.lo > 0 if better == "lower" else diff.hi < 0


def verdict3(diff: Interval, better: Literal["lower", "higher"]) -> str:
    """:func:`verdict`, with :data:`REVERSED` where the interval excludes zero against the claim."""
    return REVERSED if against(diff, better) else verdict(diff, better)


# ------------------------------------------------------------------------------------------------ convergence


@dataclass(frozen=True)
class Convergence:
    converged: bool
    rel_change: float  # fitted change over the window, relative to the window's mean level
    window: tuple[int, int]  # first and last step of the window
    points: int
    tol: float

    def describe(self) -> str:
        if self.rel_change != self.rel_change:  # NaN: too few points in the window
            return f"NOT converged: only {self.points} logged points in steps {self.window[0]}-{self.window[1]}"
        mark = "converged" if self.converged else "NOT converged"
        return (
            f"{mark}: loss changes {100 * self.rel_change:+.1f}% over steps {self.window[0]}-{self.window[1]} "
            f"(limit ±{100 * self.tol:.0f}%, {self.points} points)"
        )


def convergence(
    steps: Sequence[float], losses: Sequence[float], tail: float = 0.2, tol: float = 0.05, min_points: int = 4
) -> Convergence:
    """A loss curve is converged when it is flat within ``tol`` over its last ``tail`` of steps.

    Flat: a least-squares line through the logged points of the window changes by at most ``tol`` of the
    window's mean loss from its first to its last step. The line, not the two end points, is compared, so
    the step-to-step noise of a GAN loss does not decide the answer; a window with fewer than ``min_points``
    points is never called converged.
    """
    s, y = np.asarray(steps, np.float64), np.asarray(losses, np.float64)
    if len(s) != len(y) or len(s) == 0:
        raise ValueError("steps and losses must be non-empty and of equal length")
    start = s[-1] - tail * s[-1]
    keep = s >= start
    sw, yw = s[keep], y[keep]
    if len(sw) < max(2, min_points):
        return Convergence(False, float("nan"), (int(sw[0]), int(sw[-1])), len(sw), tol)
    slope, _ = np.polyfit(sw, yw, 1)
    level = abs(float(yw.mean())) or 1.0
    rel = float(slope * (sw[-1] - sw[0]) / level)
    return Convergence(abs(rel) <= tol, rel, (int(sw[0]), int(sw[-1])), len(sw), tol)
