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

from compressor.errors import ExportError

from .mobile import (
    FP32_MAX_ABS,
    MIN_PSNR,
    Images,
    artifact_metadata,
    as_batches,
    checked_write,
    first_line,
    need,
    prepare,
    record,
    start,
    torch_outputs,
    variant_path,
)
from .runtimes import Runner

log = logging.getLogger(__name__)

SUFFIX = ".pte"
PRECISIONS = ("fp32", "int8")
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


def export_executorch(
    model: nn.Module,
    out_path: str | Path,
    samples: Images,
    *,
    precision: str = "fp32",
    static: bool = True,
    size: Optional[int] = None,
    calibration: Optional[Images] = None,
    metadata: Optional[dict] = None,
    max_abs: float = FP32_MAX_ABS,
    min_psnr: float = MIN_PSNR,
) -> dict:
    """Write ``out_path`` (``<stem>.pte``; INT8: ``<stem>.int8.pte``), checked in the ExecuTorch runtime against
    PyTorch on ``samples``. Returns the export record; raises ExportError when the check fails."""
    timer = start("executorch", precision, PRECISIONS, ("executorch",), "the ExecuTorch export")
    model, batches, size = prepare(model, samples, size)
    refs = torch_outputs(model, batches)
    path = variant_path(Path(out_path), precision, SUFFIX)
    x = torch.from_numpy(batches[0])
    meta = artifact_metadata(model, size, precision, "NCHW", metadata)
    net, notes = model, []
    if precision == "int8":
        calib = as_batches(calibration)
        if not calib:
            raise ValueError("executorch int8 needs calibration images")
        net = _quantize(model, x, calib)
        meta["calibration_images"] = str(len(calib))
    try:
        buffer = _lower(net, x, meta)
    except Exception as exc:  # noqa: BLE001 - torch.export and the lowering raise many types
        raise ExportError(f"executorch {precision}: {first_line(exc)}") from None

    def write(tmp: Path) -> None:
        tmp.write_bytes(buffer)

    def run(tmp: Path) -> list[np.ndarray]:
        runner = ExecuTorchRunner(tmp)
        return [runner(b) for b in batches]

    par = checked_write("executorch", path, precision, write, run, refs, max_abs, min_psnr)
    return record("executorch", path, precision, par, timer.seconds, size, "NCHW", notes=notes, metadata=meta)


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
