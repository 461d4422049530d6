"""Alerts: decided and appended by the Lua scripts (see _lib.lua), read here.

Keys (hash tag {org}, like every key of the org):
  bd:{org}:fired:<window_id>  hash  "<path>|<w>|<u>|<threshold|soft|shadow>" -> fired_at_ms
  bd:{org}:alerts             stream, capped at ALERT_STREAM_MAXLEN (approximately)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from budgetd_client._proto.budget.v1 import budget_pb2 as pb

from budgetd import windows as w
from budgetd.codec import MODE_TO_PB, UNIT_TO_PB, WINDOW_TO_PB, text
from budgetd.errors import InvalidArgument

# Mirrors ALERT_STREAM_MAXLEN in scripts/_lib.lua.
ALERT_STREAM_MAXLEN = 10_000
# WatchAlerts: entries per XREAD, and the longest a read blocks.
WATCH_READ_COUNT = 100
WATCH_BLOCK_MAX_MS = 5_000
# Blocking reads hold a Redis connection each: bound the concurrent watchers.
MAX_WATCHERS = 64

KINDS = ("threshold", "soft_over_limit", "shadow_would_deny", "drift")
_STREAM_ID_RE = re.compile(r"^[0-9]{1,20}(-[0-9]{1,20})?$")


def fired_key(org: str, window_id: str) -> str:
    return f"{w.org_tag(org)}:fired:{window_id}"


def alerts_key(org: str) -> str:
    return f"{w.org_tag(org)}:alerts"


def check_after_id(field: str, value: str) -> str:
    """A stream id ("1700000000000-0", or "0" for the start); "" stays ""."""
    if value and not _STREAM_ID_RE.fullmatch(value):
        raise InvalidArgument(field, f"{value[:40]!r} is not an alert id "
                              "(<ms>-<seq>, as returned in Alert.id, or 0)")
    return value




@dataclass(frozen=True, slots=True)
class Alert:
    id: str
    kind: str
    path: str
    window: str  # 'd' | 'm'
    unit: str  # 't' | 'c'
    mode: str  # 'h' | 's' | 'w'
    threshold_percent: int
    limit: int
    consumed: int
    window_id: str  # 'd20261125' | 'm202611'
    fired_at_ms: int
    request_id: str

    @classmethod
    def from_fields(cls, alert_id: str, f: dict[str, str]) -> Alert:
        """From a stream entry's fields or a script answer's alert object."""
        return cls(id=alert_id, kind=f["kind"], path=f["path"], window=f["w"], unit=f["u"],
                   mode=f["mode"], threshold_percent=int(f["th"]), limit=int(f["limit"]),
                   consumed=int(f["consumed"]), window_id=f["wid"],
                   fired_at_ms=int(f["at"]), request_id=f["rid"])

    @classmethod
    def from_entry(cls, entry_id: Any, fields: dict[Any, Any]) -> Alert:
        return cls.from_fields(text(entry_id), {text(k): text(v) for k, v in fields.items()})

    def to_pb(self) -> pb.Alert:
        parts = self.path.split("/")
        a = pb.Alert(
            id=self.id, kind=self.kind,
            scope=pb.Scope(org=parts[0], team=parts[1] if len(parts) > 1 else "",
                           feature=parts[2] if len(parts) > 2 else ""),
            window=WINDOW_TO_PB.get(self.window, pb.WINDOW_UNSPECIFIED),
            unit=UNIT_TO_PB.get(self.unit, pb.UNIT_UNSPECIFIED),
            mode=MODE_TO_PB.get(self.mode, pb.MODE_UNSPECIFIED),
            threshold_percent=self.threshold_percent, limit=self.limit,
            consumed=self.consumed, window_id=w.window_label(self.window_id),
            request_id=self.request_id)
        a.fired_at.FromMilliseconds(self.fired_at_ms)
        return a

    def text(self) -> str:
        """One line for humans (the webhook's Slack text)."""
        window = "day" if self.window == "d" else "month"
        unit = "tokens" if self.unit == "t" else "micro-USD"
        label = w.window_label(self.window_id)
        if self.kind == "drift":
            # limit: the provider's amount, consumed: budgetd's, request_id:
            # drift:<provider>:<model> (service/budgetd/drift.py).
            return (f"budgetd: {self.path} drifts {self.threshold_percent}% from "
                    f"{self.request_id} on {label}: provider {self.limit}, budgetd "
                    f"{self.consumed} {unit}")
        if self.kind == "threshold":
            what = f"reached {self.threshold_percent}% of its {window} budget"
        elif self.kind == "soft_over_limit":
            what = f"went over its SOFT {window} budget"
        else:
            what = f"would have been denied by its SHADOW {window} budget"
        return (f"budgetd: {self.path} {what} ({label}): {self.consumed} of {self.limit} "
                f"{unit}")


def alerts_of(data: dict[str, Any]) -> list[Alert]:
    """The alerts a script answer carries (cjson encodes an empty list as {})."""
    raw = data.get("alerts")
    if not isinstance(raw, list):
        return []
    return [Alert.from_fields(str(a["id"]), {k: str(v) for k, v in a.items()}) for a in raw]


class AlertReader:
    """Reads an org's alert stream for WatchAlerts."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis

    async def last_id(self, org: str) -> str:
        """The id of the newest alert, or "0-0": the cursor for "only new ones"
        (XREAD with "$" at every call would miss alerts between two reads)."""
        last = await self.redis.xrevrange(alerts_key(org), "+", "-", count=1)
        return text(last[0][0]) if last else "0-0"

    async def read(self, org: str, after_id: str, block_ms: int,
                   count: int = WATCH_READ_COUNT) -> list[Alert]:
        got = await self.redis.xread({alerts_key(org): after_id}, count=count,
                                     block=block_ms)
        out: list[Alert] = []
        for _key, entries in got or []:
            for entry_id, fields in entries:
                out.append(Alert.from_entry(entry_id, fields))
        return out
