"""Schemas of every JSON file the toolkit reads back: ``student.json``, ``teacher.json``, ``plan.json``,
``stages.json``, ``run.json``, ``metrics.jsonl`` lines, the profile, eval and export JSON that ``compress report``
merges, and the structure of a training checkpoint.

Such files may come from elsewhere (a run folder someone sent, a profile from another machine), so each is
checked before use: :func:`read_json` reads at most :data:`MAX_JSON_BYTES`, parses with a bounded nesting depth
and without NaN/Infinity, validates with pydantic and raises one :class:`~compressor.errors.UserError` line naming
the file and the field. Models allow extra keys (newer files stay readable) but type every key they use.

This module is library level: it imports pydantic, :mod:`compressor.errors` and :mod:`compressor.io` (whose
:func:`~compressor.io.read_bounded` reads every file) only, so readers anywhere (``exporters/`` included) can use
it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal, Optional, Type, TypeVar, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)
from typing_extensions import Annotated

from .errors import UserError
from .io import read_bounded

MAX_JSON_BYTES = 16 << 20  # no artifact JSON comes near this
MAX_DEPTH = 64
MAX_EXAMPLE_ELEMENTS = 1 << 24  # 64 MiB of float32: an example input of 1x3x2048x2048 fits, 12000^2 does not
MAX_INT = 1 << 53

T = TypeVar("T", bound=BaseModel)

Finite = Annotated[float, Field(allow_inf_nan=False)]
NonNeg = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Count = Annotated[StrictInt, Field(ge=0, le=MAX_INT)]
Positive = Annotated[StrictInt, Field(ge=1, le=MAX_INT)]
Number = Union[StrictInt, Finite]


class Open(BaseModel):
    """Extra keys allowed (kept), every named key typed."""

    model_config = ConfigDict(extra="allow")


class Strict(BaseModel):
    """What users write (recipes and their sections): unknown keys refused, assignments validated, every number
    finite (``1e400`` and ``.inf`` are refused, not read as infinity)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True, allow_inf_nan=False)


# ------------------------------------------------------------------------------------------- models


class ArchSpec(Open):
    """A teacher architecture: a zoo ``arch`` with ``kwargs``, or an ``import`` (needs consent to load)."""

    arch: Optional[StrictStr] = Field(None, max_length=200)
    import_: Optional[StrictStr] = Field(None, alias="import", max_length=1000)
    onnx: Optional[StrictStr] = Field(None, max_length=4096)
    kwargs: Optional[dict[str, Any]] = None
    input_range: Optional[tuple[Finite, Finite]] = None
    output_range: Optional[tuple[Finite, Finite]] = None
    residual: Optional[Literal["none", "subtract", "add", "upsample_add"]] = None

    @field_validator("kwargs")
    @classmethod
    def _kwargs(cls, v):
        for k, x in (v or {}).items():
            if isinstance(x, int) and not isinstance(x, bool) and abs(x) > MAX_INT:
                raise ValueError(f"{k}: {str(x)[:20]}… is out of range")
        return v


def _example_shape(v: list[int]) -> list[int]:
    if len(v) != 4:
        raise ValueError(f"expected [batch, channels, height, width], got {len(v)} numbers")
    n = math.prod(v)
    if n > MAX_EXAMPLE_ELEMENTS:
        raise ValueError(f"{v} is {n:,} elements; at most {MAX_EXAMPLE_ELEMENTS:,} (an example input, not data)")
    return v


HistoryEntry = tuple[StrictStr, StrictBool, list[Annotated[StrictInt, Field(ge=0, le=1 << 20)]]]


class StudentPlan(Open):
    """``student.json``: how to rebuild the student before its weights load."""

    version: Optional[StrictInt] = None
    method: Optional[Literal["rebuild", "prune", "arch"]] = None
    width: Optional[Union[Finite, StrictStr]] = None
    teacher: ArchSpec
    student: Optional[ArchSpec] = None  # method arch: a network of its own
    ngf: Optional[Annotated[StrictInt, Field(ge=1, le=4096)]] = None
    example_shape: Optional[list[Annotated[StrictInt, Field(ge=1, le=8192)]]] = None
    history: Optional[list[HistoryEntry]] = Field(None, max_length=100_000)
    groups: Optional[list[dict[str, Any]]] = None
    keep: Optional[list[StrictStr]] = None
    widths: Optional[dict[StrictStr, Annotated[StrictInt, Field(ge=1, le=1_000_000)]]] = None  # per-layer

    @field_validator("example_shape")
    @classmethod
    def _shape(cls, v: Optional[list[int]]) -> Optional[list[int]]:
        return v if v is None else _example_shape(v)


