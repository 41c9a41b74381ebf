"""Stage order, digests, skip/resume: nothing else.

A stage whose outputs exist and whose inputs (its recipe sections and the upstream stages) are unchanged is
skipped; ``force`` redoes it; ``resume`` continues an interrupted training stage. The stages themselves, and
their table (:data:`compressor.app.stages.STAGES`: name, upstream, digest sections, function, outputs), live in
:mod:`compressor.app.stages`, the run folder's layout in :mod:`compressor.runfolder`. ``compress RECIPE`` is these
stages in a row; ``compress export``, ``profile`` and ``report`` call the same stage code on existing artifacts.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..errors import UserError
from ..io import atomic_write_json, atomic_write_text, file_sha256
from ..lock import LOCK_NAME, run_lock
from ..recipe import Recipe
from ..resume import check_checkpoints
from ..runfolder import RunDir, load_run_teacher, read_run_json  # noqa: F401 - part of the pipeline's public face
from .context import Context, RunOptions, consent_to_own_import, resolve_device, resume_command
from .preflight import preflight
from .stages import STAGE_BY_NAME, STAGES, check_stage_names

log = logging.getLogger(__name__)


_CONTENT: dict[tuple, str] = {}  # (path, size, mtime_ns) -> content digest, hashed once per process


def _file_fingerprint(path: Optional[Path]) -> str:
    """An input file by its content (size and SHA-256): a checkpoint provisioned again at its path (a new
    modification time, the same bytes) is the same checkpoint, and its runs stay up to date and resumable."""
    if path is None or not path.exists():
        return "none"
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _CONTENT:
        _CONTENT[key] = f"{st.st_size}:{file_sha256(path)}"
    return _CONTENT[key]


def stage_digest(ctx: Context, name: str) -> str:
    """A stage's digest: its name, its input files, its recipe sections and its upstream stages' digests."""
    r, st = ctx.recipe, STAGE_BY_NAME[name]
    h = hashlib.sha256()
    h.update(name.encode())
    for f in st.input_files(r, ctx.run) if st.input_files else ():
        h.update(_file_fingerprint(f).encode())
    secs = st.digest_sections(r)
    if secs:
        h.update(r.section_hash(*secs).encode())
    for up in st.upstream:
        if STAGE_BY_NAME[up].applies_to(r):
            h.update((ctx.hashes.get(up) or stage_digest(ctx, up)).encode())
    digest = h.hexdigest()[:16]
    ctx.hashes[name] = digest
    return digest


# ----------------------------------------------------------------------------------------------- run dir


def move_aside(root: Path) -> Path:
    """Move a run folder's contents to ``<root>.old-<time>`` and return it. The ``.lock`` stays: this process holds
    it, and a second writer must keep finding it in the same place (moving it would let one start now)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = root.with_name(f"{root.name}.old-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = root.with_name(f"{root.name}.old-{stamp}-{n}")
    aside.mkdir(parents=True)
    for entry in sorted(root.iterdir()):
        if entry.name != LOCK_NAME:
            shutil.move(str(entry), str(aside / entry.name))
    return aside


def prepare_run_dir(recipe: Recipe, out_root: Path, force: bool, recipe_path: Optional[Path]) -> RunDir:
    """Create runs/<name>/, refusing (unless ``force``) to mix artifacts of a different recipe."""
    run = RunDir(Path(out_root) / recipe.name)
    source = str(recipe_path.resolve()) if recipe_path else None
    if run.run_json.exists():
        prev = read_run_json(run) or {}
        if prev.get("recipe_source") != source:
            if not force:
                raise UserError(
                    f"{run.root} holds a run of a different recipe ({prev.get('recipe_source')}); "
                    f"choose another name or --out, or pass --force to move it aside and start over"
                )
            aside = move_aside(run.root)
            log.warning("moved the previous run of another recipe to %s", aside)
    elif run.root.exists() and any(p.name != LOCK_NAME for p in run.root.iterdir()):
        if not force:
            raise UserError(
                f"{run.root} exists and was not written by compressor; choose another name or --out, or pass --force "
                f"to move its files aside"
            )
        aside = move_aside(run.root)  # the user's own files are kept, never overwritten
        log.warning("moved the files of %s, which compressor did not write, to %s", run.root, aside)
    run.root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run.run_json, {"recipe_source": source, "name": recipe.name})
    atomic_write_text(run.recipe, recipe.to_yaml())
    return run


