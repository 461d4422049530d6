"""A reserve script call leaves as bytes the ledger joins from runs encoded
once per org and day (resp.py), not as a command encoded whole. The bytes
must be exactly the command its plain keys and arguments make (which the
cluster path, the NOSCRIPT fallback and the benches send): any difference
would reach Redis as other arguments."""

from __future__ import annotations

import asyncio
from typing import Any

import hiredis
import pytest
import redis.asyncio as aioredis
from budgetd import resp, validate
from budgetd.batching import ScriptBatcher
from budgetd.clock import SystemClock
from budgetd.embedded import EmbeddedRedis
from budgetd.ledger import Ledger, PricingSource
from budgetd.scripts import Script, ScriptCall
from budgetd_client._proto.budget.v1 import budget_pb2 as pb
from conftest import Budgetd
from helpers import TEST_MODEL, TEST_SMALL, set_test_pricing

ORG = "acme"


class Recorder(ScriptBatcher):
    """Keeps what each reserve call would send, then sends it."""

    def __init__(self, r: Any) -> None:
        super().__init__(r)
        self.sent: list[tuple[list[str], list[Any], bytes | None]] = []

    async def call(self, script: Script, keys: list[str], args: list[str | int],
                   encoded: bytes | None = None) -> Any:
        if script.name == "reserve":
            self.sent.append((keys, args, encoded))
        return await super().call(script, keys, args, encoded)

    async def call_many(self, script: Script, calls: list[ScriptCall]) -> list[Any]:
        if script.name == "reserve":
            self.sent += calls
        return await super().call_many(script, calls)


def request(scope: str, i: int, fallbacks: tuple[str, ...] = ()) -> pb.ReserveRequest:
    org, _, rest = scope.partition("/")
    team, _, feature = rest.partition("/")
    req = pb.ReserveRequest(request_id=f"r{i}", scope=pb.Scope(org=org, team=team,
                                                               feature=feature),
                            model=TEST_MODEL, ttl_seconds=60 + i,
                            fallback_models=list(fallbacks))
    req.estimate.explicit.tokens = 100 + i
    req.estimate.explicit.cost_micros = 7 * i
    return req


async def reserve_all(url: str, reqs: list[pb.ReserveRequest]) -> Recorder:
    r = aioredis.from_url(url)
    ledger = Ledger(r, SystemClock(), PricingSource(r))
    rec = Recorder(r)
    ledger.scripts.attach(rec)
    try:
        for q in reqs[:4]:
            assert (await ledger.reserve(validate.reserve(q))).flat.startswith("a ")
        for a in await ledger.reserve_many([validate.reserve(q) for q in reqs[4:]]):
            assert not isinstance(a, BaseException) and a.flat.startswith("a "), a
    finally:
        await r.aclose()
    return rec


def test_an_encoded_reserve_call_is_its_plain_command(budgetd: Budgetd,
                                                       redis_server: EmbeddedRedis,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    set_test_pricing(budgetd.admin)
    for scope in (ORG, f"{ORG}/search", f"{ORG}/search/rerank"):
        for window in ("day", "month"):
            for unit in ("tokens", "cost_micros"):
                budgetd.admin.set_budget(scope, window, unit, 10**12)
    scopes = [ORG, f"{ORG}/search", f"{ORG}/search/rerank", f"{ORG}/other", "bare/x/y"]
    reqs = [request(s, i, fallbacks=(TEST_SMALL,) if i % 2 else ())
            for i, s in enumerate(scopes * 2)]
    rec = asyncio.run(reserve_all(redis_server.url, reqs))
    assert len(rec.sent) == len(reqs)
    sha = Script("reserve").sha
    for keys, args, encoded in rec.sent:
        plain = ("EVALSHA", sha, len(keys), *keys, *args)
        assert encoded == hiredis.pack_command(plain)
    # The same without hiredis (its pure-Python stand-in).
    monkeypatch.setattr(resp, "_pack", None)
    keys, args, encoded = rec.sent[2]  # 3 levels, 12 rules
    assert len(args) == 78
    assert resp.command(("EVALSHA", sha, len(keys), *keys, *args)) == encoded
