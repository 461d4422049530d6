"""gRPC servicers: proto in, validate, ledger/admin, proto out. Errors become
gRPC statuses; Redis failures become UNAVAILABLE."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias, TypeVar

import grpc
from budgetd_client._proto.budget.v1 import admin_pb2 as apb
from budgetd_client._proto.budget.v1 import admin_pb2_grpc as apb_grpc
from budgetd_client._proto.budget.v1 import budget_pb2 as pb
from budgetd_client._proto.budget.v1 import budget_pb2_grpc as pb_grpc
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from redis.exceptions import ClusterDownError, ReadOnlyError, RedisError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from budgetd import reports, wire
from budgetd import validate as v
from budgetd.admin import Admin, Rule, check_rule
from budgetd.alerts import (
    MAX_WATCHERS,
    WATCH_BLOCK_MAX_MS,
    Alert,
    AlertReader,
    alerts_of,
    check_after_id,
)
from budgetd.codec import MODE_TO_PB, UNIT_TO_PB, WINDOW_TO_PB
from budgetd.errors import BudgetdError, InvalidArgument, ResourceExhausted
from budgetd.ledger import (
    Answer,
    Ledger,
    ReserveInput,
    ScopePath,
    reservation_id,
    reserve_answer,
)
from budgetd.limits import MAX_RESERVE_BATCH
from budgetd.pricing import InvalidPricingError, ModelPricing
from budgetd.windows import window_label, windows_at

log = logging.getLogger("budgetd.service")

WINDOW_FROM_PB: dict[int, str] = {v_: k for k, v_ in WINDOW_TO_PB.items()}
UNIT_FROM_PB: dict[int, str] = {v_: k for k, v_ in UNIT_TO_PB.items()}
MODE_FROM_PB: dict[int, str] = {v_: k for k, v_ in MODE_TO_PB.items()}
STATE_TO_PB: dict[str, Any] = {
    "held": pb.RESERVATION_STATE_HELD,
    "reconciled": pb.RESERVATION_STATE_RECONCILED,
    "released": pb.RESERVATION_STATE_RELEASED,
    "expired": pb.RESERVATION_STATE_EXPIRED,
}
EXPIRY_TO_PB: dict[str, Any] = {"keep": pb.EXPIRY_POLICY_KEEP, "release": pb.EXPIRY_POLICY_RELEASE}
EXPIRY_FROM_PB: dict[int, str] = {v_: k for k, v_ in EXPIRY_TO_PB.items()}

T = TypeVar("T")
# grpc-stubs types the context as generic; at run time it is not subscriptable.
Ctx: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Handler = Callable[[Any, Any, Ctx], Awaitable[T]]


class Undecodable:
    """Stands in for a request whose bytes are not a valid protobuf message.
    grpc answers UNKNOWN when a deserializer raises; `rpc` turns this into
    INVALID_ARGUMENT instead."""

    def __init__(self, type_name: str, error: str) -> None:
        self.type_name = type_name
        self.error = error


def guard_decode(method: str, handler: Any) -> Any:
    """The handler with its request deserializer wrapped so that malformed
    bytes reach the servicer as an Undecodable."""
    decode = handler.request_deserializer
    if decode is None:
        return handler
    type_name = getattr(getattr(decode, "__self__", None), "DESCRIPTOR", None)
    name = type_name.full_name if type_name is not None else method

    def safe(data: bytes) -> Any:
        try:
            return decode(data)
        except DecodeError as e:
            return Undecodable(name, str(e))

    return handler._replace(request_deserializer=safe)


# Redis is down, loading, read-only (a replica after failover) or the cluster
# is re-electing: retrying later helps, so the caller gets UNAVAILABLE.
_REDIS_TRANSIENT = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, ClusterDownError,
                    TryAgainError)


def fail(context: Ctx, code: grpc.StatusCode, message: str) -> None:
    """Sets the call's error status, sent when the handler returns. Unlike
    abort(), which sends it at once, this lets the interceptor count and log
    the call before the caller sees the answer (a scrape right after an
    error then shows it)."""
    context.set_code(code)
    context.set_details(message)


def rpc(fn: Handler[T]) -> Handler[T]:
    """Maps errors to gRPC statuses. A Redis outage is UNAVAILABLE, fast.
    On an error the wrapped handler returns None with the status set."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: Ctx) -> T:
        if isinstance(request, Undecodable):
            fail(context, grpc.StatusCode.INVALID_ARGUMENT,
                 f"request: not a valid {request.type_name} message "
                 f"({request.error[:200]})")
            return None  # type: ignore[return-value]
        try:
            return await fn(self, request, context)
        except BudgetdError as e:
            fail(context, e.code, e.message)
        except _REDIS_TRANSIENT as e:
            log.warning("redis unavailable in %s: %s", fn.__name__, e)
            fail(context, grpc.StatusCode.UNAVAILABLE, f"redis unavailable: {e}")
        except RedisError as e:
            if "BUSY" in str(e):  # a script running too long: no class of its own
                fail(context, grpc.StatusCode.UNAVAILABLE, f"redis unavailable: {e}")
            else:
                log.exception("redis error in %s", fn.__name__)
                fail(context, grpc.StatusCode.INTERNAL, f"redis error: {e}")
        return None  # type: ignore[return-value]

    return wrapper


