"""The recipe schema: the one home of defaults.

A recipe is data. The only code it may name is ``teacher.import``. YAML is read with ``safe_load``; unknown keys
are refused; every error names the key path and, where known, the YAML line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import typing
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from .errors import RecipeError, UserError
from .io import read_bounded
from .remote import check_host, check_program, check_ssh_option
from .schemas import Strict
from .terms import LossesSpec, digest_neutral_defaults
from .zoo_args import ZOO_ARCHS, ZOO_KWARGS, check_zoo_kwargs  # noqa: F401 - part of the schema's face

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

MAX_RECIPE_BYTES = 1 << 20  # recipes are small; anything bigger is a mistake or an attack
MAX_YAML_DEPTH = 64
MAX_YAML_ALIASES = 256
MAX_YAML_NODES = 100_000  # after expanding aliases


def resolve_path(base_dir: str | Path, value: str | Path) -> Path:
    """The one path rule for recipes: relative to the recipe's folder when it exists there, else relative to the
    current folder when it exists there, else (for the error message) the recipe-folder path."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return p
    near = Path(base_dir) / p
    if near.exists():
        return near.resolve()
    if p.exists():
        return p.resolve()
    return near


class SyntheticSpec(Strict):
    train: int = Field(64, ge=1, description="number of generated training pairs")
    test: int = Field(16, ge=1, description="number of generated test pairs")


class DegradeSpec(Strict):
    """How ``data.kind: degraded`` makes a network's input from a clean image (applied in this order)."""

    downscale: Optional[int] = Field(
        None, ge=2, le=8, description="bicubic down-scaling by this factor (the input of a super-resolution network)"
    )
    jpeg_quality: Optional[int] = Field(None, ge=1, le=100, description="JPEG compression at this quality")
    noise_sigma: Optional[float] = Field(
        None, gt=0, le=255, description="additive Gaussian noise of this σ on the 0-255 scale (not clipped)"
    )

    @model_validator(mode="after")
    def _check(self):
        if self.downscale is None and self.jpeg_quality is None and self.noise_sigma is None:
            raise ValueError("data.degrade needs at least one of noise_sigma, downscale or jpeg_quality")
        return self


class DataSpec(Strict):
    kind: Literal["paired", "unpaired", "folder", "synthetic", "degraded"] = Field(
        "paired",
        description="paired: pix2pix AB images; unpaired: trainA/trainB; folder: inputs only; "
        "synthetic: generated façade-like pairs; degraded: clean images, the input made by data.degrade",
    )
    root: Optional[str] = Field(None, description="dataset folder (not needed for synthetic)")
    direction: Literal["AtoB", "BtoA"] = Field("AtoB", description="which half is the input")
    size: int = Field(
        256,
        ge=8,
        le=8192,
        description="training and test image size (square); degraded data: the training patch, test images whole",
    )
    load_size: Optional[int] = Field(None, ge=8, description="resize to this, then random-crop to size (training)")
    flip: bool = Field(False, description="random horizontal flips during training")
    batch_size: int = Field(1, ge=1, le=4096, description="images per step (per process)")
    num_workers: int = Field(0, ge=0, le=64, description="DataLoader worker processes")
    strict: bool = Field(False, description="fail on an unreadable image instead of skipping it")
    train_split: str = Field("train", description="sub-folder with training images")
    test_split: str = Field("test", description="sub-folder with test images")
    synthetic: SyntheticSpec = Field(default_factory=SyntheticSpec, description="sizes of the synthetic set")
    channels: Literal[1, 3] = Field(3, description="image channels the network takes: 3 (RGB) or 1 (grayscale)")
    degrade: Optional[DegradeSpec] = Field(
        None, description="degraded data: how the input is made from the clean image (the ground truth)"
    )

    @model_validator(mode="after")
    def _check(self):
        if self.kind != "synthetic" and not self.root:
            raise ValueError(f"data.root is required for kind {self.kind!r}")
        if self.kind == "degraded" and self.degrade is None:
            raise ValueError("data.degrade is required for kind degraded, e.g. {noise_sigma: 25}")
        if self.kind != "degraded" and self.degrade is not None:
            raise ValueError(f"data.degrade applies to kind degraded only, not {self.kind!r}")
        if self.channels == 1 and self.kind == "synthetic":
            raise ValueError("data.channels: synthetic data is RGB (3)")
        if self.load_size is not None and self.load_size < self.size:
            raise ValueError("data.load_size must be at least data.size")
        return self


class TeacherTrainSpec(Strict):
    steps: int = Field(400, ge=1, description="pix2pix training steps for a teacher you do not have yet")
    lr: float = Field(2e-4, gt=0, description="Adam learning rate")
    gan_mode: Literal["lsgan", "vanilla", "hinge"] = Field("lsgan", description="adversarial loss")
    recon_weight: float = Field(100.0, ge=0, description="L1 weight (λ_L1)")
    gan_weight: float = Field(1.0, ge=0, description="adversarial weight")


def check_plain_data(kwargs: dict, key: str) -> None:
    """A factory's arguments must be data a run folder can record (JSON): one ValueError line otherwise."""
    try:
        json.dumps(kwargs, allow_nan=False)
    except (TypeError, ValueError):
        raise ValueError(f"{key}: values must be plain data (numbers, strings, booleans, lists, mappings)") from None


