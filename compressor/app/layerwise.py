"""Per-layer widths from the target (``student.width: auto`` with ``student.search: per-layer``).

**The latency table**, measured on the budget's backend, in the target's runtime, on whole networks (a layer
timed alone misleads on CPUs: ONNX Runtime reorders a lone convolution's tensors to its blocked layout and back,
which a whole network does once, and fuses the norms and activations around it). Candidate widths are ``k/8`` of a
group's channels (k = 1..8: what a uniform student at width k/8 keeps, rounded down to ``student.round_channels``
as Torch-Pruning rounds, so that the table's uniform width k/8 is the network ``student.width: k/8`` builds). The
table holds the whole network at the eight uniform widths (a network several widths round to is measured once),
then, around the reference (the uniform width nearest the target), every group at each of its
widths with the others at the reference: what that group costs at that width, in context (NetAdapt, Yang et al.,
ECCV 2018, measures such per-layer tables on the device; here they are measured in the network). A configuration is
predicted as the reference's time plus each group's change, plus a cross term for convolutions between two groups
that both move. Each network is taken relative to the reference measured beside it (again every six networks), on
the 10th percentile of its iterations, what interference on a shared machine moves least. The table is checked out
of sample: it predicts the three nearest other uniform widths (``checks``, with their errors; more than 10% is
said). Each measurement keeps its p10, p50 and p90; the reference's spread over the pass is the drift. The table is
cached in the run folder (``latency_table.json``) by backend, precision (an INT8 budget times each network's INT8
file, quantised as the export quantises: :func:`compressor.app.plan.int8_for_timing`), batch, size, threads and machine;
``student.latency_table: FILE`` reuses another run's (one from another machine or target is refused).

**The search** (a greedy solution of HALP's latency-importance knapsack, Shen et al., NeurIPS 2022, stepping as
NetAdapt does): from two grid steps above the reference, the group whose next step down loses the least importance
per millisecond saved steps down, down to the thinnest. A channel's importance is Torch-Pruning's group L2
magnitude (normalised to mean 1 within its group; ``student.importance: magnitude``), or the mean squared change
of the teacher's output that replacing it alone by its mean makes on training images (``sensitivity``,
:mod:`compressor.importance`: comparable across groups, which magnitude is not); a group keeps its channels of
highest importance, so the two differ in which channels and how many each group keeps. The sensitivity adds up
single channels to first order, which underrates cutting many of one group's at once; ``measured`` keeps the
sensitivity's channels but weighs each group's widths by the teacher's output loss measured with the group cut to
each of them, the rest whole (the per-layer sensitivity scan of Li et al., ICLR 2017, on the distillation's loss),
its curve made convex and shared out over the channels so that the same knapsack trades it. Coupled layers (residual adds,
U-Net skips) are one group, so they move together. The steps form a path ordered by predicted latency; the
chosen student is the least-pruned step whose whole network, built, exported and measured on the target, meets the
target (bisection along the path, starting where the table predicts it; the choice confirmed with a longer
measurement). Where a uniform width measured within the target keeps more importance than that step (an eighth, or
the widest width between the widest eighth within the target and the next, bisected in 64ths), the uniform
width is chosen instead (confirmed the same way): the search never returns widths a uniform student beats on both
counts. Where the widths chosen leave room under the target (the path never starts above two grid steps over the
reference; a uniform width sits where the runtime's time steps), they are widened into it: from them, the groups
whose next width gains the most importance per predicted millisecond step up while the table (scaled to their
measurement) says they fit, and the widest such step measured within the target is kept (the same bisection).
The importance is the teacher's: ``compress plan`` loads the recipe's checkpoint for it.

MACs and params budgets need no measurement: the same search (down to the budget, then back up while it holds)
runs on the convolutions' counted MACs (FlopCounterMode's
convention: a ConvTranspose by its input size) or parameters.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from ..complexity import count_params, profile_model
from ..errors import UserError
from ..exporters.formats.onnx import export_onnx
from ..exporters.profile import time_artifacts
from ..exporters.table import BACKENDS
from ..io import atomic_write_json
from ..models import input_channels, size_multiple
from ..recipe import BudgetSpec
from ..schemas import PlanJson, loads, read_json, read_text_bounded
from ..slim import PruneGroup, kept_at, make_student, probe, prunable_groups
from .plan import SCHEMA, ProfileMeasure, int8_for_timing, model_signature, plan_key, save_figure

log = logging.getLogger(__name__)

TABLE_SCHEMA = "compressor.latency_table/1"
GRID = 8  # a group's candidate widths: k / GRID of its channels
FINE = 8  # a uniform width between two eighths: in steps of 1 / (GRID * FINE)
CHECK_TOLERANCE = 0.10
MACHINE_KEYS = ("hostname", "cpu", "cores", "threads", "gpu", "driver", "onnxruntime_version", "tensorrt_version")
CHUNK = 16  # networks per timing process
REF_EVERY = 6  # the reference network is measured again after this many others
ROBUST = "p10"  # the statistic the table's ratios are taken on (the budget's own sets the reference's level)


@dataclass
class ConvLayer:
    """One convolution of the teacher as the search counts it: its shape, and the groups setting its channels."""

    name: str
    transposed: bool
    kernel: tuple[int, int]
    groups: int
    bias: bool
    hw: tuple[int, int]  # input
    out_hw: tuple[int, int]
    cin: int
    cout: int
    gin: Optional[str]  # the group setting its input channels (None: fixed)
    gout: Optional[str]

    def macs(self, cin: int, cout: int) -> int:
        per = cin // self.groups * cout * self.kernel[0] * self.kernel[1]
        hw = self.hw if self.transposed else self.out_hw  # FlopCounterMode: a ConvTranspose by its input size
        return per * hw[0] * hw[1]

    def params(self, cin: int, cout: int) -> int:
        return cin // self.groups * cout * self.kernel[0] * self.kernel[1] + (cout if self.bias else 0)


def conv_layers(teacher: nn.Module, groups: list[PruneGroup], x: torch.Tensor) -> list[ConvLayer]:
    """The teacher's 2-D convolutions as they run on ``x``, each with the groups setting its channels."""
    gin = {n: g.name for g in groups for n in g.ins}
    gout = {n: g.name for g in groups for n in g.outs}
    convs = {n: m for n, m in teacher.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))}
    seen: dict[str, tuple] = {}

    def record(name: str):
        def hook(mod, i, o) -> None:
            seen.setdefault(name, (tuple(i[0].shape[2:]), tuple(o.shape[2:])))

        return hook

    probe(teacher, x, [m.register_forward_hook(record(n)) for n, m in convs.items()])
    out = []
    for name, m in convs.items():
        if name not in seen:
            continue
        (h, w), (oh, ow) = seen[name]
        k = m.kernel_size
        out.append(
            ConvLayer(
                name=name,
                transposed=isinstance(m, nn.ConvTranspose2d),
                kernel=(int(k[0]), int(k[1])),
                groups=int(m.groups),
                bias=m.bias is not None,
                hw=(int(h), int(w)),
                out_hw=(int(oh), int(ow)),
                cin=int(m.in_channels),
                cout=int(m.out_channels),
                gin=gin.get(name),
                gout=gout.get(name),
            )
        )
    return out


