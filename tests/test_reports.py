"""Usage reports through real gRPC and a real Redis: the counters the scripts
keep add up to exactly what was reconciled and recorded, per team, feature
and model, per day and month, and last month's report survives the clock."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

import grpc
import pytest
import redis
from budgetd_client import Usage, UsageReport, _ops
from budgetd_client._proto.budget.v1 import admin_pb2 as apb
from conftest import T0, Budgetd, keyspace, ms
from helpers import TEST_MODEL, TEST_SMALL, set_test_pricing

METRICS = ("input_tokens", "output_tokens", "cache_write_tokens", "cache_read_tokens",
           "cost_micros", "requests", "denials")


@pytest.fixture()
def b(budgetd: Budgetd) -> Budgetd:
    set_test_pricing(budgetd.admin)
    return budgetd


class Expected:
    """What the test did, summed by hand."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, dict[str, int]]] = {
            g: defaultdict(lambda: dict.fromkeys(METRICS, 0))
            for g in ("team", "feature", "model")}

    def add(self, scope: str, model: str, **metrics: int) -> None:
        parts = scope.split("/")[1:]
        team = parts[0] if parts else ""
        for g, key in (("team", team), ("feature", "/".join(parts)), ("model", model)):
            for k, v in metrics.items():
                self.rows[g][key][k] += v

    def check(self, report: UsageReport, group_by: str) -> None:
        got = {r.group: {m: getattr(r, m) for m in METRICS} for r in report.rows}
        assert got == dict(self.rows[group_by])
        for m in METRICS:
            assert getattr(report.total, m) == sum(row[m] for row in got.values())


def usage(u: Usage) -> dict[str, int]:
    return {"input_tokens": u.input_tokens, "output_tokens": u.output_tokens,
            "cache_write_tokens": u.cache_creation_input_tokens,
            "cache_read_tokens": u.cache_read_input_tokens}


def test_report_totals_equal_what_was_reconciled_and_recorded(b: Budgetd) -> None:
    exp = Expected()
    c = b.client
    # Reserve + reconcile, with every kind of token.
    u1 = Usage(input_tokens=800, output_tokens=300, cache_creation_input_tokens=200,
               cache_read_input_tokens=1000)
    res = c.reserve("acme/search/rerank", TEST_MODEL, input_tokens=2000, max_output_tokens=500)
    s = c.reconcile(res.reservation_id, u1)
    exp.add("acme/search/rerank", TEST_MODEL, requests=1, cost_micros=s.actual_cost_micros,
            **usage(u1))
    # The model really used differs from the one reserved: counted under it.
    u2 = Usage(input_tokens=5000, output_tokens=700, cache_read_input_tokens=33)
    res = c.reserve("acme/search/rerank", TEST_MODEL, input_tokens=5000, max_output_tokens=800)
    s = c.reconcile(res.reservation_id, u2, model=TEST_SMALL)
    exp.add("acme/search/rerank", TEST_MODEL, requests=1)
    exp.add("acme/search/rerank", TEST_SMALL, cost_micros=s.actual_cost_micros, **usage(u2))
    # Records, on a team and on the org itself.
    u3 = Usage(input_tokens=123, output_tokens=45, cache_creation_input_tokens=6,
               ephemeral_1h_input_tokens=6)
    rec = c.record("acme/chat", TEST_MODEL, u3)
    exp.add("acme/chat", TEST_MODEL, requests=1, cost_micros=rec.cost_micros, **usage(u3))
    u4 = Usage(input_tokens=1, output_tokens=2)
    rec = c.record("acme", TEST_SMALL, u4, cost_micros=999)
    exp.add("acme", TEST_SMALL, requests=1, cost_micros=999, **usage(u4))
    # A release costs nothing; a denial is counted as one.
    res = c.reserve("acme/chat/bot", TEST_MODEL, tokens=100, cost_micros=50)
    c.release(res.reservation_id)
    exp.add("acme/chat/bot", TEST_MODEL, requests=1)
    b.admin.set_budget("acme/blocked", "day", "tokens", 10)
    assert not c.reserve("acme/blocked/x", TEST_MODEL, tokens=100, cost_micros=1).allowed
    exp.add("acme/blocked/x", TEST_MODEL, denials=1)
    # An expired reservation kept as spent counts its estimate as cost ...
    kept = c.reserve("acme/search/batch", TEST_MODEL, tokens=500, cost_micros=777,
                     ttl_seconds=5)
    late = c.reserve("acme/chat/late", TEST_SMALL, tokens=500, cost_micros=555, ttl_seconds=5)
    b.clock.advance_s(10)
    assert b.expire_now() == 2
    exp.add("acme/search/batch", TEST_MODEL, requests=1, cost_micros=777)
    # ... until a late reconcile replaces it by the actual usage.
    u5 = Usage(input_tokens=40, output_tokens=4)
    s = c.reconcile(late.reservation_id, u5, cost_micros=66)
    assert s.late
    exp.add("acme/chat/late", TEST_SMALL, requests=1, cost_micros=66, **usage(u5))
    assert kept.allowed

    for period in ("day", "month"):
        for group_by in ("team", "feature", "model"):
            report = b.admin.get_usage_report("acme", period, group_by)
            assert (report.org, report.period, report.group_by) == ("acme", period, group_by)
            assert report.period_id == ("2027-03-15" if period == "day" else "2027-03")
            exp.check(report, group_by)
    total = b.admin.get_usage_report("acme", "month", "team").total
    assert total.cost_micros == b.client.get_budget("acme").get("month", "cost_micros").used
    assert total.requests == 7 and total.denials == 1


