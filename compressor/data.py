"""Datasets: paired (pix2pix AB), unpaired (trainA/trainB), folder (inputs only), synthetic, and degraded (clean
images, the input made from each by a named degradation).

Images are NCHW float32 in [-1, 1] at every boundary, with ``data.channels`` channels (3 by default). Conversion
rules for odd files: grayscale is repeated to three channels (or an RGB image reduced to luminance, ITU-R 601, for
``channels: 1``), RGBA is composited onto white, 16-bit images are scaled to 8 bits (value / 257), palette images
are expanded. An unreadable image is skipped with a warning (``data.strict: true`` makes it fatal).
"""

from __future__ import annotations

import io
import logging
import math
import random
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler

from .errors import DataError, RecipeError
from .recipe import IMAGE_EXTS, DataSpec, DegradeSpec

log = logging.getLogger(__name__)


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def _layout(spec: DataSpec, root: Path) -> dict[str, Path]:
    """The folders a data kind reads, by role."""
    if spec.kind == "paired":
        return {"train": root / spec.train_split, "test": root / spec.test_split}
    if spec.kind == "unpaired":
        tr, te = spec.train_split, spec.test_split
        return {
            "trainA": root / f"{tr}A",
            "trainB": root / f"{tr}B",
            "testA": root / f"{te}A",
            "testB": root / f"{te}B",
        }
    if spec.kind == "folder":
        sub = root / spec.train_split
        return {"train": sub if sub.is_dir() else root}
    if spec.kind == "degraded":
        return {"train": root / spec.train_split, "test": root / spec.test_split}
    return {}


def check_data_root(spec: DataSpec, root: Optional[Path]) -> None:
    """Raise a one-line error when the data root is missing, empty or holds no images where expected."""
    if spec.kind == "synthetic":
        return
    if root is None or not root.exists():
        raise RecipeError(f"data.root: folder not found: {root}")
    if not root.is_dir():
        raise RecipeError(f"data.root: not a folder: {root}")
    required = {
        "paired": ["train"],
        "unpaired": ["trainA", "trainB"],
        "folder": ["train"],
        "degraded": ["train", "test"],  # the test images are the ground truth every figure is measured against
    }[spec.kind]
    for role, folder in _layout(spec, root).items():
        if role in required and not list_images(folder):
            if not folder.exists():
                raise RecipeError(f"data.root: {root} has no '{folder.name}' folder (expected for {spec.kind} data)")
            raise RecipeError(f"data.root: no images ({', '.join(IMAGE_EXTS)}) in {folder}")


MAX_PIXELS = 8192 * 8192  # the largest data.size squared; a 16-bit image of this size decodes to ~0.5 GB


def check_pixels(im: Image.Image, path) -> None:
    """Refuse an image whose header promises more than :data:`MAX_PIXELS` (PIL's own bomb check allows ~179 M
    pixels; at 16 bits, converted, that is several GB)."""
    w, h = im.size
    if w * h > MAX_PIXELS:
        raise Image.DecompressionBombError(f"{w}x{h} pixels is more than the {MAX_PIXELS:,} compressor decodes")


def load_image(path: Path, channels: int = 3) -> Image.Image:
    """Open any common image as 8-bit RGB, or 8-bit grayscale with ``channels=1`` (see the module docstring)."""
    try:
        im = Image.open(path)
        check_pixels(im, path)  # from the header, before a single pixel is decoded
        im.load()
    except Image.DecompressionBombError as exc:  # a hostile or absurdly large image: refuse, do not allocate
        raise DataError(f"{path}: image too large to load ({exc})") from None
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im).astype(np.float64)
        scale = 257.0 if arr.max() > 255 or im.mode.startswith("I;16") else 1.0
        arr = np.clip(arr / scale, 0, 255).astype(np.uint8)
        im = Image.fromarray(arr, "L")
    elif im.mode == "F":
        arr = np.asarray(im)
        im = Image.fromarray(np.clip(arr * (255.0 if arr.max() <= 1 else 1.0), 0, 255).astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA"):
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im.convert("RGBA"))
    if im.mode == "RGB;16" or im.mode.startswith("RGB") and im.mode != "RGB":
        im = im.convert("RGB")
    return im.convert("L" if channels == 1 else "RGB")


