"""ncnn (``<stem>.ncnn.param`` + ``<stem>.ncnn.bin``): Tencent's phone runtime, with its own CPU kernels.

The model is traced to TorchScript at batch 1 and the export size and converted by ``pnnx`` (run as its own
process; its exit status and files are checked). ``fp32`` stores FP32 weights (pnnx's default is FP16) and the
runner turns off ncnn's FP16 storage and arithmetic; ``fp16`` stores FP16 weights and lets ncnn use FP16 where the
CPU has it. ncnn's ``.param`` has no metadata: the value range and input size are in the export record.
A layer pnnx could not map to an ncnn layer is named in the error (ncnn has no layer of that type).
"""

from __future__ import annotations

import logging
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from compressor.errors import ExportError
from compressor.io import place, remove_tree, temp_dir

from ..mobile import StaticExport, need, static_format
from ..rows import Request, Runner

log = logging.getLogger(__name__)


def paths(out_path: str | Path, precision: str = "fp32") -> tuple[Path, Path]:
    """(param, bin) for ``out_path`` (``<stem>.ncnn.param``, or the stem alone); FP16 adds ``.fp16``."""
    out_path = Path(out_path)
    name = out_path.name
    for suffix in (".ncnn.param", ".ncnn.bin", ".param", ".bin"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    if name.endswith(f".{precision}"):  # already tagged (the export formats table's file name)
        name = name[: -len(precision) - 1]
    if precision != "fp32":
        name = f"{name}.{precision}"
    return out_path.with_name(f"{name}.ncnn.param"), out_path.with_name(f"{name}.ncnn.bin")


def unknown_layers(param: Path) -> list[str]:
    """Layer types in a ``.param`` that this ncnn build does not have (what pnnx left unconverted)."""
    import ncnn

    types = []
    for line in param.read_text().splitlines()[2:]:
        parts = line.split()
        if parts and ncnn.layer_to_index(parts[0]) < 0 and parts[0] not in types:
            types.append(parts[0])
    return types


def _pnnx(model: nn.Module, x: torch.Tensor, param: Path, binary: Path, fp16: bool, workdir: Path) -> None:
    import pnnx

    pt = workdir / "model.pt"
    with torch.no_grad():
        torch.jit.trace(model, (x,), check_trace=False).save(str(pt))
    shape = ",".join(str(d) for d in x.shape)
    cmd = [
        pnnx.EXEC_PATH,
        str(pt),
        f"inputshape=[{shape}]f32",
        "device=cpu",
        f"ncnnparam={param}",
        f"ncnnbin={binary}",
        f"ncnnpy={workdir / 'model_ncnn.py'}",
        f"pnnxparam={workdir / 'model.pnnx.param'}",
        f"pnnxbin={workdir / 'model.pnnx.bin'}",
        f"pnnxpy={workdir / 'model_pnnx.py'}",
        f"pnnxonnx={workdir / 'model.pnnx.onnx'}",
    ] + ([] if fp16 else ["fp16=0"])
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
    if proc.returncode != 0 or not param.is_file() or not binary.is_file():
        lines = [l for l in (proc.stderr + proc.stdout).splitlines() if l.strip() and not l.startswith("####")]
        raise ExportError(f"ncnn: pnnx failed (exit {proc.returncode}): {(lines or ['no output'])[-1][:200]}")


def export_ncnn(req: Request) -> dict:
    """Write ``<stem>.ncnn.param`` / ``.bin`` (FP16: ``<stem>.fp16.ncnn.*``), checked in ncnn against PyTorch on the
    samples. Raises ExportError naming the layer ncnn lacks, or when the parity check fails."""
    job = StaticExport(req, FORMAT, ("ncnn", "pnnx"))
    param, binary = paths(job.path.resolve(), req.precision)  # absolute: pnnx runs in its own folder
    staging = temp_dir(param.parent)  # fresh and exclusive: pnnx writes the pair by name inside it
    try:
        tmp_param, tmp_bin = staging / param.name, staging / binary.name
        with tempfile.TemporaryDirectory(prefix="compressor-pnnx-") as work:
            _pnnx(job.model, job.example, tmp_param, tmp_bin, req.precision == "fp16", Path(work))
        missing = unknown_layers(tmp_param)
        if missing:
            raise ExportError(f"ncnn {req.precision}: pnnx left operators ncnn has no layer for: {', '.join(missing)}")
        par = job.check(job.run_batches(NcnnRunner(tmp_param, precision=req.precision)))
        place(tmp_bin, binary)
        place(tmp_param, param)
    finally:
        remove_tree(staging)
    return job.record(par, weights=binary.name)


class NcnnRunner(Runner):
    """A ``.ncnn.param`` (its ``.bin`` beside it) in ncnn's Python bindings. ``precision="fp32"`` turns off ncnn's
    FP16 storage and arithmetic; ``fp16`` leaves them on (used where the CPU supports them)."""

    @classmethod
    def unavailable(cls, row=None) -> str:
        return ""

    def __init__(self, artifact, *, backend=None, threads: Optional[int] = None, device: str = "cpu", precision="fp32"):
        ncnn = need("ncnn", "the ncnn backend")
        self.backend = "ncnn"
        self.device = "cpu"
        param = Path(artifact)
        if param.suffix == ".bin":
            param = param.with_suffix(".param")
        binary = param.with_suffix(".bin")
        if precision == "fp32" and ".fp16." in param.name:
            precision = "fp16"
        self.net = ncnn.Net()
        opt = self.net.opt
        if threads:
            opt.num_threads = int(threads)
        if precision == "fp32":
            opt.use_fp16_storage = opt.use_fp16_packed = opt.use_fp16_arithmetic = False
            opt.use_bf16_storage = False
        if self.net.load_param(str(param)) != 0 or self.net.load_model(str(binary)) != 0:
            raise ValueError(f"{param}: ncnn could not load it (or its {binary.name})")
        self.input_name = self.net.input_names()[0]
        self.output_name = self.net.output_names()[0]
        self.path = param

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import ncnn

        x = np.ascontiguousarray(x, dtype=np.float32)
        outs = []
        for img in x:  # ncnn runs one image (C, H, W) at a time
            img = np.ascontiguousarray(img)
            ex = self.net.create_extractor()
            # a copy ncnn owns: ncnn.Mat(array) only wraps the buffer, and a first layer that works in place (the
            # input clamp of GAN Compression's generators) crashes the process on a wrapped one
            ex.input(self.input_name, ncnn.Mat(img).clone())
            ret, out = ex.extract(self.output_name)
            if ret != 0:
                raise RuntimeError(f"{self.path.name}: ncnn extract failed ({ret})")
            outs.append(np.array(out, copy=True))
        return np.stack(outs)


FORMAT = static_format(
    "ncnn",
    ".ncnn.param",
    ("fp32", "fp16"),
    export_ncnn,
    "compressor.exporters.formats.ncnn:NcnnRunner",
    artifact="ncnn",
    requires=("ncnn", "pnnx"),
    runs_with=("ncnn",),
    order=60,
    help="ncnn (.ncnn.param/.bin), its own CPU kernels",
)
