"""Replicas cache an org's rules and zone (budgetd/orgcache.py); a change
made through another replica applies to the very next Reserve everywhere:
the reserve script compares the cached rules generation and zone with the
stored ones."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import redis
from budgetd.clock import ManualClock
from budgetd.config import Settings
from budgetd.embedded import EmbeddedRedis
from budgetd.orgcache import lua_number
from budgetd.server import ServerThread
from budgetd_client import AdminClient, BudgetClient, CallPolicy
from conftest import T0, ms
from helpers import TEST_MODEL, set_test_pricing

POLICY = CallPolicy(timeout_s=10, total_timeout_s=20, retries=0)


@pytest.fixture()
def replicas(r: redis.Redis, redis_server: EmbeddedRedis
             ) -> Iterator[tuple[BudgetClient, AdminClient, AdminClient]]:
    """A client of replica A, and admin clients of replicas A and B."""
    threads = []
    for _ in range(2):
        settings = Settings(listen="127.0.0.1:0", redis_url=redis_server.url,
                            redis_timeout_s=5.0)
        threads.append(ServerThread(settings, ManualClock(ms(T0))).start())
    a, b = threads
    client = BudgetClient(a.address, policy=POLICY)
    admin_a = AdminClient(a.address, policy=POLICY)
    admin_b = AdminClient(b.address, policy=POLICY)
    set_test_pricing(admin_a)
    yield client, admin_a, admin_b
    for c in (client, admin_a, admin_b):
        c.close()
    for t in threads:
        t.stop()


def test_rule_changed_on_another_replica_applies_to_the_next_reserve(
        replicas: tuple[BudgetClient, AdminClient, AdminClient]) -> None:
    client, admin_a, admin_b = replicas
    admin_a.set_budget("acme/search", "day", "tokens", 1000)
    assert client.reserve("acme/search/x", TEST_MODEL, tokens=300, cost_micros=1).allowed
    # A now caches a 1000-token rule; B lowers it to 500.
    admin_b.set_budget("acme/search", "day", "tokens", 500)
    denied = client.reserve("acme/search/x", TEST_MODEL, tokens=300, cost_micros=1)
    assert not denied.allowed
    assert denied.denial is not None and denied.denial.limit == 500
    # A rule added on B at another level binds at once too.
    admin_b.set_budget("acme", "month", "tokens", 100)
    admin_b.delete_budget("acme/search", "day", "tokens")
    denied = client.reserve("acme/search/x", TEST_MODEL, tokens=150, cost_micros=1)
    assert denied.denial is not None and (str(denied.denial.scope), denied.denial.limit) == (
        "acme", 100)
    # And a deleted one stops binding at once.
    admin_b.delete_budget("acme", "month", "tokens")
    assert client.reserve("acme/search/x", TEST_MODEL, tokens=5000, cost_micros=1).allowed


def test_zone_changed_on_another_replica_moves_the_day_window_at_once(
        replicas: tuple[BudgetClient, AdminClient, AdminClient], r: redis.Redis) -> None:
    client, admin_a, admin_b = replicas
    admin_a.set_budget("acme", "day", "tokens", 10_000)
    assert client.reserve("acme/t", TEST_MODEL, tokens=10, cost_micros=1).allowed
    assert r.exists("bd:{acme}:w:d20270315")
    # T0 is 2027-03-15 12:00 UTC: 2027-03-16 already in Auckland (UTC+13).
    admin_b.set_org_settings("acme", time_zone="Pacific/Auckland")
    assert client.reserve("acme/t", TEST_MODEL, tokens=10, cost_micros=1).allowed
    assert int(r.hget("bd:{acme}:w:d20270316", "r|acme|t") or 0) == 10


def test_setting_the_same_rule_again_changes_nothing(
        replicas: tuple[BudgetClient, AdminClient, AdminClient], r: redis.Redis) -> None:
    _, admin_a, admin_b = replicas
    admin_a.set_budget("acme", "day", "tokens", 10_000)
    gen = r.hget("bd:{acme}:rules", "#c")
    admin_b.set_budget("acme", "day", "tokens", 10_000)
    assert r.hget("bd:{acme}:rules", "#c") == gen
    admin_b.set_budget("acme", "day", "tokens", 9_000)
    assert int(r.hget("bd:{acme}:rules", "#c") or 0) == int(gen or 0) + 1
    # An org with no settings of its own has no settings hash (Redis memory).
    assert not r.exists("bd:{acme}:cfg")
    assert [(str(x.scope), x.limit) for x in admin_a.list_budgets("acme")] == [("acme", 9_000)]


def test_the_orgs_a_replica_remembers_are_bounded_and_every_org_still_reaches_the_sweeper(
        r: redis.Redis, redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch) -> None:
    from budgetd import ledger as ledger_mod

    monkeypatch.setattr(ledger_mod, "MAX_KNOWN_ORGS", 3)
    settings = Settings(listen="127.0.0.1:0", redis_url=redis_server.url, redis_timeout_s=5.0)
    thread = ServerThread(settings, ManualClock(ms(T0))).start()
    try:
        with BudgetClient(thread.address, policy=POLICY) as client, \
                AdminClient(thread.address, policy=POLICY) as admin:
            set_test_pricing(admin)
            orgs = [f"org{i}" for i in range(10)]
            for org in orgs:
                assert client.reserve(f"{org}/t", TEST_MODEL, tokens=1, cost_micros=1).allowed
            # The expiry sweeper walks bd:orgs: every org is there.
            assert {m.decode() for m in r.smembers("bd:orgs")} == set(orgs)
            assert len(thread.app.ledger._known_orgs) <= 3
            # An org the replica forgot is noted again when it comes back.
            r.delete("bd:orgs")
            assert client.reserve("org0/t", TEST_MODEL, tokens=1, cost_micros=1).allowed
            assert r.sismember("bd:orgs", "org0")
    finally:
        thread.stop()


def test_limits_reach_the_script_as_the_same_numbers(r: redis.Redis) -> None:
    """Limits and threshold amounts go to the reserve script with their
    trailing zeros as an exponent: Lua must read each as the same number."""
    rng = random.Random(7)
    ns = [0, 1, 10, 100, 101, 1000, 10**15, 2**53, 2**53 + 1, 9 * 10**18, 2**63 - 1]
    ns += [rng.randrange(1, 10**6) * 10 ** rng.randrange(0, 13) for _ in range(300)]
    compact = [lua_number(n) for n in ns]
    assert compact[:6] == ["0", "1", "10", "1e2", "101", "1e3"]
    same = r.eval("for i = 1, #ARGV, 2 do if ARGV[i] + 0 ~= ARGV[i + 1] + 0 then "
                  "return ARGV[i] end end return 'ok'", 0,
                  *[x for n, c in zip(ns, compact, strict=True) for x in (str(n), c)])
    assert same == b"ok"
