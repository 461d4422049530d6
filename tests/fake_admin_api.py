"""A local HTTP server implementing the providers' admin usage endpoints
(request parameters, pagination by day buckets, JSON shapes, auth, 429 with
Retry-After), loaded with fixture data. The importers run against it with
base_url pointed here."""

from __future__ import annotations

import datetime as dt
import json
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ANTHROPIC_KEY = "sk-ant-admin01-test-key"
OPENAI_KEY = "sk-admin-test-key"


@dataclass
class Fixture:
    # day (date) -> list of result dicts, already in the provider's shape
    anthropic_usage: dict[dt.date, list[dict[str, Any]]] = field(default_factory=dict)
    anthropic_costs: dict[dt.date, list[dict[str, Any]]] = field(default_factory=dict)
    openai_usage: dict[dt.date, list[dict[str, Any]]] = field(default_factory=dict)
    # Answer 429 to this many requests first, with this Retry-After.
    rate_limit_times: int = 0
    retry_after: str = "1"
    anthropic_key: str = ANTHROPIC_KEY
    openai_key: str = OPENAI_KEY
    requests: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)


def _rfc3339(d: dt.date) -> str:
    return f"{d.isoformat()}T00:00:00Z"


def _parse_rfc3339(v: str) -> dt.date:
    return dt.datetime.fromisoformat(v.replace("Z", "+00:00")).date()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
              ) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(raw)

    def _error(self, status: int, kind: str, msg: str, headers: dict[str, str] | None = None
               ) -> None:
        self._send(status, {"type": "error", "error": {"type": kind, "message": msg}}, headers)

    def do_GET(self) -> None:
        fx = self.server.fixture
        url = urllib.parse.urlsplit(self.path)
        q = urllib.parse.parse_qsl(url.query)
        fx.requests.append((url.path, q))
        if fx.rate_limit_times > 0:
            fx.rate_limit_times -= 1
            return self._error(429, "rate_limit_error", "slow down",
                               {"retry-after": fx.retry_after})
        if url.path.startswith("/v1/organizations/"):
            return self._anthropic(url.path, q)
        if url.path == "/v1/organization/usage/completions":
            return self._openai(q)
        return self._error(404, "not_found_error", url.path)

    def _page(self, days: list[dt.date], q: dict[str, list[str]], default_limit: int
              ) -> tuple[list[dt.date], str | None]:
        limit = int(q.get("limit", [str(default_limit)])[0])
        if not 1 <= limit <= 31:
            raise ValueError("limit")
        first = int(q["page"][0].removeprefix("page_")) if "page" in q else 0
        chunk = days[first:first + limit]
        more = first + limit < len(days)
        return chunk, (f"page_{first + limit}" if more else None)

    def _anthropic(self, path: str, ql: list[tuple[str, str]]) -> None:
        fx = self.server.fixture
        if self.headers.get("x-api-key") != fx.anthropic_key:
            return self._error(401, "authentication_error", "invalid x-api-key")
        if not self.headers.get("anthropic-version"):
            return self._error(400, "invalid_request_error", "anthropic-version: required")
        q: dict[str, list[str]] = {}
        for k, v in ql:
            q.setdefault(k, []).append(v)
        try:
            start = _parse_rfc3339(q["starting_at"][0])
            end = _parse_rfc3339(q["ending_at"][0]) if "ending_at" in q else start + \
                dt.timedelta(days=7)
            if q.get("bucket_width", ["1d"]) != ["1d"]:
                raise ValueError("bucket_width")
        except (KeyError, ValueError) as e:
            return self._error(400, "invalid_request_error", f"bad parameter: {e}")
        days = [start + dt.timedelta(days=i) for i in range((end - start).days)]
        try:
            chunk, nxt = self._page(days, q, 7)
        except ValueError:
            return self._error(400, "invalid_request_error", "limit")
        if path == "/v1/organizations/usage_report/messages":
            groups = set(q.get("group_by[]", []))
            src = fx.anthropic_usage
            drop = {"model", "workspace_id", "api_key_id", "service_tier"} - groups
        elif path == "/v1/organizations/cost_report":
            groups = set(q.get("group_by[]", []))
            src = fx.anthropic_costs
            drop = set()
            if "workspace_id" not in groups or "description" not in groups:
                return self._error(400, "invalid_request_error", "fixture needs both groups")
        else:
            return self._error(404, "not_found_error", path)
        data = [{"starting_at": _rfc3339(d), "ending_at": _rfc3339(d + dt.timedelta(days=1)),
                 "results": [{k: (None if k in drop else v) for k, v in r.items()}
                             for r in src.get(d, [])]} for d in chunk]
        self._send(200, {"data": data, "has_more": nxt is not None, "next_page": nxt})

    def _openai(self, ql: list[tuple[str, str]]) -> None:
        fx = self.server.fixture
        if self.headers.get("authorization") != f"Bearer {fx.openai_key}":
            return self._error(401, "invalid_request_error", "Incorrect API key provided")
        q: dict[str, list[str]] = {}
        for k, v in ql:
            q.setdefault(k, []).append(v)
        try:
            start = dt.datetime.fromtimestamp(int(q["start_time"][0]), dt.timezone.utc).date()
            end = (dt.datetime.fromtimestamp(int(q["end_time"][0]), dt.timezone.utc).date()
                   if "end_time" in q else start + dt.timedelta(days=7))
        except (KeyError, ValueError) as e:
            return self._error(400, "invalid_request_error", f"bad parameter: {e}")
        days = [start + dt.timedelta(days=i) for i in range((end - start).days)]
        try:
            chunk, nxt = self._page(days, q, 7)
        except ValueError:
            return self._error(400, "invalid_request_error", "limit")
        drop = {"model", "project_id", "api_key_id", "batch"} - set(q.get("group_by", []))

        def ts(d: dt.date) -> int:
            return int(dt.datetime(d.year, d.month, d.day, tzinfo=dt.timezone.utc).timestamp())

        data = [{"object": "bucket", "start_time": ts(d),
                 "end_time": ts(d + dt.timedelta(days=1)),
                 "results": [{"object": "organization.usage.completions.result",
                              **{k: (None if k in drop else v) for k, v in r.items()}}
                             for r in fx.openai_usage.get(d, [])]} for d in chunk]
        self._send(200, {"object": "page", "data": data, "has_more": nxt is not None,
                         "next_page": nxt})


