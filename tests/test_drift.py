"""budgetctl drift against a local fake of the providers' admin APIs and a
real budgetd on a real Redis."""

from __future__ import annotations

import datetime as dt
import io
import json
import pathlib
import time
from typing import Any

import pytest
from budgetd_client._proto.budget.v1 import admin_pb2 as apb
from budgetd_client.cli.main import main
from conftest import Budgetd
from fake_admin_api import (
    ANTHROPIC_KEY,
    OPENAI_KEY,
    FakeAdminAPI,
    Fixture,
    anthropic_result,
    openai_result,
)
from helpers import TEST_MODEL, set_test_pricing

D1, D2, D3 = dt.date(2027, 3, 1), dt.date(2027, 3, 2), dt.date(2027, 3, 3)
MAPPING = """
orgs:
  acme:
    limits:
      - {window: month, unit: cost, limit_usd: "1000"}
    providers:
      anthropic:
        workspaces: {wrkspc_search: search, default: ops}
        api_keys: {apikey_rerank: search/rerank}
      openai:
        projects: {proj_search: search, proj_org: ""}
        api_keys: {key_rerank: search/rerank}
"""


@pytest.fixture()
def mapping_file(tmp_path: pathlib.Path) -> str:
    p = tmp_path / "budgets.yaml"
    p.write_text(MAPPING)
    return str(p)


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_ADMIN_KEY", ANTHROPIC_KEY)
    monkeypatch.setenv("OPENAI_ADMIN_KEY", OPENAI_KEY)


def record(b: Budgetd, scope: str, day: dt.date, rid: str, model: str = TEST_MODEL,
           batch: bool = False, **usage: int) -> None:
    b.client.record(scope, model, usage, request_id=rid, batch=batch,
                    occurred_at=dt.datetime(day.year, day.month, day.day, 9,
                                            tzinfo=dt.timezone.utc))


def drift(b: Budgetd, api: FakeAdminAPI, mapping: str, provider: str, *extra: str
          ) -> tuple[int, dict[str, Any], str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["--server", b.address, "drift", "--provider", provider, "--month", "2027-03",
                 "--until", "2027-03-15", "-f", mapping, "--base-url", api.url,
                 "--format", "json", *extra], out=out, err=err)
    return code, (json.loads(out.getvalue()) if out.getvalue() else {}), err.getvalue()


def rows_by(doc: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(r["day"], r["scope"], r["model"]): r for r in doc["rows"]}


# test-model prices (tests/helpers.py), micro-USD per token: input 1, output 2,
# cache write 5m 1.25, 1h 2, cache read 0.1. This usage costs 2800 micro-USD.
USAGE_A = dict(uncached=1000, output=500, cw5m=400, cw1h=100, cache_read=1000)
BUDGETD_A = dict(input_tokens=1000, output_tokens=500, cache_creation_input_tokens=500,
                 ephemeral_5m_input_tokens=400, ephemeral_1h_input_tokens=100,
                 cache_read_input_tokens=1000)


def test_exact_match_is_zero_drift_with_cost_report(budgetd: Budgetd, mapping_file: str) -> None:
    set_test_pricing(budgetd.admin)
    fx = Fixture(
        anthropic_usage={
            D1: [anthropic_result(TEST_MODEL, "wrkspc_search", "apikey_a", **USAGE_A)],
            D2: [anthropic_result(TEST_MODEL, None, "apikey_b", **USAGE_A),
                 anthropic_result(TEST_MODEL, "wrkspc_search", "apikey_rerank", **USAGE_A)]},
        anthropic_costs={
            D1: [{"amount": "0.28", "currency": "USD", "cost_type": "tokens",
                  "description": "x", "model": TEST_MODEL, "workspace_id": "wrkspc_search",
                  "token_type": None}]})
    record(budgetd, "acme/search", D1, "r1", **BUDGETD_A)
    record(budgetd, "acme/ops", D2, "r2", **BUDGETD_A)
    record(budgetd, "acme/search/rerank", D2, "r3", **BUDGETD_A)
    with FakeAdminAPI(fx) as api:
        code, doc, err = drift(budgetd, api, mapping_file, "anthropic")
    assert code == 0, err
    rows = rows_by(doc)
    assert set(rows) == {("2027-03-01", "search", TEST_MODEL), ("2027-03-02", "ops", TEST_MODEL),
                         ("2027-03-02", "search/rerank", TEST_MODEL)}
    for r in rows.values():
        assert r["status"] == "ok" and r["diff_tokens"] == 0 and r["drift_percent"] == 0
        assert r["provider"]["cost_micros"] == r["budgetd"]["cost_micros"] == 2800
    assert rows[("2027-03-01", "search", TEST_MODEL)]["cost_source"] == "cost_report"
    assert rows[("2027-03-02", "ops", TEST_MODEL)]["cost_source"] == "pricing"
    assert doc["over_threshold"] == 0


