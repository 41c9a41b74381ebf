"""Checkpoint layouts people publish, read into one flat state_dict without executing code.

* files: PyTorch zip (``torch.save``), the legacy non-zip format (``_use_new_zipfile_serialization=False``) and
  safetensors; always ``weights_only=True`` unless the user trusts the file;
* wrappers: a flat state_dict, or one nested under ``params_ema`` (preferred over ``params``, as Real-ESRGAN
  does), ``params`` (BasicSR), ``state_dict`` (Lightning and most trainers), ``model``, ``netG``, ``generator``,
  ``g_ema`` (StyleGAN2), ``G`` or ``model_state``; ``module.`` prefixes (DataParallel/DDP) are stripped;
* ``key`` (``teacher.checkpoint_key``) picks a nested dict explicitly, dotted for deeper levels (``ema.model``).
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
import torch.nn as nn

from ..errors import CheckpointError

log = logging.getLogger(__name__)

# the wrapper keys looked for, in order of preference where several hold a state_dict
WRAPPER_KEYS = (
    "params_ema",
    "params",
    "state_dict",
    "model",
    "netG",
    "generator",
    "g_ema",
    "G",
    "model_state",
    "model_state_dict",
    "net",
    "network",
)
# pairs where the first wins without ambiguity (EMA weights are the ones to use)
PREFERRED = {("params_ema", "params"), ("g_ema", "generator"), ("g_ema", "G")}


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(k, str) for k in obj)
        and all(torch.is_tensor(v) for v in obj.values())
    )


def _tensor_part(obj: Mapping) -> dict:
    """The tensors of a mapping that also holds a few non-tensor entries (e.g. BasicSR's bookkeeping)."""
    return {k: v for k, v in obj.items() if torch.is_tensor(v)}


MAX_CHECKPOINT_BYTES = 8 << 30  # unpacked; the largest GAN generators are a few hundred MB
MAX_DEFLATE_RATIO = 20  # torch.save stores tensors uncompressed; a deflated entry this much smaller is a bomb


def check_checkpoint_size(path: Path, key: str) -> None:
    """Bounds before ``torch.load`` allocates: the file's size and, for a zip, what its entries unpack to."""
    try:
        size = Path(path).stat().st_size
    except OSError as exc:
        raise CheckpointError(f"{key}: {path}: cannot read ({exc.strerror or exc})") from None
    if size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"{key}: {path} is {size / 2**30:.1f} GiB; at most {MAX_CHECKPOINT_BYTES >> 30} GiB")
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"{key}: {path} is corrupt or not a PyTorch checkpoint ({exc})") from None
    total = sum(i.file_size for i in infos)
    packed = [i for i in infos if i.compress_type != zipfile.ZIP_STORED]
    ratio = sum(i.file_size for i in packed) / max(1, sum(i.compress_size for i in packed)) if packed else 1
    if total > MAX_CHECKPOINT_BYTES or ratio > MAX_DEFLATE_RATIO:
        raise CheckpointError(
            f"{key}: {path} unpacks to {total / 2**20:,.0f} MiB from {size / 2**20:,.1f} MiB (compressed "
            f"{ratio:.0f}:1); not a checkpoint torch.save writes"
        )


def read_checkpoint(path: Path, trust: bool, key: str) -> Any:
    """The object stored in ``path`` (safetensors, zip or legacy torch.save), loaded without code execution."""
    check_checkpoint_size(path, key)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{key}: {path} is not a readable safetensors file ({exc})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Weights only load failed" in str(exc):
            raise CheckpointError(
                f"{key}: {path} contains pickled Python objects, not just tensors; load it only if you trust "
                f"its source, with --trust-checkpoint"
            ) from None
        raise CheckpointError(f"{key}: {path} is corrupt or not a PyTorch checkpoint ({exc})") from None
    except (ImportError, AttributeError) as exc:
        raise CheckpointError(
            f"{key}: {path} was pickled with Python classes that cannot be imported here ({exc}); "
            f"save a state_dict instead, or make that code importable"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{key}: {path} is corrupt, truncated or not a PyTorch checkpoint "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from None


def find_state_dict(
    obj: Any, source: str, key: str = "teacher.checkpoint", checkpoint_key: Optional[str] = None
) -> dict:
    """The flat state_dict inside a loaded checkpoint object; logs which wrapper key was used."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if checkpoint_key:
        inner: Any = obj
        for part in checkpoint_key.split("."):
            if not isinstance(inner, Mapping) or part not in inner:
                have = (
                    ", ".join(sorted(k for k in obj if isinstance(k, str))[:10])
                    if isinstance(obj, Mapping)
                    else type(obj).__name__
                )
                raise CheckpointError(
                    f"teacher.checkpoint_key: {source} has no entry {checkpoint_key!r} (top-level keys: {have})"
                )
            inner = inner[part]
        if isinstance(inner, nn.Module):
            inner = inner.state_dict()
        if not isinstance(inner, Mapping) or not _tensor_part(inner):
            raise CheckpointError(f"teacher.checkpoint_key: {source}[{checkpoint_key!r}] is not a state_dict")
        log.info("%s: using the state_dict under %r (teacher.checkpoint_key)", source, checkpoint_key)
        return strip_prefix(_tensor_part(inner))
    if _is_state_dict(obj):
        return strip_prefix(dict(obj))
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{key}: {source} does not hold a state_dict (a mapping of names to tensors); "
            f"it holds a {type(obj).__name__}"
        )
    found = []
    for k, v in obj.items():
        if isinstance(v, nn.Module):
            v = v.state_dict()
        if isinstance(v, Mapping) and _tensor_part(v) and (k in WRAPPER_KEYS or _is_state_dict(v)):
            found.append(k)
    found.sort(key=lambda k: WRAPPER_KEYS.index(k) if k in WRAPPER_KEYS else len(WRAPPER_KEYS))
    candidates = [k for k in found if not any((p, k) in PREFERRED for p in found)]
    if not candidates:
        tensors = _tensor_part(obj)
        if tensors:  # a state_dict with a few bookkeeping entries (epoch, config) beside the tensors
            return strip_prefix(tensors)
        keys = ", ".join(str(k) for k in list(obj)[:10])
        raise CheckpointError(
            f"{key}: {source} does not hold a state_dict (a mapping of names to tensors); top-level keys: {keys}"
        )
    if len(candidates) > 1:
        raise CheckpointError(
            f"{key}: {source} holds several state_dicts ({', '.join(map(str, candidates))}); "
            f"pick one with teacher.checkpoint_key"
        )
    chosen = candidates[0]
    inner = obj[chosen]
    if isinstance(inner, nn.Module):
        inner = inner.state_dict()
    log.info(
        "%s: using the state_dict under %r%s",
        source,
        chosen,
        f" (preferred over {', '.join(k for k in found if k != chosen)})" if len(found) > 1 else "",
    )
    return strip_prefix(_tensor_part(inner))


def strip_prefix(state: dict) -> dict:
    """Remove DataParallel/DDP's ``module.`` (and torch.compile's ``_orig_mod.``) prefixes."""
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_checkpoint(
    path: str | Path, trust: bool = False, key: str = "teacher.checkpoint", checkpoint_key: Optional[str] = None
) -> dict:
    """Read ``path`` into a flat state_dict: any layout above, never executing code unless ``trust``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{key}: file not found: {path}")
    return find_state_dict(read_checkpoint(path, trust, key), str(path), key, checkpoint_key)
