"""Reservations recorded by the previous record layout (one hash field per
fact, the answer as JSON) keep working after an upgrade: a rolling deploy
leaves such records in Redis for up to their ttl plus retention, and a
retry, reconcile or expiry of one must not fail nor charge twice."""

from __future__ import annotations

import json

import pytest
import redis
from budgetd import orgcache
from budgetd.limits import RECORD_RETENTION_S
from budgetd_client import AlreadyExists, Usage
from conftest import T0, Budgetd, ms
from helpers import TEST_MODEL, set_test_pricing

ORG = "acme"
PATH = "acme/search"
DAY, MONTH = "d20270315", "m202703"
TTL_S = 300


def legacy_reserve(r: redis.Redis, rid: str, tokens: int, cost: int) -> None:
    """What the earlier reserve script left for a granted reservation:
    the record's separate fields, the reserved counters and the index."""
    now_ms = ms(T0)
    expires_ms = now_ms + TTL_S * 1000
    resp = json.dumps({"decision": "allowed", "model": TEST_MODEL, "tokens": str(tokens),
                       "cost": str(cost), "expires_ms": str(expires_ms), "remaining": {},
                       "crossings": {}, "alerts": {}})
    key = f"bd:{{{ORG}}}:q:{rid}"
    r.hset(key, mapping={
        "kind": "reserve", "scope": PATH, "model": TEST_MODEL,
        "estimate": f"x:{tokens}:{cost}", "ttl": str(TTL_S), "fallbacks": "", "batch": "0",
        "created_ms": str(now_ms), "state": "held", "granted": TEST_MODEL,
        "tokens": str(tokens), "cost": str(cost), "dwid": DAY, "mwid": MONTH,
        "dexp": "1999999999", "mexp": "1999999999", "paths": f"{ORG},{PATH}",
        "expires_ms": str(expires_ms), "resp": resp})
    r.expire(key, TTL_S + RECORD_RETENTION_S)
    for wid in (DAY, MONTH):
        for p in (ORG, PATH):
            r.hincrby(f"bd:{{{ORG}}}:w:{wid}", f"r|{p}|t", tokens)
            r.hincrby(f"bd:{{{ORG}}}:w:{wid}", f"r|{p}|c", cost)
    r.zadd(f"bd:{{{ORG}}}:exp", {rid: expires_ms})
    r.sadd("bd:orgs", ORG)


def counter(r: redis.Redis, wid: str, field: str) -> int:
    return int(r.hget(f"bd:{{{ORG}}}:w:{wid}", field) or 0)


@pytest.fixture()
def b(budgetd: Budgetd) -> Budgetd:
    set_test_pricing(budgetd.admin)
    budgetd.admin.set_budget(PATH, "day", "tokens", 10_000)
    return budgetd


def test_retry_of_a_legacy_reservation_replays_it_and_a_changed_one_is_refused(
        b: Budgetd, r: redis.Redis) -> None:
    legacy_reserve(r, "old-1", 400, 40)
    again = b.client.reserve(PATH, TEST_MODEL, tokens=400, cost_micros=40, request_id="old-1")
    assert again.allowed and again.reserved_tokens == 400
    assert again.reservation_id == f"{ORG}:old-1"
    assert counter(r, DAY, f"r|{PATH}|t") == 400  # replayed, not charged again
    with pytest.raises(AlreadyExists, match="model"):
        b.client.reserve(PATH, "other-model", tokens=400, cost_micros=40, request_id="old-1")
    with pytest.raises(AlreadyExists, match="estimate"):
        b.client.reserve(PATH, TEST_MODEL, tokens=401, cost_micros=40, request_id="old-1")


def test_legacy_reservation_reconciles_into_its_windows(b: Budgetd, r: redis.Redis) -> None:
    legacy_reserve(r, "old-2", 400, 40)
    s = b.client.reconcile(f"{ORG}:old-2", Usage(input_tokens=100, output_tokens=50))
    assert (s.state, s.reserved_tokens, s.actual_tokens) == ("reconciled", 400, 150)
    for wid in (DAY, MONTH):
        assert counter(r, wid, f"r|{PATH}|t") == 0
        assert counter(r, wid, f"u|{PATH}|t") == 150
    assert r.zscore(f"bd:{{{ORG}}}:exp", "old-2") is None
    # The retry of that reconcile is a replay.
    again = b.client.reconcile(f"{ORG}:old-2", Usage(input_tokens=100, output_tokens=50))
    assert again.state == "reconciled" and counter(r, DAY, f"u|{PATH}|t") == 150


