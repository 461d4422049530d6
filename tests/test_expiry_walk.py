"""The walk over every org that expires reservations a replica did not grant
itself (its granter died): spread over the full-sweep period, a share per
expiry interval, and complete within the period."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis
from budgetd.clock import ManualClock
from budgetd.config import Settings
from budgetd.embedded import EmbeddedRedis
from budgetd.ledger import Ledger
from budgetd.server import ServerThread
from budgetd_client import BudgetClient, CallPolicy, Reservation
from cluster import wait_until
from conftest import T0, ms, start_budgetd

ORGS = 400
SHARE = 0.25


@dataclass
class Idle:
    """A budgetd whose background loop ran once at start and then sleeps past
    the test: the test drives expiry itself."""

    thread: ServerThread
    clock: ManualClock
    ledger: Ledger

    def reserve_expiring(self, scopes: list[str], tokens: int) -> None:
        """One reservation per scope, each expiring after 1 s, then 2 s pass."""
        with BudgetClient(self.thread.address,
                          policy=CallPolicy(timeout_s=30, total_timeout_s=60)) as client:
            out = client.reserve_batch([{"scope": s, "model": "m", "tokens": tokens,
                                         "cost_micros": 1, "ttl_seconds": 1} for s in scopes])
            assert all(isinstance(x, Reservation) and x.allowed for x in out)
        self.clock.advance_s(2)


@pytest.fixture()
def idle(r: redis.Redis, redis_server: EmbeddedRedis) -> Iterator[Idle]:
    b = start_budgetd(redis_server.url, expiry_interval_s=3600)
    try:
        assert b.thread.app.ledger is not None
        yield Idle(b.thread, b.clock, b.thread.app.ledger)
    finally:
        b.close()


def test_the_walk_expires_every_org_in_shares(idle: Idle, r: redis.Redis) -> None:
    thread, ledger = idle.thread, idle.ledger
    idle.reserve_expiring([f"w{i}/t" for i in range(ORGS)], tokens=5)
    first = int(thread.call(ledger.expire_walk(SHARE)))
    # One step visits about a share of the orgs, not all of them.
    assert 0 < first <= ORGS // 2, first
    total, steps = first, 1
    while total < ORGS:
        total += int(thread.call(ledger.expire_walk(SHARE)))
        steps += 1
        assert steps <= math.ceil(1 / SHARE) + 1, (steps, total)
    assert total == ORGS
    assert all(r.zcard(f"bd:{{w{i}}}:exp") == 0 for i in range(ORGS))
    assert all(int(r.hget(f"bd:{{w{i}}}:w:d20270315", "r|w{i}/t|t") or 0) == 0
               for i in range(ORGS))


@pytest.mark.parametrize("flag", ["--expiry-interval-s", "--expiry-full-sweep-s"])
@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_an_interval_that_is_not_positive_exits_2_naming_the_flag(flag: str,
                                                                   value: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "budgetd.cli", "serve", flag, value],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert f"argument {flag}: expected a number of seconds > 0" in proc.stderr


def test_one_process_of_all_replicas_walks_and_another_takes_over_when_it_stops(
        r: redis.Redis, redis_server: EmbeddedRedis) -> None:
    """Each walk costs Redis a command per org: with N replicas walking it
    would cost N times that. One holds the lease; when it stops renewing,
    another walks within the lease (1 s at an expiry interval of 0.2 s)."""
    clock = ManualClock(ms(T0))
    settings = Settings(listen="127.0.0.1:0", redis_url=redis_server.url,
                        expiry_interval_s=0.2, expiry_full_sweep_s=0.4, redis_timeout_s=5.0)
    a = ServerThread(settings, clock).start()
    b = ServerThread(settings, clock).start()
    stopped = []
    try:
        wait_until(lambda: r.get("bd:walker") is not None, 10, "a walker")
        holder = r.get("bd:walker")
        time.sleep(1.0)  # five renewals later: still the same holder
        assert r.get("bd:walker") == holder
        walker = a if holder == a.app.walker_id.encode() else b
        assert holder in (a.app.walker_id.encode(), b.app.walker_id.encode())
        # The other replica's reservations are left to the walk once the
        # walker stops: the survivor must take the walk over.
        with BudgetClient(walker.address, policy=CallPolicy(timeout_s=10)) as client:
            got = client.reserve("gone/t", "m", tokens=7, cost_micros=1, ttl_seconds=1)
            assert got.allowed
        walker.stop()
        stopped.append(walker)
        clock.advance_s(2)
        wait_until(lambda: r.zcard("bd:{gone}:exp") == 0, 10, "the survivor's walk")
        assert r.get("bd:walker") != holder
        assert int(r.hget("bd:{gone}:w:d20270315", "r|gone/t|t") or 0) == 0
    finally:
        for t in (a, b):
            if t not in stopped:
                t.stop()


def test_each_expiry_run_does_bounded_work_per_org(idle: Idle, r: redis.Redis) -> None:
    """One script call expires at most EXPIRE_BATCH reservations of an org
    (a bounded Redis step), and the org is visited again for the rest."""
    from budgetd.limits import EXPIRE_BATCH

    thread, ledger = idle.thread, idle.ledger
    idle.reserve_expiring(["one/t"] * (EXPIRE_BATCH + 50), tokens=2)
    r.config_resetstat()
    assert thread.call(ledger.expire_org("one")) == EXPIRE_BATCH
    assert r.zcard("bd:{one}:exp") == 50
    # The sweep of the due second comes back for the rest.
    assert thread.call(ledger.expire_active()) == 50
    assert r.zcard("bd:{one}:exp") == 0
    assert int(r.info("commandstats")["cmdstat_evalsha"]["calls"]) == 2
    assert int(r.hget("bd:{one}:w:d20270315", "r|one/t|t") or 0) == 0
