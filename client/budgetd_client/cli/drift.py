"""`budgetctl drift --provider anthropic|openai --month 2026-11 -f budgets.yaml`:
the provider's usage vs budgetd's ledger per day, scope and model
(docs/drift.md).

Exit codes (besides budgetctl's 0-3): 4 drift above --threshold-percent on
some row, 5 the provider's admin API failed (401/403: the admin key was
rejected; 429 after the allowed retries; a malformed answer).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import sys
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from budgetd_client.cli import apply as ap
from budgetd_client.providers import _http
from budgetd_client.providers import drift as dr
from budgetd_client.providers import mapping as mp
from budgetd_client.providers.anthropic import AnthropicAdmin
from budgetd_client.providers.openai import OpenAIAdmin
from budgetd_client.providers.usage import CostRow, UsageRow, month_range

if TYPE_CHECKING:
    from budgetd_client.cli.main import Ctx

EXIT_DRIFT, EXIT_PROVIDER = 4, 5
DEFAULT_THRESHOLD_PERCENT = 1.0
CSV_FIELDS = ["day", "scope", "model", "status", "cost_source", "provider_tokens",
              "budgetd_tokens", "diff_tokens", "provider_cost_micros", "budgetd_cost_micros",
              "diff_cost_micros", "drift_percent"]


class DriftExit(Exception):
    """Ends the command with an exit code and a one-line message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def register(sub: Any, add: Callable[..., Any]) -> None:
    p = add(sub, "drift", cmd_drift,
            "compare budgetd's ledger with a provider's usage API, per day, scope and model")
    p.add_argument("--provider", required=True, choices=list(mp.PROVIDERS))
    p.add_argument("--month", required=True, help="YYYY-MM (UTC days)")
    p.add_argument("-f", "--file", required=True,
                   help="budgets.yaml with orgs.<org>.providers (see docs/drift.md)")
    p.add_argument("--org", help="the org, when several orgs map the provider")
    p.add_argument("--until", help="last UTC day to compare, YYYY-MM-DD (default: yesterday, "
                   "the last complete day: today's buckets are still filling)")
    p.add_argument("--threshold-percent", type=float, default=DEFAULT_THRESHOLD_PERCENT,
                   help="exit 4 when a row drifts more than this (default 1.0)")
    p.add_argument("--format", choices=["table", "csv", "json"],
                   help="output format (default: -o, i.e. table)")
    p.add_argument("--record-missing", action="store_true",
                   help="charge budgetd's shortfall with Record (idempotent)")
    p.add_argument("--base-url", help="the provider's API base URL (tests, proxies)")
    p.add_argument("--no-cost-report", action="store_true",
                   help="anthropic: price tokens with budgetd's table, not the cost report")
    p.add_argument("--page-limit", type=int, default=31, help="day buckets per page (1-31)")
    p.add_argument("--max-retry-after", type=float, default=60.0,
                   help="longest wait on a 429 Retry-After, seconds (default 60)")


def _importer(ns: argparse.Namespace) -> AnthropicAdmin | OpenAIAdmin:
    policy = _http.HttpPolicy(max_retry_after_s=max(0.0, ns.max_retry_after))
    kw: dict[str, Any] = {"policy": policy, "page_limit": ns.page_limit}
    if ns.base_url:
        kw["base_url"] = ns.base_url
    return AnthropicAdmin(**kw) if ns.provider == "anthropic" else OpenAIAdmin(**kw)


def ledger_rows(ctx: Ctx, org: str, start: dt.date, end: dt.date) -> dict[dr.Key, dr.LedgerRow]:
    out: dict[dr.Key, dr.LedgerRow] = {}
    day = start
    while day < end:
        rep = ctx.admin.get_usage_report(org, "day", "scope_model", day.isoformat())
        for r in rep.rows:
            scope, model = dr.parse_ledger_group(r.group)
            out[(day, scope, model)] = dr.LedgerRow(r.input_tokens, r.output_tokens,
                                                     r.cache_write_tokens, r.cache_read_tokens,
                                                     r.cost_micros)
        day += dt.timedelta(days=1)
    return out


def _usd(micros: int | None) -> str:
    return "?" if micros is None else f"{Decimal(micros) / 1_000_000:.6f}"


