"""Prometheus metrics, served over HTTP on their own port.

Every label takes values from a fixed set (RPC names, status codes, script
names), except the optional per-team label on denials, capped at
MAX_TEAM_LABELS distinct values: cardinality stays bounded whatever callers
send."""

from __future__ import annotations

import threading
from typing import Any

from budgetd_client._proto.budget.v1 import admin_pb2, budget_pb2
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client import start_http_server as _start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

# Past this many distinct team ids, denials are counted under OTHER_TEAM.
MAX_TEAM_LABELS = 100
OTHER_TEAM = "_other"

# Seconds. Most calls are one Redis round trip: sub-millisecond to tens of ms.
_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                      2.5, 5.0)

REQUESTS = Counter(
    "budgetd_grpc_requests", "gRPC calls handled, by RPC, status code and decision",
    ["method", "code", "decision"], registry=REGISTRY)
REQUEST_LATENCY = Histogram(
    "budgetd_grpc_request_duration_seconds", "gRPC call latency, by RPC, status code and decision",
    ["method", "code", "decision"], buckets=_LATENCY_BUCKETS_S, registry=REGISTRY)
DENIALS = Counter(
    "budgetd_denials", "Reservations denied, by the scope level of the rule that denied",
    ["level", "window", "unit", "team"], registry=REGISTRY)
REDIS_SCRIPT_LATENCY = Histogram(
    "budgetd_redis_script_duration_seconds", "Redis round trip of one Lua script call",
    ["script"], buckets=_LATENCY_BUCKETS_S, registry=REGISTRY)
REDIS_SCRIPT_ERRORS = Counter(
    "budgetd_redis_script_errors", "Lua script calls that failed, by script and error kind",
    ["script", "kind"], registry=REGISTRY)
EXPIRED_RESERVATIONS = Counter(
    "budgetd_reservations_expired", "Reservations expired by the server's sweeper",
    registry=REGISTRY)
# Incremented by the alert webhook sender, per POST attempt: 'ok', 'retry' (failed,
# will retry), 'failed' (the last attempt failed: retried at the next poll); and
# 'too_old' per alert skipped unsent (older than the sender's max age).
ALERT_DELIVERIES = Counter(
    "budgetd_alert_deliveries", "Alert webhook delivery attempts, by result",
    ["result"], registry=REGISTRY)

_KNOWN_METHODS = frozenset(
    [m.name for m in budget_pb2.DESCRIPTOR.services_by_name["BudgetService"].methods]
    + [m.name for m in admin_pb2.DESCRIPTOR.services_by_name["BudgetAdminService"].methods]
    + ["Check", "Watch", "ServerReflectionInfo"])
_WINDOWS = {budget_pb2.WINDOW_DAY: "day", budget_pb2.WINDOW_MONTH: "month"}
_UNITS = {budget_pb2.UNIT_TOKENS: "tokens", budget_pb2.UNIT_COST_MICROS: "cost_micros"}


def method_label(full_method: str) -> str:
    """'/budget.v1.BudgetService/Reserve' -> 'Reserve'; anything unknown -> 'other'."""
    name = full_method.rsplit("/", 1)[-1]
    return name if name in _KNOWN_METHODS else "other"


class TeamLabels:
    """Maps team ids to label values, at most MAX_TEAM_LABELS distinct ones."""

    def __init__(self, enabled: bool, cap: int = MAX_TEAM_LABELS) -> None:
        self.enabled = enabled
        self.cap = cap
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def label(self, team: str) -> str:
        if not self.enabled or not team:
            return ""
        with self._lock:
            if team in self._seen:
                return team
            if len(self._seen) < self.cap:
                self._seen.add(team)
                return team
        return OTHER_TEAM


def observe_reserve(resp: budget_pb2.ReserveResponse, teams: TeamLabels) -> str:
    """Counts a Reserve answer; returns its decision label."""
    if resp.decision == budget_pb2.DECISION_ALLOWED:
        return "allowed"
    if resp.decision != budget_pb2.DECISION_DENIED:
        return ""
    d = resp.denial
    level = "feature" if d.scope.feature else "team" if d.scope.team else "org"
    DENIALS.labels(level, _WINDOWS.get(d.window, "?"), _UNITS.get(d.unit, "?"),
                   teams.label(d.scope.team)).inc()
    return "denied"


def observe_response(method: str, resp: Any, teams: TeamLabels) -> str:
    """The decision label of a response ('' for RPCs without one); counts denials."""
    if method == "Reserve":
        if resp.__class__ is bytes:
            return "allowed"  # only the common, granted answer comes serialized (wire.py)
        if isinstance(resp, budget_pb2.ReserveResponse):
            return observe_reserve(resp, teams)
    results = getattr(resp, "results", None)
    if method == "ReserveBatch" and results is not None:
        for r in results:
            if r.HasField("response"):
                observe_reserve(r.response, teams)
    return ""


class MetricsServer:
    """The HTTP endpoint serving REGISTRY (or `registry`: the workers'
    aggregate, see workers.py) at /metrics, on its own thread."""

    def __init__(self, listen: str, registry: CollectorRegistry = REGISTRY) -> None:
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--metrics-listen {listen!r}: expected host:port")
        self._server, self._thread = _start_http_server(int(port), host.strip("[]"),
                                                        registry=registry)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
