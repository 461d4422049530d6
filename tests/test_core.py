"""The core engine through real gRPC and a real Redis: hierarchy, idempotency,
reconcile, release, window boundaries, expiry, fallback models."""

from __future__ import annotations

import datetime as dt
import time
from collections import defaultdict
from typing import Any

import pytest
import redis
from budgetd.limits import DENIED_RETENTION_S, RECORD_RETENTION_S
from budgetd.windows import request_key
from budgetd_client import AlreadyExists, FailedPrecondition, NotFound, Usage
from conftest import T0, Budgetd, keyspace, ms
from helpers import TEST_BIG, TEST_MODEL, TEST_SMALL, set_test_pricing


def counters(r: redis.Redis, org: str, window_id: str) -> defaultdict[str, int]:
    """The budget counters of one window (not its report counters, sm|...);
    a missing counter is 0, as the scripts read it."""
    raw = r.hgetall(f"bd:{{{org}}}:w:{window_id}")
    return defaultdict(int, {k.decode(): int(v) for k, v in raw.items()
                             if not k.startswith(b"sm|")})


@pytest.fixture()
def b(budgetd: Budgetd) -> Budgetd:
    set_test_pricing(budgetd.admin)
    return budgetd


@pytest.mark.parametrize("level", ["org", "team", "feature"])
def test_hard_limit_at_each_level_denies_and_names_it(b: Budgetd, r: redis.Redis,
                                                      level: str) -> None:
    scope = {"org": "acme", "team": "acme/search", "feature": "acme/search/rerank"}[level]
    b.admin.set_budget(scope, "day", "tokens", 1000)
    ok = b.client.reserve("acme/search/rerank", TEST_MODEL, tokens=600, cost_micros=1)
    assert ok.allowed and ok.reserved_tokens == 600
    before = keyspace(r)
    denied = b.client.reserve("acme/search/rerank", TEST_MODEL, tokens=600, cost_micros=1)
    assert not denied.allowed
    assert denied.reservation_id == ""
    d = denied.denial
    assert d is not None
    assert str(d.scope) == scope
    assert (d.window, d.unit, d.limit, d.used, d.reserved, d.requested) == (
        "day", "tokens", 1000, 0, 600, 600)
    # The report counters count the denial (tests/test_reports.py); nothing else moves.
    before, after = budget_state(before), budget_state(keyspace(r))
    # Only the denied request's own record was added: no counter changed.
    added = set(after) - set(before)
    assert added == {f"bd:{{acme}}:q:{denied.request_id}".encode()}
    assert {k: v for k, v in after.items() if k in before} == before


def budget_state(keys: dict[bytes, Any]) -> dict[bytes, Any]:
    """The keyspace without the usage report counters (sm|... fields of the
    window hashes), which count every request, denials too."""
    out: dict[bytes, Any] = {}
    for k, (kind, value, ttl) in keys.items():
        if kind == b"hash" and b":w:" in k:
            value = {f: v for f, v in value.items() if not f.startswith(b"sm|")}
        out[k] = (kind, value, ttl)
    return out


def test_cost_limit_and_month_window_deny(b: Budgetd) -> None:
    b.admin.set_budget("acme/search", "month", "cost_micros", 5000)
    # 1000 input + 1000 output = 1000 + 2000 micro-USD.
    first = b.client.reserve("acme/search/x", TEST_MODEL, input_tokens=1000,
                             max_output_tokens=1000)
    assert first.allowed and first.reserved_cost_micros == 3000
    second = b.client.reserve("acme/search/y", TEST_MODEL, input_tokens=1000,
                              max_output_tokens=1000)
    assert not second.allowed
    assert second.denial is not None
    assert (second.denial.window, second.denial.unit) == ("month", "cost_micros")
    assert (second.denial.reserved, second.denial.requested) == (3000, 3000)


