"""Each client call as data: the RPC to invoke, its request, and how to turn
the response into a typed result. The sync and asyncio clients only differ
in how they run an Op."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from budgetd_client import _build
from budgetd_client._proto.budget.v1 import admin_pb2 as apb
from budgetd_client._proto.budget.v1 import budget_pb2 as pb
from budgetd_client.errors import BudgetError, from_code
from budgetd_client.types import (
    GROUP_BY,
    PERIODS,
    BudgetStatus,
    Recorded,
    Reservation,
    Rule,
    Scope,
    ScopeLike,
    Settlement,
    UsageReport,
)

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Op(Generic[R]):
    service: str  # 'budget' | 'admin'
    method: str
    request: Any
    parse: Callable[[Any], R]


def reserve(scope: ScopeLike, model: str, *, input_tokens: int | None = None,
            max_output_tokens: int | None = None, tokens: int | None = None,
            cost_micros: int | None = None, request_id: str | None = None,
            ttl_seconds: int | None = None, fallback_models: Sequence[str] = (),
            batch: bool = False) -> Op[Reservation]:
    req = _build.reserve(scope, model, request_id=request_id, input_tokens=input_tokens,
                         max_output_tokens=max_output_tokens, tokens=tokens,
                         cost_micros=cost_micros, ttl_seconds=ttl_seconds,
                         fallback_models=fallback_models, batch=batch)
    return Op("budget", "Reserve", req, lambda r: Reservation.from_pb(req.request_id, r))


def reserve_batch(requests: Sequence[pb.ReserveRequest | Mapping[str, Any]]
                  ) -> Op[list[Reservation | BudgetError]]:
    """Many reservations in one call (at most 500). Each item is a
    ReserveRequest or a dict of `reserve`'s arguments ({"scope": ..., "model":
    ..., "tokens": ...}); each gets its own request_id and its own answer, in
    order: a Reservation (allowed or denied), or the BudgetError the single
    Reserve would have raised for it. A retry of the whole call reuses every
    request_id, so it never charges twice."""
    reqs = [r if isinstance(r, pb.ReserveRequest) else reserve(**r).request for r in requests]
    msg = pb.ReserveBatchRequest(requests=reqs)

    def parse(resp: pb.ReserveBatchResponse) -> list[Reservation | BudgetError]:
        out: list[Reservation | BudgetError] = []
        for req, res in zip(reqs, resp.results, strict=True):
            if res.HasField("response"):
                out.append(Reservation.from_pb(req.request_id, res.response))
            else:
                out.append(from_code(res.error_code, res.error_message))
        return out

    return Op("budget", "ReserveBatch", msg, parse)


def reconcile(reservation_id: str, usage: Any, *, model: str = "",
              cost_micros: int | None = None) -> Op[Settlement]:
    return Op("budget", "Reconcile", _build.reconcile(reservation_id, usage, model, cost_micros),
              Settlement.from_reconcile)


def release(reservation_id: str) -> Op[Settlement]:
    return Op("budget", "Release", pb.ReleaseRequest(reservation_id=reservation_id),
              Settlement.from_release)


def record(scope: ScopeLike, model: str, usage: Any, *, request_id: str | None = None,
           cost_micros: int | None = None, batch: bool = False,
           occurred_at: dt.datetime | None = None) -> Op[Recorded]:
    """occurred_at (aware datetime): charge past usage to that time's windows."""
    return Op("budget", "Record", _build.record(scope, model, usage, request_id, cost_micros,
                                                batch, occurred_at),
              lambda r: Recorded(r.recorded.tokens, r.recorded.cost_micros, r))


def get_budget(scope: ScopeLike) -> Op[BudgetStatus]:
    return Op("budget", "GetBudget", pb.GetBudgetRequest(scope=Scope.parse(scope).to_pb()),
              BudgetStatus.from_pb)


def set_budget(scope: ScopeLike, window: str, unit: str, limit: int, *, mode: str = "hard",
               alert_thresholds_percent: Sequence[int] = ()) -> Op[bool]:
    return Op("admin", "SetBudget",
              _build.set_budget(scope, window, unit, limit, mode, alert_thresholds_percent),
              lambda r: bool(r.changed))


def delete_budget(scope: ScopeLike, window: str, unit: str) -> Op[bool]:
    return Op("admin", "DeleteBudget", _build.delete_budget(scope, window, unit),
              lambda r: bool(r.deleted))


def list_budgets(org: str) -> Op[list[Rule]]:
    return Op("admin", "ListBudgets", apb.ListBudgetsRequest(org=org),
              lambda r: [Rule.from_pb(x) for x in r.rules])


def set_org_settings(org: str, *, time_zone: str | None = None,
                     expiry_policy: str | None = None) -> Op[apb.OrgSettings]:
    return Op("admin", "SetOrgSettings", _build.org_settings(org, time_zone, expiry_policy),
              lambda r: r.settings)


def get_org_settings(org: str) -> Op[apb.OrgSettings]:
    return Op("admin", "GetOrgSettings", apb.GetOrgSettingsRequest(org=org),
              lambda r: r.settings)


def set_pricing(pricing: apb.ModelPricing) -> Op[apb.ModelPricing]:
    return Op("admin", "SetPricing", apb.SetPricingRequest(pricing=pricing),
              lambda r: r.pricing)


def get_pricing(model: str = "") -> Op[list[apb.ModelPricing]]:
    return Op("admin", "GetPricing", apb.GetPricingRequest(model=model),
              lambda r: list(r.pricing))


def get_usage_report(org: str, period: str = "month", group_by: str = "team",
                     period_id: str = "") -> Op[UsageReport]:
    """period 'day' | 'month'; group_by 'team' | 'feature' | 'model' | 'scope_model'
    (rows "team/feature|model");
    period_id '2026-11-25' or '2026-11', empty: the current one."""
    if period not in PERIODS:
        raise ValueError(f"period {period!r}: expected one of {sorted(PERIODS)}")
    if group_by not in GROUP_BY:
        raise ValueError(f"group_by {group_by!r}: expected one of {sorted(GROUP_BY)}")
    return Op("admin", "GetUsageReport",
              apb.GetUsageReportRequest(org=org, period=PERIODS[period], period_id=period_id,
                                        group_by=GROUP_BY[group_by]),
              UsageReport.from_pb)


def watch_alerts_request(org: str, after_id: str = "") -> apb.WatchAlertsRequest:
    """WatchAlerts is a server stream: the clients run it directly, not as an Op."""
    return apb.WatchAlertsRequest(org=org, after_id=after_id)
