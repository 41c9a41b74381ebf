"""ExecuTorch (``.pte``) with the XNNPACK delegate: the runtime PyTorch's own mobile stack ships.

``torch.export`` of the model at batch 1 and the export size -> ``to_edge_transform_and_lower`` with the XNNPACK
partitioner -> ``.pte``. INT8 goes through the PT2E flow with ExecuTorch's XNNPACK quantizer (symmetric,
per-channel weights, static activations calibrated on images). The metadata (value range, input size, ...) is
stored as constant methods of the program: ``meta_<key>`` returns the value UTF-8 encoded in a uint8 tensor
(constant methods hold numbers and tensors); :func:`read_metadata` reads them back.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from ..mobile import StaticExport, need, static_format
from ..rows import Request, Runner

log = logging.getLogger(__name__)

META_PREFIX = "meta_"


def _quantize(model: nn.Module, x: torch.Tensor, calibration: list[np.ndarray]) -> nn.Module:
    """PT2E static INT8 for XNNPACK: export, annotate, calibrate on ``calibration``, convert."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    graph = torch.export.export(model, (x,)).module()
    graph = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for c in calibration:
            graph(torch.from_numpy(c))
    return convert_pt2e(graph)


def _lower(model: nn.Module, x: torch.Tensor, metadata: dict) -> bytes:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    program = torch.export.export(model, (x,))
    constants = {META_PREFIX + k: torch.tensor(list(v.encode()), dtype=torch.uint8) for k, v in metadata.items()}
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()], constant_methods=constants)
    return edge.to_executorch().buffer


def export_executorch(req: Request) -> dict:
    """Write ``<stem>.pte`` (INT8: ``<stem>.int8.pte``), checked in the ExecuTorch runtime against PyTorch on the
    samples. Returns the record; raises ExportError when the check fails."""
    job = StaticExport(req, FORMAT, ("executorch",))
    x = job.example
    net = _quantize(job.model, x, job.calibration) if req.precision == "int8" else job.model
    buffer = job.converted(lambda: _lower(net, x, job.meta))
    par = job.write(lambda tmp: tmp.write_bytes(buffer), lambda tmp: job.run_batches(ExecuTorchRunner(tmp)))
    return job.record(par)


def read_metadata(path: str | Path) -> dict:
    """The string metadata stored in a ``.pte`` by :func:`export_executorch`."""
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(Path(path))
    out = {}
    for name in sorted(program.method_names):
        if name.startswith(META_PREFIX):
            value = program.load_method(name).execute([])[0]
            out[name[len(META_PREFIX) :]] = bytes(value.numpy().astype(np.uint8).tolist()).decode()
    return out


class ExecuTorchRunner(Runner):
    """A ``.pte`` in the ExecuTorch runtime's Python bindings (XNNPACK kernels for the delegated parts)."""

    @classmethod
    def unavailable(cls, row=None) -> str:
        return ""

    def __init__(self, artifact, *, backend=None, threads: Optional[int] = None, device: str = "cpu", precision="fp32"):
        need("executorch", "the executorch backend")
        from executorch.runtime import Runtime

        if threads:
            from executorch.extension.pybindings import portable_lib

            portable_lib._unsafe_reset_threadpool(int(threads))
        self.backend = "executorch"
        self.device = "cpu"
        self.path = Path(artifact)
        self.program = Runtime.get().load_program(self.path)
        self.method = self.program.load_method("forward")
        meta = self.method.metadata
        self.input_shape = tuple(meta.input_tensor_meta(0).sizes())

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if tuple(x.shape) != self.input_shape:
            raise ValueError(f"{self.path.name} takes {self.input_shape} (static), not {tuple(x.shape)}")
        return self.method.execute([torch.from_numpy(x)])[0].numpy()


FORMAT = static_format(
    "executorch",
    ".pte",
    ("fp32", "int8"),
    export_executorch,
    "compressor.exporters.formats.executorch:ExecuTorchRunner",
    artifact="pte",
    requires=("executorch",),
    runs_with=("executorch",),
    order=40,
    help="ExecuTorch .pte, XNNPACK delegate (PyTorch's phone runtime)",
)