def test_levels_without_rules_accumulate(b: Budgetd) -> None:
    res = b.client.reserve("acme/t1/f1", TEST_MODEL, input_tokens=100, max_output_tokens=50)
    assert res.allowed
    b.client.reconcile(res.reservation_id, Usage(input_tokens=100, output_tokens=20))
    for scope in ("acme", "acme/t1", "acme/t1/f1"):
        st = b.client.get_budget(scope)
        day = st.get("day", "tokens")
        assert not day.has_limit
        assert (day.used, day.reserved) == (120, 0)
        assert st.get("month", "cost_micros").used == 100 + 40
    assert b.client.get_budget("acme/t2").get("day", "tokens").used == 0


def test_counters_past_2_53_are_still_charged_exactly(b: Budgetd, r: redis.Redis) -> None:
    """Lua numbers are doubles: a reserved counter that no HARD rule caps may
    grow past 2^53, where a double cannot hold every integer. Such a counter
    is charged with Redis's 64-bit HINCRBY, exactly."""
    b.admin.set_budget("acme/t1", "day", "tokens", 1_000_000)
    huge = 2**53 + 1
    for key in ("bd:{acme}:w:d20270315", "bd:{acme}:w:m202703"):
        r.hset(key, mapping={"r|acme|t": huge, "r|acme|c": huge})
    res = b.client.reserve("acme/t1", TEST_MODEL, tokens=5, cost_micros=3)
    assert res.allowed
    for key in ("bd:{acme}:w:d20270315", "bd:{acme}:w:m202703"):
        assert r.hmget(key, "r|acme|t", "r|acme|c", "r|acme/t1|t", "r|acme/t1|c") == [
            str(huge + 5).encode(), str(huge + 3).encode(), b"5", b"3"]


def test_window_counters_outlive_their_window_for_reports(b: Budgetd, r: redis.Redis) -> None:
    """Day counters are kept >= 35 days after their day, month counters >= 13
    months after their month (reports read them), then Redis drops them."""
    assert b.client.reserve("acme/t1", TEST_MODEL, tokens=5, cost_micros=3).allowed
    utc = dt.timezone.utc
    day_end = dt.datetime(2027, 3, 16, tzinfo=utc).timestamp()
    month_end = dt.datetime(2027, 4, 1, tzinfo=utc).timestamp()
    assert r.expiretime("bd:{acme}:w:d20270315") == day_end + 36 * 86_400
    assert r.expiretime("bd:{acme}:w:m202703") == month_end + 400 * 86_400


def test_reserved_counters_are_deleted_when_they_settle_back_to_zero(b: Budgetd,
                                                                     r: redis.Redis) -> None:
    """Most scopes hold nothing most of the time: a reserved counter that
    reconcile, release or expiry brings back to 0 is deleted (Redis memory per
    scope), reads as 0, and the next reservation starts from 0. The window
    keeps its expiry through it."""
    day, month = "bd:{acme}:w:d20270315", "bd:{acme}:w:m202703"

    def reserved_fields(key: str) -> dict[str, int]:
        return {f.decode(): int(v) for f, v in r.hgetall(key).items() if f.startswith(b"r|")}

    a = b.client.reserve("acme/t1", TEST_MODEL, tokens=5, cost_micros=3)
    c = b.client.reserve("acme/t1", TEST_MODEL, tokens=7, cost_micros=2, ttl_seconds=60)
    assert a.allowed and c.allowed
    b.client.release(a.reservation_id)
    assert reserved_fields(day) == {"r|acme|t": 7, "r|acme|c": 2, "r|acme/t1|t": 7,
                                    "r|acme/t1|c": 2}
    b.clock.advance_s(61)
    assert b.expire_now() == 1  # c: kept as spent
    for key in (day, month):
        assert reserved_fields(key) == {}
        assert r.hmget(key, "u|acme/t1|t", "u|acme/t1|c") == [b"7", b"2"]
    assert b.client.get_budget("acme/t1").get("day", "tokens").reserved == 0
    d = b.client.reserve("acme/t1", TEST_MODEL, tokens=9, cost_micros=1)
    assert reserved_fields(month) == {"r|acme|t": 9, "r|acme|c": 1, "r|acme/t1|t": 9,
                                      "r|acme/t1|c": 1}
    b.client.reconcile(d.reservation_id, Usage(input_tokens=4), cost_micros=1)
    assert reserved_fields(day) == reserved_fields(month) == {}
    assert r.hget(day, "u|acme/t1|t") == b"11"
    utc = dt.timezone.utc
    assert r.expiretime(day) == dt.datetime(2027, 3, 16, tzinfo=utc).timestamp() + 36 * 86_400
    assert r.expiretime(month) == dt.datetime(2027, 4, 1, tzinfo=utc).timestamp() + 400 * 86_400


