"""Heavy dependencies loaded on their first use, not at import.

``onnx`` takes about a second to import (its ``ml_dtypes`` extension), and every ``compress`` command imported it at
start-up through the export formats, whether or not it touched an ONNX file. The modules that use it import it from
here: a module object that executes ``onnx`` the first time one of its attributes is read
(:class:`importlib.util.LazyLoader`, the standard library's recipe).
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy_module(name: str) -> ModuleType:
    """``name``, imported on its first attribute access (the module itself where it is imported already)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module


onnx = lazy_module("onnx")
