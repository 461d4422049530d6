"""The alert webhook against a real local HTTP server (http.server in a
thread) and a real Redis: retries with exponential backoff, each alert
delivered once, replicas sharing the consumer group."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from budgetd import metrics
from budgetd.clock import ManualClock
from budgetd.config import Settings
from budgetd.embedded import EmbeddedRedis
from budgetd.server import ServerThread
from budgetd.webhook import GROUP, WebhookConfig, WebhookSender
from budgetd_client import AdminClient, BudgetClient, CallPolicy
from conftest import T0, Budgetd, ms
from helpers import TEST_MODEL, set_test_pricing

STREAM = "bd:{acme}:alerts"


class Hook:
    """A webhook receiver that answers 500 to the first `fail_first` POSTs."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.lock = threading.Lock()
        self.attempts: list[tuple[float, int, dict[str, Any]]] = []  # (time, status, body)
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with hook.lock:
                    status = 500 if len(hook.attempts) < hook.fail_first else 200
                    hook.attempts.append((time.monotonic(), status, body))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def delivered(self) -> list[dict[str, Any]]:
        with self.lock:
            return [body for _, status, body in self.attempts if status == 200]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def hook() -> Iterator[Hook]:
    h = Hook(fail_first=3)
    yield h
    h.close()


def wait_for(cond: Any, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def deliveries() -> dict[str, float]:
    """budgetd_alert_deliveries_total by result, from the process's registry
    (the server threads of these tests share it)."""
    return {result: metrics.REGISTRY.get_sample_value("budgetd_alert_deliveries_total",
                                                      {"result": result}) or 0.0
            for result in ("ok", "retry", "failed", "too_old")}


def test_an_alert_older_than_the_max_age_is_skipped_and_counted(
        hook: Hook, r: redis.Redis, redis_server: EmbeddedRedis) -> None:
    """--webhook-max-age-s: an alert fired long before (the stream's history
    when a webhook is first configured, or a pile-up after a long outage) is
    acknowledged without a POST and counted as too_old; a fresh one is sent."""
    r.sadd("bd:orgs", "acme")
    r.xadd(STREAM, {"kind": "threshold", "path": "acme/search", "w": "d", "u": "t",
                    "mode": "h", "th": "50", "limit": "1000", "consumed": "600",
                    "wid": "d20270315", "at": "1000", "rid": "old"}, id="1000-0")
    settings = Settings(listen="127.0.0.1:0", redis_url=redis_server.url, redis_timeout_s=5.0,
                        webhook_url=hook.url, webhook_backoff_s=0.05,
                        webhook_poll_interval_s=0.05, webhook_max_age_s=3600)
    # Read before the server starts: its poller may skip the old alert at once.
    before = deliveries()
    thread = ServerThread(settings, ManualClock(ms(T0))).start()
    policy = CallPolicy(timeout_s=10, total_timeout_s=20, retries=0)
    try:
        with AdminClient(thread.address, policy=policy) as admin, \
                BudgetClient(thread.address, policy=policy) as client:
            set_test_pricing(admin)
            admin.set_budget("acme/search", "day", "tokens", 1000, alert_thresholds_percent=[90])
            res = client.reserve("acme/search", TEST_MODEL, tokens=950, cost_micros=1)
        wait_for(lambda: len(hook.delivered()) == 1)
        time.sleep(0.3)
        assert [d["alert"]["id"] for d in hook.delivered()] == [a.id for a in res.raw.alerts]
        assert r.xpending(STREAM, GROUP)["pending"] == 0
        after = deliveries()
        assert (after["too_old"] - before["too_old"], after["ok"] - before["ok"]) == (1, 1)
    finally:
        thread.stop()


def test_server_posts_each_alert_once_with_retries_and_backoff(
        hook: Hook, r: redis.Redis, redis_server: EmbeddedRedis) -> None:
    settings = Settings(listen="127.0.0.1:0", redis_url=redis_server.url, redis_timeout_s=5.0,
                        webhook_url=hook.url, webhook_backoff_s=0.05,
                        webhook_poll_interval_s=0.05, webhook_max_attempts=6)
    thread = ServerThread(settings, ManualClock(ms(T0))).start()
    policy = CallPolicy(timeout_s=10, total_timeout_s=20, retries=0)
    admin = AdminClient(thread.address, policy=policy)
    client = BudgetClient(thread.address, policy=policy)
    before = deliveries()
    try:
        set_test_pricing(admin)
        admin.set_budget("acme/search", "day", "tokens", 1000, alert_thresholds_percent=[50, 90])
        res = client.reserve("acme/search", TEST_MODEL, tokens=950, cost_micros=1)
        ids = [a.id for a in res.raw.alerts]
        assert len(ids) == 2
        wait_for(lambda: len(hook.delivered()) == 2)
        time.sleep(0.3)  # several more polls: nothing is sent again
        delivered = hook.delivered()
        assert [d["alert"]["id"] for d in delivered] == ids  # once each, in order
        first = delivered[0]
        assert first["text"] == ("budgetd: acme/search reached 50% of its day budget "
                                 "(2027-03-15): 950 of 1000 tokens")
        assert {k: first["alert"][k] for k in ("kind", "org", "scope", "window", "unit", "mode",
                                              "threshold_percent", "limit", "consumed",
                                              "window_id", "request_id")} == {
            "kind": "threshold", "org": "acme", "scope": "acme/search", "window": "day",
            "unit": "tokens", "mode": "hard", "threshold_percent": 50, "limit": 1000,
            "consumed": 950, "window_id": "2027-03-15", "request_id": res.request_id}
        # Three 500s, then success: the first alert was tried 4 times, with
        # the delay doubling each time (0.05, 0.1, 0.2 s).
        with hook.lock:
            attempts = list(hook.attempts)
        assert [(s, b["alert"]["id"]) for _, s, b in attempts] == [
            (500, ids[0]), (500, ids[0]), (500, ids[0]), (200, ids[0]), (200, ids[1])]
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(attempts[:4])]
        for gap, want in zip(gaps, (0.05, 0.1, 0.2), strict=True):
            assert gap >= want * 0.9
        assert gaps[2] > gaps[0]
        assert r.xpending(STREAM, GROUP)["pending"] == 0
        webhook = thread.app.webhook
        assert webhook is not None
        assert (webhook.delivered, webhook.failed_attempts) == (2, 3)
        # The deliveries metric (budgetd_alert_deliveries_total) counts them.
        after = deliveries()
        assert {k: after[k] - before[k] for k in after} == {
            "ok": 2, "retry": 3, "failed": 0, "too_old": 0}
    finally:
        client.close()
        admin.close()
        thread.stop()


