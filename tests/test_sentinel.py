"""budgetd behind Sentinel: a real master, replica and sentinel; the master
is killed and budgetd serves again, through the promoted replica, within a
bounded time and without a restart."""

from __future__ import annotations

import pathlib
import time
from collections.abc import Iterator

import pytest
import redis
from budgetd_client import BudgetClient, BudgetError, CallPolicy, Usage
from cluster import LocalSentinel, wait_until
from conftest import start_budgetd

# down-after 1 s + election + promotion + client reconnect: well under this.
RECOVERY_BOUND_S = 10.0


@pytest.fixture()
def sentinel(tmp_path: pathlib.Path) -> Iterator[LocalSentinel]:
    s = LocalSentinel(tmp_path, down_after_ms=1000, failover_timeout_ms=3000).start()
    yield s
    s.stop()


def test_master_killed_budgetd_serves_again_within_bound(sentinel: LocalSentinel) -> None:
    b = start_budgetd(sentinel.url, redis_timeout_s=1.0)
    # One attempt per call here: the loop below measures recovery itself.
    once = BudgetClient(b.address, policy=CallPolicy(timeout_s=2, total_timeout_s=2,
                                                     retries=0))
    try:
        b.admin.set_budget("acme", "day", "tokens", 1_000_000)
        res = b.client.reserve("acme/t", "m", tokens=100, cost_micros=10)
        b.client.reconcile(res.reservation_id, Usage(input_tokens=60), cost_micros=6)
        # Replication is asynchronous here (no --redis-wait-replicas): let the
        # replica catch up so the test knows what must survive.
        m = redis.Redis(port=sentinel.master.port)
        assert sentinel.replica is not None
        rep = redis.Redis(port=sentinel.replica.port)
        offset = m.info("replication")["master_repl_offset"]
        wait_until(lambda: rep.info("replication")["slave_repl_offset"] >= offset, 10,
                   "replica caught up")
        m.close()
        rep.close()
        old_port = sentinel.master_port()
        assert sentinel.master.proc is not None
        sentinel.master.proc.kill()
        sentinel.master.proc.wait()
        killed_at = time.monotonic()

        def serving() -> bool:
            try:
                # A write (Reserve) and a read that sees the pre-kill reconcile.
                ok = once.reserve("acme/t", "m", tokens=1, cost_micros=1).allowed
                return ok and once.get_budget("acme").get("day", "tokens").used == 60
            except BudgetError:
                return False

        took = wait_until(serving, RECOVERY_BOUND_S, "budgetd serving after the failover")
        assert sentinel.master_port() != old_port
        assert took < RECOVERY_BOUND_S
        print(f"sentinel failover: budgetd served again {time.monotonic() - killed_at:.2f} s "
              "after the master was killed")
    finally:
        once.close()
        b.close()
