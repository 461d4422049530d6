"""The webhook sender: a background task that tails every org's alert stream
and POSTs each alert (Slack-compatible JSON) to one URL, with retries and
exponential backoff. It runs beside the gRPC server and never touches the
reserve path: the scripts only append to the streams.

Replicas share the consumer group `budgetd-webhook`, so each alert goes to one
replica; it is XACKed only after a 2xx answer. A replica that dies with
alerts in flight leaves them pending: another replica claims them after
CLAIM_IDLE_MS. Delivery is at least once (a crash between the POST and the
XACK re-sends); payloads carry the alert id so receivers can drop repeats.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError, ResponseError

from budgetd import metrics
from budgetd import windows as w
from budgetd.alerts import Alert, alerts_key
from budgetd.codec import text

log = logging.getLogger("budgetd.webhook")

GROUP = "budgetd-webhook"
# Entries taken from one org's stream per read.
READ_COUNT = 50
# Orgs walked per SSCAN page.
ORG_PAGE = 500
# A consumer's pending entries idle this long are taken over by another.
CLAIM_IDLE_MS = 60_000
MAX_BODY_BYTES = 64 * 1024


class WebhookError(Exception):
    """A POST failed (network error or non-2xx answer)."""


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    url: str
    timeout_s: float = 5.0
    # Per alert per poll; an alert that exhausts them stays pending and is
    # tried again on the next poll.
    max_attempts: int = 6
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    poll_interval_s: float = 1.0
    # Older alerts are acknowledged without a POST: when the webhook is first
    # configured, the capped stream's history is not replayed to the channel.
    max_age_s: float = 86_400.0


def payload(org: str, a: Alert) -> dict[str, Any]:
    return {
        "text": a.text(),
        "alert": {
            "id": a.id, "kind": a.kind, "org": org, "scope": a.path,
            "window": "day" if a.window == "d" else "month",
            "unit": "tokens" if a.unit == "t" else "cost_micros",
            "mode": {"h": "hard", "s": "soft", "w": "shadow"}.get(a.mode, a.mode),
            "threshold_percent": a.threshold_percent, "limit": a.limit,
            "consumed": a.consumed, "window_id": w.window_label(a.window_id),
            "fired_at_ms": a.fired_at_ms, "request_id": a.request_id,
        },
    }


def post_json(url: str, body: dict[str, Any], timeout_s: float) -> int:
    """Blocking POST (run in a thread); returns the status or raises WebhookError."""
    data = json.dumps(body).encode()
    if len(data) > MAX_BODY_BYTES:
        raise WebhookError(f"payload of {len(data)} bytes exceeds {MAX_BODY_BYTES}")
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json",
                                          "User-Agent": "budgetd-webhook"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        raise WebhookError(f"HTTP {e.code}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise WebhookError(str(e)) from None




class WebhookSender:
    def __init__(self, redis: Any, config: WebhookConfig, consumer: str | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.redis = redis
        self.config = config
        self.consumer = consumer or (f"{socket.gethostname()[:40]}-{os.getpid()}-"
                                     f"{secrets.token_hex(3)}")
        self._sleep = sleep
        self._grouped: set[str] = set()
        self.delivered = 0
        self.failed_attempts = 0
        self.skipped_old = 0

    async def run(self) -> None:
        """Polls until cancelled; Redis or HTTP trouble is logged, never fatal."""
        while True:
            try:
                await self.poll_once()
            except RedisError as e:
                log.warning("webhook poll failed: %s", e)
            except Exception:
                log.exception("webhook poll crashed")
            await asyncio.sleep(self.config.poll_interval_s)

    async def poll_once(self) -> int:
        """One pass over every org's stream; returns alerts delivered."""
        sent = 0
        cursor = 0
        while True:
            cursor, orgs = await self.redis.sscan(w.ORGS_KEY, cursor=cursor, count=ORG_PAGE)
            for org in orgs:
                sent += await self.drain(text(org))
            if int(cursor) == 0:
                return sent

    async def _ensure_group(self, key: str) -> bool:
        if key in self._grouped:
            return True
        if not await self.redis.exists(key):
            return False  # No alert yet: no stream, and none created here.
        try:
            # From the start: alerts fired before the group existed are not lost.
            await self.redis.xgroup_create(key, GROUP, id="0")
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        self._grouped.add(key)
        return True

    async def _entries(self, key: str) -> list[tuple[Any, dict[Any, Any]]]:
        # Own pending entries first (failed earlier), then a dead replica's,
        # then new ones.
        out: list[tuple[Any, dict[Any, Any]]] = []
        mine = await self.redis.xreadgroup(GROUP, self.consumer, {key: "0"}, count=READ_COUNT)
        for _k, entries in mine or []:
            out += [e for e in entries if e[1]]
        if out:
            return out
        claimed = await self.redis.xautoclaim(key, GROUP, self.consumer, CLAIM_IDLE_MS,
                                              "0-0", count=READ_COUNT)
        out += [e for e in (claimed[1] if len(claimed) > 1 else []) if e[1]]
        if out:
            return out
        new = await self.redis.xreadgroup(GROUP, self.consumer, {key: ">"}, count=READ_COUNT)
        for _k, entries in new or []:
            out += [e for e in entries if e[1]]
        return out

    async def drain(self, org: str) -> int:
        key = alerts_key(org)
        if not await self._ensure_group(key):
            return 0
        try:
            entries = await self._entries(key)
        except ResponseError as e:
            if "NOGROUP" in str(e):
                self._grouped.discard(key)  # The stream was deleted; recreate next poll.
                return 0
            raise
        sent = 0
        for entry_id, fields in entries:
            a = Alert.from_entry(entry_id, fields)
            age_s = time.time() - int(a.id.split("-")[0]) / 1000
            if age_s > self.config.max_age_s:
                self.skipped_old += 1
                metrics.ALERT_DELIVERIES.labels("too_old").inc()
                await self.redis.xack(key, GROUP, a.id)
                continue
            if not await self._deliver(org, a):
                break  # Keep order: the rest waits for the next poll.
            await self.redis.xack(key, GROUP, a.id)
            sent += 1
        return sent

    async def _deliver(self, org: str, a: Alert) -> bool:
        c = self.config
        body = payload(org, a)
        for attempt in range(c.max_attempts):
            try:
                await asyncio.to_thread(post_json, c.url, body, c.timeout_s)
            except WebhookError as e:
                self.failed_attempts += 1
                last = attempt + 1 == c.max_attempts
                metrics.ALERT_DELIVERIES.labels("failed" if last else "retry").inc()
                delay = min(c.backoff_s * 2 ** attempt, c.backoff_max_s)
                log.warning("webhook POST failed", extra={"alert_id": a.id, "org": org,
                                                          "attempt": attempt + 1,
                                                          "error": str(e), "retry_in_s": delay})
                if attempt + 1 < c.max_attempts:
                    await self._sleep(delay)
                continue
            self.delivered += 1
            metrics.ALERT_DELIVERIES.labels("ok").inc()
            return True
        return False