def scope_pb(path: str) -> pb.Scope:
    parts = path.split("/")
    return pb.Scope(org=parts[0], team=parts[1] if len(parts) > 1 else "",
                    feature=parts[2] if len(parts) > 2 else "")


def scope_of(s: ScopePath) -> pb.Scope:
    return pb.Scope(org=s.org, team=s.team, feature=s.feature)


def ts(ms: int) -> Timestamp:
    t = Timestamp()
    t.FromMilliseconds(int(ms))
    return t


@functools.lru_cache(maxsize=4096)
def _path_parts(path: str) -> tuple[str, str, str]:
    """'acme/search/x' -> ('acme', 'search', 'x'). A Reserve answer names the
    same few paths on every call: split each once."""
    parts = path.split("/")
    return (parts[0], parts[1] if len(parts) > 1 else "",
            parts[2] if len(parts) > 2 else "")


def _set_scope(msg: pb.Scope, path: str) -> None:
    msg.org, msg.team, msg.feature = _path_parts(path)


def reserve_response(org: str, request_id: str, d: dict[str, Any]) -> pb.ReserveResponse:
    """The general way, for any answer: denied, alerting, crossing a SOFT or
    SHADOW rule (the common one, wire.py). Built in place (add(), fields set
    on the child) rather than from constructed sub-messages that upb then
    copies: ~3x cheaper."""
    out = pb.ReserveResponse()
    remaining = d.get("remaining")
    if isinstance(remaining, list):
        add = out.remaining.add
        for r in remaining:
            m = add(window=WINDOW_TO_PB[r["w"]], unit=UNIT_TO_PB[r["u"]],
                    mode=MODE_TO_PB[r["mode"]], limit=int(r["limit"]),
                    remaining=int(r["remaining"]))
            _set_scope(m.scope, r["path"])
    crossings = d.get("crossings")
    if isinstance(crossings, list):
        add_c = out.crossings.add
        for c in crossings:
            mc = add_c(window=WINDOW_TO_PB[c["w"]], unit=UNIT_TO_PB[c["u"]],
                       mode=MODE_TO_PB[c["mode"]], limit=int(c["limit"]), used=int(c["used"]),
                       reserved=int(c["reserved"]), requested=int(c["requested"]))
            _set_scope(mc.scope, c["path"])
    if isinstance(d.get("alerts"), list):
        out.alerts.extend(a.to_pb() for a in alerts_of(d))
    if d["decision"] == "allowed":
        out.decision = pb.DECISION_ALLOWED
        out.reservation_id = reservation_id(org, request_id)
        out.model = d["model"]
        reserved = out.reserved
        reserved.tokens, reserved.cost_micros = int(d["tokens"]), int(d["cost"])
        expires = out.expires_at
        expires.seconds, ms = divmod(int(d["expires_ms"]), 1000)
        expires.nanos = ms * 1_000_000
    else:
        out.decision = pb.DECISION_DENIED
        den = d["denial"]
        denial = out.denial
        denial.SetInParent()
        denial.window = WINDOW_TO_PB[den["w"]]
        denial.unit = UNIT_TO_PB[den["u"]]
        denial.limit = int(den["limit"])
        denial.used = int(den["used"])
        denial.reserved = int(den["reserved"])
        denial.requested = int(den["requested"])
        denial.model = den.get("model", "")
        _set_scope(denial.scope, den["path"])
    return out


