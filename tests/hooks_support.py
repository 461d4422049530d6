"""Fixtures and arithmetic shared by the hook tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import Budgetd
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
