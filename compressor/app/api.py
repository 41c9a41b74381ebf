"""The public Python API, for users with their own training loop: the names ``compressor`` hands on (``from
compressor import SRPLoss, make_student, distill, export, benchmark``), each the function the pipeline and the
``compress`` commands call.

* :class:`~compressor.srp.SRPLoss` and :func:`~compressor.srp.distill`: SRP as an ``nn.Module`` with taps by
  module name, and the plainest KD + SRP loop around it;
* :func:`~compressor.slim.make_student`, :func:`~compressor.slim.save_student`, :func:`~compressor.slim.load_student`:
  a slimmed student and its folder (``student.json`` + weights);
* :func:`~compressor.exporters.export.export`: a model to any formats of the format table, with export.json
  (``compress export`` goes through the same flow);
* :func:`benchmark`: every format and precision of a student or run folder exported, checked and timed, as
  ``compress benchmark``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..exporters.export import export
from ..slim import load_student, make_student, save_student
from ..srp import SRPLoss, distill
from .commands import benchmark_target

__all__ = ["SRPLoss", "benchmark", "distill", "export", "load_student", "make_student", "save_student"]


def benchmark(
    folder: str | Path,
    formats: Optional[list[str]] = None,
    *,
    data: Optional[str | Path] = None,
    size: Optional[int] = None,
    images: int = 8,
    threads: Optional[int] = None,
    warmup: int = 5,
    iters: int = 20,
) -> dict:
    """``compress benchmark FOLDER``: a student folder (:func:`save_student`) or a run folder, each format and
    precision of the table (``formats``: only those) exported into ``FOLDER/benchmark/``, compared with the
    PyTorch output (a run's: the teacher's) and timed; returns the document also written to
    ``FOLDER/benchmark.json``. ``data``: a folder of images for the comparison and INT8 calibration (without it,
    random inputs, and INT8 rows fail for want of calibration images)."""
    doc, _ = benchmark_target(
        Path(folder),
        data=Path(data) if data is not None else None,
        size=size,
        formats=list(formats) if formats else None,
        images=images,
        threads=threads,
        warmup=warmup,
        iters=iters,
    )
    return doc
