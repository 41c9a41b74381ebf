"""Errors a user can cause. Everything else is a bug and raises ordinary exceptions.

The CLI turns a :class:`UserError` into one line, ``error: …``, and exit code 2.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input: the message names the key or the file."""

    exit_code = 2


class RecipeError(UserError):
    """The recipe is malformed or inconsistent."""


class DataError(UserError):
    """A dataset is missing, empty or unreadable."""


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt, pickled without trust, or of the wrong architecture."""


class ExportError(UserError):
    """An export failed its checks (parity, lint); the artifact carries a ``.failed`` marker."""


class MissingExtraError(UserError):
    """An optional dependency is not installed: the message names the extra to install."""


class TrainingDiverged(UserError):
    """A loss term became NaN or Inf; the last good checkpoint is kept."""


class Interrupted(Exception):
    """Training stopped on SIGINT after writing a checkpoint (exit code 130)."""

    def __init__(self, message: str, resume_hint: str = ""):
        super().__init__(message)
        self.resume_hint = resume_hint


def require(module: str, extra: str, purpose: str):
    """Import an optional module or raise a one-line error naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtraError(
            f"{purpose} needs the '{module}' package: pip install 'compressor[{extra}]' ({exc})"
        ) from None
