"""Consent to run code named by data.

Student, teacher and run folders are data: ``student.json`` and ``teacher.json`` may name an architecture to
import (``"import": "pkg.module:factory"`` or ``"path/file.py:factory"``), and importing it runs code. Such an
import happens only with the caller's consent:

* ``allow_import=True`` in Python, or ``--trust-code`` on the command line (:func:`trust_all_code`, which also
  sets ``COMPRESSOR_TRUST_CODE=1`` so worker processes inherit it);
* the recipe being run: its own ``teacher.import`` is consent for that one target (:func:`consent_to`, passed to
  workers in ``COMPRESSOR_TRUSTED_IMPORTS``).

Zoo architectures rebuild from data and never need consent. :func:`check_import_target` checks that an import
target exists without executing it (``validate``).
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path
from typing import Optional

from .errors import RecipeError, UserError

ENV_ALL = "COMPRESSOR_TRUST_CODE"
ENV_TARGETS = "COMPRESSOR_TRUSTED_IMPORTS"
_SEP = "\n"


class UntrustedCode(UserError):
    """A folder names code to import and the caller did not consent."""


def trust_all_code() -> None:
    """The caller consents to every import named by the folders it loads (``--trust-code``)."""
    os.environ[ENV_ALL] = "1"


def consent_to(target: str) -> None:
    """Consent to importing exactly ``target`` (a recipe's own ``teacher.import``, as resolved)."""
    targets = [t for t in os.environ.get(ENV_TARGETS, "").split(_SEP) if t]
    if target not in targets:
        os.environ[ENV_TARGETS] = _SEP.join(targets + [target])


def revoke_all() -> None:
    """Forget every consent (tests)."""
    os.environ.pop(ENV_ALL, None)
    os.environ.pop(ENV_TARGETS, None)


def all_trusted() -> bool:
    """Whether the caller passed ``--trust-code`` (or ``allow_import=True`` for everything)."""
    return os.environ.get(ENV_ALL) == "1"


def import_allowed(target: str, allow_import: Optional[bool] = None) -> bool:
    if allow_import is not None:
        return allow_import
    if os.environ.get(ENV_ALL) == "1":
        return True
    return target in os.environ.get(ENV_TARGETS, "").split(_SEP)


def require_consent(target: str, source: str, allow_import: Optional[bool] = None) -> None:
    """Raise :class:`UntrustedCode` (one line naming the import and the flag) unless importing is allowed."""
    if not import_allowed(str(target), allow_import):
        raise UntrustedCode(
            f"{source} names code to import ({str(target)[:200]!r}); loading it runs that code. "
            f"Pass --trust-code (allow_import=True in Python) if you trust its author"
        )


def check_import_target(path: str, base_dir: Optional[Path] = None, key: str = "teacher.import") -> str:
    """Check that ``module:attr`` or ``file.py:attr`` exists, without executing any of it. Returns a short
    description of the target. Raises :class:`RecipeError` with one line otherwise."""
    if not isinstance(path, str) or ":" not in path:
        raise RecipeError(f"{key}: expected 'module:attribute' or 'file.py:attribute', got {path!r}")
    mod_name, _, attr = path.rpartition(":")
    top = attr.split(".")[0]
    if not mod_name or not attr or not all(p.isidentifier() for p in attr.split(".")):
        raise RecipeError(f"{key}: {path!r} is not 'module:attribute'")
    if mod_name.endswith(".py"):
        file = Path(mod_name).expanduser()
        if not file.is_absolute() and base_dir is not None:
            file = Path(base_dir) / file
        if not file.is_file():
            raise RecipeError(f"{key}: file not found: {file}")
        source = file
    else:
        if not all(p.isidentifier() for p in mod_name.split(".")):
            raise RecipeError(f"{key}: {mod_name!r} is not a module name")
        spec = _find_spec_quietly(mod_name)
        if spec is None:
            raise RecipeError(f"{key}: no module named {mod_name!r} (from {path!r})")
        if not spec.origin or not spec.origin.endswith(".py") or not Path(spec.origin).is_file():
            return f"{mod_name} (compiled or namespace module: {attr!r} not checked)"
        source = Path(spec.origin)
    try:
        tree = ast.parse(source.read_bytes(), filename=str(source))
    except (OSError, SyntaxError, ValueError) as exc:
        raise RecipeError(f"{key}: {source} cannot be parsed ({type(exc).__name__}: {exc})") from None
    if not _defines(tree, top):
        raise RecipeError(f"{key}: {source} does not define {top!r}")
    return f"{source}:{attr}"


def _find_spec_quietly(name: str):
    """Locate a module the way ``import`` would, without executing it or its parent packages."""
    if name in sys.modules:
        return getattr(sys.modules[name], "__spec__", None) or importlib.machinery.ModuleSpec(name, None)
    parts = name.split(".")
    search = None
    spec = None
    for i in range(len(parts)):
        here = ".".join(parts[: i + 1])
        if here in sys.modules and i < len(parts) - 1:
            search = list(getattr(sys.modules[here], "__path__", []) or [])
            continue
        try:
            spec = (
                importlib.machinery.PathFinder.find_spec(here if search is None else parts[i], search)
                if search is not None
                else _top_level_spec(here)
            )
        except (ImportError, ValueError, OSError):
            return None
        if spec is None:
            return None
        if i < len(parts) - 1:
            search = list(spec.submodule_search_locations or [])
            if not search:
                return None
    return spec


def _top_level_spec(name: str):
    for finder in sys.meta_path:  # the standard path finder and built-in/frozen importers only: they run nothing
        if finder in (
            importlib.machinery.BuiltinImporter,
            importlib.machinery.FrozenImporter,
            importlib.machinery.PathFinder,
        ):
            spec = finder.find_spec(name, None)
            if spec is not None:
                return spec
    return None


def _defines(tree: ast.Module, name: str) -> bool:
    """Whether a module's top level binds ``name`` (def, class, assignment, import, or a star import)."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(t)):
                    return True
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                if a.name == "*" or (a.asname or a.name.split(".")[0]) == name:
                    return True
        if isinstance(node, (ast.If, ast.Try)):  # conditional definitions count
            inner = ast.Module(
                body=[n for n in ast.walk(node) if isinstance(n, ast.stmt) and n is not node], type_ignores=[]
            )
            if _defines(inner, name):
                return True
    return False
