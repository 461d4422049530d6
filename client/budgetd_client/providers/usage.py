"""Provider usage, normalised: one row per UTC day, model, workspace/project
and API key, with tokens split the way budgetd prices them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Tokens:
    """Token counts by kind. input is uncached input (OpenAI's input_tokens
    minus input_cached_tokens), as budgetd counts it."""

    input: int = 0
    output: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    cache_read: int = 0

    @property
    def cache_write(self) -> int:
        return self.cache_write_5m + self.cache_write_1h

    @property
    def total(self) -> int:
        return self.input + self.output + self.cache_write + self.cache_read

    def __add__(self, o: Tokens) -> Tokens:
        return Tokens(self.input + o.input, self.output + o.output,
                      self.cache_write_5m + o.cache_write_5m,
                      self.cache_write_1h + o.cache_write_1h, self.cache_read + o.cache_read)

    def __sub__(self, o: Tokens) -> Tokens:
        return Tokens(self.input - o.input, self.output - o.output,
                      self.cache_write_5m - o.cache_write_5m,
                      self.cache_write_1h - o.cache_write_1h, self.cache_read - o.cache_read)


@dataclass(frozen=True, slots=True)
class UsageRow:
    day: dt.date  # UTC: both providers bucket days in UTC
    model: str
    # Anthropic workspace_id / OpenAI project_id; None: the default workspace
    # (Anthropic answers null for it) or not reported.
    workspace: str | None
    api_key: str | None
    tokens: Tokens
    requests: int = 0
    # Batch API usage, billed at the batch discount (Anthropic service_tier
    # "batch", OpenAI batch=true).
    batch: bool = False


@dataclass(frozen=True, slots=True)
class CostRow:
    """Dollars the provider billed (Anthropic cost report), per UTC day,
    workspace and model, in micro-USD."""

    day: dt.date
    workspace: str | None
    model: str
    cost_micros: int


def month_range(month: str, today: dt.date) -> tuple[dt.date, dt.date]:
    """'2026-11' -> [first day, end) where end is the month's end or, for the
    current month, tomorrow (no buckets from the future)."""
    try:
        y, m = (int(p) for p in month.split("-"))
        start = dt.date(y, m, 1)
    except ValueError:
        raise ValueError(f"month {month!r}: expected YYYY-MM") from None
    if len(month) != 7:
        raise ValueError(f"month {month!r}: expected YYYY-MM")
    end = dt.date(y + (m == 12), m % 12 + 1, 1)
    end = min(end, today + dt.timedelta(days=1))
    if end <= start:
        raise ValueError(f"month {month}: in the future")
    return start, end


def utc_midnight(d: dt.date) -> dt.datetime:
    return dt.datetime(d.year, d.month, d.day, tzinfo=dt.timezone.utc)