def test_previous_month_report_works_after_the_clock_moves_on(b: Budgetd,
                                                              r: redis.Redis) -> None:
    b.client.record("acme/t/f", TEST_MODEL, Usage(input_tokens=100, output_tokens=10))
    march = b.admin.get_usage_report("acme", "month", "feature")
    assert [(x.group, x.input_tokens) for x in march.rows] == [("t/f", 100)]
    b.clock.set_ms(ms(dt.datetime(2027, 4, 20, 9, 0, tzinfo=dt.timezone.utc)))
    b.client.record("acme/t/g", TEST_MODEL, Usage(input_tokens=7))
    now = b.admin.get_usage_report("acme", "month", "feature")
    assert now.period_id == "2027-04"
    assert [(x.group, x.input_tokens) for x in now.rows] == [("t/g", 7)]
    again = b.admin.get_usage_report("acme", "month", "feature", period_id="2027-03")
    assert again.total == march.total
    assert again.rows == march.rows
    day = b.admin.get_usage_report("acme", "day", "team", period_id="2027-03-15")
    assert day.total.input_tokens == 100
    # Kept 400 days after the month's end: 13 months of monthly reports.
    april_1 = int(dt.datetime(2027, 4, 1, tzinfo=dt.timezone.utc).timestamp())
    assert r.expiretime("bd:{acme}:w:m202703") == april_1 + 400 * 86400
    assert r.expiretime("bd:{acme}:w:d20270315") == (
        int((T0 + dt.timedelta(hours=12)).timestamp()) + 36 * 86400)


def test_report_in_the_orgs_time_zone(b: Budgetd) -> None:
    b.admin.set_org_settings("acme", time_zone="Pacific/Auckland")
    b.client.record("acme/t", TEST_MODEL, Usage(input_tokens=5))
    # 12:00 UTC on 2027-03-15 is 01:00 on the 16th in Auckland.
    report = b.admin.get_usage_report("acme", "day", "team")
    assert report.period_id == "2027-03-16"
    assert report.row("t").input_tokens == 5


@pytest.mark.parametrize(("req", "field"), [
    (apb.GetUsageReportRequest(org="", period=apb.PERIOD_DAY, group_by=apb.GROUP_BY_TEAM),
     "org"),
    (apb.GetUsageReportRequest(org="a*", period=apb.PERIOD_DAY, group_by=apb.GROUP_BY_TEAM),
     "org"),
    (apb.GetUsageReportRequest(org="acme", group_by=apb.GROUP_BY_TEAM), "period"),
    (apb.GetUsageReportRequest(org="acme", period=7, group_by=apb.GROUP_BY_TEAM), "period"),
    (apb.GetUsageReportRequest(org="acme", period=apb.PERIOD_DAY), "group_by"),
    (apb.GetUsageReportRequest(org="acme", period=apb.PERIOD_DAY, group_by=9), "group_by"),
    (apb.GetUsageReportRequest(org="acme", period=apb.PERIOD_MONTH, period_id="2027-13",
                               group_by=apb.GROUP_BY_TEAM), "period_id"),
    (apb.GetUsageReportRequest(org="acme", period=apb.PERIOD_MONTH, period_id="2027-03-15",
                               group_by=apb.GROUP_BY_TEAM), "period_id"),
    (apb.GetUsageReportRequest(org="acme", period=apb.PERIOD_DAY, period_id="2027-02-30",
                               group_by=apb.GROUP_BY_TEAM), "period_id"),
    (apb.GetUsageReportRequest(org="acme", period=apb.PERIOD_DAY, period_id="*",
                               group_by=apb.GROUP_BY_MODEL), "period_id"),
])
def test_report_bad_input_is_invalid_argument(b: Budgetd, r: redis.Redis,
                                              req: apb.GetUsageReportRequest,
                                              field: str) -> None:
    b.client.record("acme/t", TEST_MODEL, Usage(input_tokens=5))
    before = keyspace(r)
    stub = b.admin._stubs["admin"]
    with pytest.raises(grpc.RpcError) as e:
        stub.GetUsageReport(req, timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith(f"{field}:")
    assert keyspace(r) == before


def test_client_rejects_unknown_period_and_group() -> None:
    with pytest.raises(ValueError, match="period"):
        _ops.get_usage_report("acme", period="week")
    with pytest.raises(ValueError, match="group_by"):
        _ops.get_usage_report("acme", group_by="user")
