"""A small JSON GET over urllib (stdlib: the client's base install stays
grpcio + protobuf) with bounded retries on 429/5xx that honour Retry-After.

Admin keys travel in headers only; no message, log line or exception built
here ever contains a header value.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# A response body larger than this is refused (a day-bucket page is a few KB).
MAX_RESPONSE_BYTES = 16 << 20


class ProviderError(Exception):
    """The provider's admin API could not be read; the message says why."""


class ProviderAuthError(ProviderError):
    """401/403: the admin key is missing, expired, revoked or not an admin key."""


class ProviderRateLimited(ProviderError):
    """Still 429 (or 5xx) after the allowed attempts."""


def admin_key(provider: str, api_key: str | None, env: str) -> str:
    """The admin key given, else from `env`; never logged or echoed."""
    key = api_key if api_key is not None else os.environ.get(env, "")
    if not key:
        raise ProviderAuthError(f"{provider}: no admin key: set {env}")
    return key


def token_count(provider: str, v: Any, where: str) -> int:
    """A token count from a provider's JSON: absent is 0; anything but a
    non-negative integer is an error, never silently zero."""
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ProviderError(f"{provider}: {where}: {v!r} is not a token count")
    return v


@dataclass(frozen=True, slots=True)
class HttpPolicy:
    timeout_s: float = 30.0
    # Attempts per page, counting the first.
    max_attempts: int = 5
    # A Retry-After above this is capped to it (a provider asking for an hour
    # must not stall a cron job for an hour).
    max_retry_after_s: float = 60.0
    # Delay when a 429/5xx has no Retry-After; doubled per attempt.
    backoff_s: float = 1.0
    # Pages per import (a month of day buckets is one to a few pages).
    max_pages: int = 1000


def _retry_after_s(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # An HTTP date: fall back to our own backoff.


def get_json(provider: str, url: str, params: Sequence[tuple[str, str]],
             headers: dict[str, str], policy: HttpPolicy,
             sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    full = url + ("?" + urllib.parse.urlencode(list(params)) if params else "")
    req = urllib.request.Request(full, headers={**headers, "accept": "application/json"})
    for attempt in range(1, policy.max_attempts + 1):
        try:
            with urllib.request.urlopen(req, timeout=policy.timeout_s) as resp:
                body = resp.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as e:
            status = e.code
            detail = _error_detail(e)
            if status in (401, 403):
                raise ProviderAuthError(
                    f"{provider}: the admin key was rejected ({status}{detail}): it is "
                    "missing, expired, revoked or not an admin key") from None
            if status == 429 or status >= 500:
                if attempt == policy.max_attempts:
                    raise ProviderRateLimited(
                        f"{provider}: HTTP {status} after {attempt} attempts{detail}") from None
                wait = _retry_after_s(e.headers.get("retry-after"))
                if wait is None:
                    wait = policy.backoff_s * 2 ** (attempt - 1)
                sleep(min(wait, policy.max_retry_after_s))
                continue
            raise ProviderError(f"{provider}: HTTP {status} from {_path(url)}{detail}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            if attempt == policy.max_attempts:
                raise ProviderError(f"{provider}: cannot reach {_path(url)}: {reason}") from None
            sleep(min(policy.backoff_s * 2 ** (attempt - 1), policy.max_retry_after_s))
            continue
        if len(body) > MAX_RESPONSE_BYTES:
            raise ProviderError(f"{provider}: response larger than {MAX_RESPONSE_BYTES} bytes")
        try:
            doc = json.loads(body)
        except ValueError:
            raise ProviderError(f"{provider}: {_path(url)} did not answer JSON") from None
        if not isinstance(doc, dict):
            raise ProviderError(f"{provider}: {_path(url)}: expected a JSON object")
        return doc
    raise AssertionError("unreachable")


def _path(url: str) -> str:
    return urllib.parse.urlsplit(url).path


def _error_detail(e: urllib.error.HTTPError) -> str:
    """The provider's own error message, short (both APIs answer
    {"error": {"message": ...}})."""
    try:
        doc = json.loads(e.read(4096) or b"{}")
        msg = doc.get("error", {}).get("message") if isinstance(doc, dict) else None
    except (ValueError, AttributeError, OSError):
        msg = None
    return f": {str(msg)[:200]}" if msg else ""
