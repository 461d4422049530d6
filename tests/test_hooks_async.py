"""The asyncio twins: AsyncBudget, `async with budget.reserve(...)`, and
guard() around AsyncAnthropic / AsyncOpenAI, against a real budgetd."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anthropic
import openai
import pytest
from budgetd_client import AsyncBudgetClient, BudgetExceeded, CallPolicy, Usage
from budgetd_client.estimate import count_tokens, estimate_input_tokens
from budgetd_client.hooks import AsyncBudget
from budgetd_client.integrations import guard
from conftest import Budgetd
from fake_providers import FakeProviders, Plan
from helpers import TEST_MODEL, TEST_SMALL
from hooks_support import MESSAGES, SCOPE, b, cost, counters, fake, settled, slow_budgetd

__all__ = ["b", "fake", "slow_budgetd"]


def run(bd: Budgetd, body: Callable[[AsyncBudget], Awaitable[Any]], max_delay_s: float = 5.0,
        policy: CallPolicy | None = None) -> Any:
    async def main() -> Any:
        client = AsyncBudgetClient(bd.address, policy=policy)
        try:
            return await body(AsyncBudget(client, max_delay_s=max_delay_s))
        finally:
            await client.close()
    return asyncio.run(main())


def claude(fake: FakeProviders) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key="test", base_url=fake.url, max_retries=0)


def gpt(fake: FakeProviders) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="test", base_url=fake.url + "/v1", max_retries=0)


def test_async_anthropic_create_and_stream(b: Budgetd, fake: FakeProviders) -> None:
    fake.plans.extend([Plan(input_tokens=100, output_tokens=10, cache_creation_input_tokens=8),
                       Plan(input_tokens=50, output_tokens=5, cache_read_input_tokens=30)])

    async def body(budget: AsyncBudget) -> None:
        llm = guard(claude(fake), budget=budget, scope=SCOPE)
        await llm.messages.create(model=TEST_MODEL, max_tokens=64, messages=MESSAGES)
        stream = await llm.messages.create(model=TEST_MODEL, max_tokens=64,
                                           messages=MESSAGES, stream=True)
        kinds = [e.type async for e in stream]
        assert kinds[-1] == "message_stop"

    run(b, body)
    assert counters(b) == settled(118 + 85, cost(100, 10, 8) + cost(50, 5, 0, 30))


def test_async_messages_stream_helper_abandoned(b: Budgetd, fake: FakeProviders) -> None:
    fake.plans.append(Plan(input_tokens=60, output_tokens=500,
                           chunks=["red green blue ", "cyan ", "magenta"]))

    async def body(budget: AsyncBudget) -> None:
        llm = guard(claude(fake), budget=budget, scope=SCOPE)
        async with llm.messages.stream(model=TEST_MODEL, max_tokens=600,
                                       messages=MESSAGES) as s:
            async for text in s.text_stream:
                assert text == "red green blue "
                break

    run(b, body)
    delivered = count_tokens("red green blue ", TEST_MODEL)
    assert counters(b) == settled(60 + delivered, cost(60, delivered))


def test_async_openai_stream_and_error_release(b: Budgetd, fake: FakeProviders) -> None:
    fake.plans.extend([Plan(input_tokens=40, cache_read_input_tokens=60, output_tokens=7),
                       Plan(status=500)])

    async def body(budget: AsyncBudget) -> None:
        llm = guard(gpt(fake), budget=budget, scope=SCOPE)
        stream = await llm.chat.completions.create(model=TEST_MODEL, messages=MESSAGES,
                                                   max_tokens=50, stream=True)
        chunks = [c async for c in stream]
        assert chunks[-1].usage is not None
        with pytest.raises(openai.InternalServerError):
            await llm.chat.completions.create(model=TEST_MODEL, messages=MESSAGES,
                                              max_tokens=50)

    run(b, body)
    assert counters(b) == settled(107, cost(40, 7, 0, 60))


def test_async_context_manager_fallback_and_denial(b: Budgetd, fake: FakeProviders) -> None:
    b.admin.set_budget("acme/app", "month", "cost_micros", 1000)

    async def body(budget: AsyncBudget) -> None:
        async with budget.reserve(SCOPE, TEST_MODEL, input_tokens=100, max_tokens=1000,
                                  fallback_models=[TEST_SMALL]) as r:
            assert r.model == TEST_SMALL
            await r.settle({"input_tokens": 100, "output_tokens": 50})
        with pytest.raises(BudgetExceeded):
            async with budget.reserve(SCOPE, TEST_MODEL, input_tokens=100, max_tokens=1000):
                pytest.fail("the body must not run")
        with pytest.raises(RuntimeError):
            async with budget.reserve(SCOPE, TEST_SMALL, input_tokens=10, max_tokens=10):
                raise RuntimeError("before any response")

    run(b, body)
    assert counters(b) == settled(150, cost(100, 50, scale_den=10))
    assert fake.requests == []


def test_async_stream_dropped_is_settled_by_the_next_call_even_a_failed_one(
        b: Budgetd, fake: FakeProviders, caplog: pytest.LogCaptureFixture) -> None:
    fake.plans.extend([Plan(input_tokens=60, output_tokens=500,
                            chunks=["red green blue ", "cyan ", "magenta"]),
                       Plan(status=500)])

    async def body(budget: AsyncBudget) -> None:
        llm = guard(claude(fake), budget=budget, scope=SCOPE)
        with caplog.at_level(logging.WARNING, logger="budgetd_client"):
            async for e in await llm.messages.create(model=TEST_MODEL, max_tokens=600,
                                                     messages=MESSAGES, stream=True):
                if e.type == "content_block_delta":
                    break  # no close(): the stream is only dropped
        assert any("dropped without close()" in r.getMessage() for r in caplog.records)
        assert len(budget.queue) == 1
        inp = estimate_input_tokens(MESSAGES, model=TEST_MODEL)
        assert counters(b) == (0, inp + 600, 0, cost(inp, 600))  # still held
        # The next call's Reserve answers: the queue is replayed then, even
        # though that call fails at the provider and is released.
        with pytest.raises(anthropic.InternalServerError):
            await llm.messages.create(model=TEST_MODEL, max_tokens=10, messages=MESSAGES)
        assert len(budget.queue) == 0

    run(b, body)
    delivered = count_tokens("red green blue ", TEST_MODEL)
    assert counters(b) == settled(60 + delivered, cost(60, delivered))


def test_async_slow_budgetd_adds_at_most_the_delay_budget_before_and_after(
        slow_budgetd: tuple[Budgetd, list[float]], fake: FakeProviders) -> None:
    bd, delay_s = slow_budgetd
    fake.plans.extend([Plan(input_tokens=10, output_tokens=2),
                       Plan(input_tokens=100, output_tokens=10),
                       Plan(input_tokens=40, output_tokens=4)])

    async def body(budget: AsyncBudget) -> None:
        llm = guard(gpt(fake), budget=budget, scope=SCOPE)
        await llm.chat.completions.create(model=TEST_MODEL, messages=MESSAGES,
                                          max_tokens=10)  # warm up
        delay_s[0] = 0.7
        start = time.monotonic()
        await llm.chat.completions.create(model=TEST_MODEL, messages=MESSAGES, max_tokens=100)
        call_s = time.monotonic() - start
        # 0.7 s for the Reserve, the 0.3 s left for the Reconcile (queued when
        # it does not answer); a full delay on each side would be >= 1.4 s.
        assert call_s < 1.0 + 0.3
        assert len(budget.queue) == 1
        delay_s[0] = 0.0
        await asyncio.sleep(1.0)
        await llm.chat.completions.create(model=TEST_MODEL, messages=MESSAGES, max_tokens=100)
        assert len(budget.queue) == 0

    run(bd, body, max_delay_s=1.0, policy=CallPolicy(retries=0))
    assert counters(bd) == settled(12 + 110 + 44, cost(10, 2) + cost(100, 10) + cost(40, 4))


def test_async_budget_replays_queued_usage_when_closed(b: Budgetd, fake: FakeProviders) -> None:
    fake.plans.append(Plan(input_tokens=60, output_tokens=500,
                           chunks=["red green blue ", "cyan ", "magenta"]))

    async def main() -> None:
        client = AsyncBudgetClient(b.address)
        try:
            async with AsyncBudget(client, max_delay_s=5.0) as budget:
                llm = guard(claude(fake), budget=budget, scope=SCOPE)
                async for e in await llm.messages.create(model=TEST_MODEL, max_tokens=600,
                                                         messages=MESSAGES, stream=True):
                    if e.type == "content_block_delta":
                        break  # dropped, not closed: its usage is queued
                assert len(budget.queue) == 1
                inp = estimate_input_tokens(MESSAGES, model=TEST_MODEL)
                assert counters(b) == (0, inp + 600, 0, cost(inp, 600))  # still held
            # Leaving the block replayed it; the client stays open.
            assert len(budget.queue) == 0
            assert (await client.get_budget(SCOPE)) is not None
        finally:
            await client.close()

    asyncio.run(main())
    delivered = count_tokens("red green blue ", TEST_MODEL)
    assert counters(b) == settled(60 + delivered, cost(60, delivered))


def test_async_budget_closing_with_budgetd_unreachable_is_bounded_and_says_so(
        caplog: pytest.LogCaptureFixture) -> None:
    # A TCP listener that never speaks HTTP/2: every call waits for its deadline.
    sink = socket.socket()
    sink.bind(("127.0.0.1", 0))
    sink.listen(16)

    async def main() -> float:
        client = AsyncBudgetClient(f"127.0.0.1:{sink.getsockname()[1]}")
        try:
            budget = AsyncBudget(client)
            budget.queue.push(SCOPE, "r1", TEST_MODEL, Usage(input_tokens=10, output_tokens=5))
            start = time.monotonic()
            with caplog.at_level(logging.WARNING, logger="budgetd_client"):
                await budget.aclose(timeout_s=0.5)
            assert len(budget.queue) == 1  # kept: nothing was delivered
            return time.monotonic() - start
        finally:
            await client.close()

    try:
        took_s = asyncio.run(main())
    finally:
        sink.close()
    assert took_s < 2.0
    assert any("1 usage entries budgetd never received" in r.getMessage()
               for r in caplog.records)
