"""The format table: every row of ``compressor/exporters/formats/``, and the backends that run their files.

:data:`FORMATS` holds one :class:`~compressor.exporters.rows.Format` per module of the ``formats`` package (each
declares ``FORMAT``), in their ``order``; :data:`BACKENDS` every backend those rows declare. Everything that needs to
know about a format or a backend reads them: ``compress export --format`` and the recipe's ``export.formats``, the
export flow, ``compress benchmark``, ``compress profile --backend``, ``student.budget.backend``, ``compress plan``,
the help texts and the report. Each fact is checked here once: :func:`get_format`, :func:`check_precision`,
:func:`get_backend`.

Adding a format is one module in ``formats/`` (its exporter, its Runner, its ``FORMAT`` row): nothing else names
it. A runtime that lives outside this package adds a backend with :func:`register`.
"""

from __future__ import annotations

import importlib
import pkgutil

from compressor.errors import UserError

from . import formats
from .rows import Backend, Format


def _discover() -> dict[str, Format]:
    """The ``FORMAT`` row of every module in the ``formats`` package, in their ``order`` (then by name)."""
    rows = []
    for info in pkgutil.iter_modules(formats.__path__):
        module = importlib.import_module(f"{formats.__name__}.{info.name}")
        row = getattr(module, "FORMAT", None)
        if isinstance(row, Format):
            rows.append(row)
    return {f.name: f for f in sorted(rows, key=lambda f: (f.order, f.name))}


FORMATS: dict[str, Format] = _discover()
BACKENDS: dict[str, Backend] = {b.name: b for f in FORMATS.values() for b in f.backends}


def register(backend: Backend) -> Backend:
    """Add (or replace) a backend: for runtimes that live outside this package."""
    BACKENDS[backend.name] = backend
    return backend


# ------------------------------------------------------------------------------------------------ formats


def format_names(recipe: bool = False) -> list[str]:
    """Every format (``recipe``: those the recipe's ``export.formats`` may list)."""
    return [n for n, f in FORMATS.items() if f.in_recipe or not recipe]


def format_help(recipe: bool = False) -> str:
    """``torch, onnx, openvino, ...``: for help texts and error messages."""
    return ", ".join(format_names(recipe))


def get_format(name: str, key: str = "--format", recipe: bool = False) -> Format:
    """The row for ``name``, or one UserError line naming ``key`` and the choices."""
    row = FORMATS.get(name)
    if row is None or (recipe and not row.in_recipe):
        raise UserError(f"{key}: unknown format {name!r}; choose from {format_help(recipe)}")
    return row


def check_precision(fmt: Format, precision: str, key: str = "--precision") -> str:
    """``precision`` when ``fmt`` writes it, else one UserError line naming ``key``."""
    if precision not in fmt.precisions:
        raise UserError(f"{key}: {fmt.name} exports {', '.join(fmt.precisions)}, not {precision}")
    return precision


def format_of_backend(name: str) -> Format | None:
    """The format whose files backend ``name`` runs."""
    return next((f for f in FORMATS.values() if any(b.name == name for b in f.backends)), None)


def file_kind(path) -> tuple[str, str] | None:
    """(kind of file, precision) of an exported file of a format other than PyTorch and ONNX (``("int8-openvino",
    "int8")`` for ``student.int8.xml``), by the table's suffixes and the ``.<precision>`` tag before them."""
    name = str(getattr(path, "name", path))
    for fmt in FORMATS.values():
        row = fmt.backend
        if row is None or row.artifact in ("torch", "onnx", "engine") or not name.endswith(fmt.suffix):
            continue
        tag = name[: -len(fmt.suffix)].rpartition(".")[2]
        precision = tag if tag in fmt.precisions else fmt.precisions[0]
        return row.artifact_for(precision), precision
    return None


def find_artifacts(folder, stem: str) -> dict[str, str]:
    """The exported files of ``stem`` in ``folder``, by the kind of file a backend runs (``onnx``, ``int8-onnx``,
    ``openvino``, ``int8-openvino``, ...): what ``compress profile`` times."""
    found = {}
    for fmt in FORMATS.values():
        row = fmt.backend
        if row is None or row.artifact == "torch":
            continue
        for prec in fmt.precisions:
            path = fmt.path(folder, stem, prec)
            if path.exists():  # a file, or a package folder (.mlpackage)
                found[row.artifact_for(prec)] = str(path)
    return found


# ------------------------------------------------------------------------------------------------ backends


def backend_names(plan: bool = False) -> list[str]:
    return [n for n, b in BACKENDS.items() if b.plan or not plan]


def backend_help(plan: bool = False) -> str:
    """``torch, torch-compile, ort-cpu, ...``: for help texts and error messages."""
    return ", ".join(backend_names(plan))


def get_backend(name: str, key: str = "--backend", plan: bool = False) -> Backend:
    """The row for ``name``, or a ValueError naming ``key`` and the choices."""
    row = BACKENDS.get(name)
    if row is None or (plan and not row.plan):
        raise ValueError(f"{key}: unknown backend {name!r}; choose from {backend_help(plan)}")
    return row


def backend_available(name: str) -> tuple[bool, str]:
    """(available, reason if not) for backend ``name`` on this machine."""
    row = BACKENDS.get(name)
    if row is None:
        return False, f"unknown backend {name!r}; choose from {backend_help()}"
    return row.available()


def make_runner(name: str, artifact, *, threads=None, device=None, precision: str = "fp32"):
    """A Runner for backend ``name`` on ``artifact`` (a file, or for torch rows a function that builds the model)."""
    return get_backend(name).make_runner(artifact, threads=threads, device=device, precision=precision)