class _Server(ThreadingHTTPServer):
    fixture: Fixture


class FakeAdminAPI:
    def __init__(self, fixture: Fixture | None = None) -> None:
        self.fixture = fixture or Fixture()
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.fixture = self.fixture
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> FakeAdminAPI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def anthropic_result(model: str, workspace: str | None, api_key: str | None, *,
                     uncached: int = 0, output: int = 0, cw5m: int = 0, cw1h: int = 0,
                     cache_read: int = 0, service_tier: str = "standard") -> dict[str, Any]:
    return {"uncached_input_tokens": uncached,
            "cache_creation": {"ephemeral_1h_input_tokens": cw1h,
                               "ephemeral_5m_input_tokens": cw5m},
            "cache_read_input_tokens": cache_read, "output_tokens": output,
            "server_tool_use": {"web_search_requests": 0}, "model": model,
            "workspace_id": workspace, "api_key_id": api_key, "service_tier": service_tier,
            "context_window": None}


def openai_result(model: str, project: str | None, api_key: str | None, *, input_tokens: int,
                  cached: int = 0, output: int = 0, requests: int = 1,
                  batch: bool = False) -> dict[str, Any]:
    return {"input_tokens": input_tokens, "input_cached_tokens": cached,
            "output_tokens": output, "input_audio_tokens": 0, "output_audio_tokens": 0,
            "num_model_requests": requests, "project_id": project, "user_id": None,
            "api_key_id": api_key, "model": model, "batch": batch}