class ExpectSpec(Strict):
    """A published figure the teacher must reproduce on the test split before anything is distilled from it."""

    psnr: float = Field(..., gt=0, le=200, description="the published PSNR (dB) against the ground truth")
    tolerance: float = Field(0.05, gt=0, le=10, description="allowed difference (dB)")


class TeacherSpec(Strict):
    arch: Optional[str] = Field(None, description="zoo name: resnet_9blocks, resnet_6blocks, unet_128, unet_256")
    import_: Optional[str] = Field(None, alias="import", description="'pkg.module:factory' or 'file.py:factory'")
    onnx: Optional[str] = Field(
        None, description="an ONNX file run in ONNX Runtime (no PyTorch code; its tensors are taps by name)"
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="arguments for the zoo model or factory")
    checkpoint: Optional[str] = Field(None, description="state_dict (.pth/.pt/.safetensors) of the teacher")
    checkpoint_key: Optional[str] = Field(None, description="the nested state_dict to use, e.g. params_ema")
    input_range: tuple[float, float] = Field(
        (-1.0, 1.0), description="value range the teacher takes: [-1, 1], [0, 1] or [0, 255]"
    )
    output_range: tuple[float, float] = Field((-1.0, 1.0), description="value range the teacher returns")
    output: Optional[str] = Field(
        None, description="the tensor to learn when the teacher returns several: index or key, dotted (1, out, aux.0)"
    )
    residual: Literal["none", "subtract", "add", "upsample_add"] = Field(
        "none",
        description="what the (selected) output is: none: the image; subtract: the image is input - output (DnCNN "
        "returns the noise); add: input + output; upsample_add: bicubic-upsampled input + output (SR networks)",
    )
    expect: Optional[ExpectSpec] = Field(
        None, description="the published figure to reproduce on the test split before distilling (degraded/paired)"
    )
    reverse_checkpoint: Optional[str] = Field(None, description="unpaired data: the B->A teacher's state_dict")
    train: Optional[TeacherTrainSpec] = Field(None, description="train the teacher first (no checkpoint needed)")
    taps: dict[str, str] = Field(default_factory=dict, description="extra feature-tap aliases: alias -> module")

    @model_validator(mode="after")
    def _check(self):
        # the zoo names and arguments are checked against the zoo itself in the pre-flight (compressor.app.preflight)
        if sum(map(bool, (self.arch, self.import_, self.onnx))) != 1:
            raise ValueError(
                "teacher needs exactly one of 'arch' (a zoo name), 'import' (module:factory) or 'onnx' (a file)"
            )
        if self.train is not None and (self.import_ or self.onnx):
            raise ValueError("teacher.train works with zoo teachers only")
        if self.onnx and (self.checkpoint or self.reverse_checkpoint or self.kwargs):
            raise ValueError("teacher.onnx: the file holds the weights; remove teacher.checkpoint and teacher.kwargs")
        for name in ("input_range", "output_range"):
            lo, hi = getattr(self, name)
            if not lo < hi:
                raise ValueError(f"teacher.{name}: expected [low, high] with low < high, got [{lo}, {hi}]")
        return self

    @field_validator("output", mode="before")
    @classmethod
    def _output_key(cls, v):
        if isinstance(v, int) and not isinstance(v, bool):
            return str(v)  # an index written as a YAML number
        if isinstance(v, str) and (not v.strip() or any(not p for p in v.split("."))):
            raise ValueError("expected an index or key, dotted for nested results (1, out, aux.0)")
        return v

    @model_validator(mode="after")
    def _kwargs_are_data(self):
        check_plain_data(self.kwargs, "teacher.kwargs")
        if self.arch in ZOO_ARCHS:
            check_zoo_kwargs(self.arch, self.kwargs, key="teacher.kwargs")
        return self


def _as_value_error(check, value: str, key: str) -> None:
    """Run one of :mod:`compressor.remote`'s checks inside a pydantic validator: its ``UserError`` becomes the
    ValueError pydantic reports under the key's path (the key itself left out of the message)."""
    try:
        check(value, key)
    except UserError as exc:
        raise ValueError(str(exc).removeprefix(f"{key}: ")) from None


