"""The generator zoo and teacher loading.

``build_generator(name, **kwargs)`` accepts pytorch-CycleGAN-and-pix2pix's names and arguments and builds
modules with identical state_dict keys, so its ``latest_net_G.pth`` files load as they are.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file

from ..errors import CheckpointError, RecipeError
from ..recipe import TeacherSpec, resolve_path
from ..trust import require_consent
from ..zoo_args import check_zoo_kwargs
from .checkpoint import load_checkpoint, strip_prefix
from .discriminator import NLayerDiscriminator
from .layers import align_free_norms
from .norms import init_weights
from .onnx_teacher import OnnxTeacher
from .ranges import TOOLKIT_RANGE, RangeWrapper, describe_output, select_output, wrap_ranges
from .resnet import ResnetGenerator
from .unet import UnetGenerator

log = logging.getLogger(__name__)

ZOO = {
    "resnet_9blocks": (ResnetGenerator, {"n_blocks": 9}),
    "resnet_6blocks": (ResnetGenerator, {"n_blocks": 6}),
    "unet_128": (UnetGenerator, {"num_downs": 7}),
    "unet_256": (UnetGenerator, {"num_downs": 8}),
}
GENERATOR_ARGS = ("input_nc", "output_nc", "ngf", "norm", "use_dropout")

__all__ = [
    "ZOO",
    "build_generator",
    "build_discriminator",
    "load_teacher",
    "load_state_dict_file",
    "apply_state_dict",
    "NLayerDiscriminator",
    "ResnetGenerator",
    "UnetGenerator",
    "init_weights",
    "import_object",
    "size_multiple",
    "default_taps",
    "build_teacher",
    "build_from_spec",
    "teacher_spec",
    "spec_of_model",
    "check_teacher_spec",
    "load_saved_teacher",
    "GENERATOR_ARGS",
    "check_output",
    "describe_output",
    "select_output",
]


def build_generator(
    name: str,
    input_nc: int = 3,
    output_nc: int = 3,
    ngf: int = 64,
    norm: str = "batch",
    use_dropout: bool = False,
    init: str | None = "normal",
) -> nn.Module:
    """Build a zoo generator as pytorch-CycleGAN-and-pix2pix's ``define_G`` would (without moving it to a GPU)."""
    if name not in ZOO:
        raise RecipeError(f"teacher.arch: unknown generator {name!r}; choose one of {', '.join(ZOO)}")
    cls, fixed = ZOO[name]
    net = cls(input_nc=input_nc, output_nc=output_nc, ngf=ngf, norm=norm, use_dropout=use_dropout, **fixed)
    net.arch = name
    if init:
        init_weights(net, init)
    return net


def build_discriminator(
    input_nc: int = 6, ndf: int = 64, n_layers: int = 3, norm: str = "batch", init: str | None = "normal"
) -> nn.Module:
    net = NLayerDiscriminator(input_nc=input_nc, ndf=ndf, n_layers=n_layers, norm=norm)
    if init:
        init_weights(net, init)
    return net


def input_channels(model: nn.Module, samples: torch.Tensor | None = None) -> int:
    """Input channels: the samples' when given, else the model's config, else its first convolution's."""
    if samples is not None:
        return int(samples.shape[1])
    cfg = getattr(model, "config", None) or {}
    if "input_nc" in cfg:
        return int(cfg["input_nc"])
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            return int(m.in_channels)
    return 3


def size_multiple(model: nn.Module) -> int:
    """The multiple that input H and W must be for this model (1 when unknown)."""
    if isinstance(model, RangeWrapper):
        return size_multiple(model.model)
    return int(getattr(model, "size_multiple", 1) or 1)


def default_taps(model: nn.Module) -> dict[str, str]:
    if isinstance(model, RangeWrapper):  # the wrapped model's aliases, under its ``model.`` prefix
        return {k: f"model.{v}" for k, v in default_taps(model.model).items()}
    return dict(getattr(model, "taps", {}) or {})


