"""The ``compress`` command line of this process, for hints that repeat it (``resume with: …``)."""

from __future__ import annotations

import shlex
from typing import Optional

_COMMAND_LINE: Optional[list[str]] = None


def set_command_line(argv: Optional[list[str]]) -> None:
    """Remember the ``compress`` arguments of this process (the CLI calls this)."""
    global _COMMAND_LINE
    _COMMAND_LINE = list(argv) if argv is not None else None


def command_line_hint(argv: Optional[list[str]] = None) -> str:
    """``compress …`` with every flag as given, plus ``--resume`` and without ``--force``; empty when unknown or
    not a ``run``."""
    args = _COMMAND_LINE if argv is None else argv
    if not args or args[0] != "run":
        return ""
    args = [a for a in args if a != "--force"]
    if "--resume" not in args:
        args.append("--resume")
    return " ".join(["compress"] + [shlex.quote(a) for a in args])
