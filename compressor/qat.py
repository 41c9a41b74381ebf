"""Quantisation-aware distillation (QAD): the distilled student with fake quantisation, trained on with its teacher.

Built on PyTorch 2 Export quantisation (``torchao.quantization.pt2e``: ``prepare_qat_pt2e``, ``convert_pt2e``) with
ExecuTorch's ``XNNPACKQuantizer``: per-channel symmetric INT8 weights (per-tensor for transposed convolutions),
per-tensor affine INT8 activations, the observers' first values calibrated on the run's training images as
post-training quantisation does. Why PT2E and not NNCF's QAT: the quantised graph it trains is the graph the ExecuTorch (XNNPACK) and LiteRT INT8 exports already
lower, and ``torch.onnx`` writes it as a QDQ file that ONNX Runtime runs with its INT8 kernels and OpenVINO reads
as an INT8 IR, so one set of trained scales reaches every INT8 format; NNCF's QAT reaches OpenVINO and ONNX only.

:class:`QuantizedStudent` is an ``nn.Module`` the trainer treats as any student: its forward returns the image,
its state dict holds the weights and every fake quantiser's scale, zero point and observer state (checkpoints,
resume), ``train()``/``eval()`` switch the exported graph's batch norms, and the layers the loss terms tap are
extra outputs of the graph, recorded under their module names (:meth:`QuantizedStudent.tap_modules`).
"""

from __future__ import annotations

import copy
import logging
from typing import Iterable, Optional

import numpy as np
import torch
import torch.nn as nn

from .models import input_channels, size_multiple

log = logging.getLogger(__name__)

QUANTIZER_MODULE = "executorch.backends.xnnpack.quantizer.xnnpack_quantizer"
EXTRA = "pip install 'compressor[qad]'"
SCHEME = (
    "PT2E QAT, XNNPACKQuantizer: INT8 weights per-channel symmetric (per-tensor for transposed convolutions), "
    "INT8 activations per-tensor affine"
)


def missing() -> Optional[str]:
    """Why quantisation-aware training cannot run here (its quantizer is not installed), or None."""
    import importlib.util

    for mod in ("torchao", "executorch"):
        try:
            if importlib.util.find_spec(mod) is None:
                return f"{mod} is not installed: {EXTRA}"
        except (ImportError, ValueError):
            return f"{mod} is not installed: {EXTRA}"
    return None


def _import_quietly() -> None:
    """Import torchao once with its import-time notes (no Triton on a CPU machine, optional GPU kernels that do not
    load) kept out of the user's console: they say nothing about this toolkit's use of it."""
    quiet = logging.getLogger("torchao")
    old = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        import torchao.quantization.pt2e  # noqa: F401
    finally:
        quiet.setLevel(old)


def make_quantizer(qat: bool = True):
    """The quantizer every INT8 student of this toolkit uses (the ExecuTorch INT8 export's own scheme)."""
    _import_quietly()
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    # A transposed convolution's weight is (in, out, kh, kw): the quantizer's per-channel axis 0 would scale its
    # input channels, which no runtime folds into the output's requantisation (OpenVINO then runs the layer in
    # float: the quickstart's QAD IR was 1.45x slower than NNCF's). Per-tensor weights keep it an INT8 layer.
    return (
        XNNPACKQuantizer()
        .set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=qat))
        .set_module_type(nn.ConvTranspose2d, get_symmetric_quantization_config(is_per_channel=False, is_qat=qat))
    )


class _Tapped(nn.Module):
    """The student with the tapped modules' outputs as extra outputs: ``(image, *taps)``."""

    def __init__(self, net: nn.Module, taps: list[str]):
        super().__init__()
        self.net, self.taps = net, list(taps)

    def forward(self, x):
        feats: dict[str, torch.Tensor] = {}
        modules = dict(self.net.named_modules())
        hooks = [
            modules[n].register_forward_hook(lambda _m, _i, o, n=n: feats.__setitem__(n, o.clone())) for n in self.taps
        ]
        try:
            y = self.net(x)
        finally:
            for h in hooks:
                h.remove()
        return (y,) + tuple(feats[n] for n in self.taps)