def reserve_out(org: str, request_id: str, flat: str) -> bytes | pb.ReserveResponse:
    """A Reserve answer (the script's flat form, or a legacy record's JSON)
    as what the handler returns: the common one already serialized (wire.py),
    any other as its message."""
    return (wire.allowed_answer(org, request_id, flat)
            or reserve_response(org, request_id, reserve_answer(flat)))


def reserve_pb(org: str, request_id: str, flat: str) -> pb.ReserveResponse:
    """A Reserve answer as its message (ReserveBatch's results hold them)."""
    out = reserve_out(org, request_id, flat)
    return pb.ReserveResponse.FromString(out) if isinstance(out, bytes) else out


def _batch_error(code: grpc.StatusCode, message: str) -> pb.ReserveBatchResult:
    return pb.ReserveBatchResult(error_code=code.value[0], error_message=message)


class BudgetService(pb_grpc.BudgetServiceServicer):
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    @rpc
    async def Reserve(self, request: pb.ReserveRequest,
                      context: Ctx) -> bytes | pb.ReserveResponse:
        req = v.reserve(request)
        ans = await self.ledger.reserve(req)
        return reserve_out(req.scope.org, req.request_id, ans.flat)

    @rpc
    async def ReserveBatch(self, request: pb.ReserveBatchRequest,
                           context: Ctx) -> pb.ReserveBatchResponse:
        n = len(request.requests)
        if not 1 <= n <= MAX_RESERVE_BATCH:
            raise InvalidArgument("requests", f"{n} requests; expected 1..{MAX_RESERVE_BATCH}")
        results: list[pb.ReserveBatchResult | None] = [None] * n
        valid: list[tuple[int, ReserveInput]] = []
        for i, item in enumerate(request.requests):
            try:
                valid.append((i, v.reserve(item)))
            except BudgetdError as e:
                results[i] = _batch_error(e.code, e.message)
        answers = await self.ledger.reserve_many([req for _, req in valid])
        for (i, req), ans in zip(valid, answers, strict=True):
            if isinstance(ans, Answer):
                results[i] = pb.ReserveBatchResult(
                    response=reserve_pb(req.scope.org, req.request_id, ans.flat))
            elif isinstance(ans, BudgetdError):
                results[i] = _batch_error(ans.code, ans.message)
            elif isinstance(ans, (*_REDIS_TRANSIENT, OSError)):
                results[i] = _batch_error(grpc.StatusCode.UNAVAILABLE,
                                          f"redis unavailable: {ans}")
            elif isinstance(ans, RedisError):
                log.error("redis error in ReserveBatch: %s", ans)
                results[i] = _batch_error(grpc.StatusCode.INTERNAL, f"redis error: {ans}")
            else:
                raise ans
        return pb.ReserveBatchResponse(results=[r for r in results if r is not None])

    @rpc
    async def Reconcile(self, request: pb.ReconcileRequest,
                        context: Ctx) -> pb.ReconcileResponse:
        req = v.reconcile(request)
        d = (await self.ledger.settle(req)).data
        return pb.ReconcileResponse(
            state=STATE_TO_PB[d["state"]], late=bool(d["late"]),
            reserved=pb.Amount(tokens=int(d["tokens"]), cost_micros=int(d["cost"])),
            actual=pb.Amount(tokens=int(d["actual_tokens"]),
                             cost_micros=int(d["actual_cost"])),
            alerts=[a.to_pb() for a in alerts_of(d)])

    @rpc
    async def Release(self, request: pb.ReleaseRequest,
                      context: Ctx) -> pb.ReleaseResponse:
        req = v.release(request)
        d = (await self.ledger.settle(req)).data
        return pb.ReleaseResponse(
            state=STATE_TO_PB[d["state"]], late=bool(d["late"]),
            released=pb.Amount(tokens=int(d["tokens"]), cost_micros=int(d["cost"])))

    @rpc
    async def Record(self, request: pb.RecordRequest,
                     context: Ctx) -> pb.RecordResponse:
        req = v.record(request)
        d = (await self.ledger.record(req)).data
        return pb.RecordResponse(recorded=pb.Amount(tokens=int(d["tokens"]),
                                                    cost_micros=int(d["cost"])),
                                 alerts=[a.to_pb() for a in alerts_of(d)])

    @rpc
    async def GetBudget(self, request: pb.GetBudgetRequest,
                        context: Ctx) -> pb.GetBudgetResponse:
        if not request.HasField("scope"):
            raise InvalidArgument("scope", "is required")
        sc = v.scope(request.scope)
        d = await self.ledger.get_budget(sc)
        out = pb.GetBudgetResponse(scope=scope_of(sc), time_zone=d["tz"])
        for e in d["windows"]:
            ws = pb.WindowStatus(
                window=WINDOW_TO_PB[e["w"]], unit=UNIT_TO_PB[e["u"]], used=e["used"],
                reserved=e["reserved"], window_id=window_label(e["window_id"]),
                projected=e["projected"])
            ws.resets_at.CopyFrom(ts(e["resets_at_ms"]))
            if "limit" in e:
                ws.has_limit = True
                ws.limit = e["limit"]
                ws.mode = MODE_TO_PB[e["mode"]]
                ws.remaining = e["remaining"]
                ws.percent = min(e["percent"], 2**31 - 1)
            out.windows.append(ws)
        return out