def level(channels: int, k: int, round_to: Optional[int] = None) -> int:
    """The channels a group keeps at width ``k/GRID`` (:func:`kept_at`)."""
    return kept_at(channels, k / GRID, round_to)


def _net(config: dict[str, int]) -> tuple:
    """A configuration as a key: two widths that build the same network are one."""
    return tuple(sorted(config.items()))


def levels(channels: int, round_to: Optional[int] = None) -> list[int]:
    """The channel counts a group may keep: its :func:`level` at each ``k/GRID`` and all of its channels."""
    return sorted({level(channels, k, round_to) for k in range(1, GRID + 1)} | {channels})


# ---------------------------------------------------------------------------------------------- the predictor


class Predictor:
    """The convolutions' MACs or parameters for a per-group configuration (``{group: channels}``; a group not named
    keeps all of its)."""

    def __init__(self, layers: list[ConvLayer], kind: str):
        self.layers, self.kind = layers, kind

    def __call__(self, config: dict[str, int]) -> float:
        total = 0
        for layer in self.layers:
            cin, cout = config.get(layer.gin, layer.cin), config.get(layer.gout, layer.cout)
            total += layer.macs(cin, cout) if self.kind == "macs" else layer.params(cin, cout)
        return float(total)


# ---------------------------------------------------------------------------------------------- the table


class TableMeasure:
    """Builds, exports and times whole per-layer students on the budget's backend (one process per chunk of files).
    ``build`` makes the student of a configuration (``{group: channels}``); ``channels``: the input's."""

    def __init__(
        self,
        budget: BudgetSpec,
        size: int,
        workdir: Path,
        build: Optional[Callable[[dict], nn.Module]] = None,
        channels: int = 3,
        warmup: int = 3,
    ):
        if budget.host:
            raise UserError(
                "student.budget.host: the per-layer search times on this machine only for now; leave host out"
            )
        if budget.backend in BACKENDS and BACKENDS[budget.backend].artifact not in ("onnx", "openvino"):
            raise UserError(
                f"student.budget.backend: the per-layer search times ONNX files; {budget.backend} runs another kind "
                f"(choose ort-cpu, openvino or another ONNX Runtime backend)"
            )
        self.profile = ProfileMeasure(budget, size, workdir)  # checks the backend; its fingerprint names the machine
        self.budget, self.size, self.workdir = budget, size, workdir
        self.build, self.warmup = build, warmup
        self.example = torch.zeros(budget.batch, channels, size, size)

    def fingerprint(self) -> dict:
        return self.profile.fingerprint()

    def _time(self, items: list[dict], warmup: int, iters: int) -> list[dict]:
        b = self.budget
        rows: list[dict] = []
        for i in range(0, len(items), CHUNK):
            rows += time_artifacts(
                b.backend,
                items[i : i + CHUNK],
                precision=b.precision,
                batch=b.batch,
                warmup=warmup,
                iters=iters,
                threads=b.threads,
                device=self.profile.device(),
            )
        for item, row in zip(items, rows):
            if row.get("status") != "ok":
                raise UserError(
                    f"student.budget.backend: timing {item['what']} on {b.backend} failed: {row.get('reason')}"
                )
        return [{s: r["latency_ms"][s] for s in ("p10", "p50", "p90")} for r in rows]

    def networks(self, configs: list[tuple[str, dict]], iters: int) -> list[dict]:
        """Build, export and time the per-layer students ``configs`` names (``(what, {group: channels})``)."""
        items, made = [], []
        for k, (what, config) in enumerate(configs):
            path = self.workdir / f"net{k}.onnx"
            export_for_timing(self.build(config), path, self.example)
            files = [path]
            if self.budget.precision == "int8":  # the file the target runs: quantised as the export quantises
                _, path = int8_for_timing(self.budget.backend, path, *self.example.shape[:2], self.size)
                files += [path, path.with_suffix(".bin")]
            items.append({"artifact": path, "size": self.size, "input_nc": self.example.shape[1], "what": what})
            made += files
        try:
            return self._time(items, self.warmup, iters)
        finally:
            for f in made:
                f.unlink(missing_ok=True)


