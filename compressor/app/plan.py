"""Pick the student's width from a budget, measured on the target.

``plan_width(teacher, budget, ...)`` builds untrained students at candidate widths (latency does not depend on
the weights), exports each to ONNX and times it on the budget's backend with the profiling harness (one
subprocess per measurement, or over SSH where ``budget.host`` is set: only ONNX files travel), fits latency
against width (piecewise linear in log-log space between the measured widths that bracket the target, which is
monotone by construction) and measures the grid width it predicts, until two neighbouring grid widths bracket
the target. The widest width whose latency meets ``budget * (1 - margin)`` is then confirmed with a longer
measurement, together with the next wider one.

Candidate widths are the ones a student can really have: ``k / ngf`` for a zoo teacher rebuilt at ``ngf' = k``,
``k / 32`` for a pruned one. ``macs`` and ``params`` budgets need no measurement (binary search on the grid).

The timing function is injectable (``measure=``): it takes candidates (each with ``width`` and ``model``) and
returns ``{"p50": ms, "p90": ms}`` per candidate, so a test can pass a fake backend.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from ..complexity import count_params, profile_model
from ..errors import UserError
from ..exporters.formats.onnx import export_onnx
from ..exporters.formats.openvino import int8_ir
from ..exporters.formats.tensorrt import build_engine
from ..exporters.profile import environment, profile_models, remote_profile
from ..exporters.quantize import quantize_onnx
from ..exporters.table import BACKENDS, backend_available, get_backend
from ..io import atomic_write_bytes, atomic_write_json
from ..models import ZOO, input_channels, size_multiple
from ..recipe import BudgetSpec
from ..schemas import PlanJson, read_json
from ..slim import make_student, save_student

log = logging.getLogger(__name__)

SCHEMA = "compressor.plan/1"
PRUNE_STEPS = 32  # grid of a pruned student: k / 32


@dataclass
class Candidate:
    """One student width: its untrained model, size, and measured latency."""

    width: float
    model: nn.Module | None = None
    plan: dict | None = None
    params: int | None = None
    macs: int | None = None
    p50: float | None = None
    p90: float | None = None
    confirmed: bool = False
    measurements: list = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"w{self.width:.6f}".rstrip("0")

    def row(self) -> dict:
        out = {
            "width": self.width,
            "params": self.params,
            "macs": self.macs,
            "p50": self.p50,
            "p90": self.p90,
            "confirmed": self.confirmed,
        }
        if self.plan and self.plan.get("ngf") is not None:
            out["ngf"] = self.plan["ngf"]
        return out


class Measure(Protocol):
    """Times candidates on the target: one ``{"p50": ms, "p90": ms}`` per candidate, in order."""

    def __call__(self, candidates: list[Candidate], warmup: int, iters: int) -> list[dict]: ...


# backends whose INT8 file a plan makes itself from each candidate's ONNX file, as the export would
PLAN_INT8 = ("ort-cpu", "openvino")
CALIBRATION_IMAGES = 4


def int8_for_timing(backend: str, onnx: Path, batch: int, channels: int, size: int) -> tuple[str, Path]:
    """(kind, path) of the INT8 file ``backend`` runs, quantised from the FP32 ``onnx`` beside it as the export
    quantises (ONNX Runtime's static quantisation for the CPU; NNCF's mixed preset for OpenVINO). Calibrated on
    :data:`CALIBRATION_IMAGES` random images of a fixed seed: a scale's value does not change what the file
    costs, and an untrained candidate has no meaningful ranges to calibrate."""
    rng = np.random.default_rng(0)
    calib = [rng.uniform(-1, 1, (batch, channels, size, size)).astype(np.float32) for _ in range(CALIBRATION_IMAGES)]
    if backend == "openvino":
        xml = onnx.with_name(onnx.stem + ".int8.xml")
        if not xml.exists():
            int8_ir(onnx, xml, calib)
        return "int8-openvino", xml
    out = onnx.with_name(onnx.stem + ".int8.onnx")
    if not out.exists():
        quantize_onnx(onnx, out, calib, "cpu")
    return "int8-onnx", out


# ------------------------------------------------------------------------------------------- the real target


class ProfileMeasure:
    """Export each candidate to ONNX (or a student folder for torch backends, an engine for TensorRT) and time
    it with :func:`compressor.exporters.profile.profile_models`, or :func:`compressor.exporters.profile.remote_profile` on
    ``budget.host``."""

    def __init__(self, budget: BudgetSpec, size: int, workdir: Path | None = None):
        self.budget, self.size = budget, size
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="compressor-plan-"))
        self.environment: dict | None = None
        self._round = 0
        self.check()

    def check(self) -> None:
        b = self.budget
        try:
            row = get_backend(b.backend, "student.budget.backend", plan=True)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if b.precision == "int8" and (b.backend not in PLAN_INT8 or b.host):
            raise UserError(
                f"student.budget.precision: the plan quantises its candidates for {', '.join(PLAN_INT8)} on this "
                f"machine; for {b.backend}{' over SSH' if b.host else ''} plan at fp32 and quantise the chosen "
                f"student afterwards"
            )
        if b.precision in row.variants and b.precision != "int8":
            raise UserError(
                f"student.budget.precision: {b.backend} runs {b.precision} from its own file; plan at fp32 "
                f"(quantise the chosen student afterwards)"
            )
        if b.host and row.artifact != "onnx":
            raise UserError(f"student.budget.host: only ONNX files travel to a remote machine, not {b.backend}'s")
        if not b.host:
            ok, why = backend_available(b.backend)
            if not ok:
                raise UserError(f"student.budget.backend: {b.backend} is not available here: {why}")
            why = row.load().refuse(row, b.precision, self.device())
            if why:
                raise UserError(f"student.budget.precision: {why}")

    def device(self) -> str:
        """Where the budget's backend runs: CUDA when it can and a GPU is visible."""
        row = BACKENDS[self.budget.backend]
        return "cuda" if "cuda" in row.all_devices() and torch.cuda.is_available() else row.device

    def fingerprint(self) -> dict:
        b = self.budget
        fp = {
            "backend": b.backend,
            "precision": b.precision,
            "batch": b.batch,
            "size": self.size,
            "threads": b.threads,
            "stat": b.stat,
        }
        if b.host:
            fp.update(host=b.host, port=b.port, remote_compress=b.remote_compress)
            return fp

        env = environment(b.threads)
        for k in (
            "hostname",
            "cpu",
            "cores",
            "threads",
            "gpu",
            "driver",
            "torch_version",
            "onnxruntime_version",
            "tensorrt_version",
        ):
            if env.get(k) is not None:
                fp[k] = env[k]
        return fp

    def _artifacts(self, cand: Candidate) -> dict:
        """A profile ref for one candidate: ONNX, engine or student folder, written once."""

        b = self.budget
        base = self.workdir / cand.label.replace(".", "_")  # no suffix for with_suffix to eat
        ref: dict = {"label": cand.label, "role": "student", "torch": None, "onnx": None}
        kind = BACKENDS[b.backend].artifact
        if kind == "torch":
            if not (base / "student.json").exists():
                save_student(cand.model, cand.plan, base)
            ref["torch"] = {"type": "student_dir", "path": str(base)}
            return ref
        onnx = base.with_suffix(".onnx")
        if not onnx.exists():
            export_onnx(
                cand.model, onnx, torch.zeros(b.batch, input_channels(cand.model), self.size, self.size), dynamic=()
            )
        ref["onnx"] = str(onnx)
        if b.precision == "int8":
            kind, path = int8_for_timing(b.backend, onnx, b.batch, input_channels(cand.model), self.size)
            ref["artifacts"] = {kind: str(path)}
        if kind == "engine":
            engine = base.with_suffix(".plan")
            if not engine.exists():
                build_engine(onnx, engine, b.precision, timing_cache=self.workdir / "timing.cache")
            ref["artifacts"] = {"engine": str(engine)}
        return ref

    def __call__(self, candidates: list[Candidate], warmup: int, iters: int) -> list[dict]:

        b = self.budget
        refs = [self._artifacts(c) for c in candidates]
        if b.host:
            self._round += 1
            out = self.workdir / f"remote{self._round}.json"
            args = ["--backend", b.backend, "--batch", str(b.batch), "--size", str(self.size)]
            args += ["--precision", b.precision, "--warmup", str(warmup), "--iters", str(iters)]
            if b.threads:
                args += ["--threads", str(b.threads)]
            try:
                doc = remote_profile(
                    b.host, [r["onnx"] for r in refs], args, out, b.port, list(b.ssh_options), b.remote_compress
                )
            except UserError as exc:
                hint = (
                    (" (is the toolkit installed there? set student.budget.remote_compress to its compress command)")
                    if "not found" in str(exc) or "No such file" in str(exc)
                    else ""
                )
                raise UserError(f"student.budget.host: {exc}{hint}") from None
            by_label = {r["model"]: r for r in doc.get("results", [])}
            rows = [by_label.get(Path(r["onnx"]).stem, {"status": "failed", "reason": "no result"}) for r in refs]
        else:
            device = self.device()
            doc = profile_models(
                refs,
                [b.backend],
                [b.batch],
                [self.size],
                [b.precision],
                warmup=warmup,
                iters=iters,
                threads=b.threads,
                device=device,
            )
            rows = doc["results"]
        self.environment = doc.get("environment")
        out = []
        for cand, row in zip(candidates, rows):
            if row.get("status") != "ok":
                raise UserError(
                    f"student.budget.backend: timing width {cand.width:g} on {b.backend} failed: "
                    f"{row.get('reason', row.get('status'))}"
                )
            lat = row["latency_ms"]
            out.append({"p50": lat["p50"], "p90": lat["p90"]})
        return out


