"""Request builders shared by the sync and asyncio clients."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from budgetd_client._proto.budget.v1 import admin_pb2 as apb
from budgetd_client._proto.budget.v1 import budget_pb2 as pb
from budgetd_client.types import EXPIRY, UNITS, WINDOWS, Rule, Scope, ScopeLike, Usage


def new_request_id() -> str:
    return uuid.uuid4().hex


def reserve(scope: ScopeLike, model: str, *, request_id: str | None,
            input_tokens: int | None, max_output_tokens: int | None, tokens: int | None,
            cost_micros: int | None, ttl_seconds: int | None,
            fallback_models: Sequence[str], batch: bool) -> pb.ReserveRequest:
    req = pb.ReserveRequest(request_id=request_id or new_request_id(),
                            scope=Scope.parse(scope).to_pb(), model=model,
                            fallback_models=list(fallback_models), batch=batch)
    if tokens is not None or cost_micros is not None:
        req.estimate.explicit.tokens = tokens or 0
        if cost_micros is not None:
            req.estimate.explicit.cost_micros = cost_micros
    else:
        req.estimate.token_estimate.input_tokens = input_tokens or 0
        req.estimate.token_estimate.max_output_tokens = max_output_tokens or 0
    if ttl_seconds is not None:
        req.ttl_seconds = ttl_seconds
    return req


def reconcile(reservation_id: str, usage: Any, model: str,
              cost_micros: int | None) -> pb.ReconcileRequest:
    req = pb.ReconcileRequest(reservation_id=reservation_id, usage=Usage.of(usage).to_pb(),
                              model=model)
    if cost_micros is not None:
        req.cost_micros = cost_micros
    return req


def record(scope: ScopeLike, model: str, usage: Any, request_id: str | None,
           cost_micros: int | None, batch: bool,
           occurred_at: dt.datetime | None = None) -> pb.RecordRequest:
    req = pb.RecordRequest(request_id=request_id or new_request_id(),
                           scope=Scope.parse(scope).to_pb(), model=model,
                           usage=Usage.of(usage).to_pb(), batch=batch)
    if cost_micros is not None:
        req.cost_micros = cost_micros
    if occurred_at is not None:
        req.occurred_at.FromDatetime(occurred_at)
    return req


def set_budget(scope: ScopeLike, window: str, unit: str, limit: int, mode: str,
               alert_thresholds_percent: Sequence[int]) -> apb.SetBudgetRequest:
    rule = Rule(Scope.parse(scope), window, unit, limit, mode, tuple(alert_thresholds_percent))
    return apb.SetBudgetRequest(rule=rule.to_pb())


def delete_budget(scope: ScopeLike, window: str, unit: str) -> apb.DeleteBudgetRequest:
    return apb.DeleteBudgetRequest(scope=Scope.parse(scope).to_pb(), window=WINDOWS[window],
                                   unit=UNITS[unit])


def org_settings(org: str, time_zone: str | None,
                 expiry_policy: str | None) -> apb.SetOrgSettingsRequest:
    s = apb.OrgSettings(org=org, time_zone=time_zone or "")
    if expiry_policy:
        s.expiry_policy = EXPIRY[expiry_policy]
    return apb.SetOrgSettingsRequest(settings=s)