def export_for_timing(model: nn.Module, path: Path, x: torch.Tensor) -> None:
    """An ONNX file to time (TorchScript export: a few times faster than the checked export, and latency does not
    depend on the metadata or parity checks the real export adds)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model.eval(), (x,), str(path), dynamo=False, input_names=["input"], output_names=["output"]
            )
            return
        except Exception:  # noqa: BLE001 - a model TorchScript cannot trace goes through the checked export
            pass
    export_onnx(model, path, x, dynamic=())


def check_table_machine(doc: dict, fingerprint: dict, source: str) -> None:
    """One line when a latency table was measured elsewhere or for another target."""
    fp = doc.get("fingerprint") or {}
    for key in ("backend", "precision", "batch", "size", "threads", *MACHINE_KEYS):
        if fp.get(key) != fingerprint.get(key):
            where = "on another machine" if key in MACHINE_KEYS else "for another target"
            raise UserError(
                f"student.latency_table: {source} was measured {where} ({key} {fp.get(key)!r}, here "
                f"{fingerprint.get(key)!r}); leave student.latency_table out to measure here"
            )


def _timings_ok(node) -> bool:
    """Every leaf of a table's network record is a ``{"p50": ms, "p90": ms}`` or a number, a string, a null."""
    if isinstance(node, dict):
        if "p50" in node:
            return all(isinstance(node.get(s), (int, float)) and node[s] > 0 for s in ("p50", "p90"))
        return all(_timings_ok(v) for v in node.values())
    if isinstance(node, list):
        return all(_timings_ok(v) for v in node)
    return node is None or isinstance(node, (int, float, str))


def load_table(path: Path, fingerprint: dict) -> dict:
    try:
        doc = loads(read_text_bounded(path), str(path))
    except FileNotFoundError:
        raise UserError(f"student.latency_table: {path}: file not found") from None
    if not isinstance(doc, dict) or doc.get("schema") != TABLE_SCHEMA or not isinstance(doc.get("networks"), dict):
        raise UserError(f"student.latency_table: {path} is not a latency table ({TABLE_SCHEMA})")
    for key, net in doc["networks"].items():
        if not isinstance(net, dict) or not _timings_ok(net):
            raise UserError(f"student.latency_table: {path}: network {str(key)[:40]!r} holds a value that is no time")
    check_table_machine(doc, fingerprint, str(path))
    return doc


# ---------------------------------------------------------------------------------------------- the search


@dataclass
class Step:
    config: dict[str, int]
    predicted: float
    retained: float


class Search:
    """Greedy steps over the groups' levels (see the module docstring)."""

    def __init__(self, groups: list[PruneGroup], predict: Callable[[dict], float], round_to: Optional[int]):
        self.groups = groups
        self.predict = predict
        self.round_to = round_to
        self.levels = {g.name: levels(g.channels, round_to) for g in groups}
        total = sum(sum(g.importance) or g.channels for g in groups)
        self.prefix = {}
        for g in groups:  # a pruned student keeps each group's channels of highest importance
            imp = sorted(g.importance or [1.0] * g.channels, reverse=True)
            self.prefix[g.name] = np.concatenate([[0.0], np.cumsum(imp)]) / total

    def retained(self, config: dict[str, int]) -> float:
        return float(sum(self.prefix[g.name][config.get(g.name, g.channels)] for g in self.groups))

    def uniform(self, k: int) -> dict[str, int]:
        """Every group as a uniform student at width ``(k + 1) / GRID`` keeps it (``k`` 0: the thinnest)."""
        return self.uniform_at((k + 1) / GRID)

    def uniform_at(self, width: float) -> dict[str, int]:
        """Every group as a uniform student at ``width`` keeps it (a width between the eighths too)."""
        return {g.name: kept_at(g.channels, width, self.round_to) for g in self.groups}

    def _step(self, config: dict, name: str, d: int) -> Optional[dict]:
        """The group's next level up (``d`` +1) or down (-1) from its count, which may lie between levels."""
        lv, c = self.levels[name], config[name]
        nxt = [v for v in lv if v > c][:1] if d > 0 else [v for v in lv if v < c][-1:]
        return {**config, name: nxt[0]} if nxt else None

    def run(self, target: float, start: Optional[dict[str, int]] = None) -> tuple[dict[str, int], list[Step]]:
        """Step down from ``start`` (default: every group at full width) until the prediction meets ``target``,
        then back up while it still does; returns the configuration and every step (with ``target`` -inf: the
        whole path down to the thinnest)."""
        config = dict(start) if start else {g.name: g.channels for g in self.groups}
        cur = self.predict(config)
        path = [Step(dict(config), cur, self.retained(config))]
        while cur > target:
            best = None
            for g in self.groups:
                nxt = self._step(config, g.name, -1)
                if nxt is None:
                    continue
                p = self.predict(nxt)
                saved = max(cur - p, 1e-9)  # a step the table says saves nothing comes last, never never
                cost = (self.retained(config) - self.retained(nxt)) / saved
                if best is None or cost < best[0]:
                    best = (cost, nxt, p)
            if best is None:
                break
            _, config, cur = best
            path.append(Step(dict(config), cur, self.retained(config)))
        if cur > target:
            return config, path
        while True:  # step back up where the prediction leaves room
            best = None
            for g in self.groups:
                nxt = self._step(config, g.name, +1)
                if nxt is None:
                    continue
                p = self.predict(nxt)
                if p > target:
                    continue
                gain = (self.retained(nxt) - self.retained(config)) / max(p - cur, 1e-9)
                if best is None or gain > best[0]:
                    best = (gain, nxt, p)
            if best is None:
                break
            _, config, cur = best
            path.append(Step(dict(config), cur, self.retained(config)))
        return config, path


# ---------------------------------------------------------------------------------------------- entry point


