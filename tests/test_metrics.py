"""Prometheus metrics scraped over HTTP show what the test did; one JSON
access-log line per call, without the token."""

from __future__ import annotations

import json
import logging
import pathlib
import time
import urllib.request
from collections.abc import Iterator

import pytest
import redis
from budgetd import metrics
from budgetd.embedded import EmbeddedRedis
from budgetd.logs import JsonFormatter
from budgetd.server import ServerThread
from budgetd_client import AdminClient, BudgetClient, BudgetError, CallPolicy, Unauthenticated
from helpers import TEST_MODEL, set_test_pricing
from ops_support import start, write_tokens
from prometheus_client.parser import text_string_to_metric_families

POLICY = CallPolicy(timeout_s=5, total_timeout_s=10, retries=0)
TOKEN = "metrics-test-admin-token"


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def delta(a: dict, b: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    key = (name, tuple(sorted(labels.items())))
    return b.get(key, 0.0) - a.get(key, 0.0)


@pytest.fixture()
def server(redis_server: EmbeddedRedis, r: redis.Redis,
           tmp_path: pathlib.Path) -> Iterator[ServerThread]:
    f = write_tokens(tmp_path / "tokens.json", {TOKEN: ("admin", "*")})
    t = start(redis_server.url, metrics_listen="127.0.0.1:0", auth_tokens_file=f)
    yield t
    t.stop()


def test_metrics_count_reserves_denials_latency_and_scripts(server: ServerThread) -> None:
    port = server.app.metrics_server.port  # type: ignore[union-attr]
    admin = AdminClient(server.address, token=TOKEN, policy=POLICY)
    client = BudgetClient(server.address, token=TOKEN, policy=POLICY)
    set_test_pricing(admin)
    admin.set_budget("acme/search", "day", "tokens", 300)
    before = scrape(port)
    for _ in range(3):
        assert client.reserve("acme/search/x", TEST_MODEL, tokens=100, cost_micros=1).allowed
    assert not client.reserve("acme/search/x", TEST_MODEL, tokens=100, cost_micros=1).allowed
    with pytest.raises(Unauthenticated):
        BudgetClient(server.address, token="wrong", policy=POLICY).get_budget("acme")
    after = scrape(port)
    req = "budgetd_grpc_requests_total"
    assert delta(before, after, req, method="Reserve", code="OK", decision="allowed") == 3
    assert delta(before, after, req, method="Reserve", code="OK", decision="denied") == 1
    assert delta(before, after, req, method="GetBudget", code="UNAUTHENTICATED",
                 decision="") == 1
    lat = "budgetd_grpc_request_duration_seconds_count"
    assert delta(before, after, lat, method="Reserve", code="OK", decision="allowed") == 3
    assert delta(before, after, "budgetd_denials_total", level="team", window="day",
                 unit="tokens", team="") == 1
    assert delta(before, after, "budgetd_redis_script_duration_seconds_count",
                 script="reserve") == 4
    assert ("budgetd_reservations_expired_total", ()) in after
    admin.close()
    client.close()


def test_expired_reservations_counted(server: ServerThread) -> None:
    port = server.app.metrics_server.port  # type: ignore[union-attr]
    client = BudgetClient(server.address, token=TOKEN, policy=POLICY)
    set_test_pricing(AdminClient(server.address, token=TOKEN, policy=POLICY))
    before = scrape(port)
    assert client.reserve("acme/t", TEST_MODEL, tokens=5, cost_micros=1, ttl_seconds=1).allowed
    server.app.clock.advance_s(5)  # type: ignore[attr-defined]
    for _ in range(50):
        after = scrape(port)
        if delta(before, after, "budgetd_reservations_expired_total") >= 1:
            break
        time.sleep(0.1)
    assert delta(before, after, "budgetd_reservations_expired_total") == 1
    client.close()


def test_team_label_off_by_default_and_bounded_when_on() -> None:
    off = metrics.TeamLabels(enabled=False)
    assert off.label("search") == ""
    on = metrics.TeamLabels(enabled=True, cap=2)
    assert [on.label(t) for t in ("a", "b", "c", "a")] == ["a", "b", metrics.OTHER_TEAM, "a"]
    assert metrics.method_label("/budget.v1.BudgetService/Reserve") == "Reserve"
    assert metrics.method_label("/evil/" + "x" * 100) == "other"


def test_access_log_one_json_line_per_call_without_token(
        server: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    client = BudgetClient(server.address, token=TOKEN, policy=POLICY)
    set_test_pricing(AdminClient(server.address, token=TOKEN, policy=POLICY))
    with caplog.at_level(logging.INFO, logger="budgetd.access"):
        client.reserve("acme/t", TEST_MODEL, tokens=5, cost_micros=1, request_id="req-42")
    lines = [json.loads(JsonFormatter().format(rec)) for rec in caplog.records
             if rec.name == "budgetd.access" and getattr(rec, "request_id", "") == "req-42"]
    assert len(lines) == 1
    line = lines[0]
    assert line["method"] == "/budget.v1.BudgetService/Reserve"
    assert line["code"] == "OK" and line["decision"] == "allowed"
    assert line["principal"] == "t0" and isinstance(line["duration_ms"], float)
    assert TOKEN not in json.dumps(line)
    client.close()


def test_json_log_lines_carry_each_record_s_own_time_and_any_extra() -> None:
    fmt = JsonFormatter()

    def line(created: float, **extra: object) -> dict[str, object]:
        rec = logging.LogRecord("budgetd.x", logging.INFO, "", 0, "m %s", ("a",), None)
        rec.created, rec.msecs = created, (created % 1) * 1000
        rec.__dict__.update(extra)
        return dict(json.loads(fmt.format(rec)))

    # The second's text is cached: a later second, and an earlier one again.
    assert line(1_800_000_000.25)["ts"] == "2027-01-15T08:00:00.250Z"
    assert line(1_800_000_001.5)["ts"] == "2027-01-15T08:00:01.500Z"
    got = line(1_800_000_000.875, path=pathlib.Path("/x"), n=3)
    assert got["ts"] == "2027-01-15T08:00:00.875Z"
    assert (got["msg"], got["level"], got["path"], got["n"]) == ("m a", "info", "/x", 3)


def test_grafana_dashboard_uses_only_exported_metrics() -> None:
    import re

    doc = json.loads((pathlib.Path(__file__).parent.parent / "docs" /
                      "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bbudgetd_[a-z_]+", e)}
    exported = set()
    for fam in metrics.REGISTRY.collect():
        for suffix in ("", "_total", "_bucket", "_count", "_sum"):
            exported.add(fam.name + suffix)
    assert used and used <= exported, used - exported


def test_a_failing_script_is_counted_and_answered_with_a_status(server: ServerThread,
                                                                 r: redis.Redis) -> None:
    """A script Redis rejects (here: a counters key of the wrong type, as a
    damaged keyspace would hold) shows in budgetd_redis_script_errors_total
    and the caller gets a gRPC error, not a hang or a wrong answer."""
    port = server.app.metrics_server.port  # type: ignore[union-attr]
    admin = AdminClient(server.address, token=TOKEN, policy=POLICY)
    client = BudgetClient(server.address, token=TOKEN, policy=POLICY)
    set_test_pricing(admin)
    r.set("bd:{broken}:w:d20270315", "not a hash")
    before = scrape(port)
    with pytest.raises(BudgetError):
        client.reserve("broken/t", TEST_MODEL, tokens=1, cost_micros=1)
    after = scrape(port)
    assert delta(before, after, "budgetd_redis_script_errors_total", script="reserve",
                 kind="error") == 1
    assert r.get("bd:{broken}:w:d20270315") == b"not a hash"