# ------------------------------------------------------------------------------------------------ the search


def resolve_method(teacher: nn.Module, method: str) -> str:
    zoo = getattr(teacher, "arch", None) in ZOO
    if method == "auto":
        return "rebuild" if zoo else "prune"
    if method == "rebuild" and not zoo:
        raise UserError("student.method: rebuild works for zoo teachers only; use prune for imported models")
    return method


def width_grid(teacher: nn.Module, method: str) -> list[float]:
    """The widths a student can have: ``k / ngf`` (rebuilt zoo model), ``k / 32`` (pruned)."""
    if resolve_method(teacher, method) == "rebuild":
        ngf = int(teacher.config["ngf"])
        return [k / ngf for k in range(1, ngf + 1)]
    return [k / PRUNE_STEPS for k in range(1, PRUNE_STEPS + 1)]


def model_signature(model: nn.Module) -> str:
    """Architecture (not weights): its module tree and parameter shapes."""
    h = hashlib.sha256(repr(model).encode())
    for name, p in model.state_dict().items():
        h.update(f"{name}:{tuple(p.shape)}".encode())
    return h.hexdigest()[:16]


def _budget_text(b: BudgetSpec, target: float, margin: float, teacher_ms: float | None) -> str:
    if b.speedup is not None:
        text = f"{target / (1 - margin):.3g} ms ({b.speedup:g}x faster than the teacher's {teacher_ms:.3g} ms)"
    else:
        text = f"{b.latency_ms:g} ms"
    if margin:
        text += f" (with the {margin:.0%} margin, {target:.3g} ms)"
    return text