def rule_pb(r: Rule) -> apb.BudgetRule:
    return apb.BudgetRule(scope=scope_of(r.scope), window=WINDOW_TO_PB[r.window],
                          unit=UNIT_TO_PB[r.unit], limit=r.limit, mode=MODE_TO_PB[r.mode],
                          alert_thresholds_percent=list(r.thresholds))


def _window_unit(window: int, unit: int, prefix: str) -> tuple[str, str]:
    if window not in WINDOW_FROM_PB:
        raise InvalidArgument(f"{prefix}window", "must be WINDOW_DAY or WINDOW_MONTH")
    if unit not in UNIT_FROM_PB:
        raise InvalidArgument(f"{prefix}unit", "must be UNIT_TOKENS or UNIT_COST_MICROS")
    return WINDOW_FROM_PB[window], UNIT_FROM_PB[unit]


PERIOD_FROM_PB = {apb.PERIOD_DAY: "d", apb.PERIOD_MONTH: "m"}
GROUP_FROM_PB = {apb.GROUP_BY_TEAM: "team", apb.GROUP_BY_FEATURE: "feature",
                 apb.GROUP_BY_MODEL: "model", apb.GROUP_BY_SCOPE_MODEL: "scope_model"}


def usage_row_pb(r: reports.Row) -> apb.UsageRow:
    return apb.UsageRow(
        group=r.group, input_tokens=r.input_tokens, output_tokens=r.output_tokens,
        cache_write_tokens=r.cache_write_tokens, cache_read_tokens=r.cache_read_tokens,
        cost_micros=r.cost_micros, requests=r.requests, denials=r.denials,
        shadow_denials=r.shadow_denials)