# batch, height and width stay dynamic in the exported graph (Dim.AUTO: torch.export infers their constraints)
_DYNAMIC = {"x": {0: torch.export.Dim.AUTO, 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}}


class QuantizedStudent(nn.Module):
    """A student with fake quantisation (a prepared PT2E graph). ``taps``: module names of the FP32 student whose
    outputs the loss terms read; each is an extra output of the graph and is handed, each forward, to an identity
    module that :meth:`tap_modules` names as the original module (so :class:`compressor.features.FeatureTaps`
    records it as it records a plain student's)."""

    quantized = True  # the exporters take the trained scales of such a model instead of calibrating afresh

    def __init__(self, graph: nn.Module, taps: Iterable[str] = (), size_multiple: int = 1, input_nc: int = 3):
        super().__init__()
        self.graph = graph
        self.size_multiple = size_multiple  # what the FP32 student needs of H and W (compressor.models)
        self.config = {"input_nc": input_nc}
        self.tap_names = list(taps)
        self.tap_points = nn.ModuleList(nn.Identity() for _ in self.tap_names)
        self.training = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = self.graph(x)
        for point, f in zip(self.tap_points, outs[1:]):
            point(f)
        return outs[0]

    def tap_modules(self) -> dict[str, nn.Module]:
        """The module that receives each tapped layer's output, by the FP32 student's module name."""
        return dict(zip(self.tap_names, self.tap_points))

    def train(self, mode: bool = True) -> "QuantizedStudent":
        """Training mode for the optimiser's sake; the graph itself stays in eval mode: its batch norms keep the
        distilled student's statistics (folded into the convolutions as the INT8 file will have them) and no
        dropout, so the quantised phase fine-tunes the network the export computes (batch statistics of small
        training crops would move it away from that network)."""
        _import_quietly()
        from torchao.quantization.pt2e import move_exported_model_to_eval

        move_exported_model_to_eval(self.graph)
        self.training = mode
        for m in self.tap_points:
            m.training = mode
        return self

    def observers(self, on: bool) -> None:
        """Let the fake quantisers' observers move their ranges (on), or hold them where they are (off)."""
        from torchao.quantization.pt2e.fake_quantize import disable_observer, enable_observer

        self.graph.apply(enable_observer if on else disable_observer)

    def observing(self) -> bool:
        """Whether any observer still moves its range."""
        flags = [b for n, b in self.graph.named_buffers() if n.endswith("observer_enabled")]
        return any(bool(b.item()) for b in flags)

    def convert(self) -> nn.Module:
        """The INT8 model: a graph of quantize/dequantize ops with the trained scales (weights stored as INT8) that
        returns ``(image,)``, in eval mode. A copy: this model stays trainable."""
        from torch.utils._pytree import tree_flatten
        from torchao.quantization.pt2e import move_exported_model_to_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        graph = copy.deepcopy(self.graph)
        move_exported_model_to_eval(graph)
        graph = convert_pt2e(graph, fold_quantize=True)
        out = next(n for n in graph.graph.nodes if n.op == "output")
        out.args = ((out.args[0][0],),)  # the tapped layers are outputs for training only
        codegen = graph.graph._codegen
        if getattr(codegen, "pytree_info", None) is not None:
            codegen.pytree_info = codegen.pytree_info._replace(out_spec=tree_flatten((0,))[1])
        graph.graph.eliminate_dead_code()
        graph.recompile()
        return _eval_only(graph)


def _eval_only(graph: nn.Module) -> nn.Module:
    """A converted graph whose ``train()``/``eval()`` return it unchanged (it is in eval mode for good; an exported
    graph otherwise refuses both)."""
    graph.train = lambda mode=True: graph  # type: ignore[method-assign]
    graph.eval = lambda: graph  # type: ignore[method-assign]
    return graph