class _Planner:
    def __init__(
        self,
        teacher: nn.Module,
        budget: BudgetSpec,
        method: str,
        size: int,
        widths: list[float],
        measure: Measure,
        warmup: int,
        iters: int,
        confirm_iters: int,
        count_macs: bool = True,
    ):
        self.count_macs = count_macs
        self.teacher, self.budget, self.method, self.size = teacher, budget, method, size
        self.cands = [Candidate(w) for w in widths]
        self.measure, self.warmup, self.iters, self.confirm_iters = measure, warmup, iters, confirm_iters
        self.example = torch.zeros(1, input_channels(teacher), size, size)
        self.stat = budget.stat

    def build(self, i: int, macs: bool = False) -> Candidate:

        c = self.cands[i]
        if c.model is None:
            c.model, c.plan = make_student(self.teacher, c.width, self.method, "scratch", self.example)
            c.model.eval()
            c.params = count_params(c.model)
        if c.macs is None and (macs or self.count_macs):
            c.macs = profile_model(c.model, tuple(self.example.shape))["macs"]
        return c

    def lat(self, i: int) -> float | None:
        return getattr(self.cands[i], self.stat)

    def time(self, idx: list[int], confirm: bool = False) -> None:
        cands = [self.build(i) for i in idx]
        iters = self.confirm_iters if confirm else self.iters
        t0 = time.perf_counter()
        res = self.measure(cands, self.warmup, iters)
        for c, r in zip(cands, res):
            c.p50, c.p90 = float(r["p50"]), float(r["p90"])
            c.confirmed = c.confirmed or confirm
            c.measurements.append({"p50": c.p50, "p90": c.p90, "iters": iters})
            log.info(
                "plan: width %.4g%s: %s %.3g ms%s",
                c.width,
                f" (ngf {c.plan['ngf']})" if c.plan and "ngf" in c.plan else "",
                self.stat,
                getattr(c, self.stat),
                " (confirmed)" if confirm else "",
            )
        log.debug("timed %d candidate(s) in %.1f s", len(cands), time.perf_counter() - t0)

    def _bracket(self, target: float) -> tuple[int | None, int | None]:
        measured = [i for i, c in enumerate(self.cands) if self.lat(i) is not None]
        over = [i for i in measured if self.lat(i) > target]
        hi = min(over) if over else None
        under = [i for i in measured if self.lat(i) <= target and (hi is None or i < hi)]
        return (max(under) if under else None), hi

    def _guess(self, lo: int, hi: int, target: float) -> int:
        """Grid index predicted by log-log interpolation between the bracketing widths, strictly inside."""
        wl, wh = self.cands[lo].width, self.cands[hi].width
        ll, lh = self.lat(lo), self.lat(hi)
        if lh > ll > 0:
            w = math.exp(
                math.log(wl)
                + (math.log(target) - math.log(ll)) * (math.log(wh) - math.log(wl)) / (math.log(lh) - math.log(ll))
            )
            i = max((k for k, c in enumerate(self.cands) if c.width <= w * (1 + 1e-9)), default=lo)
        else:
            i = (lo + hi) // 2
        return min(max(i, lo + 1), hi - 1)

    def unreachable(self, target: float, text: str) -> UserError:
        c = self.cands[0]
        return UserError(f"student.budget: even width {c.width:.4g} runs in {self.lat(0):.3g} ms; the budget is {text}")

    def search_latency(self, target: float, text_fn: Callable[[], str], max_rounds: int = 24) -> int:
        n = len(self.cands)
        self.time([i for i in (0, n - 1) if self.lat(i) is None])
        span = 2 * n  # the bracket before the last round: a guess that did not halve it gives way to bisection
        for _ in range(max_rounds):
            if self.lat(0) > target:
                if not self.cands[0].confirmed:
                    self.time([0], confirm=True)
                    continue
                raise self.unreachable(target, text_fn())
            lo, hi = self._bracket(target)
            if hi is None and lo == n - 1 or hi == lo + 1:
                need = [i for i in (lo, hi) if i is not None and not self.cands[i].confirmed]
                if not need:
                    return lo
                self.time(need, confirm=True)
                continue
            i = self._guess(lo, hi, target) if 2 * (hi - lo) <= span else (lo + hi) // 2
            span = hi - lo
            self.time([k for k in (i, i + 1) if k < hi and self.lat(k) is None] or [i])
        lo, _ = self._bracket(target)
        if lo is None:
            raise self.unreachable(target, text_fn())
        log.warning("plan: the measurements kept moving; taking width %.4g", self.cands[lo].width)
        return lo

    def search_count(self, key: str, limit: float) -> int:
        """Widest grid index whose params/MACs are within ``limit`` (they grow with width)."""
        lo, hi = -1, len(self.cands)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if getattr(self.build(mid, macs=key == "macs"), key) <= limit:
                lo = mid
            else:
                hi = mid
        if lo < 0:
            c = self.build(0, macs=key == "macs")
            raise UserError(
                f"student.budget: even width {c.width:.4g} has {getattr(c, key):.4g} {key}; the budget is {limit:.4g}"
            )
        if lo + 1 < len(self.cands):
            self.build(lo + 1, macs=key == "macs")
        return lo