def test_missing_spend_found_then_recorded_once(budgetd: Budgetd, mapping_file: str,
                                                r: Any) -> None:
    set_test_pricing(budgetd.admin)
    fx = Fixture(openai_usage={
        D1: [openai_result(TEST_MODEL, "proj_search", "key_a", input_tokens=3000, cached=1000,
                           output=400)],
        D3: [openai_result(TEST_MODEL, "proj_other", "key_rerank", input_tokens=5000,
                           cached=0, output=1000)]})
    # budgetd saw day 1 fully, nothing of day 3 (say, a service without the hook).
    record(budgetd, "acme/search", D1, "o1", input_tokens=2000, output_tokens=400,
           cache_read_input_tokens=1000)
    with FakeAdminAPI(fx) as api:
        code, doc, _ = drift(budgetd, api, mapping_file, "openai")
        assert code == 4
        row = rows_by(doc)[("2027-03-03", "search/rerank", TEST_MODEL)]
        assert row["status"] == "missing"
        assert row["diff_tokens"] == 6000 and row["diff_cost_micros"] == 7000
        assert row["drift_percent"] == 100.0
        assert rows_by(doc)[("2027-03-01", "search", TEST_MODEL)]["status"] == "ok"

        code, doc, err = drift(budgetd, api, mapping_file, "openai", "--record-missing")
        assert code == 0, err
        assert len(doc["recorded"]) == 1 and doc["recorded"][0]["cost_micros"] == 7000
        assert all(x["status"] == "ok" for x in doc["rows"])
        # Charged to day 3's window, not to "now" (the 15th).
        rep = budgetd.admin.get_usage_report("acme", "day", "scope_model", "2027-03-03")
        assert rep.row(f"search/rerank|{TEST_MODEL}").input_tokens == 5000
        assert budgetd.admin.get_usage_report("acme", "day", "team", "2027-03-15").rows == []
        month_cost = budgetd.admin.get_usage_report("acme", "month", "team",
                                                    "2027-03").total.cost_micros

        code, doc, _ = drift(budgetd, api, mapping_file, "openai", "--record-missing")
        assert code == 0 and doc["recorded"] == []
        assert all(x["diff_tokens"] == 0 for x in doc["rows"])
    assert budgetd.admin.get_usage_report("acme", "month", "team",
                                          "2027-03").total.cost_micros == month_cost