class BudgetAdminService(apb_grpc.BudgetAdminServiceServicer):
    def __init__(self, admin: Admin, watch_block_ms: int = 1000) -> None:
        self.admin = admin
        self.alerts = AlertReader(admin.redis)
        # Below the Redis socket timeout, or a quiet stream reads as an outage.
        self.watch_block_ms = max(10, min(watch_block_ms, WATCH_BLOCK_MAX_MS))
        self.watchers = 0
        self.closing = asyncio.Event()

    def shutdown(self) -> None:
        """Ends every WatchAlerts stream after its current read."""
        self.closing.set()

    @rpc
    async def GetUsageReport(self, request: apb.GetUsageReportRequest,
                             context: Ctx) -> apb.GetUsageReportResponse:
        org = v.check_id("org", request.org)
        if request.period not in PERIOD_FROM_PB:
            raise InvalidArgument("period", "must be PERIOD_DAY or PERIOD_MONTH")
        if request.group_by not in GROUP_FROM_PB:
            raise InvalidArgument("group_by",
                                  "must be GROUP_BY_TEAM, GROUP_BY_FEATURE, GROUP_BY_MODEL or "
                                  "GROUP_BY_SCOPE_MODEL")
        period = PERIOD_FROM_PB[request.period]
        group_by = GROUP_FROM_PB[request.group_by]
        if request.period_id:
            wid = reports.window_id_of(period, request.period_id)
        else:
            ledger = self.admin.ledger
            win = windows_at(ledger.clock.now_ms(), await ledger.org_tz(org, fresh=True))
            wid = win.day_id if period == "d" else win.month_id
        rep = await reports.usage_report(self.admin.redis, org, wid, group_by)
        return apb.GetUsageReportResponse(
            org=org, period=request.period, period_id=window_label(wid),
            group_by=request.group_by, rows=[usage_row_pb(r) for r in rep.rows],
            total=usage_row_pb(rep.total))

    async def WatchAlerts(self, request: apb.WatchAlertsRequest,
                          context: Ctx
                          ) -> AsyncIterator[apb.WatchAlertsResponse]:
        # Validation and the first read go through _watch_start (mapped to a
        # status by @rpc); the loop maps Redis errors itself.
        start = await self._watch_start(request, context)
        if start is None:  # refused: the status is set
            return
        org, cursor = start
        self.watchers += 1
        closing = asyncio.ensure_future(self.closing.wait())
        read: asyncio.Future[list[Alert]] | None = None
        try:
            while not self.closing.is_set() and not context.done():
                read = asyncio.ensure_future(
                    self.alerts.read(org, cursor, self.watch_block_ms))
                # Shutdown ends the stream at once (status OK), not after the
                # current blocking read nor by cancellation at the grace end.
                await asyncio.wait({read, closing}, return_when=asyncio.FIRST_COMPLETED)
                if not read.done():
                    read.cancel()
                    with contextlib.suppress(BaseException):
                        await read
                    return
                try:
                    got = read.result()
                except RedisError as e:
                    log.warning("WatchAlerts read failed: %s", e)
                    fail(context, grpc.StatusCode.UNAVAILABLE, f"redis unavailable: {e}")
                    return
                for a in got:
                    cursor = a.id
                    yield apb.WatchAlertsResponse(alert=a.to_pb())
        finally:
            # The caller may leave mid-read (the RPC is cancelled): stop the
            # blocking read too, or it outlives the stream.
            closing.cancel()
            if read is not None and not read.done():
                read.cancel()
                with contextlib.suppress(BaseException):
                    await read
            self.watchers -= 1

    @rpc
    async def _watch_start(self, request: apb.WatchAlertsRequest,
                           context: Ctx) -> tuple[str, str]:
        org = v.check_id("org", request.org)
        after = check_after_id("after_id", request.after_id)
        if self.watchers >= MAX_WATCHERS:
            raise ResourceExhausted(f"org: {MAX_WATCHERS} alert watchers already connected; "
                                    "retry later", "org")
        return org, after or await self.alerts.last_id(org)

    @rpc
    async def SetBudget(self, request: apb.SetBudgetRequest,
                        context: Ctx) -> apb.SetBudgetResponse:
        if not request.HasField("rule"):
            raise InvalidArgument("rule", "is required")
        r = request.rule
        if not r.HasField("scope"):
            raise InvalidArgument("rule.scope", "is required")
        sc = v.scope(r.scope, "rule.scope")
        window, unit = _window_unit(r.window, r.unit, "rule.")
        if r.mode == pb.MODE_UNSPECIFIED:
            mode = "h"
        elif r.mode in MODE_FROM_PB:
            mode = MODE_FROM_PB[r.mode]
        else:
            raise InvalidArgument("rule.mode", f"unknown mode {r.mode}")
        rule = check_rule(sc, window, unit, r.limit, mode, list(r.alert_thresholds_percent))
        changed = await self.admin.set_budget(rule)
        return apb.SetBudgetResponse(rule=rule_pb(rule), changed=changed)

    @rpc
    async def DeleteBudget(self, request: apb.DeleteBudgetRequest,
                           context: Ctx) -> apb.DeleteBudgetResponse:
        if not request.HasField("scope"):
            raise InvalidArgument("scope", "is required")
        sc = v.scope(request.scope)
        window, unit = _window_unit(request.window, request.unit, "")
        return apb.DeleteBudgetResponse(deleted=await self.admin.delete_budget(sc, window, unit))

    @rpc
    async def ListBudgets(self, request: apb.ListBudgetsRequest,
                          context: Ctx) -> apb.ListBudgetsResponse:
        org = v.check_id("org", request.org)
        rules = await self.admin.list_budgets(org)
        tz, expiry = await self.admin.get_settings(org)
        return apb.ListBudgetsResponse(
            rules=[rule_pb(r) for r in rules],
            settings=apb.OrgSettings(org=org, time_zone=tz, expiry_policy=EXPIRY_TO_PB[expiry]))

    @rpc
    async def SetOrgSettings(self, request: apb.SetOrgSettingsRequest,
                             context: Ctx) -> apb.SetOrgSettingsResponse:
        s = request.settings
        org = v.check_id("settings.org", s.org)
        expiry = None
        if s.expiry_policy != pb.EXPIRY_POLICY_UNSPECIFIED:
            if s.expiry_policy not in EXPIRY_FROM_PB:
                raise InvalidArgument("settings.expiry_policy", "unknown policy")
            expiry = EXPIRY_FROM_PB[s.expiry_policy]
        tz, exp = await self.admin.set_settings(org, s.time_zone or None, expiry)
        return apb.SetOrgSettingsResponse(settings=apb.OrgSettings(
            org=org, time_zone=tz, expiry_policy=EXPIRY_TO_PB[exp]))

    @rpc
    async def GetOrgSettings(self, request: apb.GetOrgSettingsRequest,
                             context: Ctx) -> apb.GetOrgSettingsResponse:
        org = v.check_id("org", request.org)
        tz, exp = await self.admin.get_settings(org)
        return apb.GetOrgSettingsResponse(settings=apb.OrgSettings(
            org=org, time_zone=tz, expiry_policy=EXPIRY_TO_PB[exp]))

    @rpc
    async def SetPricing(self, request: apb.SetPricingRequest,
                         context: Ctx) -> apb.SetPricingResponse:
        if not request.HasField("pricing"):
            raise InvalidArgument("pricing", "is required")
        try:
            mp = ModelPricing.from_proto(request.pricing)
        except InvalidPricingError as e:
            raise InvalidArgument(e.field, e.problem) from e
        saved = await self.admin.set_pricing(mp)
        return apb.SetPricingResponse(pricing=saved.to_proto())

    @rpc
    async def GetPricing(self, request: apb.GetPricingRequest,
                         context: Ctx) -> apb.GetPricingResponse:
        model = v.check_model("model", request.model) if request.model else ""
        return apb.GetPricingResponse(
            pricing=[m.to_proto() for m in await self.admin.get_pricing(model)])
