"""compressor: make image-to-image GAN generators small and fast enough to ship.

The public Python API (:mod:`compressor.app.api`): ``from compressor import SRPLoss, make_student, distill, export,
benchmark``. Those names are imported when first used, so that ``import compressor.<module>`` stays light (a timing
worker that runs ONNX Runtime never loads torch).
"""

import importlib

from .version import __version__

API = ("SRPLoss", "benchmark", "distill", "export", "load_student", "make_student", "save_student")
__all__ = ["__version__", *API]


def __getattr__(name: str):
    if name in API:
        return getattr(importlib.import_module("compressor.app.api"), name)
    raise AttributeError(f"module 'compressor' has no attribute {name!r}")
