"""Stage order, digests, skip/resume: nothing else.

A stage whose outputs exist and whose inputs (its recipe sections and the upstream stages) are unchanged is
skipped; ``force`` redoes it; ``resume`` continues an interrupted training stage. The stages themselves, and
their table (:data:`compressor.stages.STAGES`: name, upstream, digest sections, function, outputs), live in
:mod:`compressor.stages`, the run folder's layout in :mod:`compressor.runfolder`. ``compress RECIPE`` is these
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

from .errors import UserError
from .io import atomic_write_json, atomic_write_text
from .lock import LOCK_NAME, run_lock
from .recipe import Recipe
from .resume import check_checkpoints
from .runfolder import RunDir, load_run_teacher, read_run_json  # noqa: F401 - part of the pipeline's public face
from .stages import (
    STAGE_BY_NAME,
    STAGES,
    Context,
    check_stage_names,
    consent_to_own_import,
    preflight,
    resolve_device,
    resume_command,
)

log = logging.getLogger(__name__)


def _file_fingerprint(path: Optional[Path]) -> str:
    if path is None or not path.exists():
        return "none"
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}"


def stage_digest(ctx: Context, name: str) -> str:
    """A stage's digest: its name, its input files, its recipe sections and its upstream stages' digests."""
    r, st = ctx.recipe, STAGE_BY_NAME[name]
    h = hashlib.sha256()
    h.update(name.encode())
    for f in st.input_files(r) if st.input_files else ():
        h.update(_file_fingerprint(f).encode())
    secs = st.digest_sections(r)
    if secs:
        h.update(r.section_hash(*secs).encode())
    for up in st.upstream:
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
    *,
    force: bool = False,
    resume: bool = False,
    only: Optional[list[str]] = None,
    device: Optional[str] = None,
    trust_checkpoint: bool = False,
    nproc: int = 1,
    progress: Optional[Callable] = None,
    recipe_path: Optional[Path] = None,
    on_stage: Optional[Callable[[StageResult], None]] = None,
    build_discriminator: Optional[Callable] = None,
) -> list[StageResult]:
    """Run the recipe's stages in order, skipping those that are up to date.

    ``build_discriminator``: builds the distill stage's discriminators instead of the zoo's PatchGAN (called as
    ``build(input_nc=..., **distill.discriminator)``); one process only."""
    check_stage_names(only or ())
    dev = resolve_device(device or recipe.device)
    preflight(recipe, build_model=False)  # the zoo, backends and data folder: before the run folder is made
    consent_to_own_import(recipe)  # the recipe being run consents to its own teacher.import
    ctx = Context(
        recipe,
        RunDir(Path(out_root) / recipe.name),
        dev,
        resume=resume,
        force=force,
        trust_checkpoint=trust_checkpoint,
        nproc=nproc,
        progress=progress,
        recipe_path=recipe_path,
        build_discriminator=build_discriminator,
    )
    with run_lock(ctx.run.root):
        return _run_stages(ctx, Path(out_root), only, on_stage)


def _preflight_checkpoints(ctx: Context, only: Optional[list[str]]) -> None:
    """Refuse unusable checkpoints before the run folder is touched (nothing rewritten, nothing forgotten)."""
    prev_doc = read_run_json(ctx.run)
    if prev_doc is None:
        return  # a new or foreign folder: prepare_run_dir decides
    prev = prev_doc.get("recipe_source")
    if prev != (str(ctx.recipe_path.resolve()) if ctx.recipe_path else None):
        return
    for st in STAGES:
        if st.checkpoints is None:
            continue
        digest = stage_digest(ctx, st.name)
        if (only and st.name not in only) or (not ctx.force and ctx.run.up_to_date(st.name, digest, st.outputs)):
            continue
        folder = ctx.run.file(st.checkpoints)
        check_checkpoints(folder, digest, resume=ctx.resume, force=ctx.force, command=resume_command(ctx))


def _run_stages(
    ctx: Context, out_root: Path, only: Optional[list[str]], on_stage: Optional[Callable[[StageResult], None]]
) -> list[StageResult]:
    """The stages in order, with one :class:`Context` for the checkpoint pre-flight and every stage."""
    _preflight_checkpoints(ctx, only)
    ctx.hashes.clear()  # digested again below, after the run folder is prepared
    run = ctx.run = prepare_run_dir(ctx.recipe, out_root, ctx.force, ctx.recipe_path)
    force = ctx.force
    results = []
    for st in STAGES:
        digest = stage_digest(ctx, st.name)
        if only and st.name not in only:
            continue
        if only:
            for up in st.upstream:
                if not run.has(STAGE_BY_NAME[up].outputs):
                    raise UserError(
                        f"--only {st.name}: the {up} stage has not produced its artifacts yet; run without --only first"
                    )
        if not force and run.up_to_date(st.name, digest, st.outputs):
            res = StageResult(st.name, "skipped", 0.0)
        else:
            run.forget(st.name)
            t0 = time.perf_counter()
            st.func(ctx)
            res = StageResult(st.name, "ran", time.perf_counter() - t0)
            run.record(st.name, digest, res.seconds)
        results.append(res)
        if on_stage:
            on_stage(res)
    return results
