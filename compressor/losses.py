"""Distillation losses: SRP (factorised and reference forms), KD, feature distillation and GAN losses.

SRP (Li, Jiang & Aarabi, ECCV 2020). For features of shape (B, C, H, W), each sample is reshaped to
F (HW x C); its relation matrix Q = rownorm(F Fᵀ). The loss is mean_b ‖Q_t − Q_s‖²_F / (HW)².

That mean over (HW)² entries is bounded by 4/HW (every row of Q has unit norm), so its scale, and the weight it
needs, falls with the tapped resolution. :func:`srp_multi` with ``normalize="rows"`` (the toolkit's default)
multiplies it by HW: the mean over rows of the squared row difference, bounded by 4 at any resolution.

The factorised form never builds an HW x HW matrix. With G = F Fᵀ, row i of G is F f_i, so its squared norm
is f_iᵀ (FᵀF) f_i: the row norms come from the C x C Gram matrix. Then

    ‖Q_t − Q_s‖² = Σ_i r_i²/r̂_i² + Σ_i s_i²/ŝ_i² − 2 Σ_i (f_iᵀ M h_i)/(r̂_i ŝ_i),   M = F_tᵀ F_s (C_t x C_s)

where r, s are the row norms and r̂ = max(r, eps) as in ``F.normalize``. Cost: O(HW·C_t·C_s) time and
O((HW + C)·C) memory.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 1e-12


def _flatten(f: torch.Tensor) -> torch.Tensor:
    b, c, h, w = f.shape
    return f.reshape(b, c, h * w).transpose(1, 2)  # (B, N, C)


def _check_pair(f_t: torch.Tensor, f_s: torch.Tensor) -> None:
    if f_t.dim() != 4 or f_s.dim() != 4:
        raise ValueError(f"SRP needs 4-D feature maps, got {tuple(f_t.shape)} and {tuple(f_s.shape)}")
    if f_t.shape[0] != f_s.shape[0] or f_t.shape[2:] != f_s.shape[2:]:
        raise ValueError(
            f"SRP needs equal batch and H,W in teacher and student: teacher {tuple(f_t.shape)}, "
            f"student {tuple(f_s.shape)}"
        )


def srp_loss(
    f_teacher: torch.Tensor,
    f_student: torch.Tensor,
    *,
    pool: int | None = None,
    float64: bool = False,
    eps: float = EPS,
) -> torch.Tensor:
    """Exact SRP loss without materialising the HW x HW relation matrices.

    ``pool`` average-pools both maps to ``pool x pool`` first. ``float64`` accumulates in double precision: use
    it when teacher and student are nearly equal, where fp32 cancellation costs about 3e-4 relative error.
    """
    _check_pair(f_teacher, f_student)
    if pool is not None:
        f_teacher, f_student = F.adaptive_avg_pool2d(f_teacher, pool), F.adaptive_avg_pool2d(f_student, pool)
    dtype = f_student.dtype
    if float64:
        f_teacher, f_student = f_teacher.double(), f_student.double()
    elif f_teacher.dtype != f_student.dtype or f_student.dtype in (torch.float16, torch.bfloat16):
        f_teacher, f_student = f_teacher.float(), f_student.float()
    ft, fs = _flatten(f_teacher), _flatten(f_student)  # (B, N, Ct), (B, N, Cs)
    n = ft.shape[1]
    gram_t = ft.transpose(1, 2) @ ft  # (B, Ct, Ct)
    gram_s = fs.transpose(1, 2) @ fs  # (B, Cs, Cs)
    r2 = ((ft @ gram_t) * ft).sum(-1).clamp_min(0)  # squared row norms of G_t, (B, N)
    s2 = ((fs @ gram_s) * fs).sum(-1).clamp_min(0)
    r_hat = r2.clamp_min(eps * eps).sqrt()  # clamp before sqrt: a zero row gives a zero gradient, not NaN
    s_hat = s2.clamp_min(eps * eps).sqrt()
    cross = ((ft @ (ft.transpose(1, 2) @ fs)) * fs).sum(-1)  # f_iᵀ M h_i, (B, N)
    total = (r2 / r_hat**2).sum(-1) + (s2 / s_hat**2).sum(-1) - 2 * (cross / (r_hat * s_hat)).sum(-1)
    return (total.clamp_min(0) / n**2).mean().to(dtype)


def relation_matrix(f: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Q = rownorm(F Fᵀ), (B, HW, HW). Materialised: for tests and small maps."""
    flat = _flatten(f)
    return F.normalize(flat @ flat.transpose(1, 2), dim=-1, eps=eps)


