"""The pre-flight checks: what the recipe's schema cannot check because it needs the zoo, the data folder, the format
table or the model itself (tap names, sizes, channels, backend and format names). ``compress validate`` runs them
all; the pipeline runs the cheap ones before it creates the run folder and the model checks when the teacher stage
starts."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .. import qat
from ..data import check_data_root
from ..errors import RecipeError, UserError
from ..exporters.table import BACKENDS, get_backend, get_format
from ..features import probe_shapes, resolve_taps
from ..models import (
    build_from_spec,
    build_generator,
    build_teacher,
    check_output,
    check_teacher_spec,
    size_multiple,
    spec_of_model,
    teacher_spec,
)
from ..models.layers import align_free_norms
from ..models.ranges import tensor_leaves
from ..recipe import Recipe
from ..schemas import loads, read_text_bounded

log = logging.getLogger(__name__)


def preflight(recipe: Recipe, build_model: bool = True) -> None:
    """The checks the schema cannot make, because they need the zoo, the data folder or the model itself.

    ``validate`` runs all of them; the pipeline runs the cheap ones before it creates the run folder and the
    model checks (``check_taps``) when the teacher stage starts.
    """
    check_teacher_spec(recipe.teacher)
    check_backends(recipe)
    check_quantize(recipe)
    if recipe.data.kind != "synthetic":
        check_data_root(recipe.data, recipe.resolve_path(recipe.data.root))
    if isinstance(recipe.student.widths, str):
        given_widths(recipe)  # the file is there and holds widths, before anything runs
    if build_model:
        check_taps(recipe)


def given_widths(recipe: Recipe) -> dict[str, int]:
    """``student.widths``: the channels per group as the recipe gives them, or the ``widths`` of the plan.json (or a
    per-layer student's student.json, or the run folder holding either) it names."""
    given = recipe.student.widths
    if isinstance(given, dict):
        return {str(k): int(v) for k, v in given.items()}
    widths, doc = _widths_doc(recipe.resolve_path(given), "student.widths")
    search = doc.get("per_layer")  # a plan.json says it there, a student.json at the top
    ranked = (search.get("importance") if isinstance(search, dict) else None) or doc.get("importance")
    if ranked in ("sensitivity", "measured") and recipe.student.importance not in ("sensitivity", "measured"):
        log.warning(
            "student.widths: %s was chosen keeping each group's most output-sensitive channels; this student keeps "
            "those of largest weights (student.importance: sensitivity keeps the ones it ranked)",
            given,
        )
    return widths


def read_widths(path: Path, key: str = "student.widths") -> dict[str, int]:
    """The per-layer ``widths`` of a plan.json, a per-layer student's student.json, or the run folder holding
    either; a file that is missing, unreadable or holds none is one line naming ``key``."""
    return _widths_doc(path, key)[0]


def _widths_doc(path: Path, key: str) -> tuple[dict[str, int], dict]:
    if path.is_dir():
        path = path / "plan.json" if (path / "plan.json").is_file() else path / "student_init" / "student.json"
    try:
        doc = loads(read_text_bounded(path), str(path))
    except FileNotFoundError:
        raise UserError(f"{key}: {path}: file not found") from None
    except UserError as exc:  # unreadable, too large, not JSON: the reader's line, under the key
        raise UserError(f"{key}: {exc}") from None
    got = doc.get("widths") if isinstance(doc, dict) else None
    if not isinstance(got, dict) or not got or not all(type(v) is int and v >= 1 for v in got.values()):
        raise UserError(
            f"{key}: {path} holds no per-layer widths (a plan.json from compress plan's per-layer search, "
            f"or a per-layer student's student.json)"
        )
    return {str(k): int(v) for k, v in got.items()}, doc


def check_quantize(recipe: Recipe) -> None:
    """``distill.quantize``: its quantizer installed, and data with one student (before anything is distilled)."""
    if recipe.distill.quantize is None:
        return
    why = qat.missing()
    if why:
        raise RecipeError(f"distill.quantize: {why}")
    if recipe.data.kind == "unpaired":
        raise RecipeError("distill.quantize: unpaired data (two students) is not supported yet; remove it")


def check_backends(recipe: Recipe) -> None:
    """``profile.backends``, ``export.formats`` and ``student.budget.backend`` against the format table (the schema
    keeps plain strings: it imports no exporter)."""
    for f in recipe.export.formats:
        try:
            get_format(f, "export.formats", recipe=True)
        except UserError as exc:
            raise RecipeError(f"{exc} (TensorRT: export.tensorrt)") from None
    try:
        for b in recipe.profile.backends:
            get_backend(b, "profile.backends")
        budget = recipe.student.budget
        if budget is not None:
            row = get_backend(budget.backend, "student.budget.backend", plan=True)
            if budget.host and row.artifact != "onnx":
                onnx = ", ".join(n for n, r in BACKENDS.items() if r.artifact == "onnx")
                raise ValueError(
                    f"student.budget.host: only ONNX files travel to a remote machine; use backend {onnx}, "
                    f"not {budget.backend}"
                )
    except ValueError as exc:
        raise RecipeError(str(exc)) from None


def student_arch_spec(r: Recipe, example: torch.Tensor, out_channels: int) -> dict:
    """The saved spec of ``student.arch`` / ``student.import``: a zoo student's every argument (its image channels
    those of the data and the teacher's output unless given), an import's file made absolute as the teacher's."""
    s = r.student
    if s.arch:
        kwargs = {"input_nc": int(example.shape[1]), "output_nc": int(out_channels), **s.kwargs}
        return {"arch": s.arch, "kwargs": spec_of_model(build_generator(s.arch, init=None, **kwargs))["kwargs"]}
    return {"import": teacher_spec({"import": s.import_, "kwargs": s.kwargs}, r.base_dir)["import"], "kwargs": s.kwargs}


def check_taps(recipe: Recipe) -> None:
    """Build the teacher's architecture (no weights) and check that every tapped layer exists and yields a 4-D
    feature map at ``data.size``; the same for a student of another architecture (``student.arch``/``import``),
    which must also run on the teacher's input. Users' own code runs here only through the recipe's imports."""
    L = recipe.distill.losses
    pairs = L.tap_pairs()
    if not pairs and not recipe.student.other_arch:
        return
    t = recipe.teacher
    model = build_teacher(t, recipe.base_dir, init=None)
    align_free_norms(model, "teacher")  # GAN Compression's mismatched norms: one log line, not a warning per call
    key = "distill.losses.srp" if L.srp.weight > 0 else "distill.losses.feat"
    key += ".pairs" if any(a != b for a, b in pairs.values()) else ".layers"
    x = example_input(recipe, model).zero_()
    sides = [("teacher", model, {a: tp for a, (tp, _) in pairs.items()}, t.taps)]
    if recipe.student.other_arch:
        which = "student.arch" if recipe.student.arch else "student.import"
        with torch.no_grad():
            try:
                out = model.eval()(x)
            except Exception as exc:  # noqa: BLE001 - a size or a channel count the model cannot take
                raise input_mismatch(recipe, model, exc) from None
        leaves = tensor_leaves(out)
        channels = int(leaves[0].shape[1]) if leaves and leaves[0].dim() == 4 else recipe.data.channels
        student = build_from_spec(student_arch_spec(recipe, x, channels), init=None, source=which)
        try:
            with torch.no_grad():
                student.eval()(x)
        except Exception as exc:  # noqa: BLE001 - the user's network
            raise RecipeError(
                f"{which}: the student cannot run on the data's input {tuple(x.shape)} "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"
            ) from None
        sides.append(("student", student, {a: sp for a, (_, sp) in pairs.items()}, None))
    elif any(a != b for a, b in pairs.values()):
        sides.append(("student", model, {a: sp for a, (_, sp) in pairs.items()}, t.taps))  # a slimmed teacher's names
    for side, net, names, extra in sides:
        if not names:
            continue
        taps = resolve_taps(net, list(dict.fromkeys(names.values())), extra, key=key)
        try:
            shapes = probe_shapes(net.eval(), taps, x)
        except Exception as exc:  # noqa: BLE001 - a size or a channel count the model cannot take
            raise input_mismatch(recipe, net, exc) from None
        for alias, shape in shapes.items():
            if len(shape) != 4:
                raise RecipeError(
                    f"{key}: the {side}'s tap {alias!r} ({taps[alias]}) gives a {len(shape)}-D output {shape}; "
                    f"SRP needs (B, C, H, W) feature maps"
                )
        for alias in taps:
            if alias not in shapes:
                raise RecipeError(
                    f"{key}: the {side}'s tap {alias!r} ({taps[alias]}) is not executed by the forward pass"
                )


def input_mismatch(recipe: Recipe, model: torch.nn.Module, exc: Exception) -> RecipeError:
    """The one line for a teacher that failed on an input of the recipe's size and channels: ``data.channels`` when
    it runs on the other channel count (an RGB network on grayscale data, or the reverse), else ``data.size``."""
    d = recipe.data
    other = 1 if d.channels == 3 else 3
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, other, d.size, d.size))
    except Exception:  # noqa: BLE001 - not the channels either: the size (or something else) it cannot take
        return RecipeError(
            f"data.size: the teacher cannot run at {d.size}x{d.size} with {d.channels} channel(s) "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        )
    kind = {1: "grayscale (1-channel)", 3: "RGB (3-channel)"}
    return RecipeError(
        f"data.channels: the teacher takes {kind[other]} images but the data gives {kind[d.channels]} ones "
        f"(data.channels: {d.channels}); set data.channels: {other} or use a checkpoint made for {kind[d.channels]} "
        f"images"
    )


def check_runs(recipe: Recipe, model: torch.nn.Module) -> None:
    """One forward pass at the recipe's size and channels: a mismatch is one line (:func:`input_mismatch`); then
    the output must be one tensor (``teacher.output`` otherwise)."""
    x = example_input(recipe, model)
    try:
        with torch.no_grad():
            model.eval()(x)
    except RecipeError:
        raise
    except Exception as exc:  # noqa: BLE001 - users' networks raise anything
        raise input_mismatch(recipe, model, exc) from None
    check_output(model, x)  # several outputs need teacher.output


def check_size(recipe: Recipe, model: torch.nn.Module) -> None:
    m = size_multiple(model)
    if recipe.data.size % m:
        raise RecipeError(
            f"data.size: {recipe.data.size} is not a multiple of {m}, which "
            f"{getattr(model, 'arch', type(model).__name__)} needs"
        )


def example_input(recipe: Recipe, model: torch.nn.Module, batch: int = 1) -> torch.Tensor:
    """A random input at the recipe's size with the data's channels (the teacher's config where it has one)."""
    cfg = getattr(model, "config", {})
    return torch.randn(batch, cfg.get("input_nc", recipe.data.channels), recipe.data.size, recipe.data.size)
