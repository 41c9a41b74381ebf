"""The offline TensorRT compatibility lint: what TensorRT 10 and 11 would reject in an ONNX file, read from the rules
of :mod:`compressor.exporters.trt_rules` (each with its source), before anything is built or sent to a device.

``lint_onnx(path_or_model, version)`` runs without TensorRT or a GPU; the TensorRT format
(:mod:`compressor.exporters.formats.tensorrt`) lints every file TensorRT will read, and a failing lint stops the
export.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..lazy import onnx
from . import trt_rules
from .trt_rules import parse_version, rule

# Kept for callers of the old names: the ops the parser imports in TensorRT 10.0 and 11.0.
SUPPORTED_OPS = trt_rules.supported_ops(11)
SUPPORTED_OPS_10 = trt_rules.supported_ops(10)

_CTM_OK = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
_RESIZE_MODES = {"nearest", "linear", "cubic"}
_PAD_MODES = {"constant", "reflect", "edge", "wrap"}


@dataclass
class LintResult:
    target: str
    problems: list[dict] = field(default_factory=list)
    nodes: int = 0
    warnings: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {
            "target": self.target,
            "nodes": self.nodes,
            "ok": self.ok,
            "problems": self.problems,
            "warnings": self.warnings,
        }

    def lines(self) -> list[str]:
        warn = [f"  warning: {p['node']} ({p['op']}): {p['problem']}" for p in self.warnings]
        if self.ok:
            extra = f", {len(self.warnings)} warning(s)" if self.warnings else ""
            return [f"TensorRT {self.target} lint: {self.nodes} nodes, no problems{extra}"] + warn
        return (
            [f"TensorRT {self.target} lint: {len(self.problems)} problem(s) in {self.nodes} nodes"]
            + [f"  {p['node']} ({p['op']}): {p['problem']}" for p in self.problems]
            + warn
        )


def _attrs(node) -> dict:

    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _elem_types(model) -> dict:
    """Element type of every tensor name we can tell without running the model (shape inference where it works)."""

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - inference is a help, not a requirement (models > 2 GiB, odd ops)
        inferred = model
    g = inferred.graph
    types = {}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in g.initializer:
        types[init.name] = init.data_type
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    types[n.output[0]] = a.t.data_type
    return types


@dataclass
class _LintContext:
    """What every check in one lint run shares: the target, the graph's facts and the result's lists."""

    version: tuple[int, int]
    target: str
    T: Any  # onnx.TensorProto (onnx is imported lazily)
    supported: set[str]  # the ops the target's parser imports
    constants: set[str]  # initializers and Constant outputs: build-time constants
    inits: dict  # name -> initializer
    types: dict  # tensor name -> element type, where it can be told
    quantized: set[int]  # the element types TensorRT quantizes to and dequantizes from
    problems: list[dict]
    warnings: list[dict]

    def add(self, where: list, node_name: str, op: str, rule_id: str, text: str) -> None:
        where.append({"node": node_name, "op": op, "problem": text, "rule": rule_id, "source": rule(rule_id).source})

    def problem(self, node, rule_id: str, text: str) -> None:
        self.add(self.problems, node.name or node.output[0], node.op_type, rule_id, text)

    def warning(self, node, rule_id: str, text: str) -> None:
        self.add(self.warnings, node.name or node.output[0], node.op_type, rule_id, text)

    def type_name(self, t):
        """The element type's ONNX name (the number where ONNX has none)."""
        return self.T.DataType.Name(t) if t in self.T.DataType.values() else t


def _lint_context(model, v: tuple[int, int], res: LintResult, T) -> _LintContext:
    g = model.graph
    return _LintContext(
        version=v,
        target=res.target,
        T=T,
        supported=trt_rules.supported_ops(v),
        constants={i.name for i in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output},
        inits={i.name: i for i in g.initializer},
        types=_elem_types(model),
        quantized={T.INT8, T.FLOAT8E4M3FN, T.INT4} | ({T.FLOAT4E2M1} if v >= (10, 15) else set()),
        problems=res.problems,
        warnings=res.warnings,
    )


def _lint_opset(model, ctx: _LintContext) -> None:
    rng = trt_rules.opset_range(ctx.version)
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and not rng.low <= imp.version <= rng.high:
            ctx.problems.append(
                {
                    "node": "model",
                    "op": "opset",
                    "rule": "opset-range",
                    "source": rng.source,
                    "problem": f"ONNX opset {imp.version} is outside {rng.low}-{rng.high}, the range "
                    f"TensorRT {ctx.target} supports; export with --opset {min(18, rng.high)}",
                }
            )


def _lint_float64(graph, ctx: _LintContext) -> None:
    for t in list(graph.input) + list(graph.output):
        if t.type.tensor_type.elem_type == ctx.T.DOUBLE:
            ctx.add(ctx.warnings, t.name, "graph I/O", "double", "float64 tensor: TensorRT casts DOUBLE down to FLOAT")
    for init in graph.initializer:
        if init.data_type == ctx.T.DOUBLE:
            ctx.add(
                ctx.warnings,
                init.name,
                "initializer",
                "double",
                "float64 initializer: TensorRT casts DOUBLE down to FLOAT, clamping to +-FLT_MAX",
            )


def _op_supported(node, ctx: _LintContext) -> bool:
    """The op-support rules, for every node: False (and a problem) where the target's parser cannot import it."""
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        ctx.problem(node, "custom-domain", f"custom domain {node.domain!r}: needs a registered TensorRT plugin")
        return False
    if op not in ctx.supported:
        later = [r for r in trt_rules.OP_SUPPORT if r.op == op and r.since > ctx.version]
        hint = f" (supported from TensorRT {later[0].since[0]}.{later[0].since[1]})" if later else ""
        ctx.problem(
            node,
            "custom-domain",
            f"op {op} has no importer in TensorRT {ctx.target}'s ONNX parser{hint}; it would need a plugin",
        )
        return False
    return True