def test_extra_spend_in_budgetd(budgetd: Budgetd, mapping_file: str) -> None:
    set_test_pricing(budgetd.admin)
    fx = Fixture(openai_usage={D2: [openai_result(TEST_MODEL, "proj_search", None,
                                                  input_tokens=1000, output=0)]})
    record(budgetd, "acme/search", D2, "e1", input_tokens=1500)
    with FakeAdminAPI(fx) as api:
        code, doc, _ = drift(budgetd, api, mapping_file, "openai", "--record-missing")
    assert code == 4
    row = rows_by(doc)[("2027-03-02", "search", TEST_MODEL)]
    assert row["status"] == "extra" and row["diff_tokens"] == -500
    assert row["diff_cost_micros"] == -500 and row["drift_percent"] == -50.0
    assert doc["recorded"] == []  # never "records" a negative


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_batch_usage_is_priced_at_the_batch_discount(budgetd: Budgetd, mapping_file: str,
                                                      provider: str) -> None:
    """Batch API usage is billed at the batch discount (half, for the test
    model), as budgetd charges a batch request. Priced at the standard rate,
    the provider's side would show drift that is not there, and
    --record-missing would charge missing batch tokens at full price."""
    set_test_pricing(budgetd.admin)

    def used(tokens: int, batch: bool) -> dict[str, Any]:
        if provider == "openai":
            return openai_result(TEST_MODEL, "proj_search", None, input_tokens=tokens,
                                 batch=batch)
        return anthropic_result(TEST_MODEL, "wrkspc_search", "apikey_a", uncached=tokens,
                                service_tier="batch" if batch else "standard")

    usage = {D1: [used(1000, True), used(400, False)], D2: [used(2000, True)]}
    fx = (Fixture(openai_usage=usage) if provider == "openai"
          else Fixture(anthropic_usage=usage))
    record(budgetd, "acme/search", D1, "b1", batch=True, input_tokens=1000)
    record(budgetd, "acme/search", D1, "s1", input_tokens=400)
    record(budgetd, "acme/search", D2, "b2", batch=True, input_tokens=1000)
    extra = ("--no-cost-report",) if provider == "anthropic" else ()
    with FakeAdminAPI(fx) as api:
        code, doc, err = drift(budgetd, api, mapping_file, provider, *extra)
        assert code == 4, err
        rows = rows_by(doc)
        d1 = rows[("2027-03-01", "search", TEST_MODEL)]
        assert d1["status"] == "ok" and d1["provider"]["batch_tokens"] == 1000
        assert d1["provider"]["cost_micros"] == d1["budgetd"]["cost_micros"] == 900
        d2 = rows[("2027-03-02", "search", TEST_MODEL)]
        assert d2["diff_tokens"] == 1000 and d2["diff_cost_micros"] == 500
        code, doc, err = drift(budgetd, api, mapping_file, provider, "--record-missing", *extra)
    assert code == 0, err
    assert [(r["day"], r["tokens"], r["cost_micros"]) for r in doc["recorded"]] == [
        ("2027-03-02", 1000, 500)]
    assert all(r["status"] == "ok" for r in doc["rows"])


def fourteen_matching_days(b: Budgetd, provider: str) -> Fixture:
    """March 1st-14th: the provider's usage and budgetd's ledger agree, one
    row a day (15 daily buckets through the 15th: several pages)."""
    set_test_pricing(b.admin)
    days = [dt.date(2027, 3, d) for d in range(1, 15)]
    for d in days:
        record(b, "acme/search", d, f"p{d.day}", input_tokens=100 * d.day)
    usage = {d: [usage_result(provider, TEST_MODEL, 100 * d.day)] for d in days}
    return (Fixture(openai_usage=usage) if provider == "openai"
            else Fixture(anthropic_usage=usage))


def test_pagination_over_several_pages(budgetd: Budgetd, mapping_file: str) -> None:
    fx = fourteen_matching_days(budgetd, "anthropic")
    with FakeAdminAPI(fx) as api:
        code, doc, err = drift(budgetd, api, mapping_file, "anthropic", "--page-limit", "4",
                               "--no-cost-report")
        reqs = [q for path, q in fx.requests if path.endswith("/messages")]
    assert code == 0, err
    assert len(reqs) == 4  # 15 day buckets (1st..15th), 4 per page
    assert [dict(q).get("page") for q in reqs] == [None, "page_4", "page_8", "page_12"]
    first = reqs[0]
    assert ("group_by[]", "workspace_id") in first and ("bucket_width", "1d") in first
    assert ("starting_at", "2027-03-01T00:00:00Z") in first
    assert ("ending_at", "2027-03-16T00:00:00Z") in first
    assert len(doc["rows"]) == 14 and all(x["status"] == "ok" for x in doc["rows"])


