"""Alerts through real gRPC and a real Redis: decided in the Lua scripts,
exactly once per (rule, window, threshold), returned by the call that crossed
them, appended to the org's stream and served by WatchAlerts."""

from __future__ import annotations

import datetime as dt
import queue
import re
import threading
import time
from collections import Counter
from importlib import resources
from typing import Any

import pytest
import redis
from budgetd.clock import ManualClock
from budgetd.config import Settings
from budgetd.embedded import EmbeddedRedis
from budgetd.limits import DEFAULT_ALERT_THRESHOLDS
from budgetd.server import ServerThread
from budgetd_client import AdminClient, Alert, CallPolicy, InvalidRequest, Usage
from budgetd_client._proto.budget.v1 import budget_pb2 as pb
from conftest import T0, Budgetd, keyspace, ms
from helpers import TEST_MODEL, set_test_pricing

STREAM = "bd:{acme}:alerts"


@pytest.fixture()
def b(budgetd: Budgetd) -> Budgetd:
    set_test_pricing(budgetd.admin)
    return budgetd


def stream(r: redis.Redis, key: str = STREAM) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in f.items()} | {"id": i.decode()}
            for i, f in r.xrange(key)]


def thresholds(entries: list[dict[str, str]]) -> list[tuple[str, str, str]]:
    return sorted((e["path"], e["kind"], e["th"]) for e in entries)


