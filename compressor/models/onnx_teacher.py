"""A teacher given as an ONNX file (``teacher.onnx``): run in ONNX Runtime, no PyTorch code needed.

It is an ``nn.Module`` without parameters, so the pipeline loads, evaluates and distils from it as from any
teacher; no gradient flows into it (the distill loop runs every teacher under ``no_grad``). Intermediate tensors
named as taps (``distill.losses.srp.pairs: [[TENSOR_NAME, student tap]]``) are made extra outputs of the graph,
and each is handed to a named identity point (:meth:`tap_modules`) so that the forward hooks of
:class:`compressor.features.FeatureTaps` record them as they record a module's output. Sessions are built per set
of tapped tensors and kept. Params and MACs come from the graph (:meth:`complexity`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from ..errors import RecipeError
from ..lazy import onnx

MAX_ONNX_BYTES = 4 << 30  # a teacher file larger than 4 GiB is refused before it is read
SKIP_OPS = {"Constant", "Shape", "Gather", "Unsqueeze", "Concat", "Cast", "Reshape", "Identity"}  # not tap targets


class _TapPoint(nn.Identity):
    """Where an intermediate tensor of the graph is handed to forward hooks."""


class OnnxTeacher(nn.Module):
    """An ONNX image-to-image network as a frozen teacher. ``path``: the ``.onnx`` file (one image input
    (N, C, H, W), the first output the image). The module takes and returns torch tensors in the network's own
    range; :func:`compressor.models.ranges.with_ranges` puts it in the toolkit's [-1, 1] as for any teacher."""

    def __init__(self, path: str | Path, key: str = "teacher.onnx"):
        super().__init__()
        self.path, self.key = Path(path), key
        if not self.path.is_file():
            raise RecipeError(f"{key}: {self.path}: file not found")
        if self.path.stat().st_size > MAX_ONNX_BYTES:
            raise RecipeError(f"{key}: {self.path}: larger than {MAX_ONNX_BYTES >> 30} GiB")
        try:
            model = onnx.load(str(self.path), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - protobuf raises several types
            raise RecipeError(f"{key}: {self.path}: not a readable ONNX file ({type(exc).__name__})") from None
        graph = model.graph
        inits = {i.name for i in graph.initializer}
        inputs = [i for i in graph.input if i.name not in inits]
        if len(inputs) != 1:
            raise RecipeError(f"{key}: {self.path.name} has {len(inputs)} inputs; a teacher takes one image")
        dims = inputs[0].type.tensor_type.shape.dim
        elem = inputs[0].type.tensor_type.elem_type
        if len(dims) != 4 or elem != onnx.TensorProto.FLOAT:
            shape = [d.dim_value or d.dim_param or "?" for d in dims]
            raise RecipeError(
                f"{key}: {self.path.name}'s input {inputs[0].name!r} is {shape} of ONNX type {elem}; a teacher takes "
                f"one float image (N, C, H, W)"
            )
        self.input_name = inputs[0].name
        self.input_channels = dims[1].dim_value or None
        self.output_name = graph.output[0].name
        self.tensors = [o for n in graph.node if n.op_type not in SKIP_OPS for o in n.output if o]
        self._model = model
        self._points = nn.ModuleDict()  # tensor name (escaped) -> its tap point
        self._names: dict[str, str] = {}  # escaped -> tensor name
        self._sessions: dict[tuple[str, ...], object] = {}

    # ------------------------------------------------------------------------------------------------- taps

    @staticmethod
    def _escape(name: str) -> str:
        return hashlib.sha1(name.encode()).hexdigest()[:16]

    def tap_modules(self) -> dict[str, nn.Module]:
        """Every intermediate tensor of the graph by name, as a module a forward hook can be registered on."""
        for name in self.tensors:
            k = self._escape(name)
            if k not in self._points:
                self._points[k] = _TapPoint()
                self._names[k] = name
        return {self._names[k]: m for k, m in self._points.items()}

    def _hooked(self) -> tuple[str, ...]:
        return tuple(self._names[k] for k, m in self._points.items() if m._forward_hooks)

    def _session(self, extra: tuple[str, ...]):
        if extra not in self._sessions:
            import onnxruntime as ort  # loaded when a session is first built

            model = self._model
            if extra:
                model = onnx.ModelProto()
                model.CopyFrom(self._model)
                known = {o.name for o in model.graph.output}
                for name in extra:
                    if name not in known:
                        model.graph.output.append(
                            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                        )
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = max(1, torch.get_num_threads())
            opts.log_severity_level = 3
            self._sessions[extra] = ort.InferenceSession(
                model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
            )
        return self._sessions[extra]

    # ---------------------------------------------------------------------------------------------- forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        extra = self._hooked()
        sess = self._session(extra)
        feed = {self.input_name: x.detach().float().cpu().contiguous().numpy()}
        outs = sess.run([self.output_name, *extra], feed)
        image = torch.from_numpy(np.ascontiguousarray(outs[0])).to(x.device)
        for name, value in zip(extra, outs[1:]):
            self._points[self._escape(name)](torch.from_numpy(np.ascontiguousarray(value)).to(x.device))
        return image

    # ------------------------------------------------------------------------------------------- complexity

    def complexity(self, input_shape: tuple[int, ...]) -> dict:
        """Params (initializers of convolutions and matrix products, and every other float initializer) and MACs
        of Conv, ConvTranspose (both conventions: by input size, ours; by output size, the papers'), Gemm and
        MatMul at ``input_shape``, from the graph's inferred shapes."""
        model = onnx.ModelProto()
        model.CopyFrom(self._model)
        inp = next(i for i in model.graph.input if i.name == self.input_name)
        for d, v in zip(inp.type.tensor_type.shape.dim, input_shape):
            d.ClearField("dim_param")
            d.dim_value = int(v)
        try:
            model = onnx.shape_inference.infer_shapes(model, data_prop=True)
        except Exception:  # noqa: BLE001 - a graph shape inference cannot follow: params only
            pass
        shapes: dict[str, list[int]] = {}
        for vi in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input):
            dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
            if dims and all(dims):
                shapes[vi.name] = dims
        weights = {i.name: list(i.dims) for i in model.graph.initializer}
        for i in model.graph.initializer:
            shapes.setdefault(i.name, list(i.dims))
        params = int(
            sum(
                int(np.prod(i.dims))
                for i in model.graph.initializer
                if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16) and len(i.dims) >= 1
            )
        )
        macs = paper = 0
        for n in model.graph.node:
            out = shapes.get(n.output[0]) if n.output else None
            if out is None:
                continue
            if n.op_type in ("Conv", "ConvTranspose") and len(n.input) > 1 and n.input[1] in weights:
                w = weights[n.input[1]]
                groups = next((a.i for a in n.attribute if a.name == "group"), 1)
                k = int(np.prod(w[2:]))
                if n.op_type == "Conv":  # weight (Cout, Cin/g, k...)
                    m = int(np.prod(out)) * w[1] * k
                    macs += m
                    paper += m
                else:  # weight (Cin, Cout/g, k...)
                    inp_shape = shapes.get(n.input[0])
                    cin, cout = w[0], w[1] * groups
                    per_pixel = cin * cout // groups * k
                    nb = out[0]
                    in_px = int(np.prod(inp_shape[2:])) if inp_shape else int(np.prod(out[2:]))
                    macs += nb * per_pixel * in_px
                    paper += nb * per_pixel * int(np.prod(out[2:]))
            elif n.op_type in ("Gemm", "MatMul") and len(n.input) > 1:
                a = shapes.get(n.input[0])
                if a:
                    m = int(np.prod(out)) * a[-1]
                    macs += m
                    paper += m
        return {"params": params, "macs": int(macs), "macs_paper_convention": int(paper)}


def onnx_tensor_hint(teacher: nn.Module, name: str, limit: int = 6) -> Optional[str]:
    """For an unknown tap on an ONNX teacher: a few tensor names that contain it, or the first few."""
    tensors = getattr(teacher, "tensors", None)
    if not tensors:
        return None
    close = [t for t in tensors if name.lower() in t.lower()] or tensors
    return ", ".join(close[:limit])
