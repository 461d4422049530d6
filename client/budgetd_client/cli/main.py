"""budgetctl: budgets, org settings, pricing, reports and alerts from a shell.

Exit codes: 0 ok, 1 the server said no, 2 usage error, 3 budgetd unavailable."""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import json
import os
import pathlib
import sys
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, TextIO

import grpc
from google.protobuf import json_format

from budgetd_client._channel import CallPolicy, metadata
from budgetd_client._proto.budget.v1 import admin_pb2 as apb
from budgetd_client._proto.budget.v1 import admin_pb2_grpc as apb_grpc
from budgetd_client._proto.budget.v1 import budget_pb2 as pb
from budgetd_client.cli import apply as ap
from budgetd_client.cli import drift as drift_cmd
from budgetd_client.errors import BudgetError, BudgetUnavailable, from_rpc_error
from budgetd_client.sync import AdminClient, BudgetClient
from budgetd_client.types import EXPIRY, MODES, UNITS, WINDOWS, Rule, Scope

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3
DEFAULT_SERVER = "127.0.0.1:50051"
MAX_PEM_BYTES = 1 << 20
BAR_WIDTH = 30
# Values of BUDGETD_TLS that turn TLS on (as the server reads its bool env vars).
_TRUE = frozenset({"1", "true", "yes", "on"})
_EXPIRY_NAMES = {v: k for k, v in EXPIRY.items()}
_WINDOW_NAMES = {pb.WINDOW_DAY: "day", pb.WINDOW_MONTH: "month"}
_UNIT_NAMES = {pb.UNIT_TOKENS: "tokens", pb.UNIT_COST_MICROS: "cost_micros"}
_MODE_NAMES = {pb.MODE_HARD: "hard", pb.MODE_SOFT: "soft", pb.MODE_SHADOW: "shadow"}
PERIODS = {"day": apb.PERIOD_DAY, "month": apb.PERIOD_MONTH}
GROUP_BY = {"team": apb.GROUP_BY_TEAM, "feature": apb.GROUP_BY_FEATURE,
            "model": apb.GROUP_BY_MODEL, "scope_model": apb.GROUP_BY_SCOPE_MODEL}


class UsageError(Exception):
    """Bad flags or files: exit 2."""


class Ctx:
    """What a command needs: parsed flags, output stream, lazily made clients."""

    def __init__(self, ns: argparse.Namespace, out: TextIO) -> None:
        self.ns = ns
        self.out = out
        self.json = ns.output == "json"
        self._admin: AdminClient | None = None
        self._budget: BudgetClient | None = None

    def _conn(self) -> dict[str, Any]:
        ns = self.ns
        if bool(ns.cert_file) != bool(ns.key_file):
            raise UsageError("--cert-file and --key-file go together (client certificate)")
        ca = _read_pem("--ca-file", ns.ca_file) if ns.ca_file else None
        cert = _read_pem("--cert-file", ns.cert_file) if ns.cert_file else None
        key = _read_pem("--key-file", ns.key_file) if ns.key_file else None
        tls = bool(ns.tls or ca or cert)
        return dict(token=ns.token or None, tls=tls, root_certificates=ca, private_key=key,
                    certificate_chain=cert,
                    policy=CallPolicy(timeout_s=ns.timeout, total_timeout_s=ns.timeout * 2,
                                      retries=1))

    @property
    def admin(self) -> AdminClient:
        if self._admin is None:
            self._admin = AdminClient(self.ns.server, **self._conn())
        return self._admin

    @property
    def budget(self) -> BudgetClient:
        if self._budget is None:
            self._budget = BudgetClient(self.ns.server, **self._conn())
        return self._budget

    def admin_stub(self) -> apb_grpc.BudgetAdminServiceStub:
        return apb_grpc.BudgetAdminServiceStub(self.admin.channel)

    @property
    def md(self) -> Sequence[tuple[str, str]]:
        return metadata(self.ns.token or None)

    def print(self, text: str = "") -> None:
        print(text, file=self.out)

    def emit_json(self, obj: Any) -> None:
        print(json.dumps(obj, indent=2, sort_keys=False), file=self.out)

    def close(self) -> None:
        for c in (self._admin, self._budget):
            if c is not None:
                c.close()


