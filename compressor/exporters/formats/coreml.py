"""Core ML (``<stem>.mlpackage``, an ML program) for iPhones, iPads and Macs.

The model is traced at batch 1 and the export size and converted by ``coremltools`` (FP16 compute by default,
``fp32`` on request; float32 input ``input`` and output ``output`` in [-1, 1], NCHW). ``int8`` adds 8-bit
weights (``coremltools.optimize.coreml.linear_quantize_weights``, symmetric, per channel) to the FP16 program.
Core ML runs only on Apple systems: on Linux the package is converted and validated (the spec loads, the input and
output names, shapes and types are the ones written, the metadata holds the value range and size), and the record
says that the outputs were not compared. On macOS the outputs are compared with PyTorch like every other format.
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from compressor.errors import ExportError
from compressor.io import place, remove_tree, temp_dir

from ..mobile import StaticExport, first_line, need, static_format
from ..rows import INPUT, OUTPUT, Request, Runner

log = logging.getLogger(__name__)

NOT_MACOS = "Core ML runs models only on macOS (predictions need Apple's Core ML framework)"


def can_predict() -> bool:
    return platform.system() == "Darwin"


def _convert(model: nn.Module, x: torch.Tensor, precision: str):
    import coremltools as ct

    with torch.no_grad():
        traced = torch.jit.trace(model, (x,), check_trace=False)
    ml = ct.convert(
        traced,
        inputs=[ct.TensorType(name=INPUT, shape=tuple(x.shape), dtype=np.float32)],
        outputs=[ct.TensorType(name=OUTPUT, dtype=np.float32)],
        convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
        minimum_deployment_target=ct.target.iOS16,
    )
    if precision == "int8":
        from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

        config = OptimizationConfig(global_config=OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8"))
        ml = linear_quantize_weights(ml, config=config)
    return ml


def validate(path: str | Path, shape: tuple[int, ...]) -> dict:
    """Check a saved ``.mlpackage`` without running it: its spec loads, it is an ML program, its one input and
    output are float32 ``input``/``output`` of ``shape``, and its metadata has the value range and input size.
    Returns what was found; raises ExportError naming the first mismatch."""
    import coremltools as ct

    try:
        spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    except Exception as exc:  # noqa: BLE001 - protobuf and coremltools raise several types
        raise ExportError(f"{path}: not a readable Core ML package ({first_line(exc)})") from None
    desc = spec.description
    found = {
        "spec_version": int(spec.specificationVersion),
        "kind": spec.WhichOneof("Type"),
        "inputs": {i.name: list(i.type.multiArrayType.shape) for i in desc.input},
        "outputs": {o.name: list(o.type.multiArrayType.shape) for o in desc.output},
        "metadata": dict(desc.metadata.userDefined),
    }
    float32 = ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    problems = []
    if found["kind"] != "mlProgram":
        problems.append(f"not an ML program ({found['kind']})")
    if list(found["inputs"]) != [INPUT] or found["inputs"][INPUT] != list(shape):
        problems.append(f"inputs {found['inputs']}, expected {{'{INPUT}': {list(shape)}}}")
    if list(found["outputs"]) != [OUTPUT]:
        problems.append(f"outputs {list(found['outputs'])}, expected ['{OUTPUT}']")
    if any(f.type.multiArrayType.dataType != float32 for f in list(desc.input) + list(desc.output)):
        problems.append("input/output not float32")
    for key in ("value_range", "input_size"):
        if key not in found["metadata"]:
            problems.append(f"metadata lacks {key}")
    if problems:
        raise ExportError(f"{path}: Core ML check failed: {problems[0]}")
    return found


def export_coreml(req: Request) -> dict:
    """Write ``<stem>.mlpackage`` (FP16; ``<stem>.fp32.mlpackage``, ``<stem>.int8.mlpackage`` for 8-bit weights),
    validated on any system and compared with PyTorch on macOS. Raises ExportError when a check fails."""
    job = StaticExport(req, FORMAT, ("coremltools",))
    x, size = job.example, job.size
    ml = job.converted(lambda: _convert(job.model, x, req.precision))
    ml.short_description = "compressor generator: NCHW float32 image in [-1, 1] -> image in [-1, 1]"
    ml.input_description[INPUT] = f"image, 1x{x.shape[1]}x{size}x{size}, values in [-1, 1]"
    ml.output_description[OUTPUT] = "image, values in [-1, 1]"
    ml.user_defined_metadata.update(job.meta)
    staging = temp_dir(job.path.parent)  # fresh and exclusive: the package folder is written inside it
    tmp = staging / job.path.name
    try:
        ml.save(str(tmp))
        spec = validate(tmp, tuple(x.shape))
        if can_predict():  # FP16 compute: judged by PSNR like the other reduced precisions
            par = job.check(job.run_batches(CoreMLRunner(tmp)))
        else:
            par = {"compared": False, "reason": NOT_MACOS}
        place(tmp, job.path)
    finally:
        remove_tree(staging)
    return job.record(par, spec=spec, predicted=can_predict())


class CoreMLRunner(Runner):
    """An ``.mlpackage`` in Core ML (macOS only): NCHW float32 in [-1, 1] in and out."""

    @classmethod
    def unavailable(cls, row=None) -> str:
        return "" if can_predict() else NOT_MACOS

    def __init__(self, artifact, *, backend=None, threads: Optional[int] = None, device: str = "cpu", precision="fp16"):
        ct = need("coremltools", "the coreml backend")
        if not can_predict():
            raise RuntimeError(NOT_MACOS)
        self.backend = "coreml"
        self.device = device or "cpu"
        units = {"cpu": ct.ComputeUnit.CPU_ONLY, "gpu": ct.ComputeUnit.CPU_AND_GPU, "ane": ct.ComputeUnit.ALL}
        self.model = ct.models.MLModel(str(artifact), compute_units=units.get(self.device, ct.ComputeUnit.ALL))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict({INPUT: np.ascontiguousarray(x, dtype=np.float32)})[OUTPUT], np.float32)


FORMAT = static_format(
    "coreml",
    ".mlpackage",
    ("fp16", "fp32", "int8"),
    export_coreml,
    "compressor.exporters.formats.coreml:CoreMLRunner",
    artifact="mlpackage",
    requires=("coremltools",),
    runs_with=("coremltools",),
    runs_on=" (runs on macOS)",
    devices=("gpu", "ane"),
    calibrated=(),  # 8-bit weights: no activations to calibrate
    order=70,
    help="Core ML .mlpackage (macOS; --device gpu|ane)",
)