def plan_per_layer(
    teacher: nn.Module,
    budget: BudgetSpec,
    *,
    size: int,
    margin: float = 0.05,
    keep: Optional[list[str]] = None,
    round_to: Optional[int] = None,
    run_dir: Optional[Path] = None,
    table_path: Optional[Path] = None,
    warmup: int = 3,
    iters: int = 10,
    confirm_iters: int = 30,
    plot: bool = True,
    measure: Optional[Callable[[list[tuple[str, dict]], int], list[dict]]] = None,
    fingerprint: Optional[dict] = None,
    images: Optional[torch.Tensor] = None,
    measured: bool = False,
) -> dict:
    """Per-group widths within ``budget``; returns the plan document's ``per_layer`` section (``widths``: channels
    kept per group, by root layer) and writes ``latency_table.json`` (and ``plan_layers.png``) into ``run_dir``.
    ``measure`` replaces the timing on the target (it takes ``[(what, config)]`` and an iteration count, and returns
    ``{"p50", "p90"}`` per configuration); ``fingerprint`` names the machine when the caller has it already;
    ``images`` (training inputs) rank the channels by the teacher's output sensitivity instead of their magnitude;
    ``measured`` (with them) weighs each group's widths by the output loss measured at each (``importance:
    measured``)."""
    t0 = time.perf_counter()
    size = budget.size or size
    x = torch.zeros(1, input_channels(teacher), size, size)
    counts = (lambda n: levels(n, round_to)) if measured and images is not None else None
    groups = prunable_groups(teacher, x, keep, images=images, counts=counts)
    if not groups:
        raise UserError("student.search: per-layer found no channel group to set in the teacher")
    count = "macs" if budget.macs is not None else "params" if budget.params is not None else None
    if count:
        doc = _search_counts(teacher, budget, count, groups, x, keep, round_to, t0)
        return _write(doc, run_dir, plot)
    workdir = Path(tempfile.mkdtemp(prefix="compressor-layers-"))
    try:
        small = torch.zeros(1, x.shape[1], *_build_size(teacher, size))
        build = lambda c: make_student(teacher, 1.0, "prune", "scratch", small, keep=keep, widths=c)[0]  # noqa: E731
        meas = TableMeasure(budget, size, workdir, build, x.shape[1], warmup)
        if measure is not None:  # tests: a stand-in for the target, given the configurations themselves
            meas.networks = measure  # type: ignore[method-assign]
        search = Search(groups, lambda c: 0.0, round_to)
        table = _Table(
            teacher,
            search,
            meas,
            fingerprint or meas.fingerprint(),
            round_to,
            run_dir,
            table_path,
            budget.stat,
            conv_layers(teacher, groups, x),
        )
        doc = _search_latency(table, search, budget, margin, iters, confirm_iters, t0)
        student = meas.build(doc["widths"])
        doc["chosen"].update(macs=_count(student, x, "macs"), params=count_params(student))
        return _write(doc, run_dir, plot)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _search_counts(teacher, budget: BudgetSpec, count: str, groups, x, keep, round_to, t0: float) -> dict:
    """A MACs or params budget: the search on the convolutions' counts (no measurement)."""
    pred = Predictor(conv_layers(teacher, groups, x), count)
    search = Search(groups, pred, round_to)
    limit = float(budget.macs if count == "macs" else budget.params)
    full = {g.name: g.channels for g in groups}
    scale = _count(teacher, x, count) / max(pred(full), 1)  # what the convolutions leave out, as a factor
    config, path = search.run(limit / scale)
    if pred(config) * scale > limit:
        raise UserError(
            f"student.budget: even the thinnest per-layer student has about {pred(config) * scale:.4g} {count}; "
            f"the budget is {limit:.4g}"
        )
    student, _ = make_student(teacher, 1.0, "prune", "scratch", x, keep=keep, widths=config)
    doc = _doc(search, config, path, pred, t0, groups)
    doc["chosen"].update(macs=_count(student, x, "macs"), params=count_params(student))
    doc["stat"] = count
    return doc


def _search_latency(
    table: "_Table", search: Search, budget: BudgetSpec, margin: float, iters: int, confirm_iters: int, t0: float
) -> dict:
    """A latency or speedup budget: the table, the greedy path, the bisection on measurements along it."""
    stat = budget.stat
    uniform = table.uniform(iters)
    if budget.speedup is not None:
        teacher_ms = uniform[GRID - 1][stat]
        target = teacher_ms / budget.speedup * (1 - margin)
    else:
        teacher_ms = None
        target = budget.latency_ms * (1 - margin)
    ref = min(range(GRID), key=lambda k: abs(math.log(uniform[k][stat] / target)))
    pred = table.predictor(ref, iters)
    search.predict = pred
    table.save()  # measured once, kept whatever the search finds
    checks = table.check(ref, pred)
    path = search.run(-math.inf, search.uniform(min(ref + 2, GRID - 1)))[1]
    measure = table.meas.networks
    choice, probes = _bisect_path(
        path, target, stat, lambda st, n: measure([("a per-layer student", st.config)], n)[0], iters, confirm_iters
    )
    if choice is None:
        raise UserError(
            f"student.budget: even the thinnest per-layer student runs in {probes[-1]['measured'][stat]:.3g} ms; "
            f"the budget is {target / (1 - margin):.3g} ms (with the margin {target:.3g})"
        )
    config = path[choice].config
    measured = next(p["measured"] for p in reversed(probes) if p["step"] == choice)
    wider, fine = _uniform_keeps_more(
        search,
        uniform,
        target,
        stat,
        config,
        lambda c, n: measure([("a uniform student", c)], n)[0],
        iters,
        confirm_iters,
    )
    if wider is not None:
        config, measured = wider[1], wider[2]
    grown, more = _grow(search, config, measured, target, stat, measure, iters, confirm_iters)
    probes += more
    if grown is not None:
        config, measured = grown
    doc = _doc(search, config, path, pred, t0, groups=search.groups)
    doc.update(
        target=target,
        teacher_ms=teacher_ms,
        probes=probes,
        stat=stat,
        fingerprint=table.doc["fingerprint"],
        table={
            "reference": {"level": ref + 1, "width": (ref + 1) / GRID},
            "kappa_ms_per_gmac": pred.kappa * 1e9,
            "measurements": table.measured,
            "checks": checks,
            "worst_error": max(abs(c["error"]) for c in checks) if checks else None,
            "noise": table.noise(ref),
            "seconds": round(table.seconds, 1),
        },
        uniform_measured=sorted(
            [
                {"level": k + 1, "width": (k + 1) / GRID, "retained": search.retained(search.uniform(k)), **uniform[k]}
                for k in range(GRID)
            ]
            + fine,
            key=lambda u: u["width"],
        ),
    )
    doc["chosen"].update(step=None if wider else choice, measured=measured, grown=grown is not None)
    if wider is not None:
        doc["chosen"]["grown_from" if grown else "uniform"] = wider[0]
    table.save()
    return doc