def test_reports_add_the_report_hash_of_versions_before_0_2(b: Budgetd,
                                                            r: redis.Redis) -> None:
    """Before 0.2 a window's report counters had a hash of their own; now they
    are fields of the window's counter hash. A report reads both, so windows
    written before or during a rolling upgrade (old replicas still writing the
    old hash) read whole."""
    r.hset(f"bd:{{{ORG}}}:rep:{DAY}", mapping={
        f"sm|search|{TEST_MODEL}|i": 100, f"sm|search|{TEST_MODEL}|n": 1,
        f"sm|search|{TEST_MODEL}|c": 40, f"sm|other|{TEST_MODEL}|n": 2})
    rec = b.client.record(PATH, TEST_MODEL, Usage(input_tokens=20))
    assert rec.cost_micros > 0
    assert b.client.reserve(PATH, TEST_MODEL, tokens=5, cost_micros=1).allowed
    day = b.admin.get_usage_report(ORG, "day", "team")
    assert [(x.group, x.input_tokens, x.requests) for x in day.rows] == [
        ("other", 0, 2), ("search", 120, 3)]
    assert day.total.cost_micros == 40 + rec.cost_micros
    assert b.admin.get_usage_report(ORG, "month", "team").total.input_tokens == 20
    assert not r.exists(f"bd:{{{ORG}}}:rep:{MONTH}")  # this version writes none


def test_legacy_reservation_expires_by_the_sweep(b: Budgetd, r: redis.Redis) -> None:
    legacy_reserve(r, "old-3", 400, 40)
    b.clock.advance_s(TTL_S + 1)
    assert b.expire_now() == 1
    assert r.hget(f"bd:{{{ORG}}}:q:old-3", "state") == b"expired"
    # The default policy keeps the estimate as spent.
    assert (counter(r, DAY, f"r|{PATH}|t"), counter(r, DAY, f"u|{PATH}|t")) == (0, 400)


def test_an_org_configured_before_0_2_keeps_its_zone_and_rules_generation(
        budgetd: Budgetd, r: redis.Redis) -> None:
    """Before 0.2 the zone and the rules generation lived in the org's
    settings hash only (bd:{org}:cfg: tz, rgen), and replicas of that version
    still check them there during a rolling upgrade. A replica of this version
    copies the zone into the rules hash (where its reserve script checks it),
    and a rule change bumps both generations."""
    set_test_pricing(budgetd.admin)
    r.hset(f"bd:{{{ORG}}}:cfg", mapping={"tz": "Pacific/Auckland", "rgen": "3"})
    r.hset(f"bd:{{{ORG}}}:rules", f"{PATH}|d|t", "1000|h|50,75,90,100")
    r.sadd("bd:orgs", ORG)
    # T0 is 2027-03-15 12:00 UTC: 2027-03-16 in Auckland.
    assert budgetd.client.reserve(PATH, TEST_MODEL, tokens=600, cost_micros=1).allowed
    assert r.hget(f"bd:{{{ORG}}}:w:d20270316", f"r|{PATH}|t") == b"600"
    assert r.hget(f"bd:{{{ORG}}}:rules", "#c") == b"0 Pacific/Auckland"
    assert not budgetd.client.reserve(PATH, TEST_MODEL, tokens=600, cost_micros=1).allowed
    budgetd.admin.set_budget(PATH, "day", "tokens", 2000)
    assert r.hget(f"bd:{{{ORG}}}:cfg", "rgen") == b"4"
    assert r.hget(f"bd:{{{ORG}}}:rules", "#c") == b"1 Pacific/Auckland"
    assert budgetd.client.reserve(PATH, TEST_MODEL, tokens=600, cost_micros=1).allowed
    assert [(str(x.scope), x.limit) for x in budgetd.admin.list_budgets(ORG)] == [(PATH, 2000)]
    # Back to UTC: the copy goes (a missing zone is UTC).
    budgetd.admin.set_org_settings(ORG, time_zone="UTC")
    assert r.hget(f"bd:{{{ORG}}}:rules", "#c") == b"1"
    assert budgetd.client.reserve(PATH, TEST_MODEL, tokens=5, cost_micros=1).allowed
    assert r.hget(f"bd:{{{ORG}}}:w:{DAY}", f"r|{PATH}|t") == b"5"


def test_a_zone_an_older_replica_changes_reaches_this_one_when_it_reloads(
        budgetd: Budgetd, r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """An older replica sets the zone in the settings hash only; this one
    sees the two copies differ on its next load of the org, and copies it."""
    set_test_pricing(budgetd.admin)
    budgetd.admin.set_budget(PATH, "day", "tokens", 10_000)
    assert budgetd.client.reserve(PATH, TEST_MODEL, tokens=7, cost_micros=1).allowed
    r.hset(f"bd:{{{ORG}}}:cfg", "tz", "Pacific/Auckland")  # what the older replica writes
    assert budgetd.client.reserve(PATH, TEST_MODEL, tokens=8, cost_micros=1).allowed
    assert r.hget(f"bd:{{{ORG}}}:w:{DAY}", f"r|{PATH}|t") == b"15"  # cached: not yet
    # The org cache reloads an org after ORG_CACHE_S (monotonic time): now.
    monkeypatch.setattr(orgcache, "ORG_CACHE_S", 0.0)
    assert budgetd.client.reserve(PATH, TEST_MODEL, tokens=9, cost_micros=1).allowed
    assert r.hget(f"bd:{{{ORG}}}:w:d20270316", f"r|{PATH}|t") == b"9"