def to_tensor(im: Image.Image) -> torch.Tensor:
    """An 8-bit image (RGB or grayscale) as a CHW tensor in [-1, 1]."""
    arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    if arr.ndim == 2:
        arr = arr[..., None]
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def to_image(t: torch.Tensor) -> Image.Image:
    """A CHW tensor in [-1, 1] (3 channels or 1) as an 8-bit image."""
    arr = ((t.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)


def center_crop(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The central ``h`` x ``w`` window of a CHW (or NCHW) tensor at least that large."""
    top, left = (int(t.shape[-2]) - h) // 2, (int(t.shape[-1]) - w) // 2
    return t[..., top : top + h, left : left + w]


def stack_images(images: list[torch.Tensor]) -> torch.Tensor:
    """Stack CHW images of possibly different sizes (whole test images) into one batch, each cropped to the
    central window of the smallest height and width among them."""
    h = min(int(t.shape[-2]) for t in images)
    w = min(int(t.shape[-1]) for t in images)
    return torch.stack([center_crop(t, h, w) for t in images])


def image_row(images: list[torch.Tensor]) -> torch.Tensor:
    """Place CHW images side by side for a sample grid. A smaller image (a super-resolution network's input next
    to its x2/x4 output) is enlarged to the tallest one by nearest-neighbour so that pixels stay visible."""
    h = max(int(t.shape[-2]) for t in images)
    row = []
    for t in images:
        t = t.detach().float().cpu()
        if t.shape[-2] != h:
            w = max(1, round(t.shape[-1] * h / t.shape[-2]))
            t = torch.nn.functional.interpolate(t[None], size=(h, w), mode="nearest")[0]
        row.append(t)
    return torch.cat(row, dim=2)


class _Augment:
    """Resize (and random-crop/flip during training) a list of images identically."""

    def __init__(self, size: int, load_size: Optional[int], flip: bool, train: bool):
        self.size, self.load_size, self.flip, self.train = size, load_size or size, flip, train

    def __call__(self, images: list[Image.Image], rng: random.Random) -> list[torch.Tensor]:
        ls, s = self.load_size, self.size
        images = [im.resize((ls, ls), Image.BICUBIC) if im.size != (ls, ls) else im for im in images]
        if ls > s:
            if self.train:
                x, y = rng.randint(0, ls - s), rng.randint(0, ls - s)
            else:
                x = y = (ls - s) // 2
            images = [im.crop((x, y, x + s, y + s)) for im in images]
        flip = self.train and self.flip and rng.random() < 0.5
        if flip:
            images = [im.transpose(Image.FLIP_LEFT_RIGHT) for im in images]
        return [to_tensor(im) for im in images]


MIN_SIDE = 8  # an image smaller than this on either side is a mistake, not data


class _ImageFiles(Dataset):
    """Base: a list of files, each checked once; unreadable ones are skipped (or fatal when strict)."""

    def __init__(self, files: list[Path], strict: bool, what: str):
        good, bad = [], []
        for f in files:
            try:
                with Image.open(f) as im:
                    check_pixels(im, f)
                    im.load()
                    if min(im.size) < MIN_SIDE:
                        raise ValueError(f"{im.size[0]}x{im.size[1]} pixels is too small (at least {MIN_SIDE})")
                good.append(f)
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
                if strict:
                    raise DataError(f"{f}: unreadable image ({exc}); data.strict is true") from None
                bad.append(f)
        if bad:
            log.warning(
                "skipped %d unreadable image(s) of %d in %s (first: %s); set data.strict: true to fail instead",
                len(bad),
                len(files),
                what,
                bad[0].name,
            )
        if not good:
            raise DataError(f"{what}: no readable images")
        self.files, self.skipped = good, bad

    def _read_folder(self, folder: Path, strict: bool, max_items: Optional[int]) -> None:
        """The folder's images (the first ``max_items``), each checked; one error line when it holds none."""
        files = list_images(folder)
        if not files:
            raise DataError(f"data.root: no images in {folder}")
        _ImageFiles.__init__(self, files[:max_items] if max_items else files, strict, str(folder))


class PairedDataset(_ImageFiles):
    """pix2pix aligned images: the left half is A, the right half is B."""

    def __init__(
        self,
        folder: Path,
        direction: str = "AtoB",
        size: int = 256,
        load_size=None,
        flip=False,
        train=True,
        strict=False,
        max_items: Optional[int] = None,
        channels: int = 3,
    ):
        self._read_folder(folder, strict, max_items)
        self.direction = direction
        self.aug = _Augment(size, load_size, flip, train)
        self.seed = 0
        self.channels = channels

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        rng = random.Random(hash((self.seed, i)))  # i may exceed len: the sampler encodes the epoch in it
        i %= len(self.files)
        ab = load_image(self.files[i], self.channels)
        w, h = ab.size
        a, b = ab.crop((0, 0, w // 2, h)), ab.crop((w // 2, 0, w, h))
        src, tgt = (a, b) if self.direction == "AtoB" else (b, a)
        x, y = self.aug([src, tgt], rng)
        return {"input": x, "target": y, "index": i}


class FolderDataset(_ImageFiles):
    """Input images only (no targets)."""

    def __init__(
        self,
        folder: Path,
        size=256,
        load_size=None,
        flip=False,
        train=True,
        strict=False,
        max_items: Optional[int] = None,
        channels: int = 3,
    ):
        self._read_folder(folder, strict, max_items)
        self.aug = _Augment(size, load_size, flip, train)
        self.seed = 0
        self.channels = channels

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        rng = random.Random(hash((self.seed, i)))
        i %= len(self.files)
        (x,) = self.aug([load_image(self.files[i], self.channels)], rng)
        return {"input": x, "index": i}


class UnpairedDataset(Dataset):
    """CycleGAN layout: A and B folders; B is drawn at random (from the item's own seed) for each A."""

    def __init__(
        self,
        folder_a: Path,
        folder_b: Path,
        size=256,
        load_size=None,
        flip=False,
        train=True,
        strict=False,
        max_items: Optional[int] = None,
        channels: int = 3,
    ):
        self.a = FolderDataset(folder_a, size, load_size, flip, train, strict, max_items, channels)
        self.b = FolderDataset(folder_b, size, load_size, flip, train, strict, max_items, channels)
        self.train = train
        self.seed = 0

    def __len__(self):
        return max(len(self.a), len(self.b))

    def __getitem__(self, i):
        j = random.Random(hash((self.seed, i, 1))).randrange(len(self.b)) if self.train else i % len(self.b)
        return {"A": self.a[i]["input"], "B": self.b[j]["input"], "index": i % len(self)}


# ------------------------------------------------------------------------------------------------ degraded

TEST_NOISE_SEED = 0  # the noise of test image i comes from (this, i): the same for every run and recipe seed


def degrade(clean: Image.Image, spec: DegradeSpec, rng: np.random.Generator) -> torch.Tensor:
    """The network's input made from a clean 8-bit image: bicubic down-scaling by ``downscale`` (the clean image's
    size must be a multiple of it), then JPEG at ``jpeg_quality``, then Gaussian noise of σ ``noise_sigma`` on the
    0-255 scale (``σ/255`` on [0, 1], as DnCNN is trained and tested; not clipped). Returns CHW in [-1, 1]."""
    im = clean
    if spec.downscale:
        w, h = im.size
        im = im.resize((w // spec.downscale, h // spec.downscale), Image.BICUBIC)
    if spec.jpeg_quality:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=int(spec.jpeg_quality))
        im = Image.open(io.BytesIO(buf.getvalue()))
        im.load()
    x = to_tensor(im)
    if spec.noise_sigma:
        noise = rng.standard_normal(size=tuple(x.shape), dtype=np.float32)
        x = x + torch.from_numpy(noise) * (2.0 * float(spec.noise_sigma) / 255.0)  # [-1, 1] is twice [0, 1]
    return x


class DegradedDataset(_ImageFiles):
    """Clean images (the ground truth, ``target``) and the input each is degraded into (:func:`degrade`).

    Training: a random ``size`` x ``size`` input patch (the clean patch is ``downscale`` times larger), optionally
    flipped, and fresh noise at every visit (the sampler's index encodes the epoch). Testing: whole images, cropped
    only to a multiple of ``downscale``, with noise from a fixed seed per image (:data:`TEST_NOISE_SEED`), so every
    run sees the same noisy test inputs. ``variable_size``: test images may differ in size (evaluate them one by one).
    """

    def __init__(
        self,
        folder: Path,
        spec: DegradeSpec,
        size: int = 40,
        flip: bool = False,
        train: bool = True,
        strict: bool = False,
        max_items: Optional[int] = None,
        channels: int = 3,
    ):
        self._read_folder(folder, strict, max_items)
        self.spec, self.size, self.flip, self.train, self.channels = spec, size, flip, train, channels
        self.scale = spec.downscale or 1
        self.seed = 0
        self.variable_size = not train

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        k = int(i)
        i = k % len(self.files)
        clean = load_image(self.files[i], self.channels)
        w, h = clean.size
        s = self.scale
        if self.train:
            rng = np.random.default_rng([self.seed, k])
            side = self.size * s
            if w < side or h < side:
                clean = clean.resize((max(w, side), max(h, side)), Image.BICUBIC)
                w, h = clean.size
            x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            clean = clean.crop((x0, y0, x0 + side, y0 + side))
            if self.flip and rng.random() < 0.5:
                clean = clean.transpose(Image.FLIP_LEFT_RIGHT)
        else:
            rng = np.random.default_rng([TEST_NOISE_SEED, i])
            if w % s or h % s:
                clean = clean.crop((0, 0, w - w % s, h - h % s))
        return {"input": degrade(clean, self.spec, rng), "target": to_tensor(clean), "index": i}


# ------------------------------------------------------------------------------------------------ synthetic

# Façade label colours in the spirit of CMP facades: wall, window, door, balcony, cornice, sill.
_LABELS = np.array(
    [[13, 61, 251], [0, 117, 255], [170, 255, 85], [255, 85, 0], [255, 170, 0], [0, 255, 255]], dtype=np.float32
)
_BACKGROUND = np.array([0, 0, 170], dtype=np.float32)


def synthetic_pair(index: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic façade-like pair: (photo, label map), both HxWx3 uint8.

    The label map holds rectangles (windows, doors, balconies, cornices) on a wall; the photo renders each
    class with its own material colour, a texture, a vertical light gradient and shadows under ledges, so the
    task (labels -> photo) is a genuine image-to-image mapping.
    """
    rng = np.random.default_rng([seed, index])
    s = size
    label = np.zeros((s, s), dtype=np.int64)  # 0 wall
    label[: max(1, s // 16)] = -1  # sky
    floors = int(rng.integers(3, 6))
    cols = int(rng.integers(3, 6))
    top = s // 16
    fh = (s - top) / floors
    cw = s / cols
    for f in range(floors):
        y0 = int(top + f * fh)
        label[y0 : y0 + max(1, s // 64)] = 4  # cornice
        for c in range(cols):
            x0 = int(c * cw)
            if f == floors - 1 and c == cols // 2:
                label[int(y0 + fh * 0.3) : int(y0 + fh), int(x0 + cw * 0.25) : int(x0 + cw * 0.75)] = 2  # door
                continue
            wy0, wy1 = int(y0 + fh * rng.uniform(0.2, 0.3)), int(y0 + fh * rng.uniform(0.7, 0.8))
            wx0, wx1 = int(x0 + cw * rng.uniform(0.2, 0.3)), int(x0 + cw * rng.uniform(0.7, 0.8))
            label[wy0:wy1, wx0:wx1] = 1  # window
            label[wy1 : wy1 + max(1, s // 96), wx0 - 1 : wx1 + 1] = 5  # sill
            if rng.random() < 0.3:
                label[int(wy1 - fh * 0.15) : wy1 + 2, max(0, wx0 - 3) : wx1 + 3] = 3  # balcony
    # label map
    lab = np.empty((s, s, 3), dtype=np.float32)
    lab[label == -1] = _BACKGROUND
    for k in range(6):
        lab[label == k] = _LABELS[k]
    # photo
    wall = rng.uniform(120, 220, 3)
    materials = {
        0: wall,
        1: rng.uniform(20, 70, 3),
        2: rng.uniform(60, 110, 3) * [1.0, 0.7, 0.5],
        3: rng.uniform(40, 90, 3),
        4: wall * 0.8,
        5: wall * 1.1,
    }
    photo = np.empty((s, s, 3), dtype=np.float32)
    photo[label == -1] = [150, 190, 235]
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
    noise = rng.normal(0, 1, (s // 4 + 1, s // 4 + 1)).astype(np.float32)
    noise = np.kron(noise, np.ones((4, 4), np.float32))[:s, :s]
    for k, col in materials.items():
        m = label == k
        photo[m] = col
    bricks = ((np.floor(yy * s / 4) % 2) * 0.5 + np.floor(xx * s / 8)) % 2
    texture = np.where(label == 0, 8 * noise + 6 * bricks, np.where(label == 1, 25 * yy + 10 * xx, 4 * noise))
    photo += texture[..., None]
    # shadow below cornices and sills
    ledge = (label == 4) | (label == 5)
    shadow = np.zeros((s, s), np.float32)
    for d in range(1, max(2, s // 48)):
        shadow[d:] += ledge[:-d] * (1.0 - d / max(2, s // 48))
    photo *= (1.0 - 0.35 * np.clip(shadow, 0, 1))[..., None]
    photo *= (1.15 - 0.3 * yy)[..., None]  # light from above
    photo = np.clip(photo, 0, 255).astype(np.uint8)
    return photo, np.clip(lab, 0, 255).astype(np.uint8)


class SyntheticPairedDataset(Dataset):
    """Generated on the fly from (seed, index): no files, no network. A = photo, B = label map."""

    def __init__(self, n: int, size: int, seed: int = 0, direction: str = "BtoA", offset: int = 0):
        self.n, self.size, self.seed, self.direction, self.offset = n, size, seed, direction, offset
        self.skipped: list = []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        i %= self.n
        photo, label = synthetic_pair(self.offset + i, self.size, self.seed)
        a, b = to_tensor(Image.fromarray(photo)), to_tensor(Image.fromarray(label))
        x, y = (a, b) if self.direction == "AtoB" else (b, a)
        return {"input": x, "target": y, "index": i}


# ------------------------------------------------------------------------------------------------ keys


def input_key(kind: str) -> str:
    """The batch key of the model's input for a data kind (unpaired items hold "A" and "B")."""
    return "A" if kind == "unpaired" else "input"


def target_key(kind: str) -> Optional[str]:
    """The batch key of the ground truth for a data kind (None: folder data has no targets)."""
    return {"unpaired": "B", "folder": None}.get(kind, "target")


def batch_keys(kind: str) -> tuple[str, ...]:
    """The image keys of a batch for a data kind."""
    return tuple(k for k in (input_key(kind), target_key(kind)) if k)


def input_images(
    spec: DataSpec, root: Optional[Path], split: str, seed: int, n: int, key: Optional[str] = None
) -> torch.Tensor:
    """Up to ``n`` model inputs (N, C, H, W) in [-1, 1] from a split of the data (``key``: another item key, such
    as an unpaired set's "B")."""
    ds = make_dataset(spec, root, split, seed, max_items=n)
    key = key or input_key(spec.kind)
    images = [ds[i][key] for i in range(min(n, len(ds)))]
    if getattr(ds, "variable_size", False):  # whole test images: their central data.size window
        s = min(spec.size, *(min(int(t.shape[-2]), int(t.shape[-1])) for t in images))
        return torch.stack([center_crop(t, s, s) for t in images])
    return torch.stack(images)


# ------------------------------------------------------------------------------------------------ factories


def make_dataset(
    spec: DataSpec, root: Optional[Path], split: str = "train", seed: int = 0, max_items: Optional[int] = None
) -> Dataset:
    """The dataset for a recipe's data section; ``split`` is 'train' or 'test'."""
    train = split == "train"
    if spec.kind == "synthetic":
        n = spec.synthetic.train if train else spec.synthetic.test
        if max_items:
            n = min(n, max_items)
        # test items come from a disjoint index range
        return SyntheticPairedDataset(n, spec.size, seed, spec.direction, offset=0 if train else 1_000_000)
    check_data_root(spec, root)
    layout = _layout(spec, root)
    if spec.kind == "degraded":
        folder = _layout(spec, root)["train" if train else "test"]
        ds = DegradedDataset(
            folder, spec.degrade, spec.size, spec.flip and train, train, spec.strict, max_items, spec.channels
        )
        ds.seed = seed  # training crops and noise depend on the recipe seed (test noise never does)
        return ds
    kw = dict(
        size=spec.size,
        load_size=spec.load_size if train else None,
        flip=spec.flip and train,
        train=train,
        strict=spec.strict,
        max_items=max_items,
        channels=spec.channels,
    )
    if spec.kind == "paired":
        folder = layout["train" if train else "test"]
        if not train and not list_images(folder):
            log.warning("no test images in %s; evaluating on the training split", folder)
            folder = layout["train"]
        return PairedDataset(folder, spec.direction, **kw)
    if spec.kind == "unpaired":
        a, b = (layout["trainA"], layout["trainB"]) if train else (layout["testA"], layout["testB"])
        if not train and not (list_images(a) and list_images(b)):
            a, b = layout["trainA"], layout["trainB"]
        if spec.direction == "BtoA":
            a, b = b, a
        return UnpairedDataset(a, b, **kw)
    folder = layout["train"]
    if not train:
        test = root / spec.test_split
        if list_images(test):
            folder = test
    return FolderDataset(folder, **kw)


class ViewBank(Dataset):
    """A fixed bank of ``views`` augmented views per image (``distill.cache_views``), so that a teacher's outputs can
    be cached although the data is augmented. The sampler's position ``i`` encodes the epoch (``i // n``); epoch
    ``e`` draws view ``e % views`` of each image, the dataset's augmentation (crop, flip, noise) seeded by that
    view's position ``v * n + j`` as it would be in epoch ``v``. ``index`` is that position: the cache's key."""

    def __init__(self, dataset: Dataset, views: int):
        if views < 1:
            raise ValueError("views must be at least 1")
        self.dataset, self.views = dataset, int(views)
        self.n = len(dataset)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        key = ((i // self.n) % self.views) * self.n + i % self.n
        item = dict(self.dataset[key])
        item["index"] = key
        return item

    @property
    def keys(self) -> int:
        """How many distinct (image, view) items there are: the cache's rows."""
        return self.n * self.views


class ResumableSampler(Sampler[int]):
    """An endless, seeded shuffle that can start mid-stream and shards across processes.

    Epoch ``e`` uses the permutation of ``seed + e``; sample ``k`` of the global stream is ``perm[k % n]``; rank
    ``r`` of ``w`` takes every w-th global batch element. Resuming at global position ``start`` reproduces the
    exact order an uninterrupted run would have seen.
    """

    def __init__(self, n: int, seed: int, start: int = 0, rank: int = 0, world: int = 1):
        self.n, self.seed, self.start, self.rank, self.world = n, seed, start, rank, world

    def __iter__(self) -> Iterator[int]:
        k = self.start * self.world + self.rank
        cache_epoch, perm = -1, None
        while True:
            epoch, pos = divmod(k, self.n)
            if epoch != cache_epoch:
                g = torch.Generator().manual_seed(self.seed + epoch)
                perm = torch.randperm(self.n, generator=g).tolist()
                cache_epoch = epoch
            yield epoch * self.n + perm[pos]  # datasets take the index modulo their length
            k += self.world

    def __len__(self):  # pragma: no cover - endless
        return math.inf