def plan_layers(
    teacher: nn.Module,
    budget: BudgetSpec,
    *,
    size: int,
    margin: float = 0.05,
    keep: Optional[list[str]] = None,
    round_to: Optional[int] = None,
    run_dir: Optional[Path] = None,
    table_path: Optional[Path] = None,
    force: bool = False,
    measure: Optional[Callable[[list[tuple[str, dict]], int], list[dict]]] = None,
    fingerprint: Optional[dict] = None,
    images: Optional[torch.Tensor] = None,
    measured: bool = False,
) -> dict:
    """``compress plan`` with ``student.search: per-layer``: the plan document (``plan.json`` in ``run_dir``, reused
    when the teacher, budget and machine are the same): ``widths`` (channels kept per group), ``width`` (the
    fraction of the groups' channels kept), ``per_layer`` (the search, its table and measurements)."""
    size = budget.size or size
    fingerprint = fingerprint or _fingerprint(budget, size)
    extra = {"search": "per-layer", "grid": GRID, "round_to": round_to, "keep": list(keep or [])}
    extra["rules"] = ["uniform widths in 64ths", "widened into the room left"]  # a plan chosen before is re-run
    extra["weights"] = weights_digest(teacher)  # the importance ranks these weights (and these images)
    if images is not None:
        digest = hashlib.sha256(images.detach().float().numpy().tobytes()).hexdigest()
        extra["importance"] = {"sensitivity": digest, "channels": "sensitivity"}  # kept by it too
        if measured:
            extra["importance"]["groups"] = "measured"  # each group's widths by the loss measured at them
    key = plan_key(teacher, budget, margin, "per-layer", size, [], {**fingerprint, **extra})
    out = Path(run_dir) / "plan.json" if run_dir else None
    if out is not None and out.is_file() and not out.is_symlink() and not force:
        try:
            prev = read_json(out, PlanJson)
        except UserError as exc:
            log.warning("%s; measuring again", exc)
            prev = None
        if prev is not None and prev.get("key") == key:
            log.info("plan: up to date (same teacher, budget and machine), per-layer widths")
            return {**prev, "cached": True}
    doc = plan_per_layer(
        teacher,
        budget,
        size=size,
        margin=margin,
        keep=keep,
        round_to=round_to,
        run_dir=run_dir,
        table_path=table_path,
        measure=measure,
        fingerprint=fingerprint,
        images=images,
        measured=measured,
    )
    groups = doc["groups"]
    width = sum(g["kept"] for g in groups) / sum(g["channels"] for g in groups)
    plan = {
        "schema": SCHEMA,
        "key": key,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "search": "per-layer",
        "budget": budget.model_dump(mode="json", exclude_none=True),
        "margin": margin,
        "size": size,
        "method": "prune",
        "stat": doc.get("stat", budget.stat),
        "target": doc.get("target"),
        "width": round(width, 6),
        "widths": doc["widths"],
        "per_layer": doc,
        "fingerprint": fingerprint,
        "cached": False,
    }
    if doc.get("plot"):
        plan["plot"] = doc["plot"]
    if out is not None:
        atomic_write_json(out, plan)
    return plan


