"""Typed results of client calls. Each keeps the raw protobuf as `.raw`."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from budgetd_client._proto.budget.v1 import admin_pb2 as apb
from budgetd_client._proto.budget.v1 import budget_pb2 as pb

WINDOWS = {"day": pb.WINDOW_DAY, "month": pb.WINDOW_MONTH}
UNITS = {"tokens": pb.UNIT_TOKENS, "cost_micros": pb.UNIT_COST_MICROS, "cost": pb.UNIT_COST_MICROS}
MODES = {"hard": pb.MODE_HARD, "soft": pb.MODE_SOFT, "shadow": pb.MODE_SHADOW}
EXPIRY = {"keep": pb.EXPIRY_POLICY_KEEP, "release": pb.EXPIRY_POLICY_RELEASE}
_WINDOW_NAMES = {v: k for k, v in WINDOWS.items()}
_UNIT_NAMES = {pb.UNIT_TOKENS: "tokens", pb.UNIT_COST_MICROS: "cost_micros"}
_MODE_NAMES = {v: k for k, v in MODES.items()}
_STATE_NAMES = {
    pb.RESERVATION_STATE_HELD: "held",
    pb.RESERVATION_STATE_RECONCILED: "reconciled",
    pb.RESERVATION_STATE_RELEASED: "released",
    pb.RESERVATION_STATE_EXPIRED: "expired",
}


@dataclass(frozen=True, slots=True)
class Scope:
    org: str
    team: str = ""
    feature: str = ""

    @classmethod
    def parse(cls, value: str | Scope) -> Scope:
        """'org', 'org/team' or 'org/team/feature'."""
        if isinstance(value, Scope):
            return value
        parts = value.split("/")
        if not 1 <= len(parts) <= 3:
            raise ValueError(f"scope {value!r}: expected org[/team[/feature]]")
        return cls(*parts)

    def to_pb(self) -> pb.Scope:
        return pb.Scope(org=self.org, team=self.team, feature=self.feature)

    @classmethod
    def from_pb(cls, s: pb.Scope) -> Scope:
        return cls(s.org, s.team, s.feature)

    def __str__(self) -> str:
        return "/".join(p for p in (self.org, self.team, self.feature) if p)


ScopeLike = Scope | str


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage, with the Anthropic SDK's field names."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    ephemeral_5m_input_tokens: int = 0
    ephemeral_1h_input_tokens: int = 0

    @classmethod
    def of(cls, usage: Any) -> Usage:
        """From a Usage, a dict, or an SDK usage object (anthropic's
        response.usage, including its cache_creation split)."""
        if isinstance(usage, Usage):
            return usage
        if isinstance(usage, dict):
            get = usage.get
        else:
            def get(name: str, default: Any = None) -> Any:
                return getattr(usage, name, default)
        e5 = e1 = 0
        cc = get("cache_creation")
        if cc is not None:
            if isinstance(cc, dict):
                e5, e1 = cc.get("ephemeral_5m_input_tokens") or 0, cc.get(
                    "ephemeral_1h_input_tokens") or 0
            else:
                e5 = getattr(cc, "ephemeral_5m_input_tokens", 0) or 0
                e1 = getattr(cc, "ephemeral_1h_input_tokens", 0) or 0
        return cls(
            input_tokens=int(get("input_tokens") or 0),
            output_tokens=int(get("output_tokens") or 0),
            cache_creation_input_tokens=int(get("cache_creation_input_tokens") or 0),
            cache_read_input_tokens=int(get("cache_read_input_tokens") or 0),
            ephemeral_5m_input_tokens=int(get("ephemeral_5m_input_tokens") or e5),
            ephemeral_1h_input_tokens=int(get("ephemeral_1h_input_tokens") or e1),
        )

    def to_pb(self) -> pb.Usage:
        return pb.Usage(
            input_tokens=self.input_tokens, output_tokens=self.output_tokens,
            cache_creation_input_tokens=self.cache_creation_input_tokens,
            cache_read_input_tokens=self.cache_read_input_tokens,
            ephemeral_5m_input_tokens=self.ephemeral_5m_input_tokens,
            ephemeral_1h_input_tokens=self.ephemeral_1h_input_tokens)


@dataclass(frozen=True, slots=True)
class Denial:
    scope: Scope
    window: str
    unit: str
    limit: int
    used: int
    reserved: int
    requested: int
    model: str

    @classmethod
    def from_pb(cls, d: pb.Denial) -> Denial:
        return cls(Scope.from_pb(d.scope), _WINDOW_NAMES.get(d.window, "?"),
                   _UNIT_NAMES.get(d.unit, "?"), d.limit, d.used, d.reserved, d.requested,
                   d.model)


@dataclass(frozen=True, slots=True)
class Remaining:
    scope: Scope
    window: str
    unit: str
    mode: str
    limit: int
    remaining: int


@dataclass(frozen=True, slots=True)
class Reservation:
    allowed: bool
    reservation_id: str
    request_id: str
    model: str
    reserved_tokens: int
    reserved_cost_micros: int
    expires_at: dt.datetime | None
    denial: Denial | None
    remaining: list[Remaining]
    raw: pb.ReserveResponse = field(repr=False)

    @property
    def alerts(self) -> list[Alert]:
        """The alerts this call crossed (each fires once per window)."""
        return [Alert.from_pb(a) for a in getattr(self.raw, "alerts", ())]

    @classmethod
    def from_pb(cls, request_id: str, r: pb.ReserveResponse) -> Reservation:
        allowed = r.decision == pb.DECISION_ALLOWED
        return cls(
            allowed=allowed, reservation_id=r.reservation_id, request_id=request_id,
            model=r.model, reserved_tokens=r.reserved.tokens,
            reserved_cost_micros=r.reserved.cost_micros,
            expires_at=r.expires_at.ToDatetime(dt.timezone.utc) if allowed else None,
            denial=Denial.from_pb(r.denial) if r.HasField("denial") else None,
            remaining=[Remaining(Scope.from_pb(x.scope), _WINDOW_NAMES.get(x.window, "?"),
                                 _UNIT_NAMES.get(x.unit, "?"), _MODE_NAMES.get(x.mode, "?"),
                                 x.limit, x.remaining) for x in r.remaining],
            raw=r)


@dataclass(frozen=True, slots=True)
class Settlement:
    state: str
    late: bool
    reserved_tokens: int
    reserved_cost_micros: int
    actual_tokens: int
    actual_cost_micros: int
    raw: Any = field(repr=False)

    @property
    def alerts(self) -> list[Alert]:
        """The alerts this call crossed (each fires once per window)."""
        return [Alert.from_pb(a) for a in getattr(self.raw, "alerts", ())]

    @classmethod
    def from_reconcile(cls, r: pb.ReconcileResponse) -> Settlement:
        return cls(_STATE_NAMES.get(r.state, "?"), r.late, r.reserved.tokens,
                   r.reserved.cost_micros, r.actual.tokens, r.actual.cost_micros, r)

    @classmethod
    def from_release(cls, r: pb.ReleaseResponse) -> Settlement:
        return cls(_STATE_NAMES.get(r.state, "?"), r.late, r.released.tokens,
                   r.released.cost_micros, 0, 0, r)


@dataclass(frozen=True, slots=True)
class Recorded:
    tokens: int
    cost_micros: int
    raw: pb.RecordResponse = field(repr=False)

    @property
    def alerts(self) -> list[Alert]:
        """The alerts this call crossed (each fires once per window)."""
        return [Alert.from_pb(a) for a in getattr(self.raw, "alerts", ())]


@dataclass(frozen=True, slots=True)
class WindowStatus:
    window: str
    unit: str
    has_limit: bool
    mode: str
    limit: int
    used: int
    reserved: int
    remaining: int
    percent: int
    window_id: str
    resets_at: dt.datetime
    projected: int


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    scope: Scope
    time_zone: str
    windows: list[WindowStatus]
    raw: pb.GetBudgetResponse = field(repr=False)

    def get(self, window: str, unit: str) -> WindowStatus:
        for w in self.windows:
            if w.window == window and w.unit == unit:
                return w
        raise KeyError((window, unit))

    @classmethod
    def from_pb(cls, r: pb.GetBudgetResponse) -> BudgetStatus:
        return cls(Scope.from_pb(r.scope), r.time_zone, [
            WindowStatus(_WINDOW_NAMES.get(w.window, "?"), _UNIT_NAMES.get(w.unit, "?"),
                         w.has_limit, _MODE_NAMES.get(w.mode, ""), w.limit, w.used, w.reserved,
                         w.remaining, w.percent, w.window_id,
                         w.resets_at.ToDatetime(dt.timezone.utc), w.projected)
            for w in r.windows], r)


@dataclass(frozen=True, slots=True)
class Rule:
    scope: Scope
    window: str
    unit: str
    limit: int
    mode: str = "hard"
    alert_thresholds_percent: tuple[int, ...] = ()

    def to_pb(self) -> apb.BudgetRule:
        return apb.BudgetRule(scope=self.scope.to_pb(), window=WINDOWS[self.window],
                              unit=UNITS[self.unit], limit=self.limit, mode=MODES[self.mode],
                              alert_thresholds_percent=list(self.alert_thresholds_percent))

    @classmethod
    def from_pb(cls, r: apb.BudgetRule) -> Rule:
        return cls(Scope.from_pb(r.scope), _WINDOW_NAMES.get(r.window, "?"),
                   _UNIT_NAMES.get(r.unit, "?"), r.limit, _MODE_NAMES.get(r.mode, "hard"),
                   tuple(r.alert_thresholds_percent))


PERIODS = {"day": apb.PERIOD_DAY, "month": apb.PERIOD_MONTH}
GROUP_BY = {"team": apb.GROUP_BY_TEAM, "feature": apb.GROUP_BY_FEATURE,
            "model": apb.GROUP_BY_MODEL, "scope_model": apb.GROUP_BY_SCOPE_MODEL}
_PERIOD_NAMES = {v: k for k, v in PERIODS.items()}
_GROUP_NAMES = {v: k for k, v in GROUP_BY.items()}


@dataclass(frozen=True, slots=True)
class Alert:
    """A budget alert: a threshold reached, a SOFT rule crossed, or a request
    a SHADOW rule would have denied (kind)."""

    id: str
    kind: str  # 'threshold' | 'soft_over_limit' | 'shadow_would_deny'
    scope: Scope
    window: str
    unit: str
    mode: str
    threshold_percent: int
    limit: int
    consumed: int
    window_id: str
    fired_at: dt.datetime
    request_id: str

    @classmethod
    def from_pb(cls, a: pb.Alert) -> Alert:
        return cls(a.id, a.kind, Scope.from_pb(a.scope), _WINDOW_NAMES.get(a.window, "?"),
                   _UNIT_NAMES.get(a.unit, "?"), _MODE_NAMES.get(a.mode, "?"),
                   a.threshold_percent, a.limit, a.consumed, a.window_id,
                   a.fired_at.ToDatetime(dt.timezone.utc), a.request_id)


@dataclass(frozen=True, slots=True)
class UsageRow:
    group: str
    input_tokens: int
    output_tokens: int
    cache_write_tokens: int
    cache_read_tokens: int
    cost_micros: int
    requests: int
    denials: int
    shadow_denials: int

    @classmethod
    def from_pb(cls, r: apb.UsageRow) -> UsageRow:
        return cls(r.group, r.input_tokens, r.output_tokens, r.cache_write_tokens,
                   r.cache_read_tokens, r.cost_micros, r.requests, r.denials,
                   r.shadow_denials)


@dataclass(frozen=True, slots=True)
class UsageReport:
    org: str
    period: str  # 'day' | 'month'
    period_id: str  # '2026-11-25' | '2026-11'
    group_by: str  # 'team' | 'feature' | 'model'
    rows: list[UsageRow]
    total: UsageRow
    raw: apb.GetUsageReportResponse = field(repr=False)

    def row(self, group: str) -> UsageRow:
        for r in self.rows:
            if r.group == group:
                return r
        raise KeyError(group)

    @classmethod
    def from_pb(cls, r: apb.GetUsageReportResponse) -> UsageReport:
        return cls(r.org, _PERIOD_NAMES.get(r.period, "?"), r.period_id,
                   _GROUP_NAMES.get(r.group_by, "?"), [UsageRow.from_pb(x) for x in r.rows],
                   UsageRow.from_pb(r.total), r)