def test_cost_report_pagination_over_several_pages(budgetd: Budgetd, mapping_file: str) -> None:
    """The cost report is read page by page like the usage report: every
    day's dollars reach the comparison, not only the first page's."""
    fx = fourteen_matching_days(budgetd, "anthropic")
    # 100 * day input tokens at 1 micro-USD each: amounts in cents (1 cent = 10,000 micros).
    fx.anthropic_costs = {
        dt.date(2027, 3, d): [{"amount": f"{d / 100:.2f}", "currency": "USD",
                               "cost_type": "tokens", "description": "x", "model": TEST_MODEL,
                               "workspace_id": "wrkspc_search", "token_type": None}]
        for d in range(1, 15)}
    with FakeAdminAPI(fx) as api:
        code, doc, err = drift(budgetd, api, mapping_file, "anthropic", "--page-limit", "4")
        reqs = [dict(q) for path, q in fx.requests if path.endswith("/cost_report")]
    assert code == 0, err
    assert [q.get("page") for q in reqs] == [None, "page_4", "page_8", "page_12"]
    rows = doc["rows"]
    assert len(rows) == 14 and all(x["status"] == "ok" for x in rows)
    assert all(x["cost_source"] == "cost_report" for x in rows)
    last = rows_by(doc)[("2027-03-14", "search", TEST_MODEL)]
    assert last["provider"]["cost_micros"] == last["budgetd"]["cost_micros"] == 1400


def test_openai_pagination_over_several_pages(budgetd: Budgetd, mapping_file: str) -> None:
    fx = fourteen_matching_days(budgetd, "openai")
    with FakeAdminAPI(fx) as api:
        code, doc, err = drift(budgetd, api, mapping_file, "openai", "--page-limit", "4")
        reqs = [dict(q) for path, q in fx.requests if path.endswith("/usage/completions")]
    assert code == 0, err
    # 15 daily buckets (1st..15th), 4 per page, each page asked with the cursor.
    assert [q.get("page") for q in reqs] == [None, "page_4", "page_8", "page_12"]
    assert {q["limit"] for q in reqs} == {"4"} and {q["bucket_width"] for q in reqs} == {"1d"}
    assert len(doc["rows"]) == 14 and all(x["status"] == "ok" for x in doc["rows"])


def test_429_retry_after_is_honoured_and_bounded(budgetd: Budgetd, mapping_file: str) -> None:
    set_test_pricing(budgetd.admin)
    fx = Fixture(openai_usage={D1: [openai_result(TEST_MODEL, "proj_search", None,
                                                  input_tokens=10)]},
                 rate_limit_times=2, retry_after="0.3")
    record(budgetd, "acme/search", D1, "x1", input_tokens=10)
    with FakeAdminAPI(fx) as api:
        t0 = time.monotonic()
        code, _, err = drift(budgetd, api, mapping_file, "openai")
        waited = time.monotonic() - t0
        assert code == 0, err
        assert waited >= 0.6  # two Retry-After waits
        assert len(fx.requests) == 3
        # A huge Retry-After is capped by --max-retry-after.
        fx.rate_limit_times, fx.retry_after = 2, "3600"
        t0 = time.monotonic()
        code, _, err = drift(budgetd, api, mapping_file, "openai", "--max-retry-after", "0.2")
        assert code == 0, err
        assert time.monotonic() - t0 < 10
        # Still limited after every attempt: a clear error, exit 5.
        fx.rate_limit_times, fx.retry_after = 100, "0"
        code, _, err = drift(budgetd, api, mapping_file, "openai")
    assert code == 5 and "HTTP 429 after 5 attempts" in err


@pytest.mark.parametrize("provider,env", [("anthropic", "ANTHROPIC_ADMIN_KEY"),
                                          ("openai", "OPENAI_ADMIN_KEY")])