def _fire_alerts(b: Budgetd, n_thresholds: int = 8) -> list[str]:
    set_test_pricing(b.admin)
    b.admin.set_budget("acme", "day", "tokens", 1000,
                       alert_thresholds_percent=[10 * (i + 1) for i in range(n_thresholds)])
    res = b.client.reserve("acme/t", TEST_MODEL, tokens=900, cost_micros=1)
    return [a.id for a in res.raw.alerts]


def test_two_replicas_deliver_each_alert_once(budgetd: Budgetd, r: redis.Redis,
                                              redis_server: EmbeddedRedis) -> None:
    ids = _fire_alerts(budgetd)
    assert len(ids) == 8
    h = Hook()
    cfg = WebhookConfig(url=h.url, backoff_s=0.01, poll_interval_s=0.01)

    async def run() -> tuple[int, int]:
        client = aioredis.from_url(redis_server.url)
        try:
            one = WebhookSender(client, cfg, consumer="replica-1")
            two = WebhookSender(client, cfg, consumer="replica-2")
            for _ in range(3):
                await asyncio.gather(one.poll_once(), two.poll_once())
            return one.delivered, two.delivered
        finally:
            await client.aclose()

    try:
        one, two = asyncio.run(run())
        sent = [d["alert"]["id"] for d in h.delivered()]
        assert Counter(sent) == Counter(ids)  # every alert, none twice
        assert one + two == 8
        assert r.xpending(STREAM, GROUP)["pending"] == 0
    finally:
        h.close()


def test_an_alert_that_keeps_failing_stays_pending_and_is_retried(
        budgetd: Budgetd, r: redis.Redis, redis_server: EmbeddedRedis) -> None:
    ids = _fire_alerts(budgetd, n_thresholds=1)
    h = Hook(fail_first=1000)
    slept: list[float] = []

    async def fake_sleep(s: float) -> None:
        slept.append(s)  # backoff observed, not waited: the POSTs are real

    cfg = WebhookConfig(url=h.url, max_attempts=4, backoff_s=0.5, backoff_max_s=1.5)

    async def run() -> None:
        client = aioredis.from_url(redis_server.url)
        try:
            sender = WebhookSender(client, cfg, consumer="replica-1", sleep=fake_sleep)
            assert await sender.poll_once() == 0
            assert slept == [0.5, 1.0, 1.5]  # exponential, capped
            assert r.xpending(STREAM, GROUP)["pending"] == 1
            h.fail_first = 0
            assert await sender.poll_once() == 1
            assert await sender.poll_once() == 0
        finally:
            await client.aclose()

    try:
        asyncio.run(run())
        assert [s for _, s, _ in h.attempts] == [500] * 4 + [200]
        assert [d["alert"]["id"] for d in h.delivered()] == ids
        assert r.xpending(STREAM, GROUP)["pending"] == 0
    finally:
        h.close()


def test_unreachable_webhook_never_slows_reserve(budgetd: Budgetd,
                                                 redis_server: EmbeddedRedis) -> None:
    """The sender runs beside the server; a dead endpoint only delays alerts."""
    settings = Settings(listen="127.0.0.1:0", redis_url=redis_server.url, redis_timeout_s=5.0,
                        webhook_url="http://127.0.0.1:9/hook", webhook_backoff_s=1.0,
                        webhook_poll_interval_s=0.01)
    thread = ServerThread(settings, ManualClock(ms(T0))).start()
    client = BudgetClient(thread.address, policy=CallPolicy(retries=0))
    try:
        set_test_pricing(budgetd.admin)
        budgetd.admin.set_budget("acme", "day", "tokens", 100_000,
                                 alert_thresholds_percent=[1])
        t0 = time.monotonic()
        for i in range(20):
            assert client.reserve("acme", TEST_MODEL, tokens=100, cost_micros=1,
                                  request_id=f"q{i}").allowed
        assert time.monotonic() - t0 < 2.0
    finally:
        client.close()
        thread.stop()
