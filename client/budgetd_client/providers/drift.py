"""Drift: the provider's usage vs budgetd's ledger, per UTC day, scope and
model. Shared by `budgetctl drift` and the server's scheduled check.

Provider cost: the provider's own dollars where it gives them (Anthropic's
cost report, when a (day, workspace, model) maps to one scope), else the
provider's tokens priced with budgetd's pricing table. budgetd rounds each
request's cost up to a micro-USD and the provider side is priced from daily
sums, so costs may differ by up to one micro-USD per request: compare with a
threshold, not with zero.

Models are joined by their canonical name: a provider reports dated
snapshots ("gpt-4o-mini-2024-07-18", "claude-sonnet-4-5-20250929") where
callers often reserve with the alias, or the other way round. Both sides'
names are resolved with the server's rules (budgetd_client.models) to the
pricing table's model name; a name the table does not know stays as written.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from budgetd_client._proto.budget.v1 import admin_pb2 as apb
from budgetd_client.models import model_candidates
from budgetd_client.providers.mapping import ProviderMap
from budgetd_client.providers.usage import CostRow, Tokens, UsageRow

# Models budgetd counts that belong to a provider, besides those the provider
# reported this month (budgetd's report mixes every provider's models).
MODEL_PATTERNS = {
    "anthropic": re.compile(r"^(anthropic[./])?claude"),
    "openai": re.compile(r"^(openai/)?(gpt|o[0-9]|chatgpt|text-|davinci|babbage|ft:)"),
}
UNMAPPED = "(unmapped)"
MAX_ROWS = 200_000

Key = tuple[dt.date, str, str]  # (day, scope relative to the org, model)


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """budgetd's counters for one (day, scope, model)."""

    input: int = 0
    output: int = 0
    cache_write: int = 0
    cache_read: int = 0
    cost_micros: int = 0

    @property
    def total(self) -> int:
        return self.input + self.output + self.cache_write + self.cache_read

    def __add__(self, o: LedgerRow) -> LedgerRow:
        return LedgerRow(self.input + o.input, self.output + o.output,
                         self.cache_write + o.cache_write, self.cache_read + o.cache_read,
                         self.cost_micros + o.cost_micros)


