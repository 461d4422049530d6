"""ReserveBatch, the natural batching of script calls, NOSCRIPT recovery and
the WAIT-for-replicas option, through a real budgetd and real Redis."""

from __future__ import annotations

import asyncio
import pathlib
import time
import uuid
from collections.abc import Iterator

import grpc
import pytest
import redis
from budgetd import windows as w
from budgetd.batching import MAX_IN_FLIGHT, ScriptBatcher
from budgetd.embedded import EmbeddedRedis
from budgetd.redis_conn import connect_redis
from budgetd.scripts import Scripts
from budgetd_client import (
    AsyncBudgetClient,
    BudgetError,
    BudgetUnavailable,
    CallPolicy,
    FailedPrecondition,
    InvalidRequest,
    Reservation,
)
from budgetd_client._proto.budget.v1 import budget_pb2 as pb
from budgetd_client._proto.budget.v1 import budget_pb2_grpc as pb_grpc
from cluster import wait_until
from conftest import Budgetd, keyspace, start_budgetd

DAY = "d20270315"


def batcher(b: Budgetd) -> ScriptBatcher:
    bt = b.thread.app.batcher
    assert bt is not None
    return bt


def item(scope: str, tokens: int = 10, **kw: object) -> dict[str, object]:
    return {"scope": scope, "model": "m", "tokens": tokens, "cost_micros": 1, **kw}


def test_reserve_batch_over_500_orgs_never_seen_answers_every_item(
        budgetd: Budgetd, r: redis.Redis) -> None:
    """Regression: each new org in a batch cost its own round trips (noting
    the org, loading its rules), all at once: 500 new orgs could exhaust the
    connection pool (items failed UNAVAILABLE). Now the batch notes them
    with one command and loads them in one pipeline."""
    r.config_resetstat()
    out = budgetd.client.reserve_batch([item(f"new{i}/t", 3) for i in range(500)])
    stats = r.info("commandstats")
    assert stats["cmdstat_sadd"]["calls"] == 1
    assert all(isinstance(x, Reservation) and x.allowed for x in out), [
        x for x in out if not isinstance(x, Reservation)][:3]
    assert r.scard("bd:orgs") >= 500
    assert int(r.hget(f"bd:{{new499}}:w:{DAY}", "r|new499/t|t") or 0) == 3


def test_reserve_batch_answers_each_item(budgetd: Budgetd, r: redis.Redis) -> None:
    budgetd.admin.set_budget("acme", "day", "tokens", 100)
    out = budgetd.client.reserve_batch([
        item("acme/t", 60),
        item("bad:org", 1),
        item("acme/t", 60),
        {"scope": "acme/t", "model": "no-such-model", "tokens": 5},
    ])
    assert len(out) == 4
    ok, bad, denied, unknown = out
    assert isinstance(ok, Reservation) and ok.allowed and ok.reserved_tokens == 60
    assert isinstance(bad, InvalidRequest) and "scope.org" in bad.message
    assert isinstance(denied, Reservation) and not denied.allowed
    assert denied.denial is not None and denied.denial.reserved == 60
    assert isinstance(unknown, FailedPrecondition) and "model" in unknown.message
    assert int(r.hget(f"bd:{{acme}}:w:{DAY}", "r|acme|t") or 0) == 60
    assert not r.exists("bd:{bad:org}:cfg")