def _read_pem(flag: str, path: str) -> bytes:
    p = pathlib.Path(path)
    try:
        if p.stat().st_size > MAX_PEM_BYTES:
            raise UsageError(f"{flag} {path}: larger than {MAX_PEM_BYTES} bytes")
        return p.read_bytes()
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot read: {e.strerror}") from e


def _scope(value: str) -> Scope:
    parts = value.split("/")
    if not 1 <= len(parts) <= 3 or not all(ap.ID_RE.fullmatch(p) for p in parts):
        raise UsageError(f"scope {value!r}: expected org[/team[/feature]], each an id "
                         f"matching {ap.ID_RE.pattern}")
    return Scope(*parts)


def _org(value: str) -> str:
    if not ap.ID_RE.fullmatch(value):
        raise UsageError(f"org {value!r}: not a valid id ({ap.ID_RE.pattern})")
    return value


def _thresholds(value: str | None) -> tuple[int, ...]:
    if not value:
        return ()
    try:
        th = tuple(int(x) for x in value.split(",") if x.strip())
    except ValueError as e:
        raise UsageError(f"--thresholds {value!r}: expected percentages like 50,75,90,100") \
            from e
    return th


def _rule_row(r: Rule) -> list[str]:
    return [str(r.scope), r.window, r.unit, str(r.limit), r.mode,
            ",".join(str(t) for t in r.alert_thresholds_percent)]


