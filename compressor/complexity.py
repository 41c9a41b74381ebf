"""Parameters and MACs.

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (MACs = FLOPs / 2). That counter, like
fvcore, counts a ConvTranspose by its *input* size. GAN-compression papers count it by its *output* size;
``macs_paper_convention`` does that, so numbers compare with published tables. Elementwise operations
(norms, activations, adds) are not counted in either convention.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def profile_model(model: nn.Module, input_shape=(1, 3, 256, 256), device="cpu") -> dict:
    """Return params, MACs (ours), MACs (paper convention) and a per-module breakdown (ours). A network that counts
    itself (an ONNX teacher: :meth:`compressor.models.onnx_teacher.OnnxTeacher.complexity`, from its graph) is
    asked instead."""
    own = next((m for m in model.modules() if callable(getattr(m, "complexity", None))), None)
    if own is not None:
        return {**own.complexity(tuple(input_shape)), "per_module": {}}
    x = torch.zeros(*input_shape, device=device)
    was_training = model.training
    model.eval()
    correction = [0]
    handles = []

    def convT_hook(mod: nn.ConvTranspose2d, inputs, output):
        k = mod.weight.shape[2] * mod.weight.shape[3]
        per_pixel = mod.in_channels * mod.out_channels // mod.groups * k
        n = inputs[0].shape[0]
        in_px = inputs[0].shape[2] * inputs[0].shape[3]
        out_px = output.shape[2] * output.shape[3]
        correction[0] += n * per_pixel * (out_px - in_px)

    for m in model.modules():
        if isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            handles.append(m.register_forward_hook(convT_hook))
    counter = FlopCounterMode(display=False, depth=None)
    try:
        with torch.no_grad(), counter:
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    macs = counter.get_total_flops() // 2
    per_module = defaultdict(int)
    for name, ops in counter.get_flop_counts().items():
        per_module[name] = sum(ops.values()) // 2
    return {
        "params": count_params(model),
        "macs": int(macs),
        "macs_paper_convention": int(macs + correction[0]),
        "input_shape": list(input_shape),
        "per_module": dict(per_module),
        "convention": "FlopCounterMode; ConvTranspose by input size (paper convention: by output size)",
    }


def fvcore_macs(
    model: nn.Module, input_shape=(1, 3, 256, 256), operators=("conv", "linear", "matmul", "addmm", "bmm", "einsum")
) -> int:
    """Cross-check with fvcore (optional dependency; it reports MACs as 'flops').

    Only the operators FlopCounterMode also counts are summed: fvcore additionally counts norms.
    """
    from fvcore.nn import FlopCountAnalysis

    model.eval()
    with torch.no_grad():
        fca = FlopCountAnalysis(model, torch.zeros(*input_shape))
        fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return int(sum(v for k, v in fca.by_operator().items() if k in operators))


def human(n: float, unit: str = "") -> str:
    for div, suf in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g} {suf}{unit}".strip()
    return f"{n:.3g} {unit}".strip()