def _fingerprint(budget: BudgetSpec, size: int) -> dict:
    """The machine and target a latency budget is measured on (a count budget needs neither)."""
    if budget.macs is not None or budget.params is not None:
        return {"counts": "no measurement"}
    workdir = Path(tempfile.mkdtemp(prefix="compressor-layers-"))
    try:
        return TableMeasure(budget, size, workdir).fingerprint()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def weights_digest(model: nn.Module) -> str:
    """The model's weights (every tensor of its state dict), hashed: per-layer widths depend on them."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _build_size(teacher: nn.Module, size: int) -> tuple[int, int]:
    """The image side a student is pruned at (channel pruning does not depend on it): small, as the teacher allows."""
    m = size_multiple(teacher)
    side = min(size, max(64, m))
    return side, side


class MarginalPredictor:
    """Latency of a configuration from the group table around a reference: the reference network's time plus, for
    every group away from its reference width, what that group alone changes (measured with the others at the
    reference), plus the cross term one-at-a-time measurements cannot see: a convolution between two groups that
    both move costs ``kappa * (its MACs per channel pair) * d_in * d_out`` more (``kappa``: time per MAC in the
    network, fitted on uniform widths the check does not use)."""

    def __init__(
        self, base: float, marginal: dict[str, dict[int, float]], ref: dict[str, int], layers: list[ConvLayer]
    ):
        self.base, self.marginal, self.ref = base, marginal, ref
        self.pairs = [(la.gin, la.gout, la.macs(1, 1)) for la in layers if la.gin and la.gout and la.groups == 1]
        self.kappa = 0.0

    def split(self, config: dict[str, int]) -> tuple[float, float]:
        """(the one-at-a-time prediction, the cross term per unit ``kappa``)."""
        t = self.base
        for g, by_count in self.marginal.items():
            c = config.get(g, self.ref[g])
            if c != self.ref[g]:
                t += _between(by_count, c, self.ref[g], self.base) - self.base
        cross = 0.0
        for gin, gout, per in self.pairs:
            cross += (
                per
                * (config.get(gin, self.ref[gin]) - self.ref[gin])
                * (config.get(gout, self.ref[gout]) - self.ref[gout])
            )
        return t, cross

    def __call__(self, config: dict[str, int]) -> float:
        t, cross = self.split(config)
        return t + self.kappa * cross

    def fit_kappa(self, points: list[tuple[dict[str, int], float]]) -> None:
        """``kappa`` by least squares on whole networks measured outside the table (never below 0)."""
        ab = [(self.split(c), t) for c, t in points]
        den = sum(b * b for (_, b), _ in ab)
        self.kappa = max(0.0, sum((t - a) * b for (a, b), t in ab) / den) if den > 0 else 0.0


def _between(by_count: dict[int, float], c: int, ref: int, base: float) -> float:
    """A group's time at ``c`` channels from the table's measured counts (and the reference's), linear between the
    two around it where ``c`` was not measured (a uniform width between the eighths), the nearest beyond them."""
    if c in by_count:
        return by_count[c]
    known = sorted({**by_count, ref: base}.items())
    lo = [kv for kv in known if kv[0] < c][-1:]
    hi = [kv for kv in known if kv[0] > c][:1]
    if not lo or not hi:
        return (lo or hi)[0][1]
    (c0, t0), (c1, t1) = lo[0], hi[0]
    return t0 + (t1 - t0) * (c - c0) / (c1 - c0)


class _Table:
    """The run's latency table (``latency_table.json``): uniform widths and, around a reference width, each group
    at each of its widths; measured where missing, reused where the machine and target are the same."""

    def __init__(self, teacher, search: Search, meas: TableMeasure, fp, round_to, run_dir, table_path, stat, layers):
        self.search, self.meas, self.stat, self.layers = search, meas, stat, layers
        self.own = Path(run_dir) / "latency_table.json" if run_dir else None
        self.doc = None
        if table_path is not None:
            self.doc = load_table(Path(table_path), fp)
        elif self.own is not None and self.own.is_file() and not self.own.is_symlink():
            try:
                self.doc = load_table(self.own, fp)
            except UserError as exc:
                log.info("plan: %s; measuring a new table", exc)
        if self.doc is None:
            self.doc = {"schema": TABLE_SCHEMA, "fingerprint": fp, "networks": {}}
        key = f"{model_signature(teacher)} round {round_to or 1} grid {GRID} uniform-as-built"
        self.net = self.doc["networks"].setdefault(key, {"uniform": {}, "references": {}})
        self.measured = 0
        self.seconds = 0.0

    def _measure(self, configs: list[tuple[str, dict]], iters: int) -> list[dict]:
        t0 = time.perf_counter()
        out = self.meas.networks(configs, iters) if configs else []
        self.measured += len(configs)
        self.seconds += time.perf_counter() - t0
        return out

    def uniform(self, iters: int) -> list[dict]:
        u = self.net["uniform"]
        same: dict[tuple, list[int]] = {}  # widths a rounding makes one network are measured once
        for k in range(GRID):
            same.setdefault(_net(self.search.uniform(k)), []).append(k)
        todo = [ks for ks in same.values() if not any(str(k + 1) in u for k in ks)]
        if todo:
            log.info("plan: latency table: the whole network at %d uniform widths", len(todo))
        got = self._measure([(f"width {ks[0] + 1}/{GRID}", self.search.uniform(ks[0])) for ks in todo], iters)
        for ks, m in zip(todo, got):
            u[str(ks[0] + 1)] = m
        for ks in same.values():
            m = next(u[str(k + 1)] for k in ks if str(k + 1) in u)
            for k in ks:
                u.setdefault(str(k + 1), m)
        return [u[str(k + 1)] for k in range(GRID)]

    def predictor(self, ref: int, iters: int) -> MarginalPredictor:
        """Measure what is missing around reference level ``ref`` (every group at each of its widths, and the three
        nearest other uniform widths for the check), in one pass with the reference itself measured every
        :data:`REF_EVERY` networks: each network is compared with the reference measured beside it, so the
        machine's drift during the pass (tens of percent on a shared VM) does not enter the table."""
        r = self.net["references"].setdefault(str(ref + 1), {"groups": {}, "checks": {}, "reference": []})
        base_cfg = self.search.uniform(ref)
        todo: list[tuple[str, str, dict]] = []
        for g in self.search.groups:
            have = r["groups"].setdefault(g.name, {})
            todo += [
                ("g", g.name + "@" + str(c), {**base_cfg, g.name: c})
                for c in self.search.levels[g.name]
                if c != base_cfg[g.name] and str(c) not in have
            ]
        todo += [("u", str(k + 1), self.search.uniform(k)) for k in self._near(ref) if str(k + 1) not in r["checks"]]
        if todo:
            log.info("plan: latency table: %d networks around width %d/%d", len(todo), ref + 1, GRID)
            seq: list[tuple[str, str, dict]] = []
            for i, item in enumerate(todo):
                if i % REF_EVERY == 0:
                    seq.append(("r", "", base_cfg))
                seq.append(item)
            seq.append(("r", "", base_cfg))
            got = self._measure([(f"{k} {n}", c) for k, n, c in seq], iters)
            refs = [(i, m) for i, ((k, _, _), m) in enumerate(zip(seq, got)) if k == "r"]
            for i, ((kind, name, _), m) in enumerate(zip(seq, got)):
                if kind == "r":
                    continue
                near = _interpolate(refs, i)
                row = {**m, **{f"ref_{k}": v for k, v in near.items()}}
                if kind == "g":
                    g, c = name.rsplit("@", 1)
                    r["groups"][g][c] = row
                else:
                    r["checks"][name] = row
            r["reference"] += [m for _, m in refs]
        base = float(np.median([m[self.stat] for m in r["reference"]]))
        marginal = {
            g.name: {int(c): base * self._ratio(v) for c, v in r["groups"][g.name].items()} for g in self.search.groups
        }
        pred = MarginalPredictor(base, marginal, base_cfg, self.layers)
        u = self.net["uniform"]
        robust = ROBUST if all(ROBUST in v for v in u.values()) else self.stat
        scale = base / u[str(ref + 1)][robust]  # the uniform pass on the table's reference time
        held = {_net(self.search.uniform(k)) for k in [ref, *self._near(ref)]}
        fit = [k for k in range(GRID) if _net(self.search.uniform(k)) not in held]
        pred.fit_kappa([(self.search.uniform(k), u[str(k + 1)][robust] * scale) for k in fit])
        return pred

    def _near(self, ref: int) -> list[int]:
        """The three uniform widths nearest ``ref`` that are other networks than it and than each other."""
        seen, out = {_net(self.search.uniform(ref))}, []
        for k in sorted((k for k in range(GRID) if k != ref), key=lambda k: (abs(k - ref), k)):
            cfg = _net(self.search.uniform(k))
            if cfg not in seen:
                seen.add(cfg)
                out.append(k)
        return sorted(out[:3])

    def _ratio(self, v: dict) -> float:
        """A network's time over the reference's measured beside it, on the robust statistic where both have it
        (the 10th percentile: what interference on a shared machine moves least), else on the budget's."""
        k = ROBUST if ROBUST in v and f"ref_{ROBUST}" in v else self.stat
        return v[k] / v[f"ref_{k}"]

    def check(self, ref: int, pred: MarginalPredictor) -> list[dict]:
        """The table's prediction of the whole network at the three nearest other uniform widths (measured beside
        the table, not into it)."""
        r = self.net["references"][str(ref + 1)]
        rows = []
        for k in self._near(ref):
            m = r["checks"][str(k + 1)]
            measured = pred.base * self._ratio(m)  # on the table's reference time
            p = pred(self.search.uniform(k))
            rows.append(
                {"width": (k + 1) / GRID, "predicted": p, "measured": measured, "raw": m, "error": p / measured - 1}
            )
        worst = max((abs(r["error"]) for r in rows), default=0.0)
        if worst > CHECK_TOLERANCE:
            log.warning(
                "plan: the latency table predicts the whole network within %.0f%% only (more than %.0f%%); the "
                "chosen student is measured anyway",
                worst * 100,
                CHECK_TOLERANCE * 100,
            )
        return rows

    def noise(self, ref: int) -> dict:
        r = self.net["references"][str(ref + 1)]
        ms = [v for g in r["groups"].values() for v in g.values()] + list(self.net["uniform"].values())
        spread = [(v["p90"] - v["p50"]) / v["p50"] for v in ms if v["p50"] > 0]
        refs = [m[self.stat] for m in r["reference"]]
        return {
            "median_p90_over_p50": float(np.median(spread)) if spread else None,
            "reference_drift": (max(refs) - min(refs)) / float(np.median(refs)) if refs else None,
            "reference_measurements": len(refs),
        }

    def save(self) -> None:
        if self.own is not None:
            atomic_write_json(self.own, self.doc)


def _interpolate(refs: list[tuple[int, dict]], i: int) -> dict:
    """The reference's time at position ``i`` of a pass, between the reference measurements around it."""
    before = [(j, m) for j, m in refs if j < i][-1]
    after = next(((j, m) for j, m in refs if j > i), before)
    if after[0] == before[0]:
        return dict(before[1])
    f = (i - before[0]) / (after[0] - before[0])
    return {s: before[1][s] + f * (after[1][s] - before[1][s]) for s in before[1] if s in after[1]}


def _uniform_keeps_more(
    search: Search,
    uniform: list[dict],
    target: float,
    stat: str,
    config: dict,
    measure,
    iters: int,
    confirm_iters: int,
) -> tuple[Optional[tuple[float, dict, dict]], list[dict]]:
    """A uniform width within the target that keeps more importance than the per-layer ``config``, confirmed again
    (``(its width, its widths per group, its measurement)``), or None: the plan never returns per-layer widths a
    uniform width beats on both counts. The widest eighth that met the target in the table's pass, or a width
    between it and the next eighth (in 64ths, bisected on measurements) where that one keeps more than ``config``
    could. Returns it with the widths between the eighths measured (as the uniform rows list them)."""
    fits = [k for k in range(GRID) if uniform[k][stat] <= target]
    if not fits:
        return None, []
    k = max(fits, key=lambda i: search.retained(search.uniform(i)))
    best, tried = ((k + 1) / GRID, search.uniform(k)), []
    if k + 1 < GRID and search.retained(search.uniform(k + 1)) > search.retained(config):
        finer, tried = _finer_uniform(search, k, target, stat, lambda c: measure(c, iters))
        best = finer or best
    width, widths = best
    if search.retained(widths) <= search.retained(config):
        return None, tried
    m = measure(widths, confirm_iters)
    log.info(
        "plan: uniform width %g keeps more of the teacher within the target: measured %s %.3g ms", width, stat, m[stat]
    )
    return ((width, widths, m) if m[stat] <= target else None), tried


def _finer_uniform(
    search: Search, k: int, target: float, stat: str, measure
) -> tuple[Optional[tuple[float, dict]], list[dict]]:
    """The widest uniform width between eighth ``k`` (within the target) and the next (over it), in 64ths of the
    channels, measured within the target: ``(width, widths)``, or None where none between them is; with the
    widths measured (uniform rows)."""
    ends = (search.uniform(k), search.uniform(k + 1))
    cands: list[tuple[float, dict]] = []
    for j in range(1, FINE):
        w = (k + 1) / GRID + j / (GRID * FINE)
        c = search.uniform_at(w)
        if c not in ends and all(c != have for _, have in cands):
            cands.append((w, c))
    tried: list[dict] = []
    lo, hi = -1, len(cands)  # the largest index known within, the smallest known over
    while hi - lo > 1:
        mid = (lo + hi) // 2
        m = measure(cands[mid][1])
        tried.append({"level": None, "width": cands[mid][0], "retained": search.retained(cands[mid][1]), **m})
        lo, hi = (mid, hi) if m[stat] <= target else (lo, mid)
    return (cands[lo] if lo >= 0 else None), tried


def _grow(
    search: Search, start: dict, start_ms: dict, target: float, stat: str, measure, iters: int, confirm_iters: int
) -> tuple[Optional[tuple[dict, dict]], list[dict]]:
    """From the widths chosen (measured within the target), steps back up into the room they leave: the groups
    whose next width gains the most importance per predicted millisecond, while the table (scaled to the start's
    measurement) says they fit; the widest step measured within the target is kept (bisection, confirmed). Returns
    ((its widths, its measurement) or None where no step up meets the target, the probes)."""
    p0 = search.predict(start)
    if not (p0 > 0 and start_ms[stat] > 0):
        return None, []
    up = search.run(target * p0 / start_ms[stat], start=start)[1][1:]  # not stepped down: it measured within
    if not up:
        return None, []
    down = list(reversed(up))
    i, probes = _bisect_path(
        down,
        target,
        stat,
        lambda st, n: measure([("a widened student", st.config)], n)[0],
        iters,
        confirm_iters,
        what="step up into the room left",
    )
    for p in probes:
        p["step"], p["grown"] = None, True
    if i is None:
        return None, probes
    return (down[i].config, probes[-1]["measured"]), probes


def _bisect_path(
    path: list[Step],
    target: float,
    stat: str,
    measure: Callable[[Step, int], dict],
    iters: int,
    confirm_iters: int,
    what: str = "per-layer step",
) -> tuple[Optional[int], list[dict]]:
    """The least-pruned step of the greedy ``path`` whose measured latency meets ``target`` (bisection on real
    measurements, starting where the table predicts the target; the choice is confirmed with ``confirm_iters``).
    Returns (its index or None when even the last step misses, the probes)."""
    probes: list[dict] = []

    def meets(i: int, n: int) -> bool:
        m = measure(path[i], n)
        probes.append(
            {"step": i, "predicted": path[i].predicted, "retained": path[i].retained, "measured": m, "iters": n}
        )
        log.info("plan: %s %d: predicted %.3g ms, measured %s %.3g ms", what, i, path[i].predicted, stat, m[stat])
        return m[stat] <= target

    bad, good = -1, None  # the largest index known to miss, the smallest known to meet
    i = next((k for k, s in enumerate(path) if s.predicted <= target), len(path) - 1)
    while True:
        if meets(i, iters):
            good = i
        else:
            bad = i
        hi = len(path) if good is None else good
        while hi - bad <= 1:  # bracketed: confirm the choice, or look further down the path if it misses
            if good is None:
                return None, probes
            if meets(good, confirm_iters):
                return good, probes
            bad, good, hi = good, None, len(path)
        i = (bad + hi) // 2


def _count(model: nn.Module, x: torch.Tensor, kind: str) -> int:
    return int(profile_model(model, tuple(x.shape))["macs"]) if kind == "macs" else count_params(model)


def _doc(search: Search, config: dict, path: list[Step], pred: Callable[[dict], float], t0: float, groups) -> dict:
    return {
        "algorithm": "greedy latency-importance knapsack over Torch-Pruning groups (NetAdapt steps, HALP objective)",
        "importance": groups[0].kind if groups else "magnitude",
        "grid": GRID,
        "groups": [
            {"name": g.name, "channels": g.channels, "kept": config[g.name], "layers": len(g.outs)} for g in groups
        ],
        "widths": dict(config),
        "chosen": {"predicted": pred(config), "retained": search.retained(config)},
        "tried": [{"predicted": s.predicted, "retained": s.retained} for s in path],
        "uniform_curve": [
            {
                "level": k + 1,
                "width": (k + 1) / GRID,
                "predicted": pred(search.uniform(k)),
                "retained": search.retained(search.uniform(k)),
            }
            for k in range(GRID)
        ],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _write(doc: dict, run_dir: Optional[Path], plot: bool) -> dict:
    if run_dir is not None and plot:
        try:
            doc["plot"] = plot_layers(doc, Path(run_dir) / "plan_layers.png").name
        except ImportError:
            log.warning("plan: matplotlib is not installed; no plan_layers.png")
    return doc


def plot_layers(doc: dict, path: Path) -> Path:
    """Predicted cost against retained importance: the search's steps, the uniform widths, the choice."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    t = doc["tried"]
    ax.plot(
        [s["predicted"] for s in t], [s["retained"] for s in t], ".-", color="#1f77b4", lw=1, label="per-layer steps"
    )
    u = doc["uniform_curve"]
    ax.plot([s["predicted"] for s in u], [s["retained"] for s in u], "s--", color="#7f7f7f", label="uniform widths")
    stat = doc.get("stat")
    um = doc.get("uniform_measured") or []
    if um:
        ax.plot([u[stat] for u in um], [u["retained"] for u in um], "s", color="#ff7f0e", label="uniform, measured")
    pr = doc.get("probes") or []
    if pr:
        ax.plot(
            [p["measured"][stat] for p in pr],
            [p["retained"] for p in pr],
            "x",
            color="#9467bd",
            label="steps, measured",
        )
    ch = doc["chosen"]
    x = ch["measured"][stat] if isinstance(ch.get("measured"), dict) else ch["predicted"]
    ax.plot([x], [ch["retained"]], "*", ms=14, color="#2ca02c", label="chosen")
    unit = "ms" if doc.get("stat") in ("p50", "p90") else doc.get("stat", "")
    if doc.get("target") is not None:
        ax.axvline(doc["target"], color="#d62728", lw=1.2, label=f"target {doc['target']:.3g} {unit}")
    ax.set_xlabel(f"{doc.get('stat', 'latency')} ({unit}): predicted (lines), measured (marks)")
    ax.set_xscale("log")
    ax.set_ylabel(f"retained importance ({doc.get('importance', 'magnitude')}, fraction)")
    ax.set_title("per-layer search: cost against retained importance")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)