def test_reserve_batch_bounds_name_the_field(budgetd: Budgetd, r: redis.Redis) -> None:
    stub = pb_grpc.BudgetServiceStub(budgetd.client.channel)
    before = keyspace(r)
    for n in (0, 501):
        reqs = [pb.ReserveRequest(request_id=f"r{i}", scope=pb.Scope(org="acme"), model="m")
                for i in range(n)]
        with pytest.raises(grpc.RpcError) as e:
            stub.ReserveBatch(pb.ReserveBatchRequest(requests=reqs), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "requests" in (e.value.details() or "")
    assert keyspace(r) == before


def test_reserve_batch_is_one_pipeline_and_idempotent(budgetd: Budgetd,
                                                      r: redis.Redis) -> None:
    b = budgetd
    b.client.reserve("acme/warm", "m", tokens=1, cost_micros=1)
    items = [item(f"acme/t{i % 7}", 2, request_id=f"req-{i}") for i in range(500)]
    ledger = b.thread.app.ledger
    assert ledger is not None
    b.thread.call(ledger.pricing.refresh(force=True))
    before = batcher(b).stats.batches
    first = b.client.reserve_batch(items)
    assert batcher(b).stats.batches - before == 1
    assert batcher(b).stats.largest >= 500
    assert all(isinstance(x, Reservation) and x.allowed for x in first)
    again = b.client.reserve_batch(items)
    assert [x.reservation_id for x in again] == [x.reservation_id for x in first]  # type: ignore[union-attr]
    assert int(r.hget(f"bd:{{acme}}:w:{DAY}", "r|acme|t") or 0) == 1 + 1000


def test_batching_is_free_when_idle_and_coalesces_under_load(budgetd: Budgetd) -> None:
    b = budgetd
    st = batcher(b).stats
    before, lingers, direct = st.batches, st.lingers, st.direct
    for _ in range(20):
        assert b.client.reserve("idle/t", "m", tokens=1, cost_micros=1).allowed
        time.sleep(0.005)  # light traffic: under 200 calls/s
    # One call at a time: each goes out alone, at once (never held back),
    # sent by its own handler's task.
    assert st.batches - before == 20
    assert st.lingers == lingers
    assert st.direct - direct == 20

    async def load() -> None:
        async with AsyncBudgetClient(b.address, policy=CallPolicy(timeout_s=10,
                                                                  total_timeout_s=20)) as c:
            sem = asyncio.Semaphore(64)

            async def one(i: int) -> None:
                async with sem:
                    await c.reserve(f"busy{i % 5}/t", "m", tokens=1, cost_micros=1)

            await asyncio.gather(*(one(i) for i in range(400)))

    before_b, before_c, direct = st.batches, st.calls, st.direct
    asyncio.run(load())
    calls, batches = st.calls - before_c, st.batches - before_b
    assert calls == 400
    assert batches < 0.9 * calls, (batches, calls)
    assert st.direct - direct < 0.1 * calls  # under load the pump gathers them


def test_connections_the_server_closed_while_idle_are_replaced_before_the_next_call(
        budgetd: Budgetd, r: redis.Redis) -> None:
    """The batcher keeps its connections between calls. When Redis closes
    them (a restart, CLIENT KILL, its idle timeout), the next calls connect
    again before sending: none fails (the client here does not retry). So do
    the pool's, which new orgs' first calls use: with redis-py 8.1's default
    maintenance-notification setting the pool handed them out closed."""
    b = budgetd

    async def burst() -> None:  # two pipelines in flight: both connections used
        async with AsyncBudgetClient(b.address, policy=CallPolicy(
                timeout_s=10, total_timeout_s=20, retries=0)) as c:
            await asyncio.gather(*(c.reserve(f"o{i}/t", "m", tokens=1, cost_micros=1)
                                   for i in range(64)))

    for _ in range(3):
        asyncio.run(burst())
        assert r.client_kill_filter(_type="normal", skipme=True) >= 1
        # Every connection was closed: the server's closing reaches budgetd.
        wait_until(lambda: len(r.client_list()) == 1, 5, "connections closed")
        time.sleep(0.1)
        for i in range(3):
            assert b.client.reserve(f"after{i}/t", "m", tokens=1, cost_micros=1).allowed
        asyncio.run(burst())


def test_an_outage_loses_none_of_the_batchers_connections(tmp_path: pathlib.Path) -> None:
    """Redis down: script calls fail, and a connection the batcher keeps
    that cannot reconnect stays the batcher's (not lost from the pool's
    count). Back up: calls pass on at most MAX_IN_FLIGHT kept connections."""
    server = EmbeddedRedis(tmp_path / "r", appendonly=False)
    server.start()

    async def run() -> None:
        client = connect_redis(server.url, 1.0)
        bt = ScriptBatcher(client)
        pool = client.connection_pool
        script = Scripts().org_tz
        keys = [w.rules_key("acme"), w.settings_key("acme")]

        async def calls(n: int) -> list[object]:
            return await asyncio.gather(*(bt.call(script, keys, []) for _ in range(n)),
                                        return_exceptions=True)

        assert not any(isinstance(x, BaseException) for x in await calls(64))
        assert 1 <= len(bt._conns) <= MAX_IN_FLIGHT
        await asyncio.to_thread(server.stop)
        for _ in range(4):
            out = await calls(8)
            assert all(isinstance(x, redis.exceptions.ConnectionError) for x in out), out
        await asyncio.to_thread(server.start)
        for _ in range(3):
            assert not any(isinstance(x, BaseException) for x in await calls(64))
        assert 1 <= len(bt._conns) <= MAX_IN_FLIGHT
        # Every connection the pool counts in use is one the batcher keeps.
        assert pool._in_use_connections == set(bt._conns)
        await client.aclose()

    try:
        asyncio.run(run())
    finally:
        server.stop()


def test_noscript_after_script_flush(budgetd: Budgetd, r: redis.Redis) -> None:
    assert budgetd.client.reserve("acme/t", "m", tokens=1, cost_micros=1).allowed
    r.script_flush()
    n0 = batcher(budgetd).stats.noscript
    assert budgetd.client.reserve("acme/t", "m", tokens=1, cost_micros=1).allowed
    assert batcher(budgetd).stats.noscript == n0 + 1


def test_without_batching_every_call_goes_direct(redis_server: EmbeddedRedis,
                                                 r: redis.Redis) -> None:
    b = start_budgetd(redis_server.url, redis_batch_max=0)
    try:
        assert b.thread.app.batcher is None
        out = b.client.reserve_batch([item("acme/t"), item("acme/u")])
        assert all(isinstance(x, Reservation) and x.allowed for x in out)
    finally:
        b.close()


@pytest.fixture()
def replicated(tmp_path: pathlib.Path) -> Iterator[tuple[EmbeddedRedis, EmbeddedRedis]]:
    master = EmbeddedRedis(tmp_path / "m", appendonly=False)
    master.start()
    replica = EmbeddedRedis(tmp_path / "r", appendonly=False,
                            extra_args=["--replicaof", "127.0.0.1", str(master.port)])
    try:
        replica.start()
        rep = redis.Redis(port=replica.port, decode_responses=True)
        wait_until(lambda: rep.info("replication")["master_link_status"] == "up", 20,
                   "replica in sync")
        rep.close()
        yield master, replica
    finally:
        replica.stop()
        master.stop()


def test_wait_replicas_acknowledges_only_replicated_writes(
        replicated: tuple[EmbeddedRedis, EmbeddedRedis]) -> None:
    master, replica = replicated
    b = start_budgetd(master.url, redis_wait_replicas=1, redis_wait_timeout_ms=2000)
    rep = redis.Redis(port=replica.port, decode_responses=True)
    try:
        rid = uuid.uuid4().hex
        res = b.client.reserve("acme/t", "m", tokens=5, cost_micros=1, request_id=rid)
        assert res.allowed
        # Acknowledged means on the replica already: no polling.
        assert rep.hget(f"bd:{{acme}}:q:{rid}", "state") == "held"
        # No replica: the write runs but is not acknowledged (UNAVAILABLE);
        # the same request_id later replays it, never charging twice.
        replica.stop()
        rid2 = uuid.uuid4().hex
        once = b.client.__class__(b.address, policy=CallPolicy(timeout_s=5, total_timeout_s=5,
                                                               retries=0))
        b.thread.app.settings.redis_wait_timeout_ms = 100
        bt = batcher(b)
        bt.wait_timeout_ms = 100
        with pytest.raises(BudgetUnavailable):
            once.reserve("acme/t", "m", tokens=5, cost_micros=1, request_id=rid2)
        assert bt.stats.wait_short >= 1
        m = redis.Redis(port=master.port, decode_responses=True)
        assert int(m.hget(f"bd:{{acme}}:w:{DAY}", "r|acme|t") or 0) == 10
        bt.wait_replicas = 0
        again = once.reserve("acme/t", "m", tokens=5, cost_micros=1, request_id=rid2)
        assert again.allowed
        assert int(m.hget(f"bd:{{acme}}:w:{DAY}", "r|acme|t") or 0) == 10
        m.close()
        once.close()
    finally:
        rep.close()
        b.close()


def test_batch_errors_are_budget_errors() -> None:
    from budgetd_client.errors import from_code

    e = from_code(grpc.StatusCode.UNAVAILABLE.value[0], "redis down")
    assert isinstance(e, BudgetUnavailable) and isinstance(e, BudgetError)
