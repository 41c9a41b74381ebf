"""The frozen teacher's outputs and tapped features, computed once per training image and read back
(``distill.cache_teacher``): for a teacher that costs far more than its student.

:class:`MemoryTeacherCache` keeps them in memory for the process; :class:`DiskTeacherCache` writes them to a folder
of the run (``teacher_cache/``) as memory-mapped ``.npy`` arrays, one row per dataset index (FP16 by default, FP32
where asked), so a resumed run, a second process and a dataset larger than memory read them back. A digest of the
teacher, the data and the taps is kept beside them: a cache computed for another one is one error line (or, with
``rebuild``, recomputed). Valid only for inputs that are the same every epoch (no random augmentation): the recipe
checks that.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .errors import RecipeError
from .io import atomic_write_json, own_folder, read_bounded, refuse_link

META = "meta.json"
DTYPES = {"float16": np.float16, "float32": np.float32}


class MemoryTeacherCache:
    """Per (direction, index): the teacher's image and features, in memory (FP32, as computed)."""

    def __init__(self):
        self._items: dict[tuple[str, int], tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}

    def get(self, name: str, indices: list[int]) -> Optional[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        keys = [(name, i) for i in indices]
        if not all(k in self._items for k in keys):
            return None
        items = [self._items[k] for k in keys]
        return torch.cat([im for im, _ in items]), {a: torch.cat([f[a] for _, f in items]) for a in items[0][1]}

    def put(self, name: str, indices: list[int], image: torch.Tensor, feats: dict[str, torch.Tensor]) -> None:
        for j, i in enumerate(indices):
            self._items[(name, i)] = (image[j : j + 1].cpu(), {a: f[j : j + 1].cpu() for a, f in feats.items()})


class DiskTeacherCache:
    """The teacher's outputs on disk: ``folder/<direction>.<tensor>.npy`` memory-mapped, ``(n, C, H, W)`` each,
    and ``<direction>.filled.npy`` marking the rows written (a row is marked after its data is flushed, so an
    interrupted run never reads a half-written row). ``digest`` names what the rows were computed from."""

    def __init__(self, folder: str | Path, digest: str, n: int, dtype: str = "float16", rebuild: bool = False):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}")
        self.folder, self.digest, self.n, self.dtype = Path(folder), digest, int(n), dtype
        own_folder(self.folder)
        meta = self._read_meta()
        if meta is not None and (meta.get("digest") != digest or meta.get("n") != self.n or meta.get("dtype") != dtype):
            if not rebuild:
                raise RecipeError(
                    f"distill.cache_teacher: {self.folder} holds the outputs of another teacher, data, taps or "
                    f"precision; pass --force to recompute them (or delete the folder)"
                )
            self._clear()
            meta = None
        self.layout: dict[str, dict] = (meta or {}).get("layout", {})
        if meta is None:
            self._write_meta()
        self._arrays: dict[str, np.memmap] = {}

    # ------------------------------------------------------------------------------------------------ files

    def _read_meta(self) -> Optional[dict]:
        path = self.folder / META
        refuse_link(path)
        if not path.is_file():
            return None
        try:
            meta = json.loads(read_bounded(path, 1 << 20))
        except (ValueError, UnicodeDecodeError):
            return {"digest": None}  # unreadable: another cache, as far as anyone can tell
        return meta if isinstance(meta, dict) else {"digest": None}

    def _write_meta(self) -> None:
        doc = {"digest": self.digest, "n": self.n, "dtype": self.dtype, "layout": self.layout}
        atomic_write_json(self.folder / META, doc)

    def _clear(self) -> None:
        for f in self.folder.iterdir():
            if f.name == META or f.suffix == ".npy":
                refuse_link(f)
                f.unlink()

    def _file(self, name: str, tensor: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in tensor)[:80]
        path = self.folder / f"{name}.{safe}.npy"
        refuse_link(path)
        return path

    def _array(self, name: str, tensor: str, shape: Optional[tuple] = None, dtype=None) -> np.memmap:
        key = f"{name}/{tensor}"
        if key not in self._arrays:
            path = self._file(name, tensor)
            if path.is_file():
                arr = np.lib.format.open_memmap(path, mode="r+")
            else:
                arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype or DTYPES[self.dtype], shape=shape)
            self._arrays[key] = arr
        return self._arrays[key]

    # ----------------------------------------------------------------------------------------------- access

    def _tensors(self, name: str) -> Optional[dict]:
        return self.layout.get(name)

    def get(self, name: str, indices: list[int]) -> Optional[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        layout = self._tensors(name)
        if layout is None or any(not 0 <= i < self.n for i in indices):
            return None
        if f"{name}/filled" not in self._arrays and not self._file(name, "filled").is_file():
            return None
        filled = self._array(name, "filled")
        if not all(filled[i] for i in indices):
            return None
        rows = np.asarray(indices)

        def read(tensor: str) -> torch.Tensor:
            return torch.from_numpy(np.asarray(self._array(name, tensor)[rows], dtype=np.float32))

        return read("image"), {alias: read(f"tap_{k}") for k, alias in enumerate(layout["taps"])}

    def put(self, name: str, indices: list[int], image: torch.Tensor, feats: dict[str, torch.Tensor]) -> None:
        if any(not 0 <= i < self.n for i in indices):
            return
        shapes = {"image": list(image.shape[1:]), "taps": {a: list(f.shape[1:]) for a, f in feats.items()}}
        layout = self._tensors(name)
        if layout is None:
            self.layout[name] = layout = {"image": shapes["image"], "taps": shapes["taps"]}
            self._write_meta()
        if layout["image"] != shapes["image"] or layout["taps"] != shapes["taps"]:
            return  # an image of another size than the first: computed every time, not cached
        rows = np.asarray(indices)
        arrays = [(self._array(name, "image", (self.n, *shapes["image"])), image)]
        arrays += [
            (self._array(name, f"tap_{k}", (self.n, *shapes["taps"][a])), feats[a])
            for k, a in enumerate(layout["taps"])
        ]
        for arr, t in arrays:
            arr[rows] = t.detach().float().cpu().numpy().astype(arr.dtype)
            arr.flush()
        filled = self._array(name, "filled", (self.n,), np.uint8)
        filled[rows] = 1
        filled.flush()

    def filled(self, name: str) -> int:
        """How many rows of direction ``name`` are written."""
        if self._tensors(name) is None:
            return 0
        return int(np.asarray(self._array(name, "filled")).sum())


def cache_size_bytes(folder: str | Path) -> int:
    return (
        sum(f.stat().st_size for f in Path(folder).glob("*.npy") if not f.is_symlink()) if os.path.isdir(folder) else 0
    )
