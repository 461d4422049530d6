"""Lua scripts: each its own .lua file under scripts/, loaded once and called
by SHA, with a fallback to SCRIPT LOAD on NOSCRIPT (the script cache is not
persisted nor replicated: a restart or failover empties it)."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from budgetd import metrics

if TYPE_CHECKING:
    from budgetd.batching import ScriptBatcher

# One call of a script: its keys, its arguments, and the whole command as the
# caller encoded it (resp.py), or None.
ScriptCall = tuple[list[str], Sequence[Any], "bytes | None"]


_DEFINITION = re.compile(r"local (?:function )?([A-Za-z_][A-Za-z0-9_]*)")
_COMMENT = re.compile(r"--[^\n]*")


def _lib_chunks(lib: str) -> list[tuple[str, str]]:
    """_lib.lua cut into its top-level definitions: (name, text from the
    comment lines right above it to the next definition's), in file order."""
    lines = lib.splitlines(keepends=True)
    starts: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        m = _DEFINITION.match(line)
        if m:
            begin = i
            while begin > 0 and lines[begin - 1].startswith("--"):
                begin -= 1
            starts.append((begin, m.group(1)))
    return [(name, "".join(lines[begin:starts[k + 1][0] if k + 1 < len(starts) else None]))
            for k, (begin, name) in enumerate(starts)]


# Where a script wants its helpers, if not first: a line of its own. Each
# helper is a closure made on every call that reaches its definition, so a
# script that needs them only on a rare path puts them there (reserve.lua).
HELPERS_MARKER = re.compile(r"^[ \t]*-- @helpers\b.*$", re.M)


def _source(name: str) -> str:
    """The script with the helpers it uses (transitively) prepended, or put
    at its HELPERS_MARKER line: each helper the script does not use would
    cost a closure on every call."""
    pkg = resources.files("budgetd") / "scripts"
    lib = (pkg / "_lib.lua").read_text()
    body = (pkg / f"{name}.lua").read_text()
    chunks = _lib_chunks(lib)
    needed: set[str] = set()
    text = _COMMENT.sub("", body)
    while True:
        more = {n for n, _ in chunks if n not in needed and re.search(rf"\b{n}\b", text)}
        if not more:
            break
        needed |= more
        text = _COMMENT.sub("", "\n".join(c for n, c in chunks if n in needed))
    used = "".join(c for n, c in chunks if n in needed)
    marker = HELPERS_MARKER.search(body)
    if marker is None:
        return f"{used}\n{body}"
    assert len(HELPERS_MARKER.findall(body)) == 1, f"{name}.lua: one {HELPERS_MARKER.pattern}"
    return f"{body[:marker.end()]}\n{used}{body[marker.end():]}"


class Script:
    """One Lua script, called by SHA."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = _source(name)
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()
        # Set by Scripts.attach: calls on the batcher's client go through it.
        self.batcher: ScriptBatcher | None = None
        # The label never changes: look the child up once, not per call.
        self._latency = metrics.REDIS_SCRIPT_LATENCY.labels(name)

    async def __call__(self, client: Any, keys: list[str], args: Sequence[Any], *,
                       batched: bool = True, encoded: bytes | None = None) -> Any:
        """batched=False: straight to Redis, not through the batcher (a
        background call, kept out of the request pipelines and their stats).
        encoded: the EVALSHA command as the caller encoded it (resp.py), which
        the batcher sends as it is to a single server."""
        start = time.perf_counter()
        b = self.batcher
        try:
            if batched and b is not None and client is b.redis:
                return await b.call(self, keys, args, encoded)
            try:
                return await client.evalsha(self.sha, len(keys), *keys, *args)
            except NoScriptError:
                # NOSCRIPT means it did not run. EVAL runs it once and caches it,
                # on the node that owns the keys.
                return await client.eval(self.source, len(keys), *keys, *args)
        except RedisError as e:
            metrics.REDIS_SCRIPT_ERRORS.labels(self.name, _error_kind(e)).inc()
            raise
        finally:
            self._latency.observe(time.perf_counter() - start)

    async def many(self, client: Any, calls: list[ScriptCall]) -> list[Any]:
        """Several calls at once, in one pipeline when a batcher serves the
        client: each call's reply, or its exception, in order."""
        b = self.batcher
        if b is None or client is not b.redis:
            # Each call observes its own latency and errors.
            return list(await asyncio.gather(*(self(client, k, a) for k, a, _ in calls),
                                             return_exceptions=True))
        start = time.perf_counter()
        out = await b.call_many(self, calls)
        elapsed = time.perf_counter() - start
        for r in out:
            self._latency.observe(elapsed)
            if isinstance(r, RedisError):
                metrics.REDIS_SCRIPT_ERRORS.labels(self.name, _error_kind(r)).inc()
        return out


def _error_kind(e: RedisError) -> str:
    return ("timeout" if isinstance(e, RedisTimeoutError) else
            "connection" if isinstance(e, RedisConnectionError) else "error")


class Scripts:
    """All scripts of the service."""

    def __init__(self) -> None:
        self.reserve = Script("reserve")
        self.settle = Script("settle")
        self.record = Script("record")
        self.expire = Script("expire")
        self.drift_alert = Script("drift_alert")
        self.rules = Script("rules")
        self.walker = Script("walker")
        self.org_tz = Script("org_tz")

    def attach(self, batcher: ScriptBatcher | None) -> None:
        """Route every script call on `batcher.redis` through the batcher
        (None: direct calls again)."""
        for s in self.all():
            s.batcher = batcher

    def all(self) -> list[Script]:
        return [self.reserve, self.settle, self.record, self.expire, self.drift_alert,
                self.rules, self.walker, self.org_tz]