def test_remaining_reported_per_level_window_unit(b: Budgetd) -> None:
    b.admin.set_budget("acme", "month", "tokens", 10_000)
    b.admin.set_budget("acme/t1", "day", "cost_micros", 9_000)
    res = b.client.reserve("acme/t1", TEST_MODEL, input_tokens=1000, max_output_tokens=1000)
    got = {(str(x.scope), x.window, x.unit): x.remaining for x in res.remaining}
    assert got == {("acme", "month", "tokens"): 8000,
                   ("acme/t1", "day", "cost_micros"): 6000}


def test_reserve_is_idempotent(b: Budgetd) -> None:
    b.admin.set_budget("acme", "day", "tokens", 10_000)
    a = b.client.reserve("acme/t", TEST_MODEL, input_tokens=100, max_output_tokens=100,
                         request_id="req-1")
    again = b.client.reserve("acme/t", TEST_MODEL, input_tokens=100, max_output_tokens=100,
                             request_id="req-1")
    assert again.raw == a.raw
    assert b.client.get_budget("acme").get("day", "tokens").reserved == 200


def test_request_records_are_kept_for_their_retention(b: Budgetd, r: redis.Redis) -> None:
    """A granted record outlives its hold by the record retention, a denied
    one is kept for the denied retention: both counted from the server's
    clock (here stopped at T0), as the windows are."""
    b.admin.set_budget("acme", "day", "tokens", 1_000)
    b.client.reserve("acme/t", TEST_MODEL, input_tokens=100, max_output_tokens=100,
                     request_id="granted", ttl_seconds=120)
    denied = b.client.reserve("acme/t", TEST_MODEL, input_tokens=5_000, max_output_tokens=100,
                              request_id="denied")
    assert not denied.allowed
    granted_until_ms = ms(T0) + (120 + RECORD_RETENTION_S) * 1000
    assert r.pexpiretime(request_key("acme", "granted")) == granted_until_ms
    assert r.pexpiretime(request_key("acme", "denied")) == ms(T0) + DENIED_RETENTION_S * 1000


@pytest.mark.parametrize("change,field", [
    ({"scope": "acme/other"}, "scope"),
    ({"model": TEST_SMALL}, "model"),
    ({"input_tokens": 101}, "estimate"),
    ({"ttl_seconds": 60}, "ttl_seconds"),
    ({"fallback_models": [TEST_SMALL]}, "fallback_models"),
])
def test_same_request_id_different_content_is_already_exists(b: Budgetd, change: dict[str, object],
                                                             field: str) -> None:
    base: dict[str, object] = dict(scope="acme/t", model=TEST_MODEL, input_tokens=100,
                                   max_output_tokens=100, request_id="req-2")
    b.client.reserve(**base)  # type: ignore[arg-type]
    with pytest.raises(AlreadyExists, match=field):
        b.client.reserve(**{**base, **change})  # type: ignore[arg-type]
    assert b.client.get_budget("acme").get("day", "tokens").reserved == 200