def _ranges_of(spec) -> dict:
    """``input_range``/``output_range`` of a teacher spec (recipe section or saved dict) when not [-1, 1], and the
    named ``output`` when there is one."""
    get = spec.get if isinstance(spec, dict) else (lambda k, d=None: getattr(spec, k, d))
    out: dict[str, Any] = {}
    for key in ("input_range", "output_range"):
        value = get(key, None)
        if value is not None and tuple(map(float, value)) != TOOLKIT_RANGE:
            out[key] = [float(v) for v in value]
    if get("output", None) is not None:
        out["output"] = str(get("output", None))
    if get("residual", None) not in (None, "none"):
        out["residual"] = str(get("residual", None))
    return out


def with_ranges(model: nn.Module, spec) -> nn.Module:
    """The model as the toolkit sees it: one tensor in [-1, 1] in and out, converted at its edges when ``spec``
    declares another range, and selected when ``spec`` names an ``output`` (:mod:`compressor.models.ranges`)."""
    r = _ranges_of(spec)
    if not r:
        return model
    return wrap_ranges(
        model,
        r.get("input_range", TOOLKIT_RANGE),
        r.get("output_range", TOOLKIT_RANGE),
        r.get("output"),
        r.get("residual", "none"),
    )


def check_output(model: nn.Module, x: torch.Tensor) -> None:
    """One forward pass (eval, no grad): the model as the toolkit sees it must return one tensor; otherwise one
    ``teacher.output`` error line listing what it returned (types and shapes)."""
    was = model.training
    try:
        with torch.no_grad():
            out = model.eval()(x)
    finally:
        model.train(was)
    select_output(out, None)


def import_object(path: str, base_dir: Path | None = None, key: str = "teacher.import") -> Any:
    """Resolve ``package.module:attr`` or ``path/to/file.py:attr``.

    A relative file path follows the recipe's rule (:func:`compressor.recipe.resolve_path`): the recipe's folder
    (``base_dir``) first, then the current folder.
    """
    if ":" not in path:
        raise RecipeError(f"{key}: expected 'module:attribute' or 'file.py:attribute', got {path!r}")
    mod_name, _, attr = path.rpartition(":")
    if mod_name.endswith(".py"):
        file = resolve_path(base_dir if base_dir is not None else Path.cwd(), mod_name)
        if not file.is_file():
            raise RecipeError(f"{key}: file not found: {file}")
        unique = f"compressor_user_{abs(hash(str(file.resolve())))}"
        if unique in sys.modules:
            module = sys.modules[unique]
        else:
            spec = importlib.util.spec_from_file_location(unique, file)
            module = importlib.util.module_from_spec(spec)
            sys.modules[unique] = module
            try:
                spec.loader.exec_module(module)
            except Exception as exc:
                del sys.modules[unique]
                raise RecipeError(f"{key}: importing {file} failed: {type(exc).__name__}: {exc}") from None
    else:
        try:
            module = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc:
            raise RecipeError(f"{key}: no module named {exc.name!r} (from {path!r})") from None
        except Exception as exc:
            raise RecipeError(f"{key}: importing {mod_name} failed: {type(exc).__name__}: {exc}") from None
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise RecipeError(f"{key}: module {mod_name!r} has no attribute {attr!r}") from None
    return obj


def load_state_dict_file(
    path: str | Path, trust: bool = False, key: str = "teacher.checkpoint", checkpoint_key: str | None = None
) -> dict:
    """Read a checkpoint into a flat state_dict without executing code (unless ``trust``): the layouts and formats
    :mod:`compressor.models.checkpoint` lists; ``checkpoint_key`` picks a nested state_dict explicitly."""
    return load_checkpoint(path, trust=trust, key=key, checkpoint_key=checkpoint_key)


def _clean_state_dict(model: nn.Module, state: dict) -> dict:
    """Strip DataParallel's ``module.`` prefix; drop legacy InstanceNorm running statistics; fill BatchNorm's
    ``num_batches_tracked`` where a checkpoint from before PyTorch 0.4.1 has none (it only counts batches)."""
    state = strip_prefix(state)
    modules = dict(model.named_modules())
    cleaned = {}
    for k, v in state.items():
        mod_name, _, leaf = k.rpartition(".")
        mod = modules.get(mod_name)
        if (
            isinstance(mod, nn.InstanceNorm2d)
            and leaf in ("running_mean", "running_var", "num_batches_tracked")
            and getattr(mod, leaf, None) is None
        ):
            continue
        cleaned[k] = v
    for name, mod in modules.items():
        key = f"{name}.num_batches_tracked" if name else "num_batches_tracked"
        if (
            isinstance(mod, nn.modules.batchnorm._BatchNorm)
            and getattr(mod, "num_batches_tracked", None) is not None
            and key not in cleaned
            and f"{name}.running_mean" in cleaned
        ):
            cleaned[key] = torch.zeros_like(mod.num_batches_tracked)
    return cleaned


