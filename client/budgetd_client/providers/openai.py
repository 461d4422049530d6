"""OpenAI Admin API: organization usage for completions.

GET /v1/organization/usage/completions
    start_time, end_time (unix s), bucket_width=1d,
    group_by=model&group_by=project_id&group_by=api_key_id&group_by=batch, limit, page
    -> {object: "page", data: [{object: "bucket", start_time, end_time,
        results: [{input_tokens (cached included), input_cached_tokens, output_tokens,
        num_model_requests, project_id, api_key_id, model, batch}]}], has_more, next_page}
Header: Authorization: Bearer <admin key> (OPENAI_ADMIN_KEY).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from budgetd_client.providers._http import (
    HttpPolicy,
    ProviderError,
    admin_key,
    get_json,
    token_count,
)
from budgetd_client.providers.usage import Tokens, UsageRow, utc_midnight

NAME = "openai"
DEFAULT_BASE_URL = "https://api.openai.com"
KEY_ENV = "OPENAI_ADMIN_KEY"
MAX_DAY_BUCKETS = 31


def _int(v: Any, where: str) -> int:
    return token_count(NAME, v, where)


class OpenAIAdmin:
    def __init__(self, api_key: str | None = None, *, base_url: str = DEFAULT_BASE_URL,
                 policy: HttpPolicy | None = None, page_limit: int = MAX_DAY_BUCKETS,
                 sleep: Callable[[float], None] | None = None) -> None:
        key = admin_key(NAME, api_key, KEY_ENV)
        self._headers = {"authorization": f"Bearer {key}"}
        self.base_url = base_url.rstrip("/")
        self.policy = policy or HttpPolicy()
        self.page_limit = max(1, min(page_limit, MAX_DAY_BUCKETS))
        self._sleep = sleep

    def __repr__(self) -> str:  # never the key
        return f"OpenAIAdmin(base_url={self.base_url!r})"

    def usage(self, start: dt.date, end: dt.date) -> list[UsageRow]:
        path = "/v1/organization/usage/completions"
        params = [("start_time", str(int(utc_midnight(start).timestamp()))),
                  ("end_time", str(int(utc_midnight(end).timestamp()))),
                  ("bucket_width", "1d"), ("group_by", "model"), ("group_by", "project_id"),
                  ("group_by", "api_key_id"), ("group_by", "batch"),
                  ("limit", str(self.page_limit))]
        out: list[UsageRow] = []
        page: str | None = None
        for _ in range(self.policy.max_pages):
            kw = {"sleep": self._sleep} if self._sleep else {}
            doc = get_json(NAME, self.base_url + path,
                           params + ([("page", page)] if page else []), self._headers,
                           self.policy, **kw)
            data = doc.get("data")
            if not isinstance(data, list):
                raise ProviderError(f"{NAME}: {path}: no data list in the answer")
            for b in data:
                st = b.get("start_time")
                if isinstance(st, bool) or not isinstance(st, int):
                    raise ProviderError(f"{NAME}: bucket start_time {st!r}")
                day = dt.datetime.fromtimestamp(st, dt.timezone.utc).date()
                for i, r in enumerate(b.get("results") or []):
                    where = f"{day} results[{i}]"
                    total_in = _int(r.get("input_tokens"), where)
                    cached = _int(r.get("input_cached_tokens"), where)
                    if cached > total_in:
                        raise ProviderError(f"{NAME}: {where}: input_cached_tokens > "
                                            "input_tokens")
                    # input_tokens includes the cached ones: budgetd prices them apart.
                    tokens = Tokens(input=total_in - cached,
                                    output=_int(r.get("output_tokens"), where),
                                    cache_read=cached)
                    out.append(UsageRow(day, str(r.get("model") or "(unknown)"),
                                        r.get("project_id"), r.get("api_key_id"), tokens,
                                        _int(r.get("num_model_requests"), where),
                                        batch=r.get("batch") is True))
            if not doc.get("has_more"):
                return out
            page = doc.get("next_page")
            if not page:
                raise ProviderError(f"{NAME}: {path}: has_more without next_page")
        raise ProviderError(f"{NAME}: {path}: more than {self.policy.max_pages} pages")