def test_reconcile_release_record_are_idempotent(b: Budgetd) -> None:
    res = b.client.reserve("acme/t", TEST_MODEL, input_tokens=100, max_output_tokens=100)
    u = Usage(input_tokens=80, output_tokens=30)
    s1 = b.client.reconcile(res.reservation_id, u)
    s2 = b.client.reconcile(res.reservation_id, u)
    assert s1.raw == s2.raw and s1.state == "reconciled"
    with pytest.raises(AlreadyExists, match="usage"):
        b.client.reconcile(res.reservation_id, Usage(input_tokens=81, output_tokens=30))
    st = b.client.get_budget("acme").get("day", "tokens")
    assert (st.used, st.reserved) == (110, 0)

    res2 = b.client.reserve("acme/t", TEST_MODEL, input_tokens=100, max_output_tokens=100)
    r1 = b.client.release(res2.reservation_id)
    r2 = b.client.release(res2.reservation_id)
    assert r1.raw == r2.raw and r1.state == "released" and r1.reserved_tokens == 200
    st = b.client.get_budget("acme").get("day", "tokens")
    assert (st.used, st.reserved) == (110, 0)

    rec1 = b.client.record("acme/t", TEST_MODEL, u, request_id="imp-1")
    rec2 = b.client.record("acme/t", TEST_MODEL, u, request_id="imp-1")
    assert rec1.raw == rec2.raw and rec1.tokens == 110
    with pytest.raises(AlreadyExists, match="usage"):
        b.client.record("acme/t", TEST_MODEL, Usage(input_tokens=1), request_id="imp-1")
    with pytest.raises(AlreadyExists, match="request_id"):
        b.client.reserve("acme/t", TEST_MODEL, tokens=1, cost_micros=1, request_id="imp-1")
    assert b.client.get_budget("acme").get("day", "tokens").used == 220


def test_reconcile_up_and_down_with_cache_tokens(b: Budgetd) -> None:
    res = b.client.reserve("acme/t", TEST_MODEL, input_tokens=1000, max_output_tokens=1000)
    assert (res.reserved_tokens, res.reserved_cost_micros) == (2000, 3000)
    # Up: more than estimated, with cache writes (5m and 1h) and reads.
    up = Usage(input_tokens=1500, output_tokens=2000, cache_creation_input_tokens=3000,
               ephemeral_5m_input_tokens=1000, ephemeral_1h_input_tokens=2000,
               cache_read_input_tokens=10_000)
    s = b.client.reconcile(res.reservation_id, up)
    # 1500*1 + 2000*2 + 1000*1.25 + 2000*2 + 10000*0.1 = 1500+4000+1250+4000+1000
    assert (s.actual_tokens, s.actual_cost_micros) == (16_500, 11_750)
    st = b.client.get_budget("acme/t")
    assert (st.get("day", "tokens").used, st.get("day", "tokens").reserved) == (16_500, 0)
    assert st.get("month", "cost_micros").used == 11_750

    # Down: less than estimated; cache writes without the split count as 5m.
    res2 = b.client.reserve("acme/t", TEST_MODEL, input_tokens=1000, max_output_tokens=1000)
    s2 = b.client.reconcile(res2.reservation_id, Usage(input_tokens=10, output_tokens=5,
                                                       cache_creation_input_tokens=8))
    assert (s2.actual_tokens, s2.actual_cost_micros) == (23, 10 + 10 + 10)
    st = b.client.get_budget("acme/t")
    assert st.get("day", "tokens").used == 16_523
    assert st.get("month", "cost_micros").used == 11_780
    assert st.get("month", "cost_micros").reserved == 0


def test_release_restores_exactly(b: Budgetd, r: redis.Redis) -> None:
    b.admin.set_budget("acme", "day", "tokens", 10_000)
    before = b.client.get_budget("acme/t/f")
    res = b.client.reserve("acme/t/f", TEST_MODEL, input_tokens=123, max_output_tokens=456)
    mid = b.client.get_budget("acme/t/f").get("day", "tokens")
    assert mid.reserved == 579
    b.client.release(res.reservation_id)
    after = b.client.get_budget("acme/t/f")
    assert [(w.used, w.reserved) for w in after.windows] == [
        (w.used, w.reserved) for w in before.windows]
    assert b.client.get_budget("acme").get("day", "tokens").remaining == 10_000