class Pricer:
    """budgetd's pricing table (GetPricing), applied to daily token sums:
    base prices of the version in force that day (long-context tiers price a
    single request by its prompt size, which daily sums cannot tell)."""

    def __init__(self, pricing: Iterable[apb.ModelPricing]) -> None:
        # Lowercase keys, as the server's PriceTable indexes them.
        self._by_name: dict[str, apb.ModelPricing] = {}
        for m in pricing:
            for name in (m.model, *m.aliases):
                self._by_name[name.lower()] = m

    def lookup(self, model: str) -> apb.ModelPricing | None:
        """The row the server would price `model` with, or None."""
        for candidate in model_candidates(model):
            m = self._by_name.get(candidate)
            if m is not None:
                return m
        return None

    def known(self, model: str) -> bool:
        return self.lookup(model) is not None

    def canonical(self, model: str) -> str:
        """The pricing table's model name for `model`; unknown names as written."""
        m = self.lookup(model)
        return model if m is None else str(m.model)

    def cost_micros(self, model: str, day: dt.date, t: Tokens, batch: bool = False
                    ) -> int | None:
        m = self.lookup(model)
        if m is None:
            return None
        versions = sorted(m.versions, key=lambda v: v.effective_from)
        p = None
        for v in versions:
            if not v.effective_from or v.effective_from <= day.isoformat():
                p = v.prices
        if p is None:
            return None
        # As the server prices a request: the batch discount on input and
        # output only, summed exactly in 1/100 units, rounded up once.
        keep = 100 - m.batch_discount_percent if batch else 100
        num = ((t.input * p.input + t.output * p.output) * keep
               + (t.cache_write_5m * p.cache_write_5m + t.cache_write_1h * p.cache_write_1h
                  + t.cache_read * p.cache_read) * 100)
        return -(-num // 100_000_000)


@dataclass(slots=True)
class DriftRow:
    day: dt.date
    scope: str  # relative to the org; UNMAPPED for provider ids with no scope
    model: str
    provider_tokens: Tokens = field(default_factory=Tokens)
    provider_batch_tokens: Tokens = field(default_factory=Tokens)  # part of provider_tokens
    provider_cost_micros: int | None = 0
    cost_source: str = "pricing"  # 'pricing' | 'cost_report' | 'unknown_model'
    ledger: LedgerRow = field(default_factory=LedgerRow)
    identities: list[str] = field(default_factory=list)  # unmapped provider ids

    @property
    def diff_tokens(self) -> int:
        return self.provider_tokens.total - self.ledger.total

    @property
    def diff_cost_micros(self) -> int | None:
        if self.provider_cost_micros is None:
            return None
        return self.provider_cost_micros - self.ledger.cost_micros

    @property
    def drift_percent(self) -> float:
        """Cost difference over the provider's cost; token difference when
        the model has no price. Spend only budgetd saw is -100%."""
        diff, base = self.diff_cost_micros, self.provider_cost_micros
        if diff is None or base is None:
            diff, base = self.diff_tokens, self.provider_tokens.total
        if base == 0:
            return 0.0 if diff == 0 else -100.0
        return 100.0 * diff / base

    @property
    def status(self) -> str:
        if self.scope == UNMAPPED:
            return "unmapped"
        if self.cost_source == "unknown_model":
            return "unknown_model"
        if self.diff_tokens > 0:
            return "missing"
        if self.diff_tokens < 0:
            return "extra"
        return "ok" if not self.diff_cost_micros else "cost_differs"

    def priced(self, pricer: Pricer) -> int | None:
        """The provider's tokens at budgetd's prices, batch usage at the batch discount."""
        b = self.provider_batch_tokens
        standard = self.provider_tokens - b
        cost = pricer.cost_micros(self.model, self.day, standard)
        if cost is None or not b.total:
            return cost
        batch_cost = pricer.cost_micros(self.model, self.day, b, batch=True)
        return None if batch_cost is None else cost + batch_cost

    def over(self, threshold_percent: float) -> bool:
        return abs(self.drift_percent) > threshold_percent

    def missing_tokens(self) -> Tokens:
        """What budgetd lacks, by kind (cache writes: 1h first, then 5m)."""
        provider_split = self.provider_tokens
        cw = max(0, provider_split.cache_write - self.ledger.cache_write)
        h1 = min(provider_split.cache_write_1h, cw)
        return Tokens(input=max(0, provider_split.input - self.ledger.input),
                      output=max(0, provider_split.output - self.ledger.output),
                      cache_write_1h=h1, cache_write_5m=cw - h1,
                      cache_read=max(0, provider_split.cache_read - self.ledger.cache_read))

    def to_json(self) -> dict[str, Any]:
        t, lg = self.provider_tokens, self.ledger
        return {
            "day": self.day.isoformat(), "scope": self.scope, "model": self.model,
            "status": self.status, "cost_source": self.cost_source,
            "provider": {"input_tokens": t.input, "output_tokens": t.output,
                         "cache_write_tokens": t.cache_write, "cache_read_tokens": t.cache_read,
                         "tokens": t.total, "batch_tokens": self.provider_batch_tokens.total,
                         "cost_micros": self.provider_cost_micros},
            "budgetd": {"input_tokens": lg.input, "output_tokens": lg.output,
                        "cache_write_tokens": lg.cache_write,
                        "cache_read_tokens": lg.cache_read, "tokens": lg.total,
                        "cost_micros": lg.cost_micros},
            "diff_tokens": self.diff_tokens, "diff_cost_micros": self.diff_cost_micros,
            "drift_percent": round(self.drift_percent, 4),
            "unmapped_ids": self.identities,
        }


def belongs(provider: str, model: str, seen: set[str], pm: ProviderMap,
            canonical: str | None = None) -> bool:
    """Whether a budgetd ledger model is the provider's: reported by it this
    month (seen holds canonical names), or named like its models, as written
    by the caller or canonically (Bedrock's "us.anthropic.claude-..." is)."""
    names = (model,) if canonical in (None, model) else (model, canonical)
    return any(n in seen or bool(MODEL_PATTERNS[provider].match(n.lower()))
               or any(n.startswith(p) for p in pm.model_prefixes) for n in names)


def parse_ledger_group(group: str) -> tuple[str, str]:
    """A GROUP_BY_SCOPE_MODEL row: "team/feature|model" -> (scope, model)."""
    scope, _, model = group.partition("|")
    return scope, model


def compare(pm: ProviderMap, usage: list[UsageRow], costs: list[CostRow] | None,
            pricer: Pricer, ledger: dict[Key, LedgerRow]) -> list[DriftRow]:
    """Rows keyed by (day, scope, canonical model): a snapshot name on one
    side and its alias on the other are one row, never a missing plus an
    extra row for the same spend."""
    canon: dict[str, str] = {}

    def canonical(model: str) -> str:
        if model not in canon:
            canon[model] = pricer.canonical(model)
        return canon[model]

    rows: dict[Key, DriftRow] = {}
    # For cost-report dollars: which scopes each (day, workspace, model) feeds.
    feeds: dict[tuple[dt.date, str | None, str], set[str]] = {}
    for u in usage:
        scope = pm.scope_of(u.workspace, u.api_key)
        model = canonical(u.model)
        k = (u.day, UNMAPPED if scope is None else scope, model)
        row = rows.get(k)
        if row is None:
            if len(rows) >= MAX_ROWS:
                raise ValueError(f"more than {MAX_ROWS} (day, scope, model) rows")
            row = rows[k] = DriftRow(*k)
        row.provider_tokens = row.provider_tokens + u.tokens
        if u.batch:
            row.provider_batch_tokens = row.provider_batch_tokens + u.tokens
        if scope is None:
            ident = f"workspace={u.workspace or 'default'} api_key={u.api_key or '-'}"
            if ident not in row.identities and len(row.identities) < 20:
                row.identities.append(ident)
        feeds.setdefault((u.day, u.workspace, model), set()).add(k[1])
    seen = {k[2] for k in rows}
    for (day, scope, raw), lg in ledger.items():
        model = canonical(raw)
        if not belongs(pm.provider, raw, seen, pm, model):
            continue
        k = (day, scope, model)
        row = rows.get(k)
        if row is None:
            if len(rows) >= MAX_ROWS:
                raise ValueError(f"more than {MAX_ROWS} (day, scope, model) rows")
            row = rows[k] = DriftRow(*k)
        # Callers may use several names of one model on one day: sum them.
        row.ledger = row.ledger + lg
    for row in rows.values():
        row.provider_cost_micros = row.priced(pricer)
        row.cost_source = "pricing" if row.provider_cost_micros is not None else "unknown_model"
    for c in costs or []:
        model = canonical(c.model)
        scopes = feeds.get((c.day, c.workspace, model), set())
        if len(scopes) != 1:
            continue  # Several scopes share these dollars: keep the priced tokens.
        row = rows[(c.day, next(iter(scopes)), model)]
        if row.cost_source != "cost_report":
            row.provider_cost_micros, row.cost_source = 0, "cost_report"
        assert row.provider_cost_micros is not None
        row.provider_cost_micros += c.cost_micros
    return sorted(rows.values(), key=lambda r: (r.day, r.scope, r.model))


def record_request_id(provider: str, org: str, row: DriftRow) -> str:
    """Idempotent per (day, scope, model) and the provider's totals: a rerun
    with the same provider numbers reuses it (the server answers the first
    result), a later correction by the provider gets a new one."""
    t = row.provider_tokens
    h = hashlib.sha256(
        f"{provider}|{org}|{row.day}|{row.scope}|{row.model}|{t.input}|{t.output}|"
        f"{t.cache_write_5m}|{t.cache_write_1h}|{t.cache_read}|{row.provider_cost_micros}"
        .encode()).hexdigest()
    return f"drift-{row.day:%Y%m%d}-{h[:40]}"


def occurred_at(day: dt.date) -> dt.datetime:
    """Midday UTC: inside the same calendar day for any org time zone within
    +-12 h of UTC."""
    return dt.datetime(day.year, day.month, day.day, 12, tzinfo=dt.timezone.utc)