class BudgetSpec(Strict):
    latency_ms: Optional[float] = Field(None, gt=0, description="the student's latency on the target (ms)")
    speedup: Optional[float] = Field(None, gt=0, description="times faster than the teacher on the target")
    macs: Optional[float] = Field(None, gt=0, description="MACs at size (no measurement)")
    params: Optional[float] = Field(None, gt=0, description="parameters (no measurement)")
    backend: str = Field(
        "ort-cpu", description="profile backend that runs the student (checked against the backend table in pre-flight)"
    )
    batch: int = Field(1, ge=1, le=4096, description="batch size of the measurement")
    size: Optional[int] = Field(None, ge=8, le=8192, description="image size (default: data.size)")
    precision: Literal["fp32", "fp16", "int8"] = Field("fp32", description="precision of the measurement")
    stat: Literal["p50", "p90"] = Field("p50", description="latency statistic held to the budget")
    threads: Optional[int] = Field(None, ge=1, le=1024, description="intra-op threads (default: all cores)")
    host: Optional[str] = Field(None, description="user@board: time there over SSH (ONNX backends)")
    port: Optional[int] = Field(None, ge=1, le=65535, description="SSH port for host")
    ssh_options: list[str] = Field(default_factory=list, description="extra ssh -o options, e.g. K=V")
    remote_compress: str = Field("compress", description="the compress command on host")

    @field_validator("ssh_options")
    @classmethod
    def _ssh_options(cls, v: list[str]) -> list[str]:
        for o in v:  # an option that runs a local command (ProxyCommand, LocalCommand, ...) is refused here
            _as_value_error(check_ssh_option, o, "ssh_options")
        return v

    @field_validator("host")
    @classmethod
    def _host(cls, v: Optional[str]) -> Optional[str]:
        if v is not None:
            _as_value_error(check_host, v, "host")
        return v

    @field_validator("remote_compress")
    @classmethod
    def _remote_compress(cls, v: str) -> str:
        _as_value_error(check_program, v, "remote_compress")
        return v

    @model_validator(mode="after")
    def _check(self):
        given = [k for k in ("latency_ms", "speedup", "macs", "params") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "needs exactly one of latency_ms, speedup, macs or params"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self


log = logging.getLogger(__name__)


class PlateauSpec(Strict):
    """``distill.schedule: plateau``: the convergence rule (:mod:`compressor.schedule`)."""

    every: int = Field(200, ge=1, description="score the student on the held-out batch every N steps")
    patience: int = Field(3, ge=1, le=100, description="checks without improvement that make the loss flat")
    min_delta: float = Field(0.002, ge=0, lt=1, description="relative improvement that counts")
    factor: float = Field(0.1, gt=0, lt=1, description="learning-rate factor at each flat point")
    decays: int = Field(2, ge=0, le=10, description="reductions before a flat loss stops the run")
    val_images: int = Field(64, ge=1, le=4096, description="held-out training crops (fixed) the score is taken on")


# Options added after run folders existed, with the value that leaves them out of stage digests: the field's schema
# default, or (distill.losses.srp.normalize) the value every recipe written before the option resolves to. A test
# checks both.
DIGEST_NEUTRAL_DEFAULTS: dict[str, Any] = {
    "student.round_channels": None,
    "teacher.output": None,
    "student.outputs": "named",
    "export.static": False,
    "distill.losses.srp.normalize": "entries",
    "export.formats": ["onnx"],
    "data.channels": 3,
    "student.search": "uniform",
    "student.latency_table": None,
    "student.importance": "magnitude",
    "student.widths": None,
    "data.degrade": None,
    "teacher.residual": "none",
    "teacher.expect": None,
    "distill.beta1": 0.5,
    "distill.schedule": "linear",
    "distill.plateau": PlateauSpec().model_dump(mode="json"),
    "distill.losses.kd.loss": "l1",
    "distill.losses.recon.loss": "l1",
    "distill.losses.srp.grad_ratio": None,
    "distill.quantize": None,
    "teacher.onnx": None,
    "distill.cache_dtype": "float16",
    "distill.cache_views": None,
    "student.arch": None,
    "student.import": None,
    "student.kwargs": {},
    "distill.losses.srp.pairs": None,
    "distill.losses.feat.pairs": None,
}
# ... and the loss terms added since, while off (the rows of compressor.terms.TERMS marked neutral)
_DIGEST_NEUTRAL = {**DIGEST_NEUTRAL_DEFAULTS, **digest_neutral_defaults()}


class StudentSpec(Strict):
    width: Union[float, Literal["auto"]] = Field(
        0.25, description="fraction of every layer's channels to keep, or auto: the widest within student.budget"
    )
    method: Literal["auto", "rebuild", "prune"] = Field("auto", description="rebuild (zoo) or prune (any model)")
    init: Literal["inherit", "scratch"] = Field("inherit", description="inherit the teacher's strongest channels")
    keep: list[str] = Field(default_factory=list, description="module names left at full width (prune)")
    round_channels: Optional[int] = Field(
        None, ge=1, le=64, description="keep channel counts multiples of this (8 or 16: the CPU's SIMD width)"
    )
    outputs: Literal["named", "all"] = Field(
        "named", description="named: the other outputs' layers may be slimmed; all: every output keeps its shape"
    )
    budget: Optional[BudgetSpec] = Field(None, description="width auto: one of latency_ms, speedup, macs, params")
    margin: float = Field(0.05, ge=0, lt=1, description="width auto: keep this fraction below a latency budget")
    search: Literal["uniform", "per-layer"] = Field(
        "uniform",
        description="width auto: one width for every layer, or one per channel group from a latency table measured "
        "on the target (compressor/app/layerwise.py)",
    )
    importance: Literal["magnitude", "sensitivity", "measured"] = Field(
        "magnitude",
        description="the channels a pruned student keeps (and the per-layer search ranks): largest weights' L2 "
        "magnitude within each group, or the teacher's output change replacing each by its mean makes on 16 training "
        "images (compressor/importance.py); measured: those channels, and the per-layer search weighs each group's "
        "widths by the output loss measured at each",
    )
    latency_table: Optional[str] = Field(
        None, description="search per-layer: reuse this latency_table.json (measured on this machine and target)"
    )
    widths: Optional[Union[dict[str, int], str]] = Field(
        None,
        description="channels kept per channel group, as compress plan's per-layer search names them, or a plan.json "
        "(or student.json) whose widths to take: a per-layer student chosen once, trained many times",
    )
    arch: Optional[str] = Field(
        None, description="a student of another architecture: a zoo name (instead of a width of the teacher)"
    )
    import_: Optional[str] = Field(
        None, alias="import", description="a student of another architecture: 'pkg.module:factory' or 'file.py:factory'"
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="student.arch / student.import: its arguments")

    @property
    def other_arch(self) -> bool:
        """Whether the student is a network of its own (``arch``/``import``), not a slimmed copy of the teacher."""
        return bool(self.arch or self.import_)

    @field_validator("width", mode="before")
    @classmethod
    def _width(cls, v):
        if v == "auto":
            return v
        try:
            f = float(v) if not isinstance(v, bool) else None
        except (TypeError, ValueError):
            f = None
        if f is None:
            raise ValueError("Input should be a number in (0, 1] or auto")
        if f <= 0:
            raise ValueError("Input should be greater than 0")
        if f > 1:
            raise ValueError("Input should be less than or equal to 1")
        return f

    @model_validator(mode="after")
    def _check(self):
        if self.arch and self.import_:
            raise ValueError("student: give one of 'arch' (a zoo name) or 'import' (module:factory), not both")
        if self.other_arch:
            which = "arch" if self.arch else "import"
            slimming = [
                "width",
                "method",
                "init",
                "keep",
                "round_channels",
                "budget",
                "outputs",
                "search",
                "importance",
                "widths",
            ]
            given = [k for k in slimming if k in self.model_fields_set]
            if given:
                raise ValueError(
                    f"student.{given[0]} slims the teacher; student.{which} names a network of its own: give one"
                )
            check_plain_data(self.kwargs, "student.kwargs")
            if self.arch is not None:
                if self.arch not in ZOO_ARCHS:
                    raise ValueError(f"student.arch: unknown zoo name {self.arch!r} (one of {', '.join(ZOO_ARCHS)})")
                check_zoo_kwargs(self.arch, self.kwargs, key="student.kwargs")
        elif self.kwargs:
            raise ValueError("student.kwargs: only with student.arch or student.import")
        if self.width == "auto" and self.budget is None:
            raise ValueError("student.width auto needs student.budget (one of latency_ms, speedup, macs or params)")
        if self.search == "per-layer":
            if self.width != "auto":
                raise ValueError("student.search: per-layer chooses the widths; set student.width: auto (and a budget)")
            if self.method == "rebuild":
                raise ValueError(
                    "student.search: per-layer widths prune the teacher; use student.method: prune or auto"
                )
        elif self.latency_table is not None:
            raise ValueError("student.latency_table: only with student.search: per-layer")
        if self.importance != "magnitude" and self.init == "scratch" and self.search != "per-layer":
            raise ValueError(
                "student.importance: chooses the channels a student inherits; with student.init: scratch it "
                "inherits none (the per-layer search still ranks by it)"
            )
        if self.widths is not None:
            if self.width == "auto" or "width" in self.model_fields_set:
                raise ValueError("student.widths: the widths are given; leave student.width (and its budget) out")
            if self.method == "rebuild":
                raise ValueError(
                    "student.widths: per-layer widths prune the teacher; use student.method: prune or auto"
                )
            if isinstance(self.widths, dict):
                if not self.widths:
                    raise ValueError("student.widths: name at least one channel group")
                bad = [k for k, v in self.widths.items() if isinstance(v, bool) or v < 1]
                if bad:
                    raise ValueError(f"student.widths: {bad[0]!r} must keep at least one channel")
        return self


class DiscriminatorSpec(Strict):
    ndf: int = Field(64, ge=1, description="discriminator base width")
    n_layers: int = Field(3, ge=1, le=8, description="PatchGAN depth")
    norm: Literal["batch", "instance", "none"] = Field("instance", description="discriminator normalisation")


class QuantizeSpec(Strict):
    precision: Literal["int8"] = Field(
        "int8", description="the precision the student is trained for (int8: the scheme of the INT8 exports)"
    )
    steps: Optional[int] = Field(
        None,
        ge=1,
        description="training steps with fake quantisation, after distillation (default: a fifth of distill.steps)",
    )
    lr: Optional[float] = Field(None, gt=0, description="learning rate (default: a tenth of distill.lr)")
    calib_images: int = Field(32, ge=1, le=4096, description="training images that set the quantisers' first ranges")
    freeze_at: float = Field(
        0.5, ge=0, le=1, description="fraction of the steps after which the quantisers' ranges are held (frozen)"
    )


QUANTIZE_SHARE = 5  # distill.quantize.steps by default: distill.steps / this


class DistillSpec(Strict):
    steps: int = Field(1000, ge=1, description="optimisation steps (with schedule plateau: the most it may take)")
    lr: float = Field(2e-4, gt=0, description="Adam learning rate")
    beta1: float = Field(0.5, ge=0, lt=1, description="Adam β1: 0.5 for adversarial training, 0.9 for regression")
    schedule: Literal["linear", "cosine", "plateau"] = Field(
        "linear",
        description="linear: constant for decay_from, then linear to 0; cosine: cosine to 0; plateau: constant until "
        "the held-out loss is flat, then lower, until flat again (distill.plateau)",
    )
    decay_from: float = Field(0.5, ge=0, le=1, description="fraction of steps at constant lr before linear decay")
    plateau: PlateauSpec = Field(default_factory=PlateauSpec, description="schedule plateau: the convergence rule")
    losses: LossesSpec = Field(default_factory=LossesSpec, description="loss terms and weights")
    teacher_as_real: bool = Field(False, description="folder data: use teacher outputs as GAN real samples")
    discriminator: DiscriminatorSpec = Field(default_factory=DiscriminatorSpec, description="PatchGAN settings")
    checkpoint_every: int = Field(1000, ge=1, description="write a checkpoint every N steps")
    keep_last: int = Field(3, ge=1, description="checkpoints to keep")
    log_every: int = Field(50, ge=1, description="append to metrics.jsonl every N steps")
    sample_every: int = Field(1000, ge=1, description="write a sample grid every N steps")
    amp: Literal["none", "bf16", "fp16"] = Field(
        "none",
        description="mixed precision of the whole step: bf16/fp16 on CUDA, bf16 on CPUs with AVX512-BF16 or AMX",
    )
    channels_last: bool = Field(False, description="channels_last memory format on CUDA")
    cache_teacher: bool = Field(
        False,
        description="compute the teacher's outputs once per image and read them back (run folder's teacher_cache/, FP16, memory-mapped; no flip, no crop)",
    )
    cache_views: Optional[int] = Field(
        None,
        ge=1,
        le=64,
        description="distill.cache_teacher with augmented data: a fixed bank of this many jittered views per image "
        "(crops, flips, noise drawn once per view), each cached",
    )
    cache_dtype: Literal["float16", "float32"] = Field(
        "float16", description="distill.cache_teacher: how the outputs are stored (float32: exactly as computed)"
    )
    quantize: Optional[QuantizeSpec] = Field(
        None,
        description="quantisation-aware distillation after distill: the student with fake INT8 quantisation, "
        "trained on with the same teacher and losses; the INT8 exports take its trained scales",
    )


class EvaluateSpec(Strict):
    metrics: list[Literal["fid", "kid", "psnr", "ssim", "l1"]] = Field(
        default_factory=lambda: ["fid", "kid", "psnr", "ssim"], description="metrics to compute"
    )
    batch_size: int = Field(8, ge=1, description="evaluation batch size")
    max_images: Optional[int] = Field(None, ge=1, description="evaluate at most this many test images")
    inception_weights: Optional[str] = Field(None, description="FID Inception weights (TorchScript .pt)")
    samples: int = Field(4, ge=0, le=64, description="test images in the sample grid")


class OnnxSpec(Strict):
    dynamic: list[Literal["batch", "hw"]] = Field(default_factory=lambda: ["batch"], description="dynamic axes")
    opset: int = Field(18, ge=13, le=23, description="ONNX opset")
    parity_tol: float = Field(1e-4, gt=0, description="max abs error against PyTorch (fp32)")
    slim: bool = Field(False, description="simplify with onnxslim")


class Int8Spec(Strict):
    enabled: bool = Field(False, description="write student.int8.onnx (static QDQ)")
    calib_images: int = Field(32, ge=1, description="calibration images from the training set")


class TensorRTSpec(Strict):
    precision: Literal["fp32", "fp16", "int8"] = Field("fp16", description="engine precision")
    workspace_mb: int = Field(1024, ge=16, description="builder workspace")


class ExportSpec(Strict):
    static: bool = Field(False, description="fixed-shape files (batch 1 at data.size) in every format")
    formats: list[str] = Field(
        ["onnx"],  # pydantic copies a mutable default per instance
        description="files to write: onnx (always, the profile's base) and any of openvino, executorch, litert, "
        "ncnn, coreml (each at its default precision, and int8 too where int8.enabled); profile times each",
    )
    onnx: OnnxSpec = Field(default_factory=OnnxSpec, description="ONNX export and parity")
    int8: Int8Spec = Field(default_factory=Int8Spec, description="INT8 quantisation")
    tensorrt: Optional[TensorRTSpec] = Field(None, description="TensorRT engine (skipped where absent)")


class ProfileSpec(Strict):
    backends: list[str] = Field(default_factory=lambda: ["torch", "ort-cpu"], description="backends to time")
    batch: list[int] = Field(default_factory=lambda: [1], description="batch sizes")
    size: list[int] = Field(default_factory=list, description="image sizes (default: data.size)")
    warmup: int = Field(10, ge=0, le=1_000_000, description="untimed iterations")
    iters: int = Field(50, ge=1, le=1_000_000, description="timed iterations")
    threads: Optional[int] = Field(None, ge=1, le=1024, description="intra-op threads (default: all cores)")

    @field_validator("batch", "size")
    @classmethod
    def _positive(cls, v):
        if any(x < 1 for x in v):
            raise ValueError("values must be positive")
        return v


# Keys that a stage of their own digests: a change there re-runs that stage, not the one of the enclosing section
# (``distill.quantize``: the quantize stage, after distill).
OWN_STAGE_KEYS = ("distill.quantize",)


class Recipe(Strict):
    name: str = Field(
        ...,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        max_length=100,
        description="run name: runs/<name>/ (at most 100 characters)",
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="random seed (0 to 2**32-1)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="cuda when present, else cpu")
    data: DataSpec = Field(..., description="dataset")
    teacher: TeacherSpec = Field(..., description="the generator to compress")
    student: StudentSpec = Field(
        default_factory=StudentSpec,
        description="the student: the teacher slimmed to a width, or a network of its own (arch or import)",
    )
    distill: DistillSpec = Field(default_factory=DistillSpec, description="distillation training")
    evaluate: EvaluateSpec = Field(default_factory=EvaluateSpec, description="teacher-vs-student evaluation")
    export: ExportSpec = Field(default_factory=ExportSpec, description="deployment export")
    profile: ProfileSpec = Field(default_factory=ProfileSpec, description="latency profiling")

    @model_validator(mode="after")
    def _consistent(self):
        t = self.teacher
        if self.data.kind == "unpaired" and t.train is None and not t.reverse_checkpoint:
            raise ValueError(
                "teacher.reverse_checkpoint: unpaired data needs the B->A teacher's checkpoint too "
                "(or teacher.train to train both)"
            )
        if t.onnx and not self.student.other_arch:
            raise ValueError(
                "teacher.onnx: an ONNX teacher cannot be slimmed; name the student with student.arch or student.import"
            )
        if t.onnx and self.data.kind == "unpaired":
            raise ValueError("teacher.onnx: unpaired data (two teachers) is not supported with an ONNX teacher")
        for arch in (t.arch, self.student.arch):
            mult = ZOO_ARCHS.get(arch or "", {}).get("size_multiple")
            if mult and self.data.size % mult:
                raise ValueError(
                    f"data.size: {self.data.size} is not a multiple of {mult}, which {arch} needs "
                    f"(e.g. {max(mult, self.data.size // mult * mult)})"
                )
        return self

    @model_validator(mode="after")
    def _check_teacher_cache(self):
        d = self.data
        dd = self.distill
        random = d.flip or (d.load_size not in (None, d.size)) or d.kind == "degraded"
        if dd.cache_teacher and d.kind == "unpaired":
            raise ValueError("distill.cache_teacher: unpaired data (two directions drawn apart) is not supported")
        if dd.cache_teacher and random and dd.cache_views is None:
            raise ValueError(
                "distill.cache_teacher needs inputs that are the same every epoch (data.flip false, no data.load_size "
                "crop, not degraded data), or distill.cache_views: K, a fixed bank of K augmented views per image"
            )
        if dd.cache_views is not None and not dd.cache_teacher:
            raise ValueError("distill.cache_views: only with distill.cache_teacher: true")
        return self

    # Where the recipe came from: relative paths resolve against it. Not part of the schema.
    _base_dir: Path = Path(".")
    _source: Optional[Path] = None

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    def resolve_path(self, value: str | None) -> Optional[Path]:
        """Resolve a recipe path: against the recipe's folder, else the current directory."""
        if value is None:
            return None
        return resolve_path(self._base_dir, value)

    def _hashed(self) -> dict:
        """The recipe as digests see it: options added after run folders existed are left out while they hold
        their default, so that a new option never makes an earlier run (or its checkpoints) look changed."""
        data = self.model_dump(mode="json", by_alias=True)
        for path, default in _DIGEST_NEUTRAL.items():
            *parents, leaf = path.split(".")
            node = data
            for key in parents:
                node = node.get(key) if isinstance(node, dict) else None
            if isinstance(node, dict) and leaf in node and node[leaf] == default:
                del node[leaf]
        return data

    def section_hash(self, *sections: str) -> str:
        """The digest of recipe sections: top-level names (``distill``) or dotted keys (``distill.quantize``). A key of
        :data:`OWN_STAGE_KEYS` belongs to its own stage: it is left out of its parent section's hash."""
        data = self._hashed()
        payload = {}
        for s in sections:
            head, _, rest = s.partition(".")
            node = data[head]
            for key in rest.split(".") if rest else ():
                node = node.get(key) if isinstance(node, dict) else None
            if isinstance(node, dict):
                own = {k.split(".", 1)[1] for k in OWN_STAGE_KEYS if k.startswith(s + ".")}
                node = {k: v for k, v in node.items() if k not in own}
            payload[s] = node
        payload["_seed"] = data["seed"]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self._hashed(), sort_keys=True).encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", by_alias=True), sort_keys=False)


# ---------------------------------------------------------------------------------------------------- loading


class _BoundedLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses deep nesting, many aliases and documents that expand to huge trees (a
    "billion laughs" recipe), before anything is expanded."""


def _compose_bounded(text: str, source: str) -> Optional[yaml.Node]:
    """The YAML node graph of ``text``, bounded; raises :class:`RecipeError` (one line)."""
    if len(text) > MAX_RECIPE_BYTES:
        raise RecipeError(f"{source}: the recipe is larger than {MAX_RECIPE_BYTES // 1024} KiB")
    depth = aliases = 0
    try:
        for ev in yaml.parse(text, Loader=_BoundedLoader):  # streaming: no recursion, nothing expanded
            if isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_YAML_DEPTH:
                    raise RecipeError(f"{source}:{ev.start_mark.line + 1}: nesting deeper than {MAX_YAML_DEPTH} levels")
            elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
            elif isinstance(ev, yaml.AliasEvent):
                aliases += 1
                if aliases > MAX_YAML_ALIASES:
                    raise RecipeError(
                        f"{source}:{ev.start_mark.line + 1}: more than {MAX_YAML_ALIASES} YAML aliases (*name)"
                    )
        loader = _BoundedLoader(text)
        try:
            root = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"{where}: YAML syntax error: {problem}") from None
    except RecursionError:
        raise RecipeError(f"{source}: nesting too deep") from None
    if root is not None:
        sizes: dict[int, int] = {}

        def size(node) -> int:  # expanded node count, each distinct node computed once
            key = id(node)
            if key not in sizes:
                sizes[key] = 0  # a cycle (recursive alias) counts as nothing more
                if isinstance(node, yaml.MappingNode):
                    _no_duplicate_keys(node, source)
                    n = 1 + sum(size(k) + size(v) for k, v in node.value)
                elif isinstance(node, yaml.SequenceNode):
                    n = 1 + sum(size(v) for v in node.value)
                else:
                    n = 1
                sizes[key] = n
            return sizes[key]

        if size(root) > MAX_YAML_NODES:
            raise RecipeError(f"{source}: the recipe expands to more than {MAX_YAML_NODES} values through YAML aliases")
    return root


def _no_duplicate_keys(node: yaml.MappingNode, source: str) -> None:
    """A key given twice in one mapping is a mistake (YAML loaders keep the last silently)."""
    seen: dict[str, int] = {}
    for k, _ in node.value:
        if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
            if k.value in seen:
                raise RecipeError(
                    f"{source}:{k.start_mark.line + 1}: key {k.value[:60]!r} is given twice (also on line "
                    f"{seen[k.value]}); keep one"
                )
            seen[k.value] = k.start_mark.line + 1


def _construct(root: Optional[yaml.Node], source: str) -> Any:
    if root is None:
        return None
    loader = _BoundedLoader("")
    try:
        return loader.construct_document(root)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"{where}: YAML error: {problem}") from None
    except (ValueError, OverflowError, RecursionError, TypeError) as exc:  # e.g. an integer with 5000 digits
        raise RecipeError(f"{source}: unreadable value ({str(exc).splitlines()[0][:120]})") from None
    finally:
        loader.dispose()


def safe_load_bounded(text: str, source: str = "<yaml>") -> Any:
    """``yaml.safe_load`` with bounded nesting, aliases and expansion; one-line :class:`RecipeError` otherwise."""
    return _construct(_compose_bounded(text, source), source)


def _line_index(text: str, root: Optional[yaml.Node] = None) -> dict[tuple, int]:
    """Map key paths to 1-based YAML line numbers (an aliased node is walked once, where it is first met)."""
    index: dict[tuple, int] = {}
    if root is None:
        try:
            root = _compose_bounded(text, "<recipe>")
        except RecipeError:
            return index
    seen: set[int] = set()
    stack = [(root, ())] if root is not None else []
    while stack:  # iterative: no recursion limit, each node once
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = k.value if isinstance(k, yaml.ScalarNode) else None
                index.setdefault(path + (key,), k.start_mark.line + 1)
                stack.append((v, path + (key,)))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                index.setdefault(path + (i,), v.start_mark.line + 1)
                stack.append((v, path + (i,)))
    return index


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise RecipeError(f"--set {item!r}: expected dotted.key=value")
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise RecipeError(f"--set {item!r}: empty key")
    try:
        value = safe_load_bounded(raw, f"--set {key}") if raw.strip() else None
    except RecipeError as exc:
        if "YAML syntax error" not in str(exc):
            raise
        value = raw
    return key.split("."), value


def apply_overrides(doc: dict, overrides: list[str]) -> dict:
    for item in overrides or []:
        path, value = parse_override(item)
        node = doc
        for part in path[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise RecipeError(f"--set {item!r}: {part} is not a section")
            node = nxt
        node[path[-1]] = value
    return doc


def _format_error(err: dict, lines: dict[tuple, int], source: str) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    key = ".".join(str(p) for p in loc) or "(recipe)"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if err["type"] == "extra_forbidden":
        msg = "unknown key (misspelt?)"
    elif err["type"] == "missing":
        msg = "required key is missing"
    named = re.match(r"([A-Za-z_][\w.]*):", msg)  # a message that names its own key, e.g. 'data.size: …'
    own = (
        tuple(named.group(1).split("."))
        if named and named.group(1).startswith(loc[:1] or ("",)) or (named and not loc)
        else None
    )
    line = None
    probe = own or loc
    while probe and line is None:
        line = lines.get(probe)
        probe = probe[:-1]
    where = f"{source}:{line}: " if line else f"{source}: "
    if own or msg.startswith(key + ":") or msg.startswith(key.split(".")[0] + " "):
        return where + msg
    if "input" in err and err["type"] not in ("missing", "extra_forbidden") and not isinstance(err["input"], dict):
        try:
            got = repr(err["input"])
        except ValueError:  # an integer beyond Python's digit limit
            got = "a huge number"
        return f"{where}{key}: {msg} (got {got[:80]})"
    return f"{where}{key}: {msg}"


def load_recipe(path: str | Path, overrides: list[str] | None = None, check_paths: bool = True) -> Recipe:
    """Read, override and validate a recipe; raise :class:`RecipeError` with one line on any problem."""
    path = Path(path)
    if not path.exists():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        text = read_bounded(path, MAX_RECIPE_BYTES).decode("utf-8")
    except UserError as exc:
        if "larger than" in str(exc):
            raise RecipeError(f"{path}: the recipe is larger than {MAX_RECIPE_BYTES // 1024} KiB") from None
        raise RecipeError(str(exc)) from None
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path}: cannot read recipe ({exc})") from None
    return parse_recipe(
        text, source=str(path), base_dir=path.resolve().parent, overrides=overrides, check_paths=check_paths
    )


def parse_recipe(
    text: str,
    source: str = "<recipe>",
    base_dir: Path | None = None,
    overrides: list[str] | None = None,
    check_paths: bool = True,
) -> Recipe:
    root = _compose_bounded(text, source)
    doc = _construct(root, source)
    if doc is None:
        raise RecipeError(f"{source}: the recipe is empty")
    if not isinstance(doc, dict):
        raise RecipeError(f"{source}: a recipe must be a mapping of keys, not {type(doc).__name__}")
    if any(not isinstance(k, str) for k in doc):
        raise RecipeError(f"{source}: top-level keys must be strings")
    doc = apply_overrides(doc, overrides or [])
    lines = _line_index(text, root)
    try:
        recipe = Recipe.model_validate(doc)
    except ValidationError as exc:
        raise RecipeError(_format_error(exc.errors()[0], lines, source)) from None
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise RecipeError(f"{source}: invalid recipe ({str(exc).splitlines()[0][:200]})") from None
    recipe._base_dir = Path(base_dir) if base_dir else Path.cwd()
    recipe._source = Path(source)
    if check_paths:
        check_recipe_paths(recipe, lines, source)
    return recipe


def check_recipe_paths(recipe: Recipe, lines: dict | None = None, source: str = "<recipe>") -> None:
    """Fail early, with the YAML line, when the data folder is missing. What it must hold (images, splits) is
    checked by the pre-flight (:func:`compressor.app.preflight.preflight`), which knows the datasets."""
    lines = lines or {}
    if recipe.data.kind == "synthetic":
        return
    line = lines.get(("data", "root"))
    where = f"{source}:{line}: " if line else f"{source}: "
    root = recipe.resolve_path(recipe.data.root)
    if root is None or not root.exists():
        raise RecipeError(f"{where}data.root: folder not found: {root}")
    if not root.is_dir():
        raise RecipeError(f"{where}data.root: not a folder: {root}")


def missing_files(recipe: Recipe) -> list[str]:
    """Files a later stage will need that do not exist yet (warnings for ``validate``)."""
    out = []
    t = recipe.teacher
    if t.checkpoint and t.train is None:
        p = recipe.resolve_path(t.checkpoint)
        if not p.exists():
            out.append(f"teacher.checkpoint: file not found: {p} (the teacher stage will fail)")
    elif not t.checkpoint and t.train is None:
        out.append("teacher: neither checkpoint nor train is set; the teacher keeps random weights")
    return out


# ------------------------------------------------------------------------------------------------ reference


def schema_reference() -> list[tuple[str, str, str]]:
    """(dotted key, default, description) for every key of the schema: the README's recipe reference.

    A section's keys show the defaults the section really gets: ``recon.weight`` is 100 because the ``recon``
    section's default is ``WeightSpec(weight=100)``, even though ``WeightSpec.weight`` alone has none.
    """
    rows: list[tuple[str, str, str]] = []

    def show(val) -> str:
        if isinstance(val, BaseModel):
            return "(section)"
        return json.dumps(val) if not isinstance(val, str) else val

    def default_of(field):
        if field.is_required():
            return "required", None
        val = field.default_factory() if field.default_factory is not None else field.default
        return show(val), val

    def walk(model: type[BaseModel], prefix: str, inherited: Optional[BaseModel]):
        for name, field in model.model_fields.items():
            key = prefix + (field.alias or name)
            if inherited is not None:
                val = getattr(inherited, name)
                text = show(val)
            else:
                text, val = default_of(field)
            sub = _submodel(field.annotation)
            rows.append((key, "(section)" if sub is not None else text, field.description or ""))
            if sub is not None:
                walk(sub, key + ".", val if isinstance(val, BaseModel) else None)

    walk(Recipe, "", None)
    return rows


def _submodel(ann):
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in typing.get_args(ann):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None
