"""Usage reports from counters the scripts keep (see report_add in _lib.lua),
in each window's counter hash, read with one HGETALL per window, never a
keyspace scan.

  bd:{org}:w:<window_id>  hash  (beside the budget counters u|... and r|...,
                                  which reports skip)
    "sm|<team>[/<feature>]|<model>|u" -> "<i> <o> <cw> <cr> <c>"
        tokens by kind (input, output, cache write, cache read), cost micros
    "sm|<team>[/<feature>]|<model>|<metric>" -> integer
        metric: n (requests), d (denials), s (allowed, but a SHADOW rule
        would have denied)
    per scope and model; reports by team, feature, model or scope and model
    (the drift check) add them up when read.
  Expiry of the window counters: day + 36 days, month + 400 days, so monthly
  reports work for 13 months.

Versions before 0.2 kept these counters in a hash of their own,
bd:{org}:rep:<window_id> (one key more per window), with a field per usage
metric (metric i, o, cw, cr, c). Reports add both, so a window written before,
during or after a rolling upgrade reads whole; the old key expires with its
window.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

from budgetd import windows as w
from budgetd.errors import InvalidArgument, ResourceExhausted

GROUPS = ("team", "feature", "model", "scope_model")
METRICS = ("i", "o", "cw", "cr", "c", "n", "d", "s")
# The metrics of a "...|u" field's value, in order.
USAGE_METRICS = ("i", "o", "cw", "cr", "c")
# A report hash holds at most this many fields before we refuse to build a
# response from it (bounded memory and message size; ~ 8 metrics x 60k
# scope-model pairs).
MAX_REPORT_FIELDS = 500_000
_DAY_RE = re.compile(r"^([0-9]{4})-([0-9]{2})-([0-9]{2})$")
_MONTH_RE = re.compile(r"^([0-9]{4})-([0-9]{2})$")


def legacy_report_key(org: str, window_id: str) -> str:
    """Where versions before 0.2 kept a window's report counters."""
    return f"{w.org_tag(org)}:rep:{window_id}"


def window_id_of(period: str, period_id: str, field_name: str = "period_id") -> str:
    """'2026-11-25' -> 'd20261125' (period 'd'); '2026-11' -> 'm202611' ('m')."""
    m = (_DAY_RE if period == "d" else _MONTH_RE).fullmatch(period_id)
    if m is None:
        want = "YYYY-MM-DD" if period == "d" else "YYYY-MM"
        raise InvalidArgument(field_name, f"{period_id[:40]!r} is not a {want} "
                              f"{'day' if period == 'd' else 'month'}")
    try:
        dt.date(int(m[1]), int(m[2]), int(m[3]) if period == "d" else 1)
    except ValueError as e:
        raise InvalidArgument(field_name, f"{period_id!r} is not a date: {e}") from None
    return period + "".join(m.groups())


@dataclass(slots=True)
class Row:
    group: str
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    cost_micros: int = 0
    requests: int = 0
    denials: int = 0
    shadow_denials: int = 0

    def add(self, metric: str, n: int) -> None:
        attr = _ATTR[metric]
        setattr(self, attr, getattr(self, attr) + n)


_ATTR = {"i": "input_tokens", "o": "output_tokens", "cw": "cache_write_tokens",
         "cr": "cache_read_tokens", "c": "cost_micros", "n": "requests", "d": "denials",
         "s": "shadow_denials"}


@dataclass(slots=True)
class Report:
    org: str
    window_id: str
    group_by: str
    rows: list[Row] = field(default_factory=list)
    total: Row = field(default_factory=lambda: Row(""))


def _group_of(group_by: str, tf: str, model: str) -> str:
    if group_by == "team":
        return tf.split("/", 1)[0]
    if group_by == "feature":
        return tf
    if group_by == "model":
        return model
    return f"{tf}|{model}"


def build(org: str, window_id: str, group_by: str, *raws: dict[Any, Any]) -> Report:
    """A report from one or more hashes of counters (their sum)."""
    assert group_by in GROUPS, group_by
    rows: dict[str, Row] = {}
    for raw in raws:
        for k, v in raw.items():
            key = k.decode() if isinstance(k, bytes) else str(k)
            parts = key.split("|")
            # Ids and model names cannot hold '|': anything else (the budget
            # counters u|<path>|<unit>, r|...) is not a report counter.
            if len(parts) != 4 or parts[0] != "sm" or (parts[3] not in _ATTR
                                                       and parts[3] != "u"):
                continue
            group = _group_of(group_by, parts[1], parts[2])
            row = rows.get(group)
            if row is None:
                row = rows[group] = Row(group)
            if parts[3] == "u":
                for metric, n in zip(USAGE_METRICS, v.split(), strict=True):
                    row.add(metric, int(n))
            else:
                row.add(parts[3], int(v))
    rep = Report(org, window_id, group_by, sorted(rows.values(), key=lambda r: r.group))
    for r in rep.rows:
        for attr in _ATTR.values():
            setattr(rep.total, attr, getattr(rep.total, attr) + getattr(r, attr))
    return rep


async def usage_report(redis: Any, org: str, window_id: str, group_by: str) -> Report:
    keys = (w.window_key(org, window_id), legacy_report_key(org, window_id))
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.hlen(key)
    if sum(await pipe.execute()) > MAX_REPORT_FIELDS:
        raise ResourceExhausted(f"org: the report has more than {MAX_REPORT_FIELDS} counters",
                                "org")
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    return build(org, window_id, group_by, *await pipe.execute())