def test_invalid_admin_key_is_a_clear_error(budgetd: Budgetd, mapping_file: str, provider: str,
                                            env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-expired-SECRET-123"
    monkeypatch.setenv(env, secret)
    with FakeAdminAPI() as api:
        code, doc, err = drift(budgetd, api, mapping_file, provider)
    assert code == 5 and doc == {}
    assert "admin key was rejected (401" in err and "expired" in err
    assert secret not in err
    monkeypatch.delenv(env)
    with FakeAdminAPI() as api:
        code, _, err = drift(budgetd, api, mapping_file, provider)
    assert code == 5 and f"set {env}" in err


def test_unknown_model_and_unmapped_ids_are_reported(budgetd: Budgetd,
                                                     mapping_file: str) -> None:
    set_test_pricing(budgetd.admin)
    fx = Fixture(openai_usage={D1: [
        openai_result("gpt-unreleased-9", "proj_search", None, input_tokens=700, output=50),
        openai_result(TEST_MODEL, "proj_unknown", "key_unknown", input_tokens=300)]})
    with FakeAdminAPI(fx) as api:
        code, doc, _ = drift(budgetd, api, mapping_file, "openai", "--record-missing")
        out = io.StringIO()
        main(["--server", budgetd.address, "drift", "--provider", "openai", "--month",
              "2027-03", "--until", "2027-03-15", "-f", mapping_file, "--base-url", api.url],
             out=out, err=io.StringIO())
    assert code == 4
    rows = rows_by(doc)
    unk = rows[("2027-03-01", "search", "gpt-unreleased-9")]
    assert unk["status"] == "unknown_model" and unk["provider"]["tokens"] == 750
    assert unk["provider"]["cost_micros"] is None and unk["drift_percent"] == 100.0
    unm = rows[("2027-03-01", "(unmapped)", TEST_MODEL)]
    assert unm["status"] == "unmapped"
    assert unm["unmapped_ids"] == ["workspace=proj_unknown api_key=key_unknown"]
    assert doc["recorded"] == []
    assert doc["skipped"][0]["model"] == "gpt-unreleased-9"
    text = out.getvalue()
    assert "gpt-unreleased-9" in text and "unknown_model" in text and "proj_unknown" in text


def test_csv_and_table_output(budgetd: Budgetd, mapping_file: str) -> None:
    set_test_pricing(budgetd.admin)
    fx = Fixture(openai_usage={D1: [openai_result(TEST_MODEL, "proj_search", None,
                                                  input_tokens=1000)]})
    with FakeAdminAPI(fx) as api:
        out = io.StringIO()
        code = main(["--server", budgetd.address, "drift", "--provider", "openai", "--month",
                     "2027-03", "--until", "2027-03-15", "-f", mapping_file, "--base-url",
                     api.url, "--format", "csv", "--threshold-percent", "100"],
                    out=out, err=io.StringIO())
    assert code == 0  # 100% drift is not above a 100% threshold
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("day,scope,model,status,cost_source,provider_tokens")
    assert lines[1] == (f"2027-03-01,search,{TEST_MODEL},missing,pricing,1000,0,1000,1000,0,"
                        "1000,100.0000")


def test_apply_accepts_and_checks_the_providers_section(budgetd: Budgetd,
                                                        tmp_path: pathlib.Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(MAPPING)
    assert main(["--server", budgetd.address, "apply", "-f", str(good)], out=io.StringIO(),
                err=io.StringIO()) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(MAPPING.replace("search/rerank}", "search/rerank/x/y}", 1))
    err = io.StringIO()
    assert main(["--server", budgetd.address, "apply", "-f", str(bad)], out=io.StringIO(),
                err=err) == 2
    assert "orgs.acme.providers.anthropic.api_keys.apikey_rerank" in err.getvalue()


def test_scheduled_check_raises_a_drift_alert_once(
        budgetd: Budgetd, r: Any, redis_server: Any, mapping_file: str) -> None:
    """The server's scheduled mode (off by default), with a short interval:
    drift above the threshold becomes one "drift" alert on the org's stream,
    served by WatchAlerts; a later run does not repeat it."""
    from budgetd.clock import ManualClock
    from budgetd.config import Settings
    from budgetd.server import ServerThread
    from conftest import T0, ms

    assert Settings().drift_provider == ""  # off by default
    set_test_pricing(budgetd.admin)
    # budgetd saw 2000 of the 3000 tokens' worth: 1000 of 3000 micro-USD missing.
    record(budgetd, "acme/search", D3, "s1", input_tokens=2000)
    # And, same day and model, org-level spend budgetd never saw, and usage of a
    # project the mapping does not know: each its own alert.
    fx = Fixture(openai_usage={D3: [
        openai_result(TEST_MODEL, "proj_search", None, input_tokens=2000, output=500),
        openai_result(TEST_MODEL, "proj_org", None, input_tokens=100),
        openai_result(TEST_MODEL, "proj_unknown", None, input_tokens=100)]})
    with FakeAdminAPI(fx) as api:
        settings = Settings(listen="127.0.0.1:0", redis_url=redis_server.url,
                            redis_timeout_s=5.0, drift_provider="openai",
                            drift_mapping_file=mapping_file, drift_interval_s=0.2,
                            drift_threshold_percent=5.0, drift_base_url=api.url)
        thread = ServerThread(settings, ManualClock(ms(T0))).start()
        b = Budgetd(thread, thread.app.clock)  # type: ignore[arg-type]
        try:
            alerts = list(b.admin.watch_alerts("acme", after_id="0", timeout_s=5))
            drift_alerts = [a for a in alerts if a.kind == "drift"]
            assert sorted((str(a.scope), a.request_id) for a in drift_alerts) == [
                ("acme", f"drift:openai:{TEST_MODEL}"),
                ("acme", f"drift:openai:{TEST_MODEL}:unmapped"),
                ("acme/search", f"drift:openai:{TEST_MODEL}")]
            a = next(a for a in drift_alerts if str(a.scope) == "acme/search")
            assert str(a.scope) == "acme/search" and a.window_id == "2027-03-03"
            assert a.unit == "cost_micros" and a.limit == 3000 and a.consumed == 2000
            assert a.threshold_percent == 34 and a.request_id == f"drift:openai:{TEST_MODEL}"
            n_requests = len(fx.requests)
            time.sleep(0.6)  # more runs
            assert len(fx.requests) > n_requests
            kinds = [e[1][b"kind"] for e in r.xrange("bd:{acme}:alerts")]
            assert kinds.count(b"drift") == 3
        finally:
            b.close()


# --- model names: a provider's dated snapshot vs the caller's alias -----------------------


def set_named_pricing(b: Budgetd, model: str, aliases: tuple[str, ...]) -> None:
    """A real model's row (replacing the default one) at test-model's round
    prices, so costs below are computed by hand."""
    b.admin.set_pricing(apb.ModelPricing(
        model=model, aliases=list(aliases), max_output_tokens=4096,
        versions=[apb.PriceVersion(prices=apb.Prices(
            input=1_000_000, output=2_000_000, cache_write_5m=1_250_000,
            cache_write_1h=2_000_000, cache_read=100_000))]))


# (provider, name the provider reports, name budgetd's callers used, canonical name).
# The explicit aliases come from the pricing row; the other dated names resolve by
# the server's rules only (OpenAI "-YYYY-MM-DD", Anthropic "-YYYYMMDD").
NAME_CASES = [
    ("openai", "gpt-4o-mini-2024-07-18", "gpt-4o-mini", "gpt-4o-mini"),
    ("openai", "gpt-4o-mini", "gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
    ("openai", "gpt-4o-mini-2025-02-03", "GPT-4o-mini", "gpt-4o-mini"),
    ("anthropic", "claude-sonnet-4-5-20250929", "claude-sonnet-4-5", "claude-sonnet-4-5"),
    ("anthropic", "claude-sonnet-4-5", "claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
    ("anthropic", "claude-sonnet-4-5-20260101", "anthropic/claude-sonnet-4.5",
     "claude-sonnet-4-5"),
]
ALIASES = {"gpt-4o-mini": ("gpt-4o-mini-2024-07-18",),
           "claude-sonnet-4-5": ("claude-sonnet-4-5-20250929",)}


def usage_result(provider: str, model: str, input_tokens: int) -> dict[str, Any]:
    if provider == "openai":
        return openai_result(model, "proj_search", None, input_tokens=input_tokens)
    return anthropic_result(model, "wrkspc_search", "apikey_a", uncached=input_tokens)


@pytest.mark.parametrize("provider,reported,used,canonical", NAME_CASES)
def test_dated_and_alias_names_are_one_model(budgetd: Budgetd, mapping_file: str,
                                             provider: str, reported: str, used: str,
                                             canonical: str) -> None:
    set_named_pricing(budgetd, canonical, ALIASES[canonical])
    # Day 1: budgetd saw all of it. Day 2: 1000 of 3000 input tokens (1 micro-USD each).
    fx = Fixture()
    usage = {D1: [usage_result(provider, reported, 1500)],
             D2: [usage_result(provider, reported, 3000)]}
    if provider == "openai":
        fx.openai_usage = usage
    else:
        fx.anthropic_usage = usage
        # The cost report names the model as the usage report does: it must
        # reach the canonical row (0.3 cents = 3000 micro-USD).
        fx.anthropic_costs = {D2: [{"amount": "0.3", "currency": "USD", "cost_type": "tokens",
                                    "description": "x", "model": reported,
                                    "workspace_id": "wrkspc_search", "token_type": None}]}
    record(budgetd, "acme/search", D1, "n1", model=used, input_tokens=1000)
    record(budgetd, "acme/search", D1, "n2", model=canonical, input_tokens=500)
    record(budgetd, "acme/search", D2, "n3", model=used, input_tokens=1000)
    month = budgetd.admin.get_usage_report("acme", "month", "team", "2027-03")
    assert month.total.cost_micros == 2500
    with FakeAdminAPI(fx) as api:
        code, doc, err = drift(budgetd, api, mapping_file, provider)
        assert code == 4, err
        # One row per day, under the pricing table's name: no "missing" row for
        # the provider's name next to an "extra" row for the caller's.
        assert set(rows_by(doc)) == {("2027-03-01", "search", canonical),
                                     ("2027-03-02", "search", canonical)}
        d1 = rows_by(doc)[("2027-03-01", "search", canonical)]
        assert d1["status"] == "ok" and d1["diff_tokens"] == 0 and d1["diff_cost_micros"] == 0
        d2 = rows_by(doc)[("2027-03-02", "search", canonical)]
        assert d2["status"] == "missing" and d2["diff_tokens"] == 2000
        assert d2["diff_cost_micros"] == 2000 and d2["provider"]["cost_micros"] == 3000
        assert d2["cost_source"] == ("cost_report" if provider == "anthropic" else "pricing")

        code, doc, err = drift(budgetd, api, mapping_file, provider, "--record-missing")
        assert code == 0, err
        assert [(x["day"], x["model"], x["cost_micros"]) for x in doc["recorded"]] == [
            ("2027-03-02", canonical, 2000)]
        assert all(x["status"] == "ok" for x in doc["rows"])
        month = budgetd.admin.get_usage_report("acme", "month", "team", "2027-03")
        assert month.total.cost_micros == 2500 + 2000  # the shortfall, not the whole day again

        code, doc, err = drift(budgetd, api, mapping_file, provider, "--record-missing")
        assert code == 0 and doc["recorded"] == [], err
    month = budgetd.admin.get_usage_report("acme", "month", "team", "2027-03")
    assert month.total.cost_micros == 4500


def test_unknown_dated_model_is_reported_as_written(budgetd: Budgetd,
                                                   mapping_file: str) -> None:
    set_named_pricing(budgetd, "gpt-4o-mini", ALIASES["gpt-4o-mini"])
    fx = Fixture(openai_usage={D1: [
        openai_result("gpt-unreleased-9-2027-01-15", "proj_search", None, input_tokens=700),
        openai_result("gpt-4o-mini-2024-07-18", "proj_search", None, input_tokens=100)]})
    record(budgetd, "acme/search", D1, "u1", model="gpt-4o-mini", input_tokens=100)
    with FakeAdminAPI(fx) as api:
        code, doc, _ = drift(budgetd, api, mapping_file, "openai", "--record-missing")
    assert code == 4
    rows = rows_by(doc)
    assert set(rows) == {("2027-03-01", "search", "gpt-unreleased-9-2027-01-15"),
                         ("2027-03-01", "search", "gpt-4o-mini")}
    unk = rows[("2027-03-01", "search", "gpt-unreleased-9-2027-01-15")]
    assert unk["status"] == "unknown_model" and unk["provider"]["tokens"] == 700
    assert rows[("2027-03-01", "search", "gpt-4o-mini")]["status"] == "ok"
    assert doc["recorded"] == []
    assert [s["model"] for s in doc["skipped"]] == ["gpt-unreleased-9-2027-01-15"]


def test_by_default_only_complete_days_are_compared(budgetd: Budgetd, mapping_file: str) -> None:
    """Without --until the run stops at yesterday (UTC): the provider's buckets
    for today are still filling, and a cron run would fail on spend not
    billed yet."""
    set_test_pricing(budgetd.admin)
    today = dt.datetime.now(dt.timezone.utc).date()
    month = f"{today:%Y-%m}"
    with FakeAdminAPI(Fixture()) as api:
        out, err = io.StringIO(), io.StringIO()
        code = main(["--server", budgetd.address, "drift", "--provider", "openai", "--month",
                     month, "-f", mapping_file, "--base-url", api.url, "--format", "json"],
                    out=out, err=err)
        if today.day == 1:
            assert code == 2 and "--until" in err.getvalue(), err.getvalue()
            return
        assert code == 0, err.getvalue()
        ends = {int(dict(q)["end_time"]) for path, q in api.fixture.requests
                if path.endswith("/usage/completions")}
        midnight = dt.datetime(today.year, today.month, today.day, tzinfo=dt.timezone.utc)
        assert ends == {int(midnight.timestamp())}


def test_anthropic_missing_spend_is_recorded_once_at_the_cost_report_price(
        budgetd: Budgetd, mapping_file: str) -> None:
    """--record-missing with Anthropic: the shortfall is charged at the cost
    report's dollars (what was billed), with the token split the usage report
    gives (uncached input, 5-minute and 1-hour cache writes, cache reads,
    output), to the day it happened; a second run records nothing."""
    set_test_pricing(budgetd.admin)
    fx = Fixture(
        anthropic_usage={D3: [anthropic_result(TEST_MODEL, "wrkspc_search", "apikey_a",
                                               uncached=1000, output=200, cw5m=400, cw1h=100,
                                               cache_read=300)]},
        anthropic_costs={D3: [{"amount": "0.75", "currency": "USD", "cost_type": "tokens",
                               "description": "x", "model": TEST_MODEL,
                               "workspace_id": "wrkspc_search", "token_type": None}]})
    with FakeAdminAPI(fx) as api:
        code, doc, _ = drift(budgetd, api, mapping_file, "anthropic")
        assert code == 4
        row = rows_by(doc)[("2027-03-03", "search", TEST_MODEL)]
        assert (row["status"], row["cost_source"]) == ("missing", "cost_report")
        assert row["diff_tokens"] == 2000 and row["diff_cost_micros"] == 7500

        code, doc, err = drift(budgetd, api, mapping_file, "anthropic", "--record-missing")
        assert code == 0, err
        assert [x["cost_micros"] for x in doc["recorded"]] == [7500]
        rep = budgetd.admin.get_usage_report("acme", "day", "scope_model", "2027-03-03")
        got = rep.row(f"search|{TEST_MODEL}")
        assert (got.input_tokens, got.output_tokens, got.cache_write_tokens,
                got.cache_read_tokens, got.cost_micros) == (1000, 200, 500, 300, 7500)

        code, doc, _ = drift(budgetd, api, mapping_file, "anthropic", "--record-missing")
        assert code == 0 and doc["recorded"] == []
    rep = budgetd.admin.get_usage_report("acme", "day", "scope_model", "2027-03-03")
    assert rep.row(f"search|{TEST_MODEL}").cost_micros == 7500