def test_reconcile_after_day_and_month_end_adjusts_the_old_windows(b: Budgetd,
                                                                    r: redis.Redis) -> None:
    b.clock.set_ms(ms(dt.datetime(2027, 3, 31, 23, 59, 59, tzinfo=dt.timezone.utc)))
    res = b.client.reserve("acme/t", TEST_MODEL, input_tokens=100, max_output_tokens=100,
                           ttl_seconds=3600)
    b.clock.advance_s(2)  # 2027-04-01 00:00:01
    s = b.client.reconcile(res.reservation_id, Usage(input_tokens=100, output_tokens=50))
    assert not s.late
    for wid in ("d20270331", "m202703"):
        c = counters(r, "acme", wid)
        assert c["u|acme|t"] == 150 and c["r|acme|t"] == 0, wid
        assert c["u|acme/t|c"] == 200
    assert counters(r, "acme", "d20270401") == {}
    assert counters(r, "acme", "m202704") == {}
    now = b.client.get_budget("acme").get("month", "tokens")
    assert (now.window_id, now.used, now.reserved) == ("2027-04", 0, 0)


def test_windows_follow_the_org_time_zone(b: Budgetd, r: redis.Redis) -> None:
    b.admin.set_org_settings("acme", time_zone="America/New_York")
    # 03:30 UTC on April 1st is still March 31st in New York.
    b.clock.set_ms(ms(dt.datetime(2027, 4, 1, 3, 30, tzinfo=dt.timezone.utc)))
    res = b.client.reserve("acme", TEST_MODEL, tokens=10, cost_micros=10)
    assert res.allowed
    assert counters(r, "acme", "d20270331")["r|acme|t"] == 10
    st = b.client.get_budget("acme")
    assert st.time_zone == "America/New_York"
    day = st.get("day", "tokens")
    assert day.window_id == "2027-03-31"
    assert day.resets_at == dt.datetime(2027, 4, 1, 4, 0, tzinfo=dt.timezone.utc)