class PublishedCheck(Open):
    """``teacher.expect`` measured: the teacher's PSNR on the test split against its published figure."""

    psnr: Finite
    expected: Finite
    tolerance: NonNeg
    split: Optional[StrictStr] = None
    n_images: Optional[Count] = None


class TeacherMeta(Open):
    """``teacher.json`` beside ``teacher.safetensors``."""

    spec: ArchSpec
    source: Optional[StrictStr] = None
    params: Optional[Count] = None
    macs: Optional[Count] = None
    published_check: Optional[PublishedCheck] = None


Side = Annotated[StrictInt, Field(ge=1, le=8192)]  # a tensor dimension a file may ask the toolkit to allocate


class QuantizeJson(Open):
    """``quantize.json`` beside ``student.qad.safetensors``: how to rebuild the quantisation-aware student (the FP32
    student's graph exported again at this shape, with these taps as extra outputs) before its state loads."""

    precision: Literal["int8"]
    taps: list[StrictStr] = Field(default_factory=list, max_length=64)
    example_shape: tuple[Side, Side, Side, Side]
    scheme: Optional[StrictStr] = None


class RunJson(Open):
    recipe_source: Optional[StrictStr] = None
    name: Optional[StrictStr] = None


class StageRecord(Open):
    hash: StrictStr
    seconds: Optional[NonNeg] = None
    finished: Optional[StrictStr] = None


class StagesJson(RootModel[dict[str, StageRecord]]):
    pass


class MetricsLine(Open):
    """One line of ``metrics.jsonl``."""

    step: Count


class PlanCandidate(Open):
    width: Finite
    params: Optional[Count] = None
    macs: Optional[Count] = None


class PlanJson(Open):
    """``plan.json`` (``compress plan``; read back as the cached choice)."""

    key: Optional[StrictStr] = None
    width: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
    candidates: Optional[list[PlanCandidate]] = None
    search: Optional[Literal["uniform", "per-layer"]] = None
    widths: Optional[dict[StrictStr, Annotated[StrictInt, Field(ge=1, le=1_000_000)]]] = None  # search per-layer


class CheckpointConfig(Open):
    digest: Optional[StrictStr] = None


def _tensor(v: Any) -> Any:
    if not (hasattr(v, "shape") and hasattr(v, "dtype") and hasattr(v, "numel")):
        raise ValueError(f"expected a tensor, got {type(v).__name__}")
    return v


Tensor = Annotated[Any, AfterValidator(_tensor)]
StateDict = dict[str, Tensor]


class CheckpointState(Open):
    """A training checkpoint (``checkpoints/step_*.pt``, read with ``weights_only``): its structure before any
    ``load_state_dict`` sees it."""

    step: Count
    students: dict[str, StateDict]
    discriminators: Optional[dict[str, StateDict]] = None
    adapters: Optional[StateDict] = None
    opt_g: dict[str, Any]
    sched_g: dict[str, Any]
    opt_d: Optional[dict[str, Any]] = None
    sched_d: Optional[dict[str, Any]] = None
    rng_cpu: Tensor


# ------------------------------------------------------------------------------------------- report inputs


class Latency(Open):
    p50: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    p10: Optional[NonNeg] = None
    p90: NonNeg
    p99: Optional[NonNeg] = None
    mean: Optional[NonNeg] = None
    std: Optional[NonNeg] = None
    min: Optional[NonNeg] = None
    max: Optional[NonNeg] = None
    n: Optional[Count] = None
    throughput_ips: Optional[NonNeg] = None


class Environment(Open):
    hostname: Optional[StrictStr] = None
    machine: Optional[StrictStr] = None
    gpu: Optional[Union[StrictStr, dict[str, Any], list[Any]]] = None
    tensorrt_version: Optional[StrictStr] = None
    gemm_peak_macs_per_s: Optional[NonNeg] = None