# ------------------------------------------------------------------------------------------------ entry point


def plan_key(
    teacher: nn.Module,
    budget: BudgetSpec,
    margin: float,
    method: str,
    size: int,
    widths: list[float],
    fingerprint: dict,
) -> str:
    payload = {
        "schema": SCHEMA,
        "teacher": model_signature(teacher),
        "budget": budget.model_dump(mode="json"),
        "margin": margin,
        "method": method,
        "size": size,
        "widths": widths,
        "fingerprint": fingerprint,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan_width(
    teacher: nn.Module,
    budget: BudgetSpec | dict,
    *,
    size: int,
    method: str = "auto",
    margin: float = 0.05,
    run_dir: str | Path | None = None,
    measure: Measure | None = None,
    fingerprint: dict | None = None,
    widths: list[float] | None = None,
    warmup: int = 3,
    iters: int = 10,
    confirm_iters: int = 30,
    force: bool = False,
    plot: bool = True,
    count_macs: bool = True,
) -> dict:
    """Choose the widest student width that meets ``budget``; return the plan document (``doc["width"]``).

    ``teacher`` is the teacher model (its weights do not matter), ``budget`` a :class:`BudgetSpec` (or its dict),
    ``size`` the image size when the budget names none, ``method`` the student method (auto, rebuild, prune),
    ``margin`` the fraction kept below a latency budget. With ``run_dir``, ``plan.json`` (and ``plan.png``) are
    written there, and a plan with the same teacher, budget and machine/backend fingerprint is reused.
    ``measure`` replaces the timing on the target (see :class:`Measure`); ``fingerprint`` then names it.
    ``count_macs=False`` leaves the candidates' MACs out (they cost a counted forward pass each).
    """
    budget = budget if isinstance(budget, BudgetSpec) else BudgetSpec.model_validate(budget)
    if not 0 <= margin < 1:
        raise UserError(f"student.margin: must be in [0, 1), got {margin}")
    size = budget.size or size
    mult = size_multiple(teacher)
    if size % mult:
        raise UserError(f"student.budget.size: {size} is not a multiple of {mult}, which the teacher needs")
    method = resolve_method(teacher, method)
    grid = sorted(set(widths)) if widths else width_grid(teacher, method)
    if not grid or grid[0] <= 0 or grid[-1] > 1:
        raise UserError("plan: candidate widths must lie in (0, 1]")
    counts = budget.macs is not None or budget.params is not None
    run_dir = Path(run_dir) if run_dir is not None else None
    workdir = None
    if measure is None and not counts:
        workdir = Path(tempfile.mkdtemp(prefix="compressor-plan-"))
        measure = ProfileMeasure(budget, size, workdir)
    if fingerprint is None:
        fingerprint = _fingerprint(counts, measure)
    key = plan_key(teacher, budget, margin, method, size, grid, fingerprint)
    out = run_dir / "plan.json" if run_dir else None
    prev = _cached_plan(out, key) if out and out.exists() and not force else None
    if prev is not None:
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        return prev
    t0 = time.perf_counter()
    p = _Planner(teacher, budget, method, size, grid, measure, warmup, iters, confirm_iters, count_macs)
    try:
        best, target, teacher_ms = _search(p, budget, margin, counts)
    finally:
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    doc = _plan_doc(p, best, key, margin, target, teacher_ms, fingerprint, t0)
    if doc["width"] == 1.0:
        log.warning("plan: the teacher itself meets the budget; width 1 keeps every channel")
    if out:
        if plot:
            try:
                doc["plot"] = plot_plan(doc, run_dir / "plan.png").name
            except ImportError:
                log.warning("plan: matplotlib is not installed; no plan.png")
        atomic_write_json(out, doc)
    return doc


def _plan_doc(
    p: _Planner,
    best: int,
    key: str,
    margin: float,
    target: float,
    teacher_ms: float | None,
    fingerprint: dict,
    t0: float,
) -> dict:
    """The plan document for the candidate ``best`` of ``p`` (``t0``: when the search started)."""
    chosen = p.cands[best]
    nxt = p.cands[best + 1] if best + 1 < len(p.cands) else None
    teacher_cx = _teacher_counts(p.teacher, p.example, p.count_macs)
    return {
        "schema": SCHEMA,
        "key": key,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "budget": p.budget.model_dump(mode="json", exclude_none=True),
        "margin": margin,
        "size": p.size,
        "method": p.method,
        "stat": p.budget.stat,
        "target": target,
        "teacher": {
            "signature": model_signature(p.teacher),
            **teacher_cx,
            **({"latency_ms": teacher_ms} if teacher_ms is not None else {}),
        },
        "fingerprint": fingerprint,
        "environment": getattr(p.measure, "environment", None),
        "candidates": [c.row() for c in p.cands if c.params is not None],
        "choice": chosen.row(),
        "next_wider": nxt.row() if nxt is not None and nxt.params is not None else None,
        "width": chosen.width,
        "seconds": round(time.perf_counter() - t0, 1),
        "cached": False,
    }


def _fingerprint(counts: bool, measure: Measure | None) -> dict:
    """What the plan's latencies depend on: nothing for a count budget, else the machine/backend (or the
    ``measure`` callable's name)."""
    if counts:
        return {"counts": "no measurement"}
    if isinstance(measure, ProfileMeasure):
        return measure.fingerprint()
    return {"measure": getattr(measure, "__qualname__", type(measure).__name__)}


def _cached_plan(out: Path, key: str) -> dict | None:
    """The plan in ``out`` marked ``cached`` when it was made for ``key``; None when it must be measured again."""
    if out.is_symlink():  # another place's plan is not this run's measurement; the write replaces the link
        log.warning("%s: is a symlink; not trusted as this run's plan, measuring again", out)
        return None
    try:
        prev = read_json(out, PlanJson)
    except UserError as exc:  # a cache: measured again, and rewritten
        log.warning("%s; measuring again", exc)
        return None
    if prev.get("key") != key:
        return None
    log.info("plan: up to date (same teacher, budget and machine), width %g", prev["width"])
    return {**prev, "cached": True}


def _search(p: _Planner, budget: BudgetSpec, margin: float, counts: bool) -> tuple[int, float, float | None]:
    """(grid index of the widest candidate meeting the budget, the target it met, the teacher's latency when a
    speedup budget measured it)."""
    if counts:
        kind = "macs" if budget.macs is not None else "params"
        limit = float(budget.macs if budget.macs is not None else budget.params)
        return p.search_count(kind, limit), limit, None
    teacher_ms = None
    if budget.speedup is not None:
        if p.cands[-1].width == 1.0:  # the width-1 student has the teacher's architecture
            p.time([len(p.cands) - 1], confirm=True)
            teacher_ms = p.lat(len(p.cands) - 1)
        else:
            tc = Candidate(1.0)
            tc.model, tc.plan = make_student(p.teacher, 1.0, p.method, "scratch", p.example)
            teacher_ms = p.measure([tc], p.warmup, p.confirm_iters)[0][budget.stat]
        target = teacher_ms / budget.speedup * (1 - margin)
    else:
        target = budget.latency_ms * (1 - margin)
    best = p.search_latency(target, lambda: _budget_text(budget, target, margin, teacher_ms))
    return best, target, teacher_ms


def _teacher_counts(teacher: nn.Module, example: torch.Tensor, macs: bool) -> dict:

    if not macs:
        return {"params": count_params(teacher), "macs": None}
    cx = profile_model(teacher, tuple(example.shape))
    return {"params": cx["params"], "macs": cx["macs"]}


def plot_plan(doc: dict, path: str | Path) -> Path:
    """Latency (or MACs/params) against width, with the budget line and the chosen width."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b, stat = doc["budget"], doc["stat"]
    counts = "macs" in b or "params" in b
    ykey = ("macs" if "macs" in b else "params") if counts else stat
    pts = sorted((c["width"], c[ykey]) for c in doc["candidates"] if c.get(ykey) is not None)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    xs, ys = [w for w, _ in pts], [v for _, v in pts]
    mono = [max(ys[: k + 1]) for k in range(len(ys))]
    ax.plot(xs, mono, "-", color="#1f77b4", lw=1.2, alpha=0.6, label="monotone fit (log-log)")
    ax.plot(xs, ys, "o", color="#1f77b4", label=f"measured {ykey}" if not counts else ykey)
    if not counts:
        p90 = sorted((c["width"], c["p90"]) for c in doc["candidates"] if c.get("p90") is not None)
        ax.plot([w for w, _ in p90], [v for _, v in p90], ".", color="#7f7f7f", label="p90")
        limit = b.get("latency_ms") or doc["target"] / (1 - doc["margin"])
        ax.axhline(limit, color="#d62728", lw=1.5, label=f"budget {limit:.3g} ms")
        if doc["margin"]:
            ax.axhline(doc["target"], color="#d62728", lw=1, ls="--", label=f"with {doc['margin']:.0%} margin")
        ax.set_ylabel(f"{stat} latency (ms), {b['backend']} b{b.get('batch', 1)} {doc['size']}²")
    else:
        ax.axhline(doc["target"], color="#d62728", lw=1.5, label=f"budget {doc['target']:.3g}")
        ax.set_ylabel(ykey)
    ch = doc["choice"]
    ax.axvline(ch["width"], color="#2ca02c", lw=1.2, ls=":", label=f"chosen width {ch['width']:.4g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("student width (fraction of the teacher's channels)")
    ax.set_title("latency against width" if not counts else f"{ykey} against width")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: str | Path) -> Path:
    """A matplotlib figure as a PNG, written atomically (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