def _wait_for(pred, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.mark.parametrize("policy", ["keep", "release"])
def test_expiry_without_traffic(b: Budgetd, r: redis.Redis, policy: str) -> None:
    b.admin.set_org_settings("acme", expiry_policy=policy)
    res = b.client.reserve("acme/t", TEST_MODEL, input_tokens=100, max_output_tokens=100,
                           ttl_seconds=30)
    wid = "d20270315"
    assert counters(r, "acme", wid)["r|acme/t|t"] == 200
    b.clock.advance_s(31)
    # No further calls: the server's own sweeper settles it.
    _wait_for(lambda: counters(r, "acme", wid)["r|acme/t|t"] == 0)
    c = counters(r, "acme", wid)
    assert c.get("u|acme/t|t", 0) == (200 if policy == "keep" else 0)
    assert r.zcard("bd:{acme}:exp") == 0

    # A late reconcile still records the actual spend, replacing a kept estimate.
    s = b.client.reconcile(res.reservation_id, Usage(input_tokens=70, output_tokens=5))
    assert s.late and s.state == "reconciled"
    c = counters(r, "acme", wid)
    assert (c["u|acme/t|t"], c["r|acme/t|t"]) == (75, 0)
    assert c["u|acme/t|c"] == 80


def test_late_release_after_keep_expiry_gives_back(b: Budgetd, r: redis.Redis) -> None:
    res = b.client.reserve("acme/t", TEST_MODEL, tokens=500, cost_micros=7, ttl_seconds=5)
    b.clock.advance_s(6)
    assert b.expire_now() == 1
    assert counters(r, "acme", "d20270315")["u|acme|t"] == 500
    rel = b.client.release(res.reservation_id)
    assert rel.late and rel.reserved_tokens == 500
    assert counters(r, "acme", "d20270315")["u|acme|t"] == 0


def test_reconcile_past_ttl_before_the_sweep_is_late(b: Budgetd, r: redis.Redis) -> None:
    res = b.client.reserve("acme", TEST_MODEL, tokens=100, cost_micros=100, ttl_seconds=5)
    b.clock.advance_s(10)
    s = b.client.reconcile(res.reservation_id, Usage(input_tokens=40), cost_micros=40)
    assert s.late
    c = counters(r, "acme", "d20270315")
    assert (c["u|acme|t"], c["r|acme|t"], c["u|acme|c"]) == (40, 0, 40)
    assert b.expire_now() == 0


def test_fallback_grants_the_first_model_that_fits(b: Budgetd) -> None:
    b.admin.set_budget("acme/t", "day", "cost_micros", 1_700)
    # 500 in + 500 out: big 15000, model 1500, small 150 micro-USD.
    res = b.client.reserve("acme/t", TEST_BIG, input_tokens=500, max_output_tokens=500,
                           fallback_models=[TEST_MODEL, TEST_SMALL])
    assert res.allowed and res.model == TEST_MODEL and res.reserved_cost_micros == 1500
    res2 = b.client.reserve("acme/t", TEST_BIG, input_tokens=500, max_output_tokens=500,
                            fallback_models=[TEST_MODEL, TEST_SMALL])
    assert res2.allowed and res2.model == TEST_SMALL and res2.reserved_cost_micros == 150
    res3 = b.client.reserve("acme/t", TEST_BIG, input_tokens=500, max_output_tokens=500,
                            fallback_models=[TEST_MODEL, TEST_SMALL])
    assert not res3.allowed
    assert res3.denial is not None and res3.denial.model == TEST_BIG
    st = b.client.get_budget("acme/t").get("day", "cost_micros")
    assert st.reserved == 1650
    # Reconcile prices the granted model by default.
    s = b.client.reconcile(res2.reservation_id, Usage(input_tokens=500, output_tokens=500))
    assert s.actual_cost_micros == 150
    # Each request counts once in reports, under the model granted (or, when
    # denied, the one asked for).
    rows = {x.group: (x.requests, x.denials)
            for x in b.admin.get_usage_report("acme", "day", "model").rows}
    assert rows == {TEST_MODEL: (1, 0), TEST_SMALL: (1, 0), TEST_BIG: (0, 1)}


def test_unknown_model_is_never_free(b: Budgetd, r: redis.Redis) -> None:
    before = keyspace(r)
    with pytest.raises(FailedPrecondition, match="model"):
        b.client.reserve("acme", "no-such-model", input_tokens=10, max_output_tokens=10)
    with pytest.raises(FailedPrecondition, match=r"fallback_models\[0\]"):
        b.client.reserve("acme", TEST_MODEL, input_tokens=10, max_output_tokens=10,
                         fallback_models=["no-such-model"])
    with pytest.raises(FailedPrecondition):
        b.client.reserve("acme", "no-such-model", tokens=10)
    assert keyspace(r) == before
    ok = b.client.reserve("acme", "no-such-model", tokens=10, cost_micros=99)
    assert ok.allowed and ok.reserved_cost_micros == 99
    with pytest.raises(FailedPrecondition, match="unknown model"):
        b.client.reconcile(ok.reservation_id, Usage(input_tokens=5))
    s = b.client.reconcile(ok.reservation_id, Usage(input_tokens=5), cost_micros=50)
    assert s.actual_cost_micros == 50


def test_output_estimate_capped_at_model_ceiling(b: Budgetd) -> None:
    res = b.client.reserve("acme", TEST_MODEL, input_tokens=10, max_output_tokens=10**9)
    assert res.reserved_tokens == 10 + 4096


def test_default_pricing_prices_claude(b: Budgetd) -> None:
    res = b.client.reserve("acme", "claude-sonnet-4-5", input_tokens=1000, max_output_tokens=500)
    assert res.reserved_cost_micros == 3000 + 7500
    res2 = b.client.reserve("acme", "anthropic.claude-sonnet-4-5-20250929-v1:0",
                            input_tokens=1000, max_output_tokens=500)
    assert res2.reserved_cost_micros == 10_500


def test_unknown_reservation_is_not_found(b: Budgetd) -> None:
    with pytest.raises(NotFound, match="reservation_id"):
        b.client.reconcile("acme:nope", Usage(input_tokens=1))
    with pytest.raises(NotFound, match="reservation_id"):
        b.client.release("acme:nope")


def test_settling_a_denied_reservation_fails(b: Budgetd) -> None:
    b.admin.set_budget("acme", "day", "tokens", 1)
    res = b.client.reserve("acme", TEST_MODEL, tokens=5, cost_micros=1, request_id="d1")
    assert not res.allowed
    with pytest.raises(FailedPrecondition, match="denied"):
        b.client.reconcile("acme:d1", Usage(input_tokens=1))