@dataclass
class StageResult:
    stage: str
    status: str  # ran | skipped
    seconds: float


def run_pipeline(
    recipe: Recipe,
    out_root: str | Path = "runs",
    options: Optional[RunOptions] = None,
    *,
    progress: Optional[Callable] = None,
    on_stage: Optional[Callable[[StageResult], None]] = None,
) -> list[StageResult]:
    """Run the recipe's stages in order into ``out_root/<name>/``, skipping those that are up to date.

    ``options`` (:class:`RunOptions`; default ``RunOptions()``): force, resume, only, device, nproc, ... as
    ``compress run``'s flags say; the stages read it as ``ctx.options``. ``progress(stage, step, total, losses)``
    reports training steps, ``on_stage(result)`` each finished or skipped stage."""
    opts = options or RunOptions()
    check_stage_names(opts.only or ())
    dev = resolve_device(opts.device or recipe.device)
    preflight(recipe, build_model=False)  # the zoo, backends and data folder: before the run folder is made
    consent_to_own_import(recipe)  # the recipe being run consents to its own teacher.import
    ctx = Context(recipe, RunDir(Path(out_root) / recipe.name), dev, opts, progress)
    with run_lock(ctx.run.root):
        return _run_stages(ctx, Path(out_root), on_stage)


def _preflight_checkpoints(ctx: Context) -> None:
    """Refuse unusable checkpoints before the run folder is touched (nothing rewritten, nothing forgotten)."""
    prev_doc = read_run_json(ctx.run)
    if prev_doc is None:
        return  # a new or foreign folder: prepare_run_dir decides
    opts = ctx.options
    prev = prev_doc.get("recipe_source")
    if prev != (str(opts.recipe_path.resolve()) if opts.recipe_path else None):
        return
    for st in STAGES:
        if st.checkpoints is None or not st.applies_to(ctx.recipe):
            continue
        digest = stage_digest(ctx, st.name)
        if (opts.only and st.name not in opts.only) or (
            not opts.force and ctx.run.up_to_date(st.name, digest, st.outputs)
        ):
            continue
        folder = ctx.run.file(st.checkpoints)
        check_checkpoints(folder, digest, resume=opts.resume, force=opts.force, command=resume_command(ctx))


def _run_stages(ctx: Context, out_root: Path, on_stage: Optional[Callable[[StageResult], None]]) -> list[StageResult]:
    """The stages in order, with one :class:`Context` for the checkpoint pre-flight and every stage."""
    ctx.run.refuse_links()  # sub-folders and own artifacts that are links: one line, before anything is touched
    _preflight_checkpoints(ctx)
    ctx.hashes.clear()  # digested again below, after the run folder is prepared
    force, only = ctx.options.force, ctx.options.only
    run = ctx.run = prepare_run_dir(ctx.recipe, out_root, force, ctx.options.recipe_path)
    results = []
    for st in STAGES:
        if not st.applies_to(ctx.recipe):
            if only and st.name in only:
                raise UserError(f"--only {st.name}: the recipe does not ask for the {st.name} stage")
            continue
        digest = stage_digest(ctx, st.name)
        if only and st.name not in only:
            continue
        if only:
            for up in st.upstream:
                if STAGE_BY_NAME[up].applies_to(ctx.recipe) and not run.has(STAGE_BY_NAME[up].outputs):
                    raise UserError(
                        f"--only {st.name}: the {up} stage has not produced its artifacts yet; run without --only first"
                    )
        if not force and run.up_to_date(st.name, digest, st.outputs):
            res = StageResult(st.name, "skipped", 0.0)
        else:
            run.forget(st.name)
            t0 = time.perf_counter()
            if ctx.progress:  # the stage's first line, at once: what it does (its clock starts here)
                ctx.progress(st.name, 0, 0, {"doing": st.doing})
            st.func(ctx)
            res = StageResult(st.name, "ran", time.perf_counter() - t0)
            run.record(st.name, digest, res.seconds)
        results.append(res)
        if on_stage:
            on_stage(res)
    return results
