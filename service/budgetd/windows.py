"""Calendar windows (day, month) in an org's IANA time zone, and the key
schema. Every key of one org shares the hash tag {org}, so each script
touches one Redis Cluster slot."""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from budgetd.limits import DAY_RETENTION_S, MONTH_RETENTION_S

PREFIX = "bd"
ORGS_KEY = f"{PREFIX}:orgs"
# Who walks every org for expiry (scripts/walker.lua).
WALKER_KEY = f"{PREFIX}:walker"
PRICING_KEY = f"{PREFIX}:pricing"


def org_tag(org: str) -> str:
    return f"{PREFIX}:{{{org}}}"


def request_key(org: str, request_id: str) -> str:
    return f"{org_tag(org)}:q:{request_id}"


def rules_key(org: str) -> str:
    return f"{org_tag(org)}:rules"


def settings_key(org: str) -> str:
    return f"{org_tag(org)}:cfg"


def expiry_key(org: str) -> str:
    return f"{org_tag(org)}:exp"


def window_key(org: str, window_id: str) -> str:
    return f"{org_tag(org)}:w:{window_id}"


@functools.lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    """Raises KeyError-like ZoneInfoNotFoundError/ValueError for bad names."""
    return ZoneInfo(name)


def valid_zone(name: str) -> bool:
    try:
        zone(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class Windows:
    """The day and month windows that contain one instant."""

    day_id: str  # "d20261125"
    month_id: str  # "m202611"
    day_start_ms: int
    day_end_ms: int
    month_start_ms: int
    month_end_ms: int

    @property
    def day_expire_at_s(self) -> int:
        return self.day_end_ms // 1000 + DAY_RETENTION_S

    @property
    def month_expire_at_s(self) -> int:
        return self.month_end_ms // 1000 + MONTH_RETENTION_S


def _ms(t: dt.datetime) -> int:
    return int(t.timestamp() * 1000)


# The windows of the last instant asked, per zone: every call of a day gets
# the same answer, and the zone arithmetic below costs more than a Reserve's
# other bookkeeping. Bounded by the number of zones in use.
_LAST: dict[str, Windows] = {}
MAX_CACHED_ZONES = 1024


def windows_at(now_ms: int, tz_name: str) -> Windows:
    hit = _LAST.get(tz_name)
    if hit is not None and hit.day_start_ms <= now_ms < hit.day_end_ms:
        return hit
    win = _compute(now_ms, tz_name)
    if len(_LAST) >= MAX_CACHED_ZONES:
        _LAST.clear()
    _LAST[tz_name] = win
    return win


def _compute(now_ms: int, tz_name: str) -> Windows:
    tz = zone(tz_name)
    local = dt.datetime.fromtimestamp(now_ms / 1000, tz)
    day = local.date()
    next_day = day + dt.timedelta(days=1)
    month_start = day.replace(day=1)
    next_month = (month_start + dt.timedelta(days=32)).replace(day=1)

    def start(d: dt.date) -> int:
        # Midnight local time; fold=0 picks the first one on DST changes.
        return _ms(dt.datetime(d.year, d.month, d.day, tzinfo=tz))

    return Windows(
        day_id=f"d{day:%Y%m%d}",
        month_id=f"m{day:%Y%m}",
        day_start_ms=start(day),
        day_end_ms=start(next_day),
        month_start_ms=start(month_start),
        month_end_ms=start(next_month),
    )


def window_label(window_id: str) -> str:
    """'d20261125' -> '2026-11-25', 'm202611' -> '2026-11'."""
    s = window_id[1:]
    if window_id.startswith("d"):
        return f"{s[:4]}-{s[4:6]}-{s[6:]}"
    return f"{s[:4]}-{s[4:]}"


def scope_paths(org: str, team: str = "", feature: str = "") -> list[str]:
    """Every level of a scope path, org first."""
    paths = [org]
    if team:
        paths.append(f"{org}/{team}")
        if feature:
            paths.append(f"{org}/{team}/{feature}")
    return paths