def srp_loss_reference(
    f_teacher: torch.Tensor, f_student: torch.Tensor, *, pool: int | None = None, p: int = 2, eps: float = EPS
) -> torch.Tensor:
    """The materialised SRP loss. ``p=1`` is the L1 variant (mean absolute difference), which has no factorised
    form and needs O(B·(HW)²) memory: use it only on small or pooled maps."""
    _check_pair(f_teacher, f_student)
    if pool is not None:
        f_teacher, f_student = F.adaptive_avg_pool2d(f_teacher, pool), F.adaptive_avg_pool2d(f_student, pool)
    if f_teacher.dtype != f_student.dtype:
        f_teacher, f_student = f_teacher.float(), f_student.float()
    diff = relation_matrix(f_teacher, eps) - relation_matrix(f_student, eps)
    if p == 1:
        return diff.abs().mean()
    return diff.pow(2).mean()


def common_size(f_t: torch.Tensor, f_s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two feature maps at the smaller of their sizes: the larger is area-pooled (adaptive average pooling) to the
    smaller H and W. Maps of the same size come back unchanged."""
    if f_t.shape[-2:] == f_s.shape[-2:]:
        return f_t, f_s
    size = (min(f_t.shape[-2], f_s.shape[-2]), min(f_t.shape[-1], f_s.shape[-1]))
    pool = lambda f: f if tuple(f.shape[-2:]) == size else F.adaptive_avg_pool2d(f, size)  # noqa: E731
    return pool(f_t), pool(f_s)


def srp_multi(
    feats_t: dict,
    feats_s: dict,
    layers: list[str],
    weights: list[float] | None = None,
    *,
    pool: int | None = None,
    variant: str = "l2",
    float64: bool = False,
    normalize: str = "entries",
) -> torch.Tensor:
    """Weighted sum of SRP over several tapped layers.

    ``normalize="entries"``: each layer's loss is the mean over the (HW)² relation entries (the paper's form,
    bounded by 4/HW); ``"rows"``: HW times that, the mean over the HW rows of the squared row difference (bounded
    by 4, whatever the resolution), so that one weight means the same at every tap and image size. A teacher's and
    a student's maps of different sizes (a student of another architecture) meet at the smaller size.
    """
    if normalize not in ("entries", "rows"):
        raise ValueError(f"normalize must be 'entries' or 'rows', not {normalize!r}")
    weights = weights or [1.0] * len(layers)
    total = 0.0
    for name, w in zip(layers, weights):
        f_t, f_s = common_size(feats_t[name], feats_s[name])
        if variant == "l1":
            loss = srp_loss_reference(f_t, f_s, pool=pool, p=1)
        else:
            loss = srp_loss(f_t, f_s, pool=pool, float64=float64)
        if normalize == "rows":
            loss = loss * (pool * pool if pool is not None else f_s.shape[-2] * f_s.shape[-1])
        total = total + w * loss
    return total


def kd_loss(out_student: torch.Tensor, out_teacher: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """L1 (``kind="l1"``) or mean squared error (``"mse"``: what PSNR measures) between two images: output
    distillation (to the teacher's image) and reconstruction (to the ground truth)."""
    if kind == "mse":
        return F.mse_loss(out_student, out_teacher)
    return F.l1_loss(out_student, out_teacher)


class FeatureAdapters(nn.Module):
    """1x1 convolutions mapping student features to teacher widths: the plain feature-distillation baseline."""

    def __init__(self, channels: dict[str, tuple[int, int]]):
        super().__init__()
        self.names = list(channels)
        self.adapters = nn.ModuleList(nn.Conv2d(cs, ct, 1) for ct, cs in channels.values())

    def forward(self, feats_t: dict, feats_s: dict) -> torch.Tensor:
        total = 0.0
        for name, conv in zip(self.names, self.adapters):
            f_t, f_s = common_size(feats_t[name], feats_s[name])
            total = total + F.mse_loss(conv(f_s), f_t)
        return total


class GANLoss(nn.Module):
    """lsgan (MSE), vanilla (BCE with logits) or hinge adversarial losses on PatchGAN outputs."""

    def __init__(self, mode: str = "lsgan"):
        super().__init__()
        if mode not in ("lsgan", "vanilla", "hinge"):
            raise ValueError(f"unknown GAN mode {mode!r}")
        self.mode = mode

    def forward(self, pred: torch.Tensor, target_is_real: bool, for_discriminator: bool = True) -> torch.Tensor:
        pred = pred.float()
        if self.mode == "lsgan":
            target = torch.ones_like(pred) if target_is_real else torch.zeros_like(pred)
            return F.mse_loss(pred, target)
        if self.mode == "vanilla":
            target = torch.ones_like(pred) if target_is_real else torch.zeros_like(pred)
            return F.binary_cross_entropy_with_logits(pred, target)
        if for_discriminator:
            return F.relu(1 - pred).mean() if target_is_real else F.relu(1 + pred).mean()
        return -pred.mean()
