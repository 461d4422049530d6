"""Redis commands in RESP, the protocol's encoding, from runs of arguments
encoded once.

Most of a reserve script call's ~50-90 arguments are the same on every call
of a scope (its rules, counter names): kept encoded with the scope's cached
rules, they leave a call to encode only the rest (~26: keys, window ids, the
request's own), at ~140 ns per argument (hiredis, this host)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    _pack = importlib.import_module("hiredis").pack_command
except ImportError:  # hiredis is a dependency (redis[hiredis]); stay correct without
    _pack = None

Arg = str | int | bytes


def encode(args: Sequence[Arg]) -> bytes:
    """Arguments as they follow a command's "*<count>" header."""
    if not args:
        return b""
    if _pack is not None:
        out = _pack(tuple(args))
        return out[out.index(b"\r\n") + 2:]
    parts = []
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


def command(args: Sequence[Arg]) -> bytes:
    """A whole command: its arguments after the header."""
    return b"*%d\r\n" % len(args) + encode(args)


def join(count: int, *runs: bytes) -> bytes:
    """A command of `count` arguments from encoded runs of them."""
    return b"*%d\r\n" % count + b"".join(runs)


def decode(run: bytes) -> list[bytes]:
    """The arguments of an encoded run, none of which may hold CR LF."""
    return run.split(b"\r\n")[1::2]