def prepare(student: nn.Module, example: torch.Tensor, taps: Iterable[str] = ()) -> QuantizedStudent:
    """The FP32 ``student`` with fake quantisation inserted (observers not yet calibrated), exported at
    ``example``'s shape with batch, height and width dynamic; ``taps``: module names recorded as extra outputs."""
    _import_quietly()
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    taps = list(taps)
    net = copy.deepcopy(student).cpu().train()
    example = example.detach().cpu().float()
    exported = torch.export.export(_Tapped(net, taps), (example,), dynamic_shapes=_DYNAMIC)
    graph = prepare_qat_pt2e(exported.module(), make_quantizer(qat=True))
    return QuantizedStudent(graph, taps, size_multiple(student), input_channels(student))


@torch.no_grad()
def calibrate(model: QuantizedStudent, images: Iterable[np.ndarray | torch.Tensor]) -> int:
    """Set every quantiser's range to the least and greatest value it sees over ``images`` (each (1, C, H, W) or
    (N, C, H, W), the model's input range), as min-max post-training calibration does. (The QAT observers' own
    moving average, left alone, would keep the first image's range: ranges too narrow for the rest, clipped.)
    Returns the images seen."""
    observers = [m for m in model.graph.modules() if hasattr(m, "averaging_constant") and hasattr(m, "min_val")]
    constants = [o.averaging_constant for o in observers]
    was = model.training
    model.train(False)
    model.observers(True)
    lo: list = [None] * len(observers)
    hi: list = [None] * len(observers)
    n = 0
    try:
        for o in observers:
            o.averaging_constant = 1.0  # each forward: this image's range alone
        for x in images:
            t = torch.as_tensor(np.asarray(x, dtype=np.float32)) if not isinstance(x, torch.Tensor) else x.float()
            model(t.cpu())
            n += int(t.shape[0])
            for i, o in enumerate(observers):
                lo[i] = o.min_val.clone() if lo[i] is None else torch.minimum(lo[i], o.min_val)
                hi[i] = o.max_val.clone() if hi[i] is None else torch.maximum(hi[i], o.max_val)
    finally:
        for o, c in zip(observers, constants):
            o.averaging_constant = c
    for i, o in enumerate(observers):
        if lo[i] is not None:
            o.min_val.resize_(lo[i].shape).copy_(lo[i])
            o.max_val.resize_(hi[i].shape).copy_(hi[i])
    for fq in model.graph.modules():  # the fake quantisers' scales from those ranges
        if hasattr(fq, "calculate_qparams") and hasattr(fq, "scale") and hasattr(fq, "activation_post_process"):
            scale, zero_point = fq.calculate_qparams()
            fq.scale.resize_(scale.shape).copy_(scale)
            fq.zero_point.resize_(zero_point.shape).copy_(zero_point)
    model.train(was)
    return n


def quantize_student(
    student: nn.Module,
    example: torch.Tensor,
    calibration: Iterable[np.ndarray | torch.Tensor],
    taps: Iterable[str] = (),
) -> QuantizedStudent:
    """:func:`prepare` and :func:`calibrate` in one: the student as post-training quantisation would leave it, with
    fake quantisers ready to train."""
    model = prepare(student, example, taps)
    seen = calibrate(model, calibration)
    log.info("quantize: fake quantisation inserted (%s), calibrated on %d images", SCHEME, seen)
    return model


def rebuild(
    student: nn.Module, example: torch.Tensor, state: dict[str, torch.Tensor], taps: Iterable[str] = ()
) -> QuantizedStudent:
    """A :class:`QuantizedStudent` from the FP32 student it was prepared from and its saved state dict (the graph
    is re-exported the same way, so the keys match)."""
    model = prepare(student, example, taps)
    model.load_state_dict(state)
    return model