def _kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    if dtype.is_complex:
        return "complex"
    return "float" if dtype.is_floating_point else "int"


def apply_state_dict(model: nn.Module, state: dict, source: str = "checkpoint", key: str = "teacher.checkpoint"):
    """Load strictly, with messages that name the first mismatching keys, counts and shapes."""
    state = _clean_state_dict(model, state)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise CheckpointError(f"{key}: {source} does not match the architecture: keys " + "; ".join(parts))
    for k, v in own.items():
        if not torch.is_tensor(state[k]):
            raise CheckpointError(f"{key}: {source}: {k} is a {type(state[k]).__name__}, not a tensor")
        if _kind(state[k].dtype) != _kind(v.dtype):  # load_state_dict would cast int/bool/complex silently
            raise CheckpointError(
                f"{key}: {source}: {k} holds {state[k].dtype} values where the model has {v.dtype} "
                f"(not weights of this model)"
            )
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(
                f"{key}: {source} does not match the architecture: {k} has shape "
                f"{tuple(state[k].shape)} in the checkpoint but {tuple(v.shape)} in the model"
            )
    model.load_state_dict(state, strict=True)
    return model


# ---------------------------------------------------------------------------------------------- teacher spec
# One pair: ``teacher_spec`` turns a recipe's teacher section into the JSON spec saved with a run (teacher.json,
# student.json); ``build_from_spec`` rebuilds the architecture from that spec. ``build_teacher``/``load_teacher``
# work from the recipe section itself.


def _as_teacher_spec(spec) -> TeacherSpec:
    return spec if isinstance(spec, TeacherSpec) else TeacherSpec.model_validate(spec)


def check_teacher_spec(spec) -> None:
    """Zoo name and arguments of a teacher section (the schema itself does not know the zoo)."""
    spec = _as_teacher_spec(spec)
    if not spec.arch:
        return
    if spec.arch not in ZOO:
        raise RecipeError(f"teacher.arch: unknown generator {spec.arch!r}; choose one of {', '.join(ZOO)}")
    bad = sorted(set(spec.kwargs) - set(GENERATOR_ARGS))
    if bad:
        raise RecipeError(
            f"teacher.kwargs: unknown argument {bad[0]!r} for {spec.arch}; allowed: {', '.join(GENERATOR_ARGS)}"
        )


def spec_of_model(model: nn.Module) -> dict | None:
    """The JSON spec that rebuilds this architecture (without weights), if known."""
    spec = getattr(model, "compressor_spec", None)
    if spec:
        return dict(spec)
    arch = getattr(model, "arch", None)
    if arch in ZOO:
        cfg = model.config
        return {"arch": arch, "kwargs": {k: cfg[k] for k in GENERATOR_ARGS}}
    return None


def teacher_spec(spec, base_dir: str | Path | None = None) -> dict:
    """The JSON spec of a recipe's teacher: every generator argument for a zoo model (defaults filled in), or the
    import path with a ``file.py`` made absolute by the recipe's path rule."""
    spec = _as_teacher_spec(spec)
    if spec.arch:
        check_teacher_spec(spec)
        return {**spec_of_model(build_generator(spec.arch, init=None, **spec.kwargs)), **_ranges_of(spec)}
    if spec.onnx:
        return {
            "onnx": str(resolve_path(base_dir if base_dir is not None else Path.cwd(), spec.onnx)),
            **_ranges_of(spec),
        }
    path = spec.import_
    mod, _, attr = path.rpartition(":")
    if mod.endswith(".py"):
        path = f"{resolve_path(base_dir if base_dir is not None else Path.cwd(), mod)}:{attr}"
    return {"import": path, "kwargs": dict(spec.kwargs), **_ranges_of(spec)}