def cmd_drift(ctx: Ctx) -> int:
    ns = ctx.ns
    try:
        pm = mp.load(ap.load_data(ns.file), ns.provider, ns.org, ns.file)
    except (ap.SpecError, mp.MappingError) as e:
        raise DriftExit(2, str(e)) from None
    try:
        # A partial day would show budgetd ahead of the provider's lagging
        # buckets: a cron run would fail on spend that is merely not billed yet.
        until = (dt.date.fromisoformat(ns.until) if ns.until
                 else dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1))
    except ValueError:
        raise DriftExit(2, f"--until: {ns.until!r} is not YYYY-MM-DD") from None
    try:
        start, end = month_range(ns.month, until)
    except ValueError as e:
        hint = "" if ns.until else " (no complete day yet: --until YYYY-MM-DD includes today)"
        raise DriftExit(2, f"--month: {e}{hint}") from None
    if ns.threshold_percent < 0:
        raise DriftExit(2, "--threshold-percent: must be >= 0")
    try:
        imp = _importer(ns)
        usage: list[UsageRow] = imp.usage(start, end)
        costs: list[CostRow] | None = None
        if isinstance(imp, AnthropicAdmin) and not ns.no_cost_report:
            costs = imp.costs(start, end)
    except _http.ProviderError as e:
        raise DriftExit(EXIT_PROVIDER, str(e)) from None
    org = pm.org
    tz = ctx.admin.get_org_settings(org).time_zone or "UTC"
    if tz != "UTC":
        print(f"budgetctl: warning: org {org} counts days in {tz}, the provider in UTC: "
              "per-day rows may shift, the month's sums compare", file=sys.stderr)
    pricer = dr.Pricer(ctx.admin.get_pricing())
    rows = dr.compare(pm, usage, costs, pricer, ledger_rows(ctx, org, start, end))
    recorded: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    if ns.record_missing:
        recorded, skipped = record_missing(ctx, ns.provider, org, rows)
        if recorded:
            rows = dr.compare(pm, usage, costs, pricer, ledger_rows(ctx, org, start, end))
    over = [r for r in rows if r.over(ns.threshold_percent)]
    _emit(ctx, ns, org, rows, recorded, skipped, over)
    return EXIT_DRIFT if over else 0


def record_missing(ctx: Ctx, provider: str, org: str, rows: list[dr.DriftRow]
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    recorded, skipped = [], []
    for r in rows:
        if r.status == "unmapped" or (r.diff_tokens <= 0 and r.status != "unknown_model"):
            continue
        missing = r.missing_tokens()
        if missing.total == 0:
            continue
        where = {"day": r.day.isoformat(), "scope": r.scope, "model": r.model}
        if r.status == "unknown_model":
            skipped.append({**where, "reason": "model not in budgetd's pricing table "
                            "(budgetctl pricing set)"})
            continue
        cost = None
        if r.diff_cost_micros is not None and (r.cost_source == "cost_report"
                                               or r.provider_batch_tokens.total):
            # The provider's dollars, or its batch-discounted price: the
            # server would price the missing tokens at the standard rate.
            cost = max(0, r.diff_cost_micros)
        usage = {"input_tokens": missing.input, "output_tokens": missing.output,
                 "cache_creation_input_tokens": missing.cache_write,
                 "cache_read_input_tokens": missing.cache_read,
                 "ephemeral_5m_input_tokens": missing.cache_write_5m,
                 "ephemeral_1h_input_tokens": missing.cache_write_1h}
        scope = "/".join(p for p in (org, r.scope) if p)
        rid = dr.record_request_id(provider, org, r)
        got = ctx.budget.record(scope, r.model, usage, request_id=rid, cost_micros=cost,
                                occurred_at=dr.occurred_at(r.day))
        recorded.append({**where, "request_id": rid, "tokens": got.tokens,
                         "cost_micros": got.cost_micros})
    return recorded, skipped


def _emit(ctx: Ctx, ns: argparse.Namespace, org: str, rows: list[dr.DriftRow],
          recorded: list[dict[str, Any]], skipped: list[dict[str, Any]],
          over: list[dr.DriftRow]) -> None:
    fmt = ns.format or ("json" if ctx.json else "table")
    if fmt == "json":
        ctx.emit_json({"provider": ns.provider, "org": org, "month": ns.month,
                       "threshold_percent": ns.threshold_percent,
                       "rows": [r.to_json() for r in rows], "over_threshold": len(over),
                       "recorded": recorded, "skipped": skipped})
        return
    if fmt == "csv":
        w = csv.writer(ctx.out, lineterminator="\n")
        w.writerow(CSV_FIELDS)
        for r in rows:
            w.writerow([r.day.isoformat(), r.scope, r.model, r.status, r.cost_source,
                        r.provider_tokens.total, r.ledger.total, r.diff_tokens,
                        "" if r.provider_cost_micros is None else r.provider_cost_micros,
                        r.ledger.cost_micros,
                        "" if r.diff_cost_micros is None else r.diff_cost_micros,
                        f"{r.drift_percent:.4f}"])
        return
    head = ["day", "scope", "model", "status", "provider_tok", "budgetd_tok", "diff_tok",
            "provider_usd", "budgetd_usd", "diff_usd", "drift_%"]
    table = [[r.day.isoformat(), r.scope or "(org)", r.model, r.status,
              str(r.provider_tokens.total), str(r.ledger.total), str(r.diff_tokens),
              _usd(r.provider_cost_micros), _usd(r.ledger.cost_micros),
              _usd(r.diff_cost_micros), f"{r.drift_percent:.2f}"] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *table, strict=False)]
    ctx.print(f"{ns.provider} vs budgetd, org {org}, {ns.month} (UTC days)")
    for line in [head, *table]:
        ctx.print("  ".join(c.ljust(wd) for c, wd in zip(line, widths, strict=True)).rstrip())
    for r in rows:
        if r.identities:
            ctx.print(f"unmapped on {r.day} ({r.model}): {'; '.join(r.identities)}")
    for s in skipped:
        ctx.print(f"not recorded: {s['day']} {s['scope']} {s['model']}: {s['reason']}")
    if recorded:
        ctx.print(f"Recorded {len(recorded)} shortfall(s) with Record.")
    ctx.print(f"{len(over)} row(s) drift more than {ns.threshold_percent}%.")
