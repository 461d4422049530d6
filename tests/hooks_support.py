"""Fixtures and arithmetic shared by the hook tests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from budgetd.clock import ManualClock
from budgetd.config import Settings
from budgetd.embedded import EmbeddedRedis
from budgetd.server import ServerThread
from budgetd.service import BudgetService
from conftest import T0, Budgetd, ms
from fake_providers import FakeProviders
from helpers import set_test_pricing

SCOPE = "acme/app"
MESSAGES = [{"role": "user", "content": "What is the capital of France? Answer briefly."}]


@pytest.fixture()
def fake() -> Iterator[FakeProviders]:
    f = FakeProviders().start()
    yield f
    f.stop()


@pytest.fixture()
def b(budgetd: Budgetd) -> Budgetd:
    set_test_pricing(budgetd.admin)
    return budgetd


@pytest.fixture()
def slow_budgetd(r: redis.Redis, redis_server: EmbeddedRedis,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Budgetd, list[float]]]:
    """A real budgetd whose Reserve and Reconcile answer only after
    delay_s[0] seconds (the test sets it; 0 at first)."""
    delay_s = [0.0]

    def slowed(method: Any) -> Any:
        async def slow(self: Any, request: Any, context: Any) -> Any:
            await asyncio.sleep(delay_s[0])
            return await method(self, request, context)
        return slow

    for name in ("Reserve", "Reconcile"):
        monkeypatch.setattr(BudgetService, name, slowed(getattr(BudgetService, name)))
    settings = Settings(listen="127.0.0.1:0", redis_url=redis_server.url,
                        expiry_interval_s=0.2, redis_timeout_s=5.0)
    clock = ManualClock(ms(T0))
    bd = Budgetd(ServerThread(settings, clock).start(), clock)
    set_test_pricing(bd.admin)
    yield bd, delay_s
    bd.close()


def cost(inp: int = 0, out: int = 0, cw: int = 0, cr: int = 0, scale_den: int = 1) -> int:
    """helpers' test prices: per token 1 input, 2 output, 1.25 cache write
    (5 min), 0.1 cache read micro-USD (test-small: a tenth), rounded up once."""
    hundredths = 100 * inp + 200 * out + 125 * cw + 10 * cr
    return -(-hundredths // (100 * scale_den))


def counters(b: Budgetd, scope: str = SCOPE) -> tuple[int, int, int, int]:
    """(tokens used, tokens reserved, cost used, cost reserved) today / this month."""
    st = b.client.get_budget(scope)
    day, month = st.get("day", "tokens"), st.get("month", "cost_micros")
    return day.used, day.reserved, month.used, month.reserved


def settled(tokens: int, cost_micros: int) -> tuple[int, int, int, int]:
    return tokens, 0, cost_micros, 0