def _check_pad(node, a: dict, ctx: _LintContext) -> None:
    mode = a.get("mode", "constant")
    if mode not in _PAD_MODES:
        ctx.problem(node, "pad-mode", f"Pad mode {mode!r} is not supported")
    axes = node.input[3] if len(node.input) > 3 else ""
    if rule("pad-axes").applies(ctx.version) and axes and axes not in ctx.constants:
        ctx.problem(node, "pad-axes", "Pad's axes input must be an initializer (a build-time constant)")


def _check_resize(node, a: dict, ctx: _LintContext) -> None:
    mode = a.get("mode", "nearest")
    ctm = a.get("coordinate_transformation_mode", "half_pixel")
    if mode not in _RESIZE_MODES:
        ctx.problem(node, "resize-mode", f"Resize mode {mode!r} is not supported")
    if ctm not in _CTM_OK:
        ctx.problem(node, "resize-ctm", f"Resize coordinate_transformation_mode {ctm!r} is not supported")
    if a.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        ctx.problem(
            node,
            "resize-aspect",
            f"Resize keep_aspect_ratio_policy {a['keep_aspect_ratio_policy']!r} is not supported (only 'stretch')",
        )
    if a.get("antialias", 0):
        ctx.problem(node, "resize-antialias", "Resize antialias=1 is not supported")


def _zero_point(node) -> str:
    return node.input[2] if len(node.input) > 2 else ""


def _uint8_problem(node, ctx: _LintContext) -> None:
    ctx.problem(
        node,
        "qdq-uint8",
        f"UINT8 {node.op_type} is not supported: TensorRT needs symmetric signed INT8 (quantise with target 'tensorrt')",
    )


def _check_zero_point(node, ctx: _LintContext) -> None:

    zp = _zero_point(node)
    if zp in ctx.inits:
        arr = onnx.numpy_helper.to_array(ctx.inits[zp])
        if arr.dtype.kind in "iu" and arr.size and abs(arr.astype("int64")).max() != 0:
            ctx.problem(node, "qdq-zero-point", "Q/DQ zero points must be 0 (symmetric quantisation)")


def _check_quantize(node, a: dict, ctx: _LintContext) -> None:
    zp = _zero_point(node)
    if a.get("output_dtype"):
        out_t = a["output_dtype"]
    elif zp:
        out_t = ctx.inits[zp].data_type if zp in ctx.inits else ctx.types.get(zp)
    else:
        out_t = ctx.T.UINT8  # the ONNX default without a zero point or output_dtype
    if out_t == ctx.T.UINT8:
        _uint8_problem(node, ctx)
    elif out_t is not None and out_t not in ctx.quantized:
        ctx.problem(
            node,
            "qdq-quantized-type",
            f"QuantizeLinear to {ctx.type_name(out_t)} is not supported (INT8, FP8, INT4 only)",
        )
    _check_zero_point(node, ctx)


def _check_dequantize(node, a: dict, ctx: _LintContext) -> None:
    t = ctx.types.get(node.input[0])
    if t == ctx.T.UINT8:
        _uint8_problem(node, ctx)
    elif t is not None and t not in ctx.quantized:
        fp4 = "/FP4" if ctx.version >= (10, 15) else ""
        bias = " (a quantised bias: quantise with QuantizeBias off)" if t == ctx.T.INT32 else ""
        ctx.problem(
            node,
            "dq-input-type",
            f"DequantizeLinear of {node.input[0]} ({ctx.type_name(t)}) is not supported: TensorRT dequantizes only "
            f"INT8/FP8/INT4{fp4}{bias}",
        )
    _check_zero_point(node, ctx)


def _check_cast(node, a: dict, ctx: _LintContext) -> None:
    if a.get("to") == ctx.T.DOUBLE:
        ctx.warning(node, "cast-double", "Cast to float64 becomes a cast to FLOAT in TensorRT")


# The checks per op family, run on every node the op-support pass lets through (with the node's attributes).
_NODE_CHECKS: dict[str, Callable[[Any, dict, _LintContext], None]] = {
    "Pad": _check_pad,
    "Resize": _check_resize,
    "QuantizeLinear": _check_quantize,
    "DequantizeLinear": _check_dequantize,
    "Cast": _check_cast,
}


def lint_onnx(path_or_model, version: int | str | tuple = 10) -> LintResult:
    """Check every node against TensorRT's ONNX support for ``version`` without TensorRT.

    ``version`` is a major (10, 11: that major's first release, the conservative choice) or ``"MAJOR.MINOR"``
    (``"10.15"``). The rules are the data in :mod:`exporters.trt_rules`; each problem names its rule and source.
    """

    v = parse_version(version)
    model = path_or_model if isinstance(path_or_model, onnx.ModelProto) else onnx.load(str(path_or_model))
    g = model.graph
    res = LintResult(target=str(version) if not isinstance(version, tuple) else f"{v[0]}.{v[1]}", nodes=len(g.node))
    ctx = _lint_context(model, v, res, onnx.TensorProto)
    _lint_opset(model, ctx)
    _lint_float64(g, ctx)
    for node in g.node:
        if not _op_supported(node, ctx):
            continue
        a = _attrs(node)
        check = _NODE_CHECKS.get(node.op_type)
        if check is not None:
            check(node, a, ctx)
    return res