def build_from_spec(
    spec: dict, init: str | None = None, allow_import: bool | None = None, source: str = "student.json/teacher.json"
) -> nn.Module:
    """Rebuild an architecture from its saved spec (``{"arch"|"import": ..., "kwargs": {...}}``). A zoo ``arch``
    is data; an ``import`` runs code and needs consent: ``allow_import=True``, ``--trust-code``, or the recipe being
    run naming that import (:mod:`compressor.trust`); otherwise :class:`~compressor.trust.UntrustedCode`."""
    if not isinstance(spec, dict):
        raise CheckpointError(f"{source}: the architecture spec must be a mapping")
    kwargs = spec.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{source}: the architecture's kwargs must be a mapping")
    if spec.get("arch"):
        try:
            check_zoo_kwargs(str(spec["arch"]), kwargs, key=f"{source} kwargs")
        except ValueError as exc:
            raise CheckpointError(f"{source}: {exc}") from None
        model = build_generator(spec["arch"], init=init, **kwargs)
        if not _ranges_of(spec):
            return model
        wrapped = with_ranges(model, spec)
        wrapped.compressor_spec = dict(spec)
        return wrapped
    if isinstance(spec.get("onnx"), str):  # a file run in ONNX Runtime: data, no code
        model = with_ranges(OnnxTeacher(spec["onnx"], key=f"{source} onnx"), spec)
        model.compressor_spec = dict(spec)
        return model
    target = spec.get("import")
    if not isinstance(target, str):
        raise CheckpointError(f"{source}: the spec names neither a zoo 'arch' nor an 'import'")
    require_consent(target, source, allow_import)
    factory = import_object(target, key=f"{source} import")
    try:
        model = factory(**kwargs)
    except Exception as exc:  # noqa: BLE001 - user code
        raise CheckpointError(f"{source}: calling {target} failed: {type(exc).__name__}: {exc}") from None
    model = with_ranges(model, spec)
    model.compressor_spec = dict(spec)
    return model


def build_teacher(spec, base_dir: str | Path | None = None, init: str | None = "normal") -> nn.Module:
    """The teacher's architecture (zoo ``arch`` or ``import``) without loading any checkpoint."""
    spec = _as_teacher_spec(spec)
    check_teacher_spec(spec)
    if spec.arch:
        return build_generator(spec.arch, init=init, **spec.kwargs)
    if spec.onnx:
        return OnnxTeacher(resolve_path(Path(base_dir) if base_dir is not None else Path.cwd(), spec.onnx))
    factory = import_object(spec.import_, Path(base_dir) if base_dir is not None else Path.cwd())
    try:
        model = factory(**spec.kwargs)
    except Exception as exc:  # noqa: BLE001 - user code
        raise RecipeError(f"teacher.kwargs: calling {spec.import_} failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise RecipeError(f"teacher.import: {spec.import_} returned {type(model).__name__}, not an nn.Module")
    return model


def load_teacher(spec, base_dir: str | Path | None = None, trust_checkpoint: bool = False) -> nn.Module:
    """Build the teacher a spec describes (zoo ``arch`` or ``import``) and load its checkpoint, if any.

    ``spec`` is a :class:`compressor.recipe.TeacherSpec` or a dict of its fields. Relative paths follow the
    recipe's rule (:func:`compressor.recipe.resolve_path`): ``base_dir`` first, then the current folder.
    """
    spec = _as_teacher_spec(spec)
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    model = build_teacher(spec, base)
    if spec.checkpoint:
        ckpt = resolve_path(base, spec.checkpoint)
        state = load_state_dict_file(ckpt, trust=trust_checkpoint, checkpoint_key=spec.checkpoint_key)
        apply_state_dict(model, state, source=str(ckpt))
        log.info("loaded teacher weights from %s", ckpt)
    model = with_ranges(model, spec).eval()
    align_free_norms(model, "teacher")
    return model


def load_saved_teacher(spec: dict, weights: str | Path) -> nn.Module:
    """A teacher saved as a JSON spec plus safetensors weights (no pickle)."""
    weights = Path(weights)
    model = build_from_spec(spec, source="teacher.json")  # an imported architecture needs consent first
    if not weights.is_file():
        raise CheckpointError(f"{weights}: file not found; run the teacher stage first")
    apply_state_dict(model, load_file(str(weights)), source=str(weights), key="teacher")
    model.compressor_spec = dict(spec)
    align_free_norms(model, "teacher")
    return model.eval()
