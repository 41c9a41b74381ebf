"""distill.cache_teacher on disk: rows read back as written, a stale cache is one line (or rebuilt with --force), an
interrupted write is never read, links are refused, and the pipeline computes the teacher once per image."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from conftest import one_error_line, run_cli, tiny_recipe_text

from compressor.errors import RecipeError, UserError
from compressor.teacher_cache import DiskTeacherCache


def _put(cache, indices):
    g = torch.Generator().manual_seed(sum(indices))
    image, feat = torch.randn(len(indices), 3, 8, 8, generator=g), torch.randn(len(indices), 4, 2, 2, generator=g)
    cache.put("G", indices, image, {"enc": feat})
    return image, feat


def test_rows_come_back_as_written(tmp_path):
    c = DiskTeacherCache(tmp_path / "tc", "d1", 6, "float32")
    assert c.get("G", [0]) is None
    image, feat = _put(c, [4, 1])
    assert c.get("G", [1, 2]) is None  # row 2 not written
    got = c.get("G", [1, 4])
    assert torch.equal(got[0], image.flip(0)) and torch.equal(got[1]["enc"], feat.flip(0))
    again = DiskTeacherCache(tmp_path / "tc", "d1", 6, "float32")  # another process: read from disk
    assert torch.equal(again.get("G", [4])[0], image[:1]) and again.filled("G") == 2
    half = DiskTeacherCache(tmp_path / "h", "d1", 6)  # FP16 rows: rounded, no more
    image, _ = _put(half, [0])
    assert torch.allclose(half.get("G", [0])[0], image, atol=2e-3, rtol=1e-3)


def test_a_stale_cache_is_one_line_or_rebuilt(tmp_path):
    _put(DiskTeacherCache(tmp_path / "tc", "d1", 6), [0])
    with pytest.raises(RecipeError, match="distill.cache_teacher: .* another teacher"):
        DiskTeacherCache(tmp_path / "tc", "d2", 6)
    with pytest.raises(RecipeError, match="--force"):
        DiskTeacherCache(tmp_path / "tc", "d1", 6, "float32")  # another precision
    rebuilt = DiskTeacherCache(tmp_path / "tc", "d2", 6, rebuild=True)
    assert rebuilt.get("G", [0]) is None and not list((tmp_path / "tc").glob("*.npy"))


def test_a_row_whose_write_was_interrupted_is_not_read(tmp_path):
    c = DiskTeacherCache(tmp_path / "tc", "d1", 4, "float32")
    _put(c, [0, 1])
    flags = np.lib.format.open_memmap(tmp_path / "tc" / "G.filled.npy", mode="r+")
    flags[1] = 0  # as if the process died between the data and its mark
    flags.flush()
    fresh = DiskTeacherCache(tmp_path / "tc", "d1", 4, "float32")
    assert fresh.get("G", [0]) is not None and fresh.get("G", [0, 1]) is None


def test_links_in_the_cache_folder_are_refused(tmp_path):
    victim = tmp_path / "victim.npy"
    victim.write_bytes(b"keep me")
    c = DiskTeacherCache(tmp_path / "tc", "d1", 4)
    os.symlink(victim, tmp_path / "tc" / "G.image.npy")
    with pytest.raises(UserError, match="symlink"):
        _put(c, [0])
    assert victim.read_bytes() == b"keep me"
    os.symlink(tmp_path, tmp_path / "linked")
    with pytest.raises(UserError, match="symlink"):
        DiskTeacherCache(tmp_path / "linked", "d1", 4)


CACHED = (
    tiny_recipe_text(
        "cached",
        "",
    )
    .replace("batch_size: 2,", "batch_size: 2, flip: false,")
    .replace("steps: 6\n  checkpoint_every", "steps: 8\n  checkpoint_every")
)


def test_the_pipeline_runs_the_teacher_once_per_image_and_says_what_it_saved(tmp_path):
    text = CACHED.replace("distill:\n", "distill:\n  cache_teacher: true\n  cache_dtype: float32\n")
    (tmp_path / "r.yaml").write_text(text)
    res = run_cli([tmp_path / "r.yaml", "--out", tmp_path / "runs", "--only", "teacher,student,distill"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "runs" / "cached"
    meta = json.loads((run / "teacher_cache" / "meta.json").read_text())
    assert meta["n"] == 8 and meta["dtype"] == "float32" and "G" in meta["layout"]
    timing = json.loads((run / "distill.json").read_text())["teacher_cache"]
    assert timing["computed"]["steps"] == 4 and timing["cached"]["steps"] == 4  # 8 images, batch 2, 8 steps
    assert timing["cached"]["teacher_share"] < timing["computed"]["teacher_share"]
    assert "distill.cache_teacher: the teacher took" in res.stderr


def test_the_cache_needs_inputs_that_do_not_change(tmp_path):
    text = tiny_recipe_text("c").replace("batch_size: 2,", "batch_size: 2, flip: true,")
    (tmp_path / "r.yaml").write_text(text.replace("distill:\n", "distill:\n  cache_teacher: true\n"))
    res = run_cli(["validate", tmp_path / "r.yaml"], cwd=tmp_path)
    one_error_line(res.stderr, res.returncode, "distill.cache_teacher", "data.flip false")


def test_a_bank_of_views_repeats_each_images_augmentation_every_k_epochs():
    from compressor.data import ViewBank

    class Jitter(torch.utils.data.Dataset):  # augmentation seeded by the sampler's position, as the datasets do
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return {"input": torch.tensor([float(i % 3), float(hash((7, i)) % 1000)]), "index": i % 3}

    bank = ViewBank(Jitter(), 2)
    seen = {}
    for epoch in range(6):
        for j in range(3):
            item = bank[epoch * 3 + j]
            assert item["index"] == (epoch % 2) * 3 + j
            seen.setdefault(item["index"], item["input"])
            assert torch.equal(seen[item["index"]], item["input"])  # the same view every other epoch
    assert len(seen) == bank.keys == 6 and not torch.equal(seen[0], seen[3])  # two distinct views of image 0


def test_augmented_data_is_cached_through_a_bank_of_views(tmp_path):
    text = CACHED.replace("flip: false,", "flip: true,").replace("steps: 8\n", "steps: 12\n", 1)
    text = text.replace("distill:\n", "distill:\n  cache_teacher: true\n  cache_views: 2\n")
    (tmp_path / "r.yaml").write_text(text)
    res = run_cli([tmp_path / "r.yaml", "--out", tmp_path / "runs", "--only", "teacher,student,distill"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "runs" / "cached"
    assert json.loads((run / "teacher_cache" / "meta.json").read_text())["n"] == 16  # 8 images x 2 views
    timing = json.loads((run / "distill.json").read_text())["teacher_cache"]
    assert timing["computed"]["steps"] == 8 and timing["cached"]["steps"] == 4  # epochs 1-2 computed, 3 read
