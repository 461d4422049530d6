"""budgetctl through its entry point (main(argv), and the console script in a
subprocess) against a real budgetd and Redis."""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import redis
from budgetd_client.cli import main
from conftest import Budgetd, keyspace
from helpers import TEST_MODEL, set_test_pricing

BUDGETCTL = str(pathlib.Path(sys.executable).parent / "budgetctl")


def run(b: Budgetd | None, *argv: str, server: str | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    addr = server or (b.address if b else "127.0.0.1:1")
    code = main(["--server", addr, "--timeout", "5", *argv], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def ok(b: Budgetd, *argv: str) -> str:
    code, out, err = run(b, *argv)
    assert code == 0, err
    assert err == ""
    return out


def test_budgets_set_get_list_delete(budgetd: Budgetd) -> None:
    out = ok(budgetd, "budgets", "set", "acme/search", "--window", "day", "--unit", "tokens",
             "--limit", "1000", "--mode", "soft", "--thresholds", "90,50")
    assert "set" in out
    out = ok(budgetd, "budgets", "set", "acme/search", "--window", "day", "--unit", "tokens",
             "--limit", "1000", "--mode", "soft", "--thresholds", "50,90")
    assert "unchanged" in out
    ok(budgetd, "budgets", "set", "acme", "--window", "month", "--unit", "cost", "--limit", "5")
    rules = json.loads(ok(budgetd, "-o", "json", "budgets", "list", "acme"))
    assert rules == [
        {"scope": "acme", "window": "month", "unit": "cost_micros", "limit": 5, "mode": "hard",
         "thresholds": [50, 75, 90, 100]},
        {"scope": "acme/search", "window": "day", "unit": "tokens", "limit": 1000,
         "mode": "soft", "thresholds": [50, 90]}]
    got = json.loads(ok(budgetd, "budgets", "get", "acme/search", "--output", "json"))
    assert [r["scope"] for r in got] == ["acme/search"]
    table = ok(budgetd, "budgets", "list", "acme")
    assert table.splitlines()[0].split() == ["SCOPE", "WINDOW", "UNIT", "LIMIT", "MODE",
                                             "THRESHOLDS"]
    assert "acme/search  day" in table
    assert json.loads(ok(budgetd, "-o", "json", "budgets", "delete", "acme/search",
                         "--window", "day", "--unit", "tokens")) == {"deleted": True}
    assert "no such rule" in ok(budgetd, "budgets", "delete", "acme/search", "--window", "day",
                                "--unit", "tokens")
    assert [r.scope.path if hasattr(r.scope, "path") else str(r.scope)
            for r in budgetd.admin.list_budgets("acme")] == ["acme"]


def test_orgs_set_get(budgetd: Budgetd) -> None:
    out = ok(budgetd, "orgs", "set", "acme", "--time-zone", "Europe/Paris",
             "--expiry-policy", "release")
    assert "Europe/Paris" in out and "release" in out
    got = json.loads(ok(budgetd, "orgs", "get", "acme", "-o", "json"))
    assert got == {"org": "acme", "time_zone": "Europe/Paris", "expiry_policy": "release"}
    # Bad time zone: the server refuses (exit 1), naming the field.
    code, _, err = run(budgetd, "orgs", "set", "acme", "--time-zone", "Mars/Olympus")
    assert code == 1 and "time_zone" in err and "Traceback" not in err
    code, _, err = run(budgetd, "orgs", "set", "acme")
    assert code == 2 and "--time-zone" in err


TREE = textwrap.dedent("""\
    orgs:
      acme:
        time_zone: America/New_York
        limits:
          - {window: month, unit: cost, limit_usd: "1500.50", mode: hard}
        teams:
          search:
            limits:
              - {window: day, unit: tokens, limit: 2000000, thresholds: [100, 80]}
            features:
              rerank:
                limits:
                  - {window: day, unit: tokens, limit: 500000, mode: shadow}
          chat:
            limits:
              - {window: month, unit: tokens, limit: 9000000, mode: soft}
    """)


def test_apply_dry_run_then_apply_is_idempotent(budgetd: Budgetd, tmp_path: pathlib.Path,
                                                r: redis.Redis) -> None:
    # Existing state: one rule the file changes, one it does not list.
    budgetd.admin.set_budget("acme/search", "day", "tokens", 1000)
    budgetd.admin.set_budget("acme/legacy", "day", "tokens", 77)
    f = tmp_path / "budgets.yaml"
    f.write_text(TREE)
    before = keyspace(r)
    out = ok(budgetd, "apply", "-f", str(f), "--dry-run")
    assert out.splitlines() == [
        "~ acme time_zone: UTC -> America/New_York",
        "+ acme month cost_micros: limit 1500500000 hard thresholds 50,75,90,100",
        "+ acme/chat month tokens: limit 9000000 soft thresholds 50,75,90,100",
        "~ acme/search day tokens: limit 1000 -> 2000000, thresholds 50,75,90,100 -> 80,100",
        "+ acme/search/rerank day tokens: limit 500000 shadow thresholds 50,75,90,100",
        "  acme/legacy day tokens: not in the file, kept (--prune deletes it)",
        "Plan: 3 to add, 1 to change, 0 to delete, 1 org setting(s) to change.",
        "Dry run: nothing changed.",
    ]
    assert keyspace(r) == before
    out = ok(budgetd, "apply", "-f", str(f))
    assert out.splitlines()[-1] == "Applied."
    rules = {(str(x.scope), x.window, x.unit): x for x in budgetd.admin.list_budgets("acme")}
    assert rules["acme", "month", "cost_micros"].limit == 1_500_500_000
    assert rules["acme/search", "day", "tokens"].alert_thresholds_percent == (80, 100)
    assert rules["acme/search/rerank", "day", "tokens"].mode == "shadow"
    assert ("acme/legacy", "day", "tokens") in rules
    assert budgetd.admin.get_org_settings("acme").time_zone == "America/New_York"
    # Second apply: nothing to do, nothing written.
    before = keyspace(r)
    out = ok(budgetd, "apply", "-f", str(f))
    assert "No changes." in out.splitlines()
    assert keyspace(r) == before
    res = json.loads(ok(budgetd, "apply", "-f", str(f), "-o", "json"))
    assert res["applied"] is False
    assert [c["kind"] for c in res["changes"]] == ["kept"]
    # --prune deletes what the file does not list, and only that.
    out = ok(budgetd, "apply", "-f", str(f), "--prune")
    assert "- acme/legacy day tokens: limit 77 hard thresholds 50,75,90,100" in out
    assert len(budgetd.admin.list_budgets("acme")) == 4
    assert "No changes." in ok(budgetd, "apply", "-f", str(f), "--prune")


@pytest.mark.parametrize(("content", "message"), [
    ("orgs: {acme: {limits: [{window: week, unit: tokens, limit: 1}]}}",
     "orgs.acme.limits[0].window: must be day or month"),
    ("orgs: {acme: {teams: {'bad team': {}}}}", "orgs.acme.teams: 'bad team' is not a valid id"),
    ("orgs: {acme: {limits: [{window: day, unit: tokens, limit_usd: 3}]}}",
     "limit_usd: only for unit cost"),
    ("orgs: {acme: {limts: []}}", "unknown key(s) limts"),
    ("orgs: [", "invalid YAML"),
])
def test_apply_bad_file_is_a_usage_error_naming_the_place(
        budgetd: Budgetd, tmp_path: pathlib.Path, r: redis.Redis, content: str,
        message: str) -> None:
    f = tmp_path / "b.yaml"
    f.write_text(content)
    before = keyspace(r)
    code, _out, err = run(budgetd, "apply", "-f", str(f))
    assert code == 2
    assert message in err and "Traceback" not in err
    assert keyspace(r) == before


def test_pricing_get_and_set_from_flags_and_file(budgetd: Budgetd,
                                                 tmp_path: pathlib.Path) -> None:
    out = ok(budgetd, "pricing", "set", "my-model", "--input-price", "3", "--output-price",
             "15", "--cache-read-price", "0.30", "--max-output-tokens", "8192")
    assert "my-model" in out
    got = json.loads(ok(budgetd, "-o", "json", "pricing", "get", "my-model"))
    prices = got[0]["versions"][0]["prices"]
    assert (int(prices["input"]), int(prices["output"]), int(prices["cache_read"])) == (
        3_000_000, 15_000_000, 300_000)
    table = ok(budgetd, "pricing", "get", "my-model")
    assert "my-model" in table and " 3 " in f" {table} " and "0.3" in table
    # Round trip: what `pricing get -o json` prints, `pricing set -f` reads.
    got[0]["model"] = "my-model-copy"
    got[0]["aliases"] = []
    f = tmp_path / "pricing.json"
    f.write_text(json.dumps(got))
    ok(budgetd, "pricing", "set", "-f", str(f))
    copy = budgetd.admin.get_pricing("my-model-copy")[0]
    assert copy.versions[0].prices.output == 15_000_000
    y = tmp_path / "pricing.yaml"
    y.write_text("pricing:\n  - model: yaml-model\n    max_output_tokens: 4096\n"
                 "    versions:\n"
                 "      - prices: {input: 1000000, output: 2000000}\n")
    ok(budgetd, "pricing", "set", "-f", str(y))
    assert budgetd.admin.get_pricing("yaml-model")[0].versions[0].prices.output == 2_000_000
    code, _, err = run(budgetd, "pricing", "set", "m", "--input-price", "abc",
                       "--output-price", "1", "--max-output-tokens", "10")
    assert code == 2 and "--input-price" in err
    code, _, err = run(budgetd, "pricing", "get", "no-such-model")
    assert code == 1 and "no-such-model" in err


def test_status_shows_used_reserved_remaining_with_bar(budgetd: Budgetd) -> None:
    set_test_pricing(budgetd.admin)
    budgetd.admin.set_budget("acme/search", "day", "tokens", 1000)
    res = budgetd.client.reserve("acme/search", TEST_MODEL, tokens=300, cost_micros=1)
    budgetd.client.reconcile(res.reservation_id, {"input_tokens": 200})
    budgetd.client.reserve("acme/search", TEST_MODEL, tokens=300, cost_micros=1)
    out = ok(budgetd, "status", "acme/search")
    line = next(x for x in out.splitlines() if "day" in x and "tokens" in x)
    # 200 used = 6 of 30 cells, 300 reserved = 9 cells.
    assert "[" + "#" * 6 + "+" * 9 + "." * 15 + "]" in line
    assert "used 200 reserved 300 remaining 500 of 1000 (hard)" in line
    assert "no limit" in out  # month / cost have no rule
    st = json.loads(ok(budgetd, "status", "acme/search", "-o", "json"))
    day = next(w for w in st["windows"] if w["window"] == "day" and w["unit"] == "tokens")
    assert (day["used"], day["reserved"], day["remaining"]) == (200, 300, 500)


def test_report_and_alerts_watch(budgetd: Budgetd) -> None:
    from budgetd_client import Usage
    from helpers import TEST_MODEL, set_test_pricing

    set_test_pricing(budgetd.admin)
    budgetd.admin.set_budget("acme", "day", "tokens", 1000, alert_thresholds_percent=[50])
    for scope, used in (("acme/search", 300), ("acme/search", 100), ("acme/chat", 250)):
        res = budgetd.client.reserve(scope, TEST_MODEL, input_tokens=used, max_output_tokens=10)
        budgetd.client.reconcile(res.reservation_id, Usage(input_tokens=used))
    out = ok(budgetd, "report", "acme", "--period", "day", "--group-by", "team", "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    got = {r["group"]: (int(r["input_tokens"]), int(r["cost_micros"]), int(r["requests"]))
           for r in rows}
    assert got == {"chat": (250, 250, 1), "search": (400, 400, 2), "TOTAL": (650, 650, 3)}
    report = json.loads(ok(budgetd, "-o", "json", "report", "acme", "--group-by", "model"))
    assert [r["group"] for r in report["rows"]] == [TEST_MODEL]
    assert report["total"]["input_tokens"] == 650
    table = ok(budgetd, "report", "acme")
    assert "search" in table and "TOTAL" in table

    # The 50% alert fired once (at 560 of 1000 consumed, with the reservations).
    code, out, err = run(budgetd, "-o", "json", "alerts", "watch", "acme", "--after-id", "0",
                         "--count", "1")
    assert code == 0, err
    alert = json.loads(out.splitlines()[0])
    assert (alert["scope"], alert["window"], alert["unit"], alert["threshold_percent"],
            alert["limit"]) == ("acme", "day", "tokens", 50, 1000)
    for argv, message in ((["report", "acme", "--period", "week"], "invalid choice"),
                          (["report", "acme", "--group-by", "org"], "invalid choice"),
                          (["report", "bad org"], "not a valid id"),
                          (["alerts", "watch", "acme", "--count", "0"], "--count"),
                          (["alerts", "watch"], "required")):
        code, _, err = run(budgetd, *argv)
        assert code == 2, argv
        assert message in err


def test_errors_and_exit_codes(budgetd: Budgetd) -> None:
    # Unavailable: exit 3, no traceback.
    code, _, err = run(None, "budgets", "list", "acme", server="127.0.0.1:1")
    assert code == 3 and "unavailable" in err and "Traceback" not in err
    # Server said no: bad limit, exit 1, the message names the field.
    code, _, err = run(budgetd, "budgets", "set", "acme", "--window", "day", "--unit",
                       "tokens", "--limit", "0")
    assert code == 1 and "rule.limit" in err
    # Usage errors: exit 2.
    assert run(budgetd, "budgets", "set", "acme")[0] == 2
    assert run(budgetd, "status", "a/b/c/d")[0] == 2
    assert run(budgetd, "--output", "yaml", "status", "acme")[0] == 2
    assert run(budgetd, "status", "acme", "--cert-file", "/nonexistent")[0] == 2


@pytest.mark.parametrize("argv", [
    [], ["budgets", "set"], ["budgets", "get"], ["budgets", "list"], ["budgets", "delete"],
    ["orgs", "set"], ["orgs", "get"], ["apply"], ["pricing", "get"], ["pricing", "set"],
    ["report"], ["alerts", "watch"], ["status"]])
def test_help_on_each_command(argv: list[str]) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = main([*argv, "--help"], out=out, err=err)
    assert code == 0
    assert "usage: budgetctl" in out.getvalue()
    assert "--server" in out.getvalue() or argv == []


def test_console_script_with_env(budgetd: Budgetd) -> None:
    budgetd.admin.set_budget("acme", "day", "tokens", 10)
    env = {**os.environ, "BUDGETD_SERVER": budgetd.address}
    out = subprocess.run([BUDGETCTL, "-o", "json", "budgets", "list", "acme"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[0]["limit"] == 10
    out = subprocess.run([BUDGETCTL, "budgets", "list", "bad/org"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "Traceback" not in out.stderr

