"""Commands for another machine over SSH, built as argument lists: nothing a file name, a flag value or a recipe
holds reaches a shell unquoted, and no ssh option can make ssh run a local command.

* :func:`check_host`: ``[user@]host``, no leading ``-`` (ssh would read it as an option), no spaces or shell
  characters.
* :func:`ssh_options`: ``-o`` pairs from an allow-list of ssh_config keywords (:data:`ALLOWED`). Options that run
  a local command (``ProxyCommand``, ``LocalCommand``, ``PermitLocalCommand``, ``KnownHostsCommand``, ``Match
  exec``), read another configuration (``Include``) or forward ports are refused with one line.
* :func:`remote_argv`: the command line the remote shell receives, every piece through :func:`shlex.quote`.
* :func:`ssh_command` / :func:`scp_command`: the local argument lists (run without a local shell).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Optional, Sequence

from .errors import UserError

# ssh_config keywords that only choose how to connect and authenticate; compared case-insensitively
ALLOWED = {
    k.lower(): k
    for k in (
        "AddressFamily",
        "BatchMode",
        "BindAddress",
        "CheckHostIP",
        "Ciphers",
        "Compression",
        "ConnectionAttempts",
        "ConnectTimeout",
        "GlobalKnownHostsFile",
        "HashKnownHosts",
        "HostKeyAlgorithms",
        "HostKeyAlias",
        "HostbasedAuthentication",
        "IdentitiesOnly",
        "IdentityFile",
        "IPQoS",
        "KbdInteractiveAuthentication",
        "KexAlgorithms",
        "LogLevel",
        "MACs",
        "NumberOfPasswordPrompts",
        "PasswordAuthentication",
        "Port",
        "PreferredAuthentications",
        "PubkeyAcceptedAlgorithms",
        "PubkeyAcceptedKeyTypes",
        "PubkeyAuthentication",
        "RekeyLimit",
        "ServerAliveCountMax",
        "ServerAliveInterval",
        "StrictHostKeyChecking",
        "TCPKeepAlive",
        "UpdateHostKeys",
        "User",
        "UserKnownHostsFile",
        "VerifyHostKeyDNS",
    )
}
# named in the error line, so that a user sees why these in particular are refused
RUNS_LOCAL = ("ProxyCommand", "LocalCommand", "PermitLocalCommand", "KnownHostsCommand", "Match", "Include")

_HOST = re.compile(r"^(?:[A-Za-z0-9._+-]+@)?(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])$")
_VALUE = re.compile(r"^[A-Za-z0-9 ._,:/@%+=~*?!^-]*$")
_PROGRAM = re.compile(r"^~?[A-Za-z0-9._/+-]+$")


def check_host(host: object, key: str = "--host") -> str:
    """``[user@]host`` for ssh, or a one-line :class:`UserError`."""
    if not isinstance(host, str) or not host or host.startswith("-") or not _HOST.match(host):
        raise UserError(
            f"{key}: {str(host)[:80]!r} is not [user@]host (letters, digits, '.', '-', '_'; not starting with '-')"
        )
    return host


def check_ssh_option(option: object, key: str = "--ssh-option") -> tuple[str, str]:
    """``Keyword=value`` (or ``Keyword value``) with an allowed keyword; returns (keyword, value)."""
    if not isinstance(option, str) or "\n" in option or "\r" in option or "\0" in option:
        raise UserError(f"{key}: {str(option)[:80]!r} is not a single 'Keyword=value' option")
    m = re.match(r"^\s*([A-Za-z]+)\s*(?:=|\s)\s*(.*?)\s*$", option)
    if not m:
        raise UserError(f"{key}: {option[:80]!r} is not 'Keyword=value' (e.g. StrictHostKeyChecking=accept-new)")
    word, value = m.group(1), m.group(2)
    if word.lower() not in ALLOWED:
        runs = word.lower() in {r.lower() for r in RUNS_LOCAL}
        raise UserError(
            f"{key}: ssh option {word!r} is not allowed"
            + (" (it makes ssh run a local command or read other configuration)" if runs else "")
            + "; allowed: IdentityFile, Port, User, StrictHostKeyChecking, UserKnownHostsFile, ConnectTimeout and "
            + f"{len(ALLOWED) - 6} more connection options (compressor.remote.ALLOWED)"
        )
    if not value or not _VALUE.match(value):
        raise UserError(f"{key}: the value of {word} ({value[:80]!r}) is empty or holds characters ssh would expand")
    return ALLOWED[word.lower()], value


def ssh_options(options: Sequence[str], key: str = "--ssh-option") -> list[str]:
    """``-o Keyword=value`` pairs for ssh and scp, each checked against :data:`ALLOWED`."""
    out: list[str] = []
    for o in options or ():
        word, value = check_ssh_option(o, key)
        out += ["-o", f"{word}={value}"]
    return out


def check_program(program: object, key: str = "--remote-compress") -> str:
    """The remote ``compress`` command: a path (``~/venv/bin/compress``) without shell characters."""
    if not isinstance(program, str) or not _PROGRAM.match(program) or program.startswith("-"):
        raise UserError(
            f"{key}: {str(program)[:80]!r} is not a program path (letters, digits, '/', '.', '-', '_', '~')"
        )
    return program


def remote_argv(argv: Sequence[str]) -> str:
    """The one string ssh hands to the remote shell: every piece quoted. A leading ``~/`` of the program stays
    unquoted so that the remote shell expands it (the rest of the path is checked by :func:`check_program`)."""
    if not argv:
        raise ValueError("empty remote command")
    prog, rest = str(argv[0]), [shlex.quote(str(a)) for a in argv[1:]]
    head = "~/" + shlex.quote(prog[2:]) if prog.startswith("~/") else shlex.quote(prog)
    return " ".join([head] + rest)


def _port_args(flag: str, port: Optional[int]) -> list[str]:
    if port is None:
        return []
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise UserError(f"--port: expected 1 to 65535, got {port!r}")
    return [flag, str(port)]


BASE = ["-o", "BatchMode=yes", "-o", "PermitLocalCommand=no", "-o", "ClearAllForwardings=yes"]


def ssh_command(host: str, argv: Sequence[str], port: Optional[int] = None, options: Sequence[str] = ()) -> list[str]:
    """``ssh … -- host 'quoted command'`` as an argument list."""
    return ["ssh", *BASE, *ssh_options(options), *_port_args("-p", port), "--", check_host(host), remote_argv(argv)]


def scp_command(
    sources: Sequence[str], dest: str, port: Optional[int] = None, options: Sequence[str] = ()
) -> list[str]:
    """``scp -q … -- sources dest``; local paths are made absolute so that none reads as ``host:path``."""
    fixed = [s if _is_remote(s) else str(Path(s).resolve()) for s in sources]
    dest = dest if _is_remote(dest) else str(Path(dest).resolve())
    return ["scp", "-q", *BASE, *ssh_options(options), *_port_args("-P", port), "--", *fixed, dest]


def _is_remote(spec: str) -> bool:
    host, sep, _ = spec.partition(":")
    return bool(sep) and not host.startswith("/") and _HOST.match(host) is not None


def safe_name(name: str) -> str:
    """A file name for the remote side: letters, digits, '.', '-', '_' only (nothing the remote shell or scp's
    legacy protocol would read)."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".-") or "model"
    return stem[:120]