def _table(ctx: Ctx, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    ctx.print("  ".join(h.upper().ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    for r in rows:
        ctx.print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _settings_json(s: apb.OrgSettings) -> dict[str, Any]:
    return {"org": s.org, "time_zone": s.time_zone or "UTC",
            "expiry_policy": _EXPIRY_NAMES.get(s.expiry_policy, "keep")}


def _print_settings(ctx: Ctx, s: apb.OrgSettings) -> None:
    d = _settings_json(s)
    if ctx.json:
        ctx.emit_json(d)
    else:
        ctx.print(f"org {d['org']}: time_zone {d['time_zone']}, "
                  f"expiry_policy {d['expiry_policy']}")


# -- budgets -----------------------------------------------------------------

def cmd_budgets_set(ctx: Ctx) -> int:
    ns = ctx.ns
    scope = _scope(ns.scope)
    changed = ctx.admin.set_budget(scope, ns.window, ns.unit, ns.limit, mode=ns.mode,
                                   alert_thresholds_percent=_thresholds(ns.thresholds))
    if ctx.json:
        ctx.emit_json({"changed": changed})
    else:
        ctx.print(f"{scope} {ns.window} {ns.unit}: " + ("set" if changed else "unchanged"))
    return EXIT_OK


def cmd_budgets_get(ctx: Ctx) -> int:
    scope = _scope(ctx.ns.scope)
    rules = [r for r in ctx.admin.list_budgets(scope.org) if r.scope == scope]
    return _print_rules(ctx, rules)


def cmd_budgets_list(ctx: Ctx) -> int:
    return _print_rules(ctx, ctx.admin.list_budgets(_org(ctx.ns.org)))


def _print_rules(ctx: Ctx, rules: list[Rule]) -> int:
    if ctx.json:
        ctx.emit_json([ap.rule_json(r) for r in rules])
    elif not rules:
        ctx.print("no budget rules")
    else:
        _table(ctx, ["scope", "window", "unit", "limit", "mode", "thresholds"],
               [_rule_row(r) for r in rules])
    return EXIT_OK


def cmd_budgets_delete(ctx: Ctx) -> int:
    ns = ctx.ns
    scope = _scope(ns.scope)
    deleted = ctx.admin.delete_budget(scope, ns.window, ns.unit)
    if ctx.json:
        ctx.emit_json({"deleted": deleted})
    else:
        ctx.print(f"{scope} {ns.window} {ns.unit}: " + ("deleted" if deleted else "no such rule"))
    return EXIT_OK


# -- orgs --------------------------------------------------------------------

def cmd_orgs_set(ctx: Ctx) -> int:
    ns = ctx.ns
    if ns.time_zone is None and ns.expiry_policy is None:
        raise UsageError("orgs set: give --time-zone and/or --expiry-policy")
    s = ctx.admin.set_org_settings(_org(ns.org), time_zone=ns.time_zone,
                                   expiry_policy=ns.expiry_policy)
    _print_settings(ctx, s)
    return EXIT_OK


def cmd_orgs_get(ctx: Ctx) -> int:
    _print_settings(ctx, ctx.admin.get_org_settings(_org(ctx.ns.org)))
    return EXIT_OK


# -- apply -------------------------------------------------------------------

def cmd_apply(ctx: Ctx) -> int:
    ns = ctx.ns
    try:
        specs = ap.load(ns.file)
    except ap.SpecError as e:
        raise UsageError(str(e)) from e
    plans: list[tuple[ap.OrgSpec, list[ap.Change]]] = []
    for spec in specs:
        resp = ctx.admin.run(_list_op(spec.org))
        current = [Rule.from_pb(x) for x in resp.rules]
        tz = resp.settings.time_zone or "UTC"
        expiry = _EXPIRY_NAMES.get(resp.settings.expiry_policy, "keep")
        plans.append((spec, ap.plan(spec, current, tz, expiry, ns.prune)))
    changes = [c for _, cs in plans for c in cs if c.kind != "kept"]
    if not ctx.json:
        for _, cs in plans:
            for c in cs:
                ctx.print(c.describe())
        n = {k: sum(1 for c in changes if c.kind == k)
             for k in ("settings", "add", "change", "delete")}
        if not changes:
            ctx.print("No changes.")
        else:
            ctx.print(f"Plan: {n['add']} to add, {n['change']} to change, {n['delete']} to "
                      f"delete, {n['settings']} org setting(s) to change.")
    if changes and not ns.dry_run:
        for spec, cs in plans:
            _apply_org(ctx, spec, cs)
    if ctx.json:
        ctx.emit_json({"changes": [c.to_json() for _, cs in plans for c in cs],
                       "applied": bool(changes) and not ns.dry_run, "dry_run": ns.dry_run})
    elif changes:
        ctx.print("Dry run: nothing changed." if ns.dry_run else "Applied.")
    return EXIT_OK


def _list_op(org: str) -> Any:
    from budgetd_client._ops import Op

    return Op("admin", "ListBudgets", apb.ListBudgetsRequest(org=org), lambda r: r)


def _apply_org(ctx: Ctx, spec: ap.OrgSpec, changes: list[ap.Change]) -> None:
    # Settings first: the time zone decides the windows the rules apply to.
    tz = next((c.new_value for c in changes if c.setting == "time_zone"), None)
    exp = next((c.new_value for c in changes if c.setting == "expiry_policy"), None)
    if tz is not None or exp is not None:
        ctx.admin.set_org_settings(spec.org, time_zone=tz, expiry_policy=exp)
    for c in changes:
        if c.kind in ("add", "change"):
            r = c.new
            assert r is not None
            ctx.admin.set_budget(r.scope, r.window, r.unit, r.limit, mode=r.mode,
                                 alert_thresholds_percent=r.alert_thresholds_percent)
        elif c.kind == "delete":
            assert c.key is not None
            ctx.admin.delete_budget(_scope(c.key[0]), c.key[1], c.key[2])


# -- pricing -----------------------------------------------------------------

def _pricing_json(m: apb.ModelPricing) -> dict[str, Any]:
    return json_format.MessageToDict(m, preserving_proto_field_name=True)


def _usd(v: int) -> str:
    return f"{Decimal(v) / 1_000_000:f}"


def cmd_pricing_get(ctx: Ctx) -> int:
    models = ctx.admin.get_pricing(ctx.ns.model or "")
    if ctx.json:
        ctx.emit_json([_pricing_json(m) for m in models])
        return EXIT_OK
    rows = []
    for m in models:
        for v in m.versions or [apb.PriceVersion()]:
            p = v.prices
            rows.append([m.model, v.effective_from or "-", _usd(p.input), _usd(p.output),
                         _usd(p.cache_write_5m), _usd(p.cache_write_1h), _usd(p.cache_read),
                         str(m.max_output_tokens), str(m.batch_discount_percent),
                         str(len(v.tiers))])
    ctx.print("prices in USD per million tokens")
    _table(ctx, ["model", "from", "input", "output", "cw_5m", "cw_1h", "cache_read",
                 "max_out", "batch_%", "tiers"], rows)
    return EXIT_OK


def _usd_per_mtok(flag: str, v: str | None) -> int:
    if v is None:
        return 0
    try:
        d = Decimal(v) * 1_000_000
    except InvalidOperation as e:
        raise UsageError(f"{flag} {v!r}: expected USD per million tokens, e.g. 3 or 0.30") \
            from e
    if d < 0 or d != d.to_integral_value():
        raise UsageError(f"{flag} {v!r}: must be >= 0 with at most 6 decimals")
    return int(d)


def _pricing_from_file(path: str) -> list[apb.ModelPricing]:
    try:
        specs = ap.load_data(path)
    except ap.SpecError as e:
        raise UsageError(str(e)) from e
    if isinstance(specs, dict) and "pricing" in specs:
        specs = specs["pricing"]
    if isinstance(specs, dict):
        specs = [specs]
    if not isinstance(specs, list) or not specs:
        raise UsageError(f"{path}: expected a model pricing, a list of them, or 'pricing:'")
    out = []
    for i, s in enumerate(specs):
        try:
            out.append(json_format.ParseDict(s, apb.ModelPricing()))
        except (json_format.ParseError, TypeError, ValueError) as e:
            raise UsageError(f"{path}: [{i}]: {e}") from e
    return out


def cmd_pricing_set(ctx: Ctx) -> int:
    ns = ctx.ns
    if ns.file:
        if ns.model:
            raise UsageError("pricing set: give a MODEL with flags, or -f FILE, not both")
        models = _pricing_from_file(ns.file)
    else:
        if not ns.model:
            raise UsageError("pricing set: give a MODEL (with --input-price/--output-price) "
                             "or -f FILE")
        if ns.input_price is None or ns.output_price is None or not ns.max_output_tokens:
            raise UsageError("pricing set: --input-price, --output-price and "
                             "--max-output-tokens are required")
        prices = apb.Prices(
            input=_usd_per_mtok("--input-price", ns.input_price),
            output=_usd_per_mtok("--output-price", ns.output_price),
            cache_write_5m=_usd_per_mtok("--cache-write-5m-price", ns.cache_write_5m_price),
            cache_write_1h=_usd_per_mtok("--cache-write-1h-price", ns.cache_write_1h_price),
            cache_read=_usd_per_mtok("--cache-read-price", ns.cache_read_price))
        models = [apb.ModelPricing(
            model=ns.model, aliases=ns.alias or [], max_output_tokens=ns.max_output_tokens,
            batch_discount_percent=ns.batch_discount_percent,
            versions=[apb.PriceVersion(effective_from=ns.effective_from or "", prices=prices)])]
    saved = [ctx.admin.set_pricing(m) for m in models]
    if ctx.json:
        ctx.emit_json([_pricing_json(m) for m in saved])
    else:
        for m in saved:
            ctx.print(f"pricing set for {m.model}")
    return EXIT_OK


# -- report / alerts (admin RPCs called through the generated stubs) -----------

def _rpc(fn: Callable[[], Any], what: str) -> Any:
    try:
        return fn()
    except grpc.RpcError as e:
        raise _rpc_error(e, what) from None


def _rpc_error(e: Any, what: str) -> BudgetError:
    if e.code() == grpc.StatusCode.UNIMPLEMENTED:
        return BudgetError(f"this budgetd does not implement {what} (UNIMPLEMENTED: "
                           f"{e.details()}); upgrade the server", e.code())
    return from_rpc_error(e)


def _row_json(r: apb.UsageRow) -> dict[str, Any]:
    return {"group": r.group, "input_tokens": r.input_tokens, "output_tokens": r.output_tokens,
            "cache_write_tokens": r.cache_write_tokens,
            "cache_read_tokens": r.cache_read_tokens, "cost_micros": r.cost_micros,
            "requests": r.requests, "denials": r.denials}


_REPORT_FIELDS = ["group", "input_tokens", "output_tokens", "cache_write_tokens",
                  "cache_read_tokens", "cost_micros", "requests", "denials"]


def cmd_report(ctx: Ctx) -> int:
    ns = ctx.ns
    req = apb.GetUsageReportRequest(org=_org(ns.org), period=PERIODS[ns.period],
                                    period_id=ns.period_id or "", group_by=GROUP_BY[ns.group_by])
    stub = ctx.admin_stub()
    resp = _rpc(lambda: stub.GetUsageReport(req, timeout=ns.timeout, metadata=ctx.md),
                "GetUsageReport")
    rows = [_row_json(r) for r in resp.rows]
    total = {**_row_json(resp.total), "group": "TOTAL"}
    if ns.csv:
        w = csv.DictWriter(ctx.out, fieldnames=_REPORT_FIELDS, lineterminator="\n")
        w.writeheader()
        w.writerows([*rows, total])
    elif ctx.json:
        ctx.emit_json({"org": resp.org, "period": ns.period, "period_id": resp.period_id,
                       "group_by": ns.group_by, "rows": rows, "total": total})
    else:
        ctx.print(f"{resp.org} {ns.period} {resp.period_id} by {ns.group_by}")
        _table(ctx, [ns.group_by, "input", "output", "cache_write", "cache_read", "cost_usd",
                     "requests", "denials"],
               [[r["group"], str(r["input_tokens"]), str(r["output_tokens"]),
                 str(r["cache_write_tokens"]), str(r["cache_read_tokens"]),
                 _usd(r["cost_micros"]), str(r["requests"]), str(r["denials"])]
                for r in [*rows, total]])
    return EXIT_OK


def _alert_json(a: pb.Alert) -> dict[str, Any]:
    return {"id": a.id, "scope": str(Scope.from_pb(a.scope)),
            "window": _WINDOW_NAMES.get(a.window, "?"), "unit": _UNIT_NAMES.get(a.unit, "?"),
            "mode": _MODE_NAMES.get(a.mode, "?"), "threshold_percent": a.threshold_percent,
            "limit": a.limit, "consumed": a.consumed, "window_id": a.window_id,
            "fired_at": a.fired_at.ToDatetime(dt.timezone.utc).isoformat(),
            "request_id": a.request_id}


def cmd_alerts_watch(ctx: Ctx) -> int:
    ns = ctx.ns
    if ns.count is not None and ns.count < 1:
        raise UsageError("--count must be >= 1")
    req = apb.WatchAlertsRequest(org=_org(ns.org), after_id=ns.after_id or "")
    stub = ctx.admin_stub()
    call = stub.WatchAlerts(req, metadata=ctx.md)
    seen = 0
    try:
        for msg in call:
            d = _alert_json(msg.alert)
            if ctx.json:
                print(json.dumps(d), file=ctx.out, flush=True)
            else:
                print(f"{d['fired_at']} {d['id']} {d['scope']} {d['window']} {d['unit']} "
                      f"{d['threshold_percent']}% {d['consumed']}/{d['limit']} {d['mode']}",
                      file=ctx.out, flush=True)
            seen += 1
            if ns.count is not None and seen >= ns.count:
                call.cancel()
                break
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.CANCELLED:
            raise _rpc_error(e, "WatchAlerts") from None
    except KeyboardInterrupt:
        call.cancel()
    return EXIT_OK


# -- status ------------------------------------------------------------------

def bar(used: int, reserved: int, limit: int, width: int = BAR_WIDTH) -> str:
    """'#' used, '+' reserved, '.' left; capped at the limit."""
    if limit <= 0:
        return ""
    u = min(width, used * width // limit)
    r = min(width - u, (used + reserved) * width // limit - u)
    return "[" + "#" * u + "+" * max(0, r) + "." * (width - u - max(0, r)) + "]"


def cmd_status(ctx: Ctx) -> int:
    st = ctx.budget.get_budget(_scope(ctx.ns.scope))
    if ctx.json:
        ctx.emit_json({"scope": str(st.scope), "time_zone": st.time_zone, "windows": [
            {"window": w.window, "unit": w.unit, "has_limit": w.has_limit, "mode": w.mode,
             "limit": w.limit, "used": w.used, "reserved": w.reserved,
             "remaining": w.remaining, "percent": w.percent, "window_id": w.window_id,
             "resets_at": w.resets_at.isoformat(), "projected": w.projected}
            for w in st.windows]})
        return EXIT_OK
    ctx.print(f"{st.scope} (time zone {st.time_zone})")
    for w in st.windows:
        head = f"  {w.window:<5} {w.unit:<11} {w.window_id:<10}"
        if w.has_limit:
            ctx.print(f"{head} {bar(w.used, w.reserved, w.limit)} {w.percent:>3}%  "
                      f"used {w.used} reserved {w.reserved} remaining {w.remaining} "
                      f"of {w.limit} ({w.mode})")
        else:
            ctx.print(f"{head} no limit  used {w.used} reserved {w.reserved}")
    return EXIT_OK


# -- parser ------------------------------------------------------------------

def _global_flags(p: argparse.ArgumentParser, top: bool) -> None:
    """On the top parser with defaults; on each command with SUPPRESS, so a
    flag works before or after the command."""

    def d(v: Any) -> Any:
        return v if top else argparse.SUPPRESS

    g = p.add_argument_group("connection and output")
    g.add_argument("--server", default=d(os.environ.get("BUDGETD_SERVER", DEFAULT_SERVER)),
                   help=f"budgetd host:port [env BUDGETD_SERVER, default {DEFAULT_SERVER}]")
    g.add_argument("--token", default=d(os.environ.get("BUDGETD_TOKEN", "")),
                   help="bearer token [env BUDGETD_TOKEN]")
    g.add_argument("--tls", action="store_true",
                   default=d(os.environ.get("BUDGETD_TLS", "").strip().lower() in _TRUE),
                   help="use TLS (system roots unless --ca-file) [env BUDGETD_TLS=1]")
    g.add_argument("--ca-file", default=d(os.environ.get("BUDGETD_CA_FILE", "")),
                   help="CA bundle (PEM) to verify the server; implies TLS "
                        "[env BUDGETD_CA_FILE]")
    g.add_argument("--cert-file", default=d(os.environ.get("BUDGETD_CERT_FILE", "")),
                   help="client certificate (PEM), for mTLS [env BUDGETD_CERT_FILE]")
    g.add_argument("--key-file", default=d(os.environ.get("BUDGETD_KEY_FILE", "")),
                   help="client private key (PEM), for mTLS [env BUDGETD_KEY_FILE]")
    g.add_argument("--output", "-o", choices=["table", "json"], default=d("table"),
                   help="output format (default table)")
    g.add_argument("--timeout", type=float, default=d(10.0),
                   help="deadline of each call in seconds (default 10)")


def _window_unit(p: argparse.ArgumentParser) -> None:
    p.add_argument("--window", required=True, choices=sorted(WINDOWS), help="calendar window")
    p.add_argument("--unit", required=True, choices=sorted(UNITS),
                   help="tokens, or cost (= cost_micros, integer micro-USD)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="budgetctl", description="Configure and read budgetd budgets.",
        epilog="exit codes: 0 ok, 1 the server refused, 2 usage error, 3 unavailable, "
               "4 drift above the threshold, 5 provider API error (drift)")
    _global_flags(parser, True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(parent: Any, name: str, fn: Callable[[Ctx], int], help_: str) -> Any:
        p = parent.add_parser(name, help=help_, description=help_)
        _global_flags(p, False)
        p.set_defaults(fn=fn)
        return p

    budgets = sub.add_parser("budgets", help="budget rules").add_subparsers(
        dest="sub", required=True, metavar="ACTION")
    p = add(budgets, "set", cmd_budgets_set, "set a budget rule on a scope")
    p.add_argument("scope", help="org, org/team or org/team/feature")
    _window_unit(p)
    p.add_argument("--limit", type=int, required=True,
                   help="limit in tokens, or micro-USD for unit cost")
    p.add_argument("--mode", choices=sorted(MODES), default="hard",
                   help="hard denies, soft alerts, shadow only reports (default hard)")
    p.add_argument("--thresholds", help="alert percentages, e.g. 50,75,90,100 (the default)")
    p = add(budgets, "get", cmd_budgets_get, "show the rules of one scope")
    p.add_argument("scope", help="org, org/team or org/team/feature")
    p = add(budgets, "list", cmd_budgets_list, "list every rule of an org")
    p.add_argument("org")
    p = add(budgets, "delete", cmd_budgets_delete, "delete a budget rule")
    p.add_argument("scope", help="org, org/team or org/team/feature")
    _window_unit(p)

    orgs = sub.add_parser("orgs", help="org settings").add_subparsers(
        dest="sub", required=True, metavar="ACTION")
    p = add(orgs, "set", cmd_orgs_set, "set an org's time zone and/or expiry policy")
    p.add_argument("org")
    p.add_argument("--time-zone", help="IANA time zone of the org's calendar windows")
    p.add_argument("--expiry-policy", choices=sorted(EXPIRY),
                   help="on expiry, keep the reserved estimate as spent, or release it")
    p = add(orgs, "get", cmd_orgs_get, "show an org's settings")
    p.add_argument("org")

    p = add(sub, "apply", cmd_apply,
            "apply a declarative budget tree (YAML): shows the diff, then applies it")
    p.add_argument("-f", "--file", required=True, help="budgets.yaml (see docs/budgetctl.md)")
    p.add_argument("--dry-run", action="store_true", help="show the diff, change nothing")
    p.add_argument("--prune", action="store_true",
                   help="delete rules of the file's orgs that the file does not list")

    pricing = sub.add_parser("pricing", help="model prices").add_subparsers(
        dest="sub", required=True, metavar="ACTION")
    p = add(pricing, "get", cmd_pricing_get, "show model prices (all, or one model)")
    p.add_argument("model", nargs="?")
    p = add(pricing, "set", cmd_pricing_set,
            "set a model's prices from flags (USD per million tokens) or from a file")
    p.add_argument("model", nargs="?")
    p.add_argument("-f", "--file", help="YAML/JSON: ModelPricing(s) as `pricing get -o json` "
                   "prints them (prices in micro-USD per million tokens)")
    # '-price' suffix: --output is the global output format.
    for flag in ("input", "output", "cache-write-5m", "cache-write-1h", "cache-read"):
        p.add_argument(f"--{flag}-price", help=f"{flag} price, USD per million tokens")
    p.add_argument("--max-output-tokens", type=int, default=0)
    p.add_argument("--batch-discount-percent", type=int, default=0)
    p.add_argument("--alias", action="append", help="another id of the model (repeatable)")
    p.add_argument("--effective-from", help="YYYY-MM-DD (UTC) these prices apply from")

    p = add(sub, "report", cmd_report, "usage report of an org (showback / chargeback)")
    p.add_argument("org")
    p.add_argument("--period", choices=sorted(PERIODS), default="month")
    p.add_argument("--period-id", help="2027-03 for a month, 2027-03-15 for a day; "
                   "default the current one")
    p.add_argument("--group-by", choices=sorted(GROUP_BY), default="team")
    p.add_argument("--csv", action="store_true", help="CSV (cost in micro-USD)")

    alerts = sub.add_parser("alerts", help="budget alerts").add_subparsers(
        dest="sub", required=True, metavar="ACTION")
    p = add(alerts, "watch", cmd_alerts_watch, "stream an org's alerts as they fire")
    p.add_argument("org")
    p.add_argument("--after-id", help="resume after this alert id")
    p.add_argument("--count", type=int, help="exit after this many alerts")

    p = add(sub, "status", cmd_status,
            "used / reserved / remaining of a scope, per window and unit")
    p.add_argument("scope", help="org, org/team or org/team/feature")

    drift_cmd.register(sub, add)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    parser = build_parser()
    try:
        # argparse prints help and usage errors itself: to our streams.
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            ns = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0)
    ctx = Ctx(ns, out)
    try:
        return int(ns.fn(ctx))
    except UsageError as e:
        print(f"budgetctl: error: {e}", file=err)
        return EXIT_USAGE
    except drift_cmd.DriftExit as e:
        print(f"budgetctl: error: {e}", file=err)
        return e.code
    except BudgetUnavailable as e:
        print(f"budgetctl: error: budgetd at {ns.server} is unavailable: {e.message}",
              file=err)
        return EXIT_UNAVAILABLE
    except BudgetError as e:
        print(f"budgetctl: error: {e.message}", file=err)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130
    finally:
        ctx.close()