class ProfileRow(Open):
    model: StrictStr
    backend: StrictStr
    batch: Positive
    size: Positive
    precision: Optional[StrictStr] = None
    status: Optional[StrictStr] = None
    role: Optional[StrictStr] = None
    reason: Optional[StrictStr] = None
    latency_ms: Optional[Latency] = None
    macs: Optional[Annotated[float, Field(gt=0, allow_inf_nan=False)]] = None
    macs_paper_convention: Optional[NonNeg] = None
    params: Optional[NonNeg] = None
    throughput: Optional[NonNeg] = None
    peak_rss_mb: Optional[NonNeg] = None
    peak_memory_mb: Optional[NonNeg] = None
    achieved_macs_per_s: Optional[NonNeg] = None
    efficiency: Optional[NonNeg] = None

    @model_validator(mode="after")
    def _ok_has_latency(self):
        if self.status in (None, "ok") and self.latency_ms is None:
            raise ValueError("a measured row (status ok) needs latency_ms")
        return self


class ProfileDoc(Open):
    schema_: StrictStr = Field(alias="schema")
    environment: Optional[Environment] = None
    results: list[ProfileRow]
    created: Optional[StrictStr] = None


class EvalSide(Open):
    fid: Optional[NonNeg] = None
    kid: Optional[Finite] = None
    psnr: Optional[float] = None  # identical images: +inf
    ssim: Optional[float] = None
    psnr_vs_teacher: Optional[float] = None
    ssim_vs_teacher: Optional[float] = None
    n_images: Optional[Count] = None
    params: Optional[Count] = None
    macs: Optional[Count] = None
    macs_paper_convention: Optional[Count] = None


class EvalDoc(Open):
    teacher: EvalSide
    student: EvalSide
    n_images: Optional[Count] = None
    size: Optional[Positive] = None
    output_size: Optional[list[Positive]] = None
    direction: Optional[StrictStr] = None
    fid_weights: Optional[StrictStr] = None
    fid_skipped: Optional[StrictStr] = None
    student_pct_of_teacher: Optional[dict[str, Optional[float]]] = None
    published_check: Optional[PublishedCheck] = None
    student_built: Optional[Annotated[StrictStr, Field(max_length=2000)]] = None  # how the student was made


class FileRecord(Open):
    """One exported file's record (:func:`compressor.exporters.records.record`)."""

    format: StrictStr
    precision: StrictStr
    path: StrictStr
    status: Literal["passed", "failed", "skipped"]
    bytes: Optional[Count] = None
    parity: Optional[dict[str, Any]] = None
    reason: Optional[StrictStr] = None


class ExportDoc(Open):
    files: dict[str, FileRecord]
    notes: Optional[list[StrictStr]] = None


# ------------------------------------------------------------------------------------------- reading


def loads(text: str | bytes, source: str) -> Any:
    """JSON with bounded nesting, or one UserError line naming ``source``. NaN and Infinity parse (Python writes
    them); the schemas say where they are allowed."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{source}: not UTF-8 text (not a JSON file)") from None
    if _bracket_depth(text) > MAX_DEPTH:
        raise UserError(f"{source}: nested more than {MAX_DEPTH} levels deep (not a file compressor wrote)")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise UserError(f"{source}: not valid JSON ({str(exc).splitlines()[0][:160]})") from None


def _bracket_depth(text: str) -> int:
    """An upper bound of the nesting depth, counted before parsing (brackets inside strings count too)."""
    depth = deepest = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_DEPTH:
                    return deepest
        elif ch in "]}":
            depth -= 1
    return deepest


def read_text_bounded(path: str | Path, limit: int = MAX_JSON_BYTES) -> str:
    """The text of a file a folder holds, read by :func:`compressor.io.read_bounded` (regular files only, at most
    ``limit`` bytes, never a blocking open); one UserError line naming the file otherwise."""
    data = read_bounded(path, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text (not a JSON file)") from None


def _where(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(x) for x in err.get("loc", ()) if x != "__root__") or "(top level)"
    msg = err.get("msg", "invalid").removeprefix("Value error, ")
    return f"{loc}: {msg}"


def validate(obj: Any, model: Type[T], source: str) -> T:
    """``model`` from ``obj``, or one UserError naming ``source`` and the field."""
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise UserError(f"{source}: {_where(exc)} (not as compressor writes it)") from None
    except RecursionError:
        raise UserError(f"{source}: nested too deeply") from None


def read_json(path: str | Path, model: Optional[Type[T]] = None) -> Any:
    """The JSON document at ``path``, validated against ``model`` (returned as plain data, aliases as written)."""
    doc = loads(read_text_bounded(path), str(path))
    if model is None:
        return doc
    validate(doc, model, str(path))
    return doc


def check(doc: Any, model: Type[T], source: str) -> Any:
    """Validate an already parsed document; returns it unchanged."""
    validate(doc, model, source)
    return doc
