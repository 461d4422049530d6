"""Anthropic Admin API: the messages usage report and the cost report.

GET /v1/organizations/usage_report/messages
    starting_at, ending_at (RFC 3339), bucket_width=1d,
    group_by[]=model&group_by[]=workspace_id&group_by[]=api_key_id&group_by[]=service_tier,
    limit, page
    -> {data: [{starting_at, ending_at, results: [{uncached_input_tokens,
        cache_creation: {ephemeral_5m_input_tokens, ephemeral_1h_input_tokens},
        cache_read_input_tokens, output_tokens, model, workspace_id, api_key_id}]}],
        has_more, next_page}
GET /v1/organizations/cost_report
    starting_at, ending_at, bucket_width=1d, group_by[]=workspace_id&group_by[]=description
    -> results [{amount (decimal string, cents), currency, cost_type, model, workspace_id, ...}]
Headers: x-api-key (an admin key, ANTHROPIC_ADMIN_KEY), anthropic-version.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from decimal import Decimal, InvalidOperation
from typing import Any

from budgetd_client.providers._http import (
    HttpPolicy,
    ProviderError,
    admin_key,
    get_json,
    token_count,
)
from budgetd_client.providers.usage import CostRow, Tokens, UsageRow, utc_midnight

NAME = "anthropic"
DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
KEY_ENV = "ANTHROPIC_ADMIN_KEY"
# Day buckets per page: the API's maximum for bucket_width=1d.
MAX_DAY_BUCKETS = 31


def _rfc3339(d: dt.date) -> str:
    return utc_midnight(d).strftime("%Y-%m-%dT%H:%M:%SZ")


def _day(value: Any, where: str) -> dt.date:
    try:
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(
            dt.timezone.utc).date()
    except ValueError:
        raise ProviderError(f"{NAME}: {where}: {str(value)[:40]!r} is not a timestamp") from None


def _int(v: Any, where: str) -> int:
    return token_count(NAME, v, where)


class AnthropicAdmin:
    def __init__(self, api_key: str | None = None, *, base_url: str = DEFAULT_BASE_URL,
                 policy: HttpPolicy | None = None, page_limit: int = MAX_DAY_BUCKETS,
                 sleep: Callable[[float], None] | None = None) -> None:
        key = admin_key(NAME, api_key, KEY_ENV)
        self._headers = {"x-api-key": key, "anthropic-version": API_VERSION}
        self.base_url = base_url.rstrip("/")
        self.policy = policy or HttpPolicy()
        self.page_limit = max(1, min(page_limit, MAX_DAY_BUCKETS))
        self._sleep = sleep

    def __repr__(self) -> str:  # never the key
        return f"AnthropicAdmin(base_url={self.base_url!r})"

    def _pages(self, path: str, params: list[tuple[str, str]]) -> Iterator[dict[str, Any]]:
        page: str | None = None
        for _ in range(self.policy.max_pages):
            p = params + [("limit", str(self.page_limit))] + ([("page", page)] if page else [])
            kw = {"sleep": self._sleep} if self._sleep else {}
            doc = get_json(NAME, self.base_url + path, p, self._headers, self.policy, **kw)
            data = doc.get("data")
            if not isinstance(data, list):
                raise ProviderError(f"{NAME}: {path}: no data list in the answer")
            yield from data
            if not doc.get("has_more"):
                return
            page = doc.get("next_page")
            if not page:
                raise ProviderError(f"{NAME}: {path}: has_more without next_page")
        raise ProviderError(f"{NAME}: {path}: more than {self.policy.max_pages} pages")

    def usage(self, start: dt.date, end: dt.date) -> list[UsageRow]:
        """Messages usage per UTC day, model, workspace and API key in [start, end)."""
        params = [("starting_at", _rfc3339(start)), ("ending_at", _rfc3339(end)),
                  ("bucket_width", "1d"), ("group_by[]", "model"),
                  ("group_by[]", "workspace_id"), ("group_by[]", "api_key_id"),
                  ("group_by[]", "service_tier")]
        out = []
        for b in self._pages("/v1/organizations/usage_report/messages", params):
            day = _day(b.get("starting_at"), "starting_at")
            for i, r in enumerate(b.get("results") or []):
                where = f"{day} results[{i}]"
                cc = r.get("cache_creation") or {}
                tokens = Tokens(
                    input=_int(r.get("uncached_input_tokens"), where),
                    output=_int(r.get("output_tokens"), where),
                    cache_write_5m=_int(cc.get("ephemeral_5m_input_tokens"), where),
                    cache_write_1h=_int(cc.get("ephemeral_1h_input_tokens"), where),
                    cache_read=_int(r.get("cache_read_input_tokens"), where))
                out.append(UsageRow(day, str(r.get("model") or "(unknown)"),
                                    r.get("workspace_id"), r.get("api_key_id"), tokens,
                                    batch=r.get("service_tier") == "batch"))
        return out

    def costs(self, start: dt.date, end: dt.date) -> list[CostRow]:
        """Token costs in USD per UTC day, workspace and model (cost_type
        "tokens"; web search and code execution are not model spend)."""
        params = [("starting_at", _rfc3339(start)), ("ending_at", _rfc3339(end)),
                  ("bucket_width", "1d"), ("group_by[]", "workspace_id"),
                  ("group_by[]", "description")]
        sums: dict[tuple[dt.date, str | None, str], Decimal] = {}
        for b in self._pages("/v1/organizations/cost_report", params):
            day = _day(b.get("starting_at"), "starting_at")
            for r in b.get("results") or []:
                if r.get("cost_type") not in (None, "tokens") or not r.get("model"):
                    continue
                if str(r.get("currency") or "USD") != "USD":
                    raise ProviderError(f"{NAME}: cost report in {r.get('currency')}, not USD")
                try:
                    cents = Decimal(str(r.get("amount")))
                except InvalidOperation:
                    raise ProviderError(f"{NAME}: cost amount {r.get('amount')!r}") from None
                k = (day, r.get("workspace_id"), str(r["model"]))
                sums[k] = sums.get(k, Decimal(0)) + cents
        # amount is in cents (the currency's lowest unit): 1 cent = 10_000 micro-USD.
        return [CostRow(d, ws, m, int((c * 10_000).to_integral_value()))
                for (d, ws, m), c in sorted(sums.items(), key=lambda kv: str(kv[0]))]