def test_64_racing_reservers_fire_each_threshold_exactly_once(b: Budgetd,
                                                              r: redis.Redis) -> None:
    b.admin.set_budget("acme/search", "day", "tokens", 6400)
    b.admin.set_budget("acme", "month", "cost_micros", 10_000,
                       alert_thresholds_percent=[10, 33])
    n = 64
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def reserve(i: int) -> None:
        barrier.wait()
        # 150 tokens each: 64 * 150 = 9600 asked, 6400 allowed at most.
        results[i] = b.client.reserve("acme/search/q", TEST_MODEL, tokens=150,
                                      cost_micros=100, request_id=f"race-{i}")

    threads = [threading.Thread(target=reserve, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    allowed = [x for x in results if x.allowed]
    assert len(allowed) == 6400 // 150  # 42: the HARD rule held
    entries = stream(r)
    assert thresholds(entries) == [
        ("acme", "threshold", "10"), ("acme", "threshold", "33"),
        ("acme/search", "threshold", "50"), ("acme/search", "threshold", "75"),
        ("acme/search", "threshold", "90")]  # 100% is out of reach: 42 * 150 = 6300
    # Each alert came back in exactly one response: the one that crossed it.
    returned = [a for x in allowed for a in x.raw.alerts]
    assert sorted(a.id for a in returned) == sorted(e["id"] for e in entries)
    by_id = {e["id"]: e for e in entries}
    for x in allowed:
        for a in x.raw.alerts:
            e = by_id[a.id]
            assert a.request_id == x.request_id == e["rid"]
            assert a.kind == "threshold" and a.threshold_percent == int(e["th"])
            assert a.consumed == int(e["consumed"]) >= a.limit * a.threshold_percent / 100
            assert a.fired_at.ToMilliseconds() == ms(T0)
    search50 = next(a for x in allowed for a in x.raw.alerts
                    if a.scope.team == "search" and a.threshold_percent == 50)
    assert (search50.window, search50.unit, search50.mode, search50.limit,
            search50.window_id, search50.consumed) == (
        pb.WINDOW_DAY, pb.UNIT_TOKENS, pb.MODE_HARD, 6400, "2027-03-15", 3300)
    # More traffic in the same window fires nothing again.
    b.client.release(allowed[0].reservation_id)
    again = b.client.reserve("acme/search/q", TEST_MODEL, tokens=150, cost_micros=60)
    assert again.allowed and list(again.raw.alerts) == []
    assert len(stream(r)) == len(entries)


def test_soft_rule_alerts_instead_of_denying(b: Budgetd, r: redis.Redis) -> None:
    b.admin.set_budget("acme/t", "day", "tokens", 1000, mode="soft")
    first = b.client.reserve("acme/t", TEST_MODEL, tokens=600, cost_micros=1)
    assert first.allowed
    assert [(a.kind, a.threshold_percent) for a in first.alerts] == [("threshold", 50)]
    over = b.client.reserve("acme/t", TEST_MODEL, tokens=600, cost_micros=1)
    assert over.allowed  # SOFT: allowed past the limit ...
    kinds = sorted((a.kind, a.threshold_percent) for a in over.alerts)
    assert kinds == [("soft_over_limit", 100), ("threshold", 75), ("threshold", 90),
                     ("threshold", 100)]  # ... with an alert instead
    soft = next(a for a in over.raw.alerts if a.kind == "soft_over_limit")
    assert (soft.mode, soft.limit, soft.consumed) == (pb.MODE_SOFT, 1000, 1200)
    assert [c.mode for c in over.raw.crossings] == [pb.MODE_SOFT]
    third = b.client.reserve("acme/t", TEST_MODEL, tokens=600, cost_micros=1)
    assert third.allowed and list(third.raw.alerts) == []
    assert len(stream(r)) == 5


def test_shadow_rule_records_would_deny_events_and_counts(b: Budgetd, r: redis.Redis) -> None:
    b.admin.set_budget("acme/t", "day", "tokens", 1000, mode="shadow",
                       alert_thresholds_percent=[100])
    ok = b.client.reserve("acme/t/f", TEST_MODEL, tokens=800, cost_micros=1)
    assert ok.allowed and list(ok.raw.alerts) == []
    would = b.client.reserve("acme/t/f", TEST_MODEL, tokens=800, cost_micros=1)
    assert would.allowed
    assert sorted(a.kind for a in would.alerts) == ["shadow_would_deny", "threshold"]
    ev = next(a for a in would.raw.alerts if a.kind == "shadow_would_deny")
    assert (ev.mode, ev.scope.team, ev.limit, ev.consumed, ev.request_id) == (
        pb.MODE_SHADOW, "t", 1000, 1600, would.request_id)
    more = b.client.reserve("acme/t/f", TEST_MODEL, tokens=800, cost_micros=1)
    assert more.allowed and list(more.raw.alerts) == []  # the event fires once per window
    report = b.admin.get_usage_report("acme", "day", "team")
    row = report.row("t")
    # Every request a HARD rule would have denied is counted.
    assert (row.requests, row.denials, row.shadow_denials) == (3, 0, 2)
    assert len(stream(r)) == 2


def test_mixed_modes_on_one_path_alert_in_rule_order_and_deny_by_the_first_hard_rule(
        b: Budgetd, r: redis.Redis) -> None:
    # Org SHADOW, team SOFT (both on tokens), feature HARD on cost, and a HARD
    # org month token limit: one call sees every kind of rule at once.
    b.admin.set_budget("acme", "day", "tokens", 1000, mode="shadow")
    b.admin.set_budget("acme/t", "day", "tokens", 500, mode="soft")
    b.admin.set_budget("acme/t/f", "day", "cost_micros", 10, alert_thresholds_percent=[80])
    b.admin.set_budget("acme", "month", "tokens", 2000)
    both = b.client.reserve("acme/t/f", TEST_MODEL, tokens=1200, cost_micros=5)
    assert both.allowed
    # Both crossings, in rule order (org before team), then the thresholds
    # reached (the defaults: 50..100 % of both day rules, 50 % of the month's).
    assert [(a.kind, a.scope.team) for a in both.alerts[:2]] == [
        ("shadow_would_deny", ""), ("soft_over_limit", "t")]
    assert sorted((a.scope.team, a.window, a.threshold_percent)
                  for a in both.alerts[2:]) == sorted(
        [(team, "day", th) for team in ("", "t") for th in (50, 75, 90, 100)]
        + [("", "month", 50)])
    assert [c.mode for c in both.raw.crossings] == [pb.MODE_SHADOW, pb.MODE_SOFT]
    # The feature's cost rule (HARD) fits 5 more exactly, and its 80% is reached.
    at = b.client.reserve("acme/t/f", TEST_MODEL, tokens=100, cost_micros=5)
    assert at.allowed
    assert [(a.kind, a.threshold_percent) for a in at.alerts] == [("threshold", 80)]
    # Past both HARD rules: the denial names the first one in rule order (org
    # month tokens, before feature day cost), with what it had seen.
    before = keyspace(r)
    denied = b.client.reserve("acme/t/f", TEST_MODEL, tokens=800, cost_micros=1)
    assert not denied.allowed and denied.denial is not None
    d = denied.denial
    assert (str(d.scope), d.window, d.unit, d.limit, d.reserved, d.requested) == (
        "acme", "month", "tokens", 2000, 1300, 800)
    assert {k for k in keyspace(r) if k not in before} == {
        f"bd:{{acme}}:q:{denied.request_id}".encode()}
    # Both grants passed the SHADOW rule (each counts; its event fired once).
    row = b.admin.get_usage_report("acme", "day", "team").row("t")
    assert (row.requests, row.denials, row.shadow_denials) == (2, 1, 2)


def test_alerts_fire_again_in_the_next_window_only(b: Budgetd, r: redis.Redis) -> None:
    b.admin.set_budget("acme", "day", "tokens", 100, alert_thresholds_percent=[50])
    b.admin.set_budget("acme", "month", "tokens", 5_000, alert_thresholds_percent=[1])
    first = b.client.reserve("acme", TEST_MODEL, tokens=60, cost_micros=1)
    assert sorted((a.window, a.window_id) for a in first.raw.alerts) == [
        (pb.WINDOW_DAY, "2027-03-15"), (pb.WINDOW_MONTH, "2027-03")]
    b.client.reconcile(first.reservation_id, Usage(input_tokens=60))
    b.clock.set_ms(ms(T0 + dt.timedelta(days=1)))
    nxt = b.client.reserve("acme", TEST_MODEL, tokens=60, cost_micros=1)
    assert [(a.window, a.window_id) for a in nxt.raw.alerts] == [(pb.WINDOW_DAY, "2027-03-16")]
    # Markers live exactly as long as the window's counters (EXPIREAT).
    assert r.expiretime("bd:{acme}:fired:d20270316") == r.expiretime("bd:{acme}:w:d20270316")
    assert r.expiretime("bd:{acme}:fired:m202703") == r.expiretime("bd:{acme}:w:m202703") > 0


def test_reconcile_and_record_return_the_alerts_they_cross(b: Budgetd, r: redis.Redis) -> None:
    b.admin.set_budget("acme/t", "day", "tokens", 1000)
    res = b.client.reserve("acme/t", TEST_MODEL, tokens=100, cost_micros=1)
    assert list(res.raw.alerts) == []
    # The actual usage is far above the estimate: it was spent, and it alerts.
    s = b.client.reconcile(res.reservation_id, Usage(input_tokens=700, output_tokens=100))
    assert [(a.threshold_percent, a.consumed, a.request_id) for a in s.raw.alerts] == [
        (50, 800, res.request_id), (75, 800, res.request_id)]
    # A retried reconcile answers the same, and fires nothing again.
    again = b.client.reconcile(res.reservation_id, Usage(input_tokens=700, output_tokens=100))
    assert [a.id for a in again.raw.alerts] == [a.id for a in s.raw.alerts]
    rec = b.client.record("acme/t", TEST_MODEL, Usage(input_tokens=250), request_id="imp-1")
    assert [a.threshold_percent for a in rec.raw.alerts] == [90, 100]
    assert len(stream(r)) == 4


def test_default_thresholds_are_stored_implicitly_and_fire(b: Budgetd, r: redis.Redis) -> None:
    """A rule with the default thresholds stores none (Redis memory per rule),
    and still has and fires all of them, in reserve and in reconcile."""
    b.admin.set_budget("acme/t", "day", "tokens", 1000)
    b.admin.set_budget("acme/t", "month", "tokens", 1000, alert_thresholds_percent=[60])
    assert r.hmget("bd:{acme}:rules", "acme/t|d|t", "acme/t|m|t") == [b"1000|h|", b"1000|h|60"]
    assert {x.window: x.alert_thresholds_percent for x in b.admin.list_budgets("acme")} == {
        "day": DEFAULT_ALERT_THRESHOLDS, "month": (60,)}
    res = b.client.reserve("acme/t", TEST_MODEL, tokens=550, cost_micros=1)
    assert [(a.window, a.threshold_percent) for a in res.alerts] == [("day", 50)]
    s = b.client.reconcile(res.reservation_id, Usage(input_tokens=950))
    assert [(a.window, a.threshold_percent) for a in s.alerts] == [
        ("day", 75), ("day", 90), ("month", 60)]
    # The reserve and reconcile scripts agree with the server on the defaults.
    lib = (resources.files("budgetd") / "scripts" / "_lib.lua").read_text()
    m = re.search(r"^local DEFAULT_THRESHOLDS = '([0-9,]+)'$", lib, re.M)
    assert m and tuple(int(t) for t in m[1].split(",")) == DEFAULT_ALERT_THRESHOLDS


def _watch(address: str, org: str, after_id: str, want: int,
           timeout_s: float = 20) -> tuple[list[Alert], threading.Thread]:
    got: list[Alert] = []
    admin = AdminClient(address, policy=CallPolicy(retries=0))

    def run() -> None:
        try:
            for a in admin.watch_alerts(org, after_id, timeout_s=timeout_s):
                got.append(a)
                if len(got) >= want:
                    return
        finally:
            admin.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return got, t


def test_watch_alerts_streams_new_alerts_and_resumes_from_an_id(b: Budgetd) -> None:
    b.admin.set_budget("acme", "day", "tokens", 1000, alert_thresholds_percent=[10, 20, 30, 40])
    early = b.client.reserve("acme", TEST_MODEL, tokens=150, cost_micros=1)
    assert [a.threshold_percent for a in early.raw.alerts] == [10]
    got, t = _watch(b.address, "acme", "", want=3)
    time.sleep(0.5)  # the watcher has taken the stream's end as its cursor
    later = b.client.reserve("acme", TEST_MODEL, tokens=250, cost_micros=1)
    t.join(timeout=20)
    assert not t.is_alive()
    # Only new alerts, in order, with the fields the reserve answered.
    assert [a.threshold_percent for a in got] == [20, 30, 40]
    assert [a.id for a in got] == [a.id for a in later.raw.alerts]
    assert (got[0].kind, str(got[0].scope), got[0].window, got[0].unit, got[0].consumed) == (
        "threshold", "acme", "day", "tokens", 400)
    # Resuming after the first alert replays exactly what came after it.
    first_id = early.raw.alerts[0].id
    resumed, t2 = _watch(b.address, "acme", first_id, want=3)
    t2.join(timeout=20)
    assert [a.id for a in resumed] == [a.id for a in later.raw.alerts]
    everything, t3 = _watch(b.address, "acme", "0", want=4)
    t3.join(timeout=20)
    assert [a.threshold_percent for a in everything] == [10, 20, 30, 40]


def test_watch_alerts_ends_cleanly_on_server_shutdown(r: redis.Redis,
                                                      redis_server: EmbeddedRedis) -> None:
    settings = Settings(listen="127.0.0.1:0", redis_url=redis_server.url, redis_timeout_s=5.0)
    thread = ServerThread(settings, ManualClock(ms(T0))).start()
    out: queue.Queue[object] = queue.Queue()
    admin = AdminClient(thread.address, policy=CallPolicy(retries=0))

    def run() -> None:
        try:
            out.put(list(admin.watch_alerts("acme")))
        except Exception as e:  # reported to the test thread
            out.put(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    time.sleep(0.5)
    started = time.monotonic()
    thread.stop()
    result = out.get(timeout=10)
    admin.close()
    assert result == []  # the stream ended with OK, not an error
    assert time.monotonic() - started < 2.0  # not after a whole blocking read


@pytest.mark.parametrize(("org", "after_id", "field"), [
    ("", "", "org"), ("ac{me}", "", "org"), ("acme", "abc", "after_id"),
    ("acme", "1-2-3", "after_id"), ("acme", "$", "after_id"), ("acme", "9" * 30, "after_id"),
])
def test_watch_alerts_bad_input_is_invalid_argument(b: Budgetd, r: redis.Redis, org: str,
                                                    after_id: str, field: str) -> None:
    b.admin.set_budget("acme", "day", "tokens", 100)
    b.client.reserve("acme", TEST_MODEL, tokens=60, cost_micros=1)
    before = keyspace(r)
    with pytest.raises(InvalidRequest) as e:
        list(b.admin.watch_alerts(org, after_id, timeout_s=5))
    assert f"{field}:" in e.value.message
    assert keyspace(r) == before


def test_alert_fields_survive_the_stream(b: Budgetd) -> None:
    """The stored answer and the stream carry the same alert (replays too)."""
    b.admin.set_budget("acme/t/f", "month", "cost_micros", 1000, alert_thresholds_percent=[100])
    res = b.client.reserve("acme/t/f", TEST_MODEL, tokens=10, cost_micros=1000,
                           request_id="r1")
    replay = b.client.reserve("acme/t/f", TEST_MODEL, tokens=10, cost_micros=1000,
                              request_id="r1")
    assert list(replay.raw.alerts) == list(res.raw.alerts)
    assert Counter(a.kind for a in res.raw.alerts) == {"threshold": 1}
    a = res.raw.alerts[0]
    assert (a.scope.org, a.scope.team, a.scope.feature, a.window_id, a.unit) == (
        "acme", "t", "f", "2027-03", pb.UNIT_COST_MICROS)


def test_the_alert_stream_is_capped(b: Budgetd, r: redis.Redis) -> None:
    """Each org's alert stream is capped near 10,000 entries (XADD MAXLEN ~):
    an org that has fired alerts for years holds the newest ones, not all."""
    cap = 10_000
    pipe = r.pipeline(transaction=False)
    for i in range(cap + 500):
        pipe.xadd(STREAM, {"kind": "threshold", "path": "acme", "w": "d", "u": "t",
                           "mode": "h", "th": "50", "limit": "10", "consumed": "5",
                           "wid": "d20270101", "at": "1", "rid": f"old{i}"})
    pipe.execute()
    b.admin.set_budget("acme/search", "day", "tokens", 1000, alert_thresholds_percent=[50])
    res = b.client.reserve("acme/search", TEST_MODEL, tokens=600, cost_micros=1)
    assert [a.threshold_percent for a in res.raw.alerts] == [50]
    # '~' trims whole stream nodes (100 entries each here): at most one node over.
    assert cap <= r.xlen(STREAM) <= cap + 100
    newest = r.xrevrange(STREAM, count=1)[0]
    assert newest[0].decode() == res.raw.alerts[0].id
