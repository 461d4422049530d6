"""The pre-request hooks with the real anthropic and openai SDKs, pointed at a
local fake provider, and a real budgetd: every model call is reserved before
it leaves and budgetd's counters end equal to the priced usage exactly."""

from __future__ import annotations

import gc
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time

import anthropic
import openai
import pytest
from budgetd.config import Settings
from budgetd.server import ServerThread
from budgetd_client import BudgetClient, BudgetExceeded, BudgetUnavailable, CallPolicy
from budgetd_client.estimate import count_tokens, estimate_input_tokens
from budgetd_client.hooks import Budget
from budgetd_client.integrations import guard
from conftest import Budgetd
from fake_providers import FakeProviders, Plan
from helpers import TEST_MODEL, TEST_SMALL
from hooks_support import MESSAGES, SCOPE, b, cost, counters, fake, settled, slow_budgetd

__all__ = ["b", "fake", "slow_budgetd"]  # fixtures


def budget_of(bd: Budgetd, **kw: object) -> Budget:
    kw.setdefault("max_delay_s", 5.0)  # a shared 2-core box: no flaky deadlines here
    return Budget(bd.client, **kw)  # type: ignore[arg-type,unused-ignore]


def claude(fake: FakeProviders) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="test", base_url=fake.url, max_retries=0)


def gpt(fake: FakeProviders) -> openai.OpenAI:
    return openai.OpenAI(api_key="test", base_url=fake.url + "/v1", max_retries=0)


def test_anthropic_create_settles_usage_with_cache_prices(b: Budgetd,
                                                          fake: FakeProviders) -> None:
    fake.plans.append(Plan(input_tokens=120, output_tokens=30, cache_creation_input_tokens=40,
                           cache_read_input_tokens=500))
    client = guard(claude(fake), budget=budget_of(b), scope=SCOPE)
    msg = client.messages.create(model=TEST_MODEL, max_tokens=256, messages=MESSAGES)
    assert msg.content[0].text == "Hello, world!"
    assert counters(b) == settled(690, cost(120, 30, 40, 500))
    assert counters(b, "acme") == settled(690, cost(120, 30, 40, 500))


def test_anthropic_1h_cache_writes_are_priced_at_the_1h_price(b: Budgetd,
                                                              fake: FakeProviders) -> None:
    """usage.cache_creation splits cache writes by TTL: 1-hour writes cost 2
    micro-USD a token here, 5-minute ones 1.25, and each is charged as such,
    in a plain call and in a stream."""
    want = -(-(100 * 120 + 200 * 30 + 125 * 10 + 200 * 30) // 100)  # 253
    fake.plans.append(Plan(input_tokens=120, output_tokens=30, cache_creation_input_tokens=40,
                           cache_creation_1h=30))
    client = guard(claude(fake), budget=budget_of(b), scope=SCOPE)
    client.messages.create(model=TEST_MODEL, max_tokens=256, messages=MESSAGES)
    assert counters(b) == settled(190, want)
    assert want > cost(120, 30, 40)  # all at the 5-minute price would be less
    fake.plans.append(Plan(input_tokens=120, output_tokens=30, cache_creation_input_tokens=40,
                           cache_creation_1h=30))
    stream = client.messages.create(model=TEST_MODEL, max_tokens=256, messages=MESSAGES,
                                    stream=True)
    for _ in stream:
        pass
    assert counters(b) == settled(380, 2 * want)


def test_anthropic_stream_consumed_fully_counts_cumulative_delta_once(
        b: Budgetd, fake: FakeProviders) -> None:
    # message_delta repeats input and cache counts: adding them would double.
    fake.plans.append(Plan(input_tokens=120, output_tokens=33, cache_read_input_tokens=500,
                           delta_repeats_input=True))
    client = guard(claude(fake), budget=budget_of(b), scope=SCOPE)
    stream = client.messages.create(model=TEST_MODEL, max_tokens=256, messages=MESSAGES,
                                    stream=True)
    kinds = [e.type for e in stream]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert counters(b) == settled(653, cost(120, 33, 0, 500))


def test_anthropic_messages_stream_helper(b: Budgetd, fake: FakeProviders) -> None:
    fake.plans.append(Plan(input_tokens=70, output_tokens=9, cache_creation_input_tokens=8))
    client = guard(claude(fake), budget=budget_of(b), scope=SCOPE)
    with client.messages.stream(model=TEST_MODEL, max_tokens=64, messages=MESSAGES) as s:
        assert s.get_final_text() == "Hello, world!"
    assert counters(b) == settled(87, cost(70, 9, 8))


def test_anthropic_messages_stream_abandoned(b: Budgetd, fake: FakeProviders) -> None:
    fake.plans.append(Plan(input_tokens=70, output_tokens=900,
                           chunks=["one two three ", "four five six ", "seven"]))
    client = guard(claude(fake), budget=budget_of(b), scope=SCOPE)
    with client.messages.stream(model=TEST_MODEL, max_tokens=1000, messages=MESSAGES) as s:
        for text in s.text_stream:
            assert text == "one two three "
            break
    delivered = count_tokens("one two three ", TEST_MODEL)
    assert counters(b) == settled(70 + delivered, cost(70, delivered))


def test_anthropic_messages_stream_left_unread_settles_the_estimate(
        b: Budgetd, fake: FakeProviders) -> None:
    # Sent, but not one event read: no usage is known, so the estimate is spent.
    fake.plans.append(Plan(input_tokens=70, output_tokens=900))
    client = guard(claude(fake), budget=budget_of(b), scope=SCOPE)
    with client.messages.stream(model=TEST_MODEL, max_tokens=1000, messages=MESSAGES):
        pass
    inp = estimate_input_tokens(MESSAGES, model=TEST_MODEL)
    assert counters(b) == settled(inp + 1000, cost(inp, 1000))


def test_anthropic_stream_closed_midway_settles_what_was_delivered(
        b: Budgetd, fake: FakeProviders) -> None:
    fake.plans.append(Plan(input_tokens=70, output_tokens=900,
                           chunks=["alpha beta gamma ", "delta epsilon ", "zeta eta"]))
    client = guard(claude(fake), budget=budget_of(b), scope=SCOPE)
    stream = client.messages.create(model=TEST_MODEL, max_tokens=1000, messages=MESSAGES,
                                    stream=True)
    texts = []
    for e in stream:
        if e.type == "content_block_delta":
            texts.append(e.delta.text)
            if len(texts) == 2:
                break
    stream.close()
    delivered = count_tokens("".join(texts), TEST_MODEL)
    assert delivered > 1
    assert counters(b) == settled(70 + delivered, cost(70, delivered))


def test_anthropic_stream_cut_by_the_network(b: Budgetd, fake: FakeProviders) -> None:
    fake.plans.append(Plan(input_tokens=50, cache_read_input_tokens=10,
                           chunks=["the quick brown fox ", "jumps", " over"], cut_after=2))
    client = guard(claude(fake), budget=budget_of(b), scope=SCOPE)
    stream = client.messages.create(model=TEST_MODEL, max_tokens=500, messages=MESSAGES,
                                    stream=True)
    with pytest.raises(Exception) as info:
        for _ in stream:
            pass
    # The SDK raises the HTTP library's protocol error here, not APIConnectionError.
    assert "RemoteProtocolError" in type(info.value).__name__ or isinstance(
        info.value, anthropic.APIConnectionError)
    delivered = count_tokens("the quick brown fox jumps", TEST_MODEL)
    assert counters(b) == settled(60 + delivered, cost(50, delivered, 0, 10))


def test_stream_dropped_without_close_is_queued_then_flushed(b: Budgetd,
                                                             fake: FakeProviders) -> None:
    fake.plans.append(Plan(input_tokens=40, output_tokens=7))
    budget = budget_of(b)
    client = guard(claude(fake), budget=budget, scope=SCOPE)
    stream = client.messages.create(model=TEST_MODEL, max_tokens=100, messages=MESSAGES,
                                    stream=True)
    next(iter(stream))  # message_start only
    del stream
    gc.collect()
    assert len(budget.queue) == 1
    assert budget.flush() == 1
    delivered = 1  # message_start's output_tokens; no text yet
    assert counters(b) == settled(40 + delivered, cost(40, delivered))


@pytest.mark.parametrize("status", [429, 500])
@pytest.mark.parametrize("sdk", ["anthropic", "openai"])
def test_provider_error_releases(b: Budgetd, fake: FakeProviders, status: int,
                                 sdk: str) -> None:
    fake.plans.append(Plan(status=status))
    budget = budget_of(b)
    if sdk == "anthropic":
        with pytest.raises(anthropic.APIStatusError) as ei:
            guard(claude(fake), budget=budget, scope=SCOPE).messages.create(
                model=TEST_MODEL, max_tokens=100, messages=MESSAGES)
    else:
        with pytest.raises(openai.APIStatusError) as ei:  # type: ignore[assignment]
            guard(gpt(fake), budget=budget, scope=SCOPE).chat.completions.create(
                model=TEST_MODEL, max_tokens=100, messages=MESSAGES)
    assert ei.value.status_code == status
    assert len(fake.requests) == 1
    assert counters(b) == (0, 0, 0, 0)


@pytest.mark.parametrize("sdk", ["anthropic", "openai"])
def test_denial_raises_and_no_request_reaches_the_provider(b: Budgetd, fake: FakeProviders,
                                                           sdk: str) -> None:
    b.admin.set_budget("acme", "day", "tokens", 100)
    budget = budget_of(b)
    with pytest.raises(BudgetExceeded) as ei:
        if sdk == "anthropic":
            guard(claude(fake), budget=budget, scope=SCOPE).messages.create(
                model=TEST_MODEL, max_tokens=500, messages=MESSAGES)
        else:
            guard(gpt(fake), budget=budget, scope=SCOPE).chat.completions.create(
                model=TEST_MODEL, max_tokens=500, messages=MESSAGES, stream=True)
    d = ei.value.denial
    assert d is not None and (str(d.scope), d.unit, d.limit) == ("acme", "tokens", 100)
    assert d.requested == estimate_input_tokens(MESSAGES, model=TEST_MODEL) + 500
    assert fake.requests == []
    assert counters(b) == (0, 0, 0, 0)


def test_fallback_model_is_the_one_sent(b: Budgetd, fake: FakeProviders) -> None:
    # 1000 output tokens cost 2000 micro-USD on test-model, 200 on test-small.
    b.admin.set_budget("acme/app", "month", "cost_micros", 1000)
    fake.plans.append(Plan(input_tokens=100, output_tokens=50))
    client = guard(claude(fake), budget=budget_of(b), scope=SCOPE,
                   fallback_models={TEST_MODEL: [TEST_SMALL]})
    client.messages.create(model=TEST_MODEL, max_tokens=1000, messages=MESSAGES)
    assert fake.requests[0]["body"]["model"] == TEST_SMALL
    assert counters(b) == settled(150, cost(100, 50, scale_den=10))


def test_openai_create_prices_cached_prompt_tokens(b: Budgetd, fake: FakeProviders) -> None:
    # prompt_tokens 1000 of which 800 cached: 200 at the input price, 800 at cache read.
    fake.plans.append(Plan(input_tokens=200, cache_read_input_tokens=800, output_tokens=40))
    client = guard(gpt(fake), budget=budget_of(b), scope=SCOPE)
    resp = client.chat.completions.create(model=TEST_MODEL, messages=MESSAGES,
                                          max_completion_tokens=300)
    assert resp.usage is not None and resp.usage.prompt_tokens == 1000
    assert counters(b) == settled(1040, cost(200, 40, 0, 800))


def test_openai_stream_adds_include_usage_and_settles(b: Budgetd, fake: FakeProviders) -> None:
    fake.plans.append(Plan(input_tokens=90, cache_read_input_tokens=10, output_tokens=12))
    client = guard(gpt(fake), budget=budget_of(b), scope=SCOPE)
    stream = client.chat.completions.create(model=TEST_MODEL, messages=MESSAGES,
                                            max_tokens=300, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Hello, world!"
    assert fake.requests[0]["body"]["stream_options"] == {"include_usage": True}
    assert counters(b) == settled(112, cost(90, 12, 0, 10))


def test_openai_stream_cut_settles_estimate_plus_delivered(b: Budgetd,
                                                           fake: FakeProviders) -> None:
    fake.plans.append(Plan(chunks=["lorem ipsum ", "dolor sit ", "amet"], cut_after=2))
    client = guard(gpt(fake), budget=budget_of(b), scope=SCOPE)
    stream = client.chat.completions.create(model=TEST_MODEL, messages=MESSAGES,
                                            max_tokens=300, stream=True)
    with pytest.raises(openai.APIConnectionError):
        for _ in stream:
            pass
    inp = estimate_input_tokens(MESSAGES, model=TEST_MODEL)
    out = count_tokens("lorem ipsum dolor sit ", TEST_MODEL)
    assert counters(b) == settled(inp + out, cost(inp, out))


def test_openai_stream_cut_before_anything_keeps_the_estimate(b: Budgetd,
                                                              fake: FakeProviders) -> None:
    fake.plans.append(Plan(cut_after=0))
    client = guard(gpt(fake), budget=budget_of(b), scope=SCOPE)
    stream = client.chat.completions.create(model=TEST_MODEL, messages=MESSAGES,
                                            max_tokens=300, stream=True)
    with pytest.raises(openai.APIConnectionError):
        list(stream)
    inp = estimate_input_tokens(MESSAGES, model=TEST_MODEL)
    assert counters(b) == settled(inp + 300, cost(inp, 300))


def test_context_manager_for_any_provider(b: Budgetd) -> None:
    budget = budget_of(b)
    with budget.reserve(SCOPE, TEST_MODEL, messages=MESSAGES, max_tokens=200) as r:
        assert r.model == TEST_MODEL and r.reservation is not None
        inp = estimate_input_tokens(MESSAGES, model=TEST_MODEL)
        assert counters(b) == (0, inp + 200, 0, cost(inp, 200))
        r.settle({"input_tokens": 30, "output_tokens": 5, "cache_read_input_tokens": 7})
    assert counters(b) == settled(42, cost(30, 5, 0, 7))
    # The body raised before any response: released.
    with pytest.raises(RuntimeError), budget.reserve(SCOPE, TEST_MODEL, messages=MESSAGES,
                                                     max_tokens=200):
        raise RuntimeError("provider SDK blew up before sending")
    assert counters(b) == settled(42, cost(30, 5, 0, 7))
    # Left without settle and without error: the estimate is kept as spent.
    with budget.reserve(SCOPE, TEST_MODEL, input_tokens=10, max_tokens=20):
        pass
    assert counters(b) == settled(42 + 30, cost(30, 5, 0, 7) + cost(10, 20))


def test_context_manager_denial_names_the_rule(b: Budgetd) -> None:
    b.admin.set_budget("acme/app", "day", "cost_micros", 50)
    with pytest.raises(BudgetExceeded) as ei, budget_of(b).reserve(
            SCOPE, TEST_MODEL, input_tokens=10, max_tokens=100):
        pytest.fail("the body must not run")
    d = ei.value.denial
    assert d is not None and (str(d.scope), d.unit, d.limit, d.requested) == (
        "acme/app", "cost_micros", 50, 210)


def test_tool_loop_one_reservation_per_call_and_dedupe_by_message_id(
        b: Budgetd, fake: FakeProviders) -> None:
    fake.plans.extend([Plan(input_tokens=100, output_tokens=10),
                       Plan(input_tokens=130, output_tokens=20)])
    budget = budget_of(b)
    client = guard(claude(fake), budget=budget, scope=SCOPE)
    first = client.messages.create(model=TEST_MODEL, max_tokens=100, messages=MESSAGES)
    history = [*MESSAGES, {"role": "assistant", "content": first.content},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                             "content": "42"}]}]
    client.messages.create(model=TEST_MODEL, max_tokens=100, messages=history)
    assert counters(b) == settled(260, cost(230, 30))
    # The same response settled again (e.g. surfaced twice): charged once.
    with budget.reserve(SCOPE, TEST_MODEL, input_tokens=5, max_tokens=5) as r:
        r.settle(first.usage, message_id=first.id)
    assert counters(b) == settled(260, cost(230, 30))


def _restart_on_same_port(bd: Budgetd, redis_url: str) -> None:
    port = int(bd.address.rsplit(":", 1)[1])
    settings = Settings(listen=f"127.0.0.1:{port}", redis_url=redis_url,
                        expiry_interval_s=0.2, redis_timeout_s=5.0)
    bd.thread = ServerThread(settings, bd.clock).start()


def test_fail_open_replays_usage_once_budgetd_is_back(b: Budgetd, fake: FakeProviders,
                                                      redis_server: object) -> None:
    import grpc
    channel = grpc.insecure_channel(b.address, options=[
        ("grpc.initial_reconnect_backoff_ms", 50), ("grpc.min_reconnect_backoff_ms", 50),
        ("grpc.max_reconnect_backoff_ms", 100), ("grpc.enable_retries", 0)])
    client = BudgetClient(b.address, channel=channel,
                          policy=CallPolicy(timeout_s=1, total_timeout_s=3, retries=10,
                                            backoff_s=0.1))
    budget = Budget(client, on_unavailable="open", max_delay_s=0.5)
    llm = guard(claude(fake), budget=budget, scope=SCOPE)
    b.thread.stop()
    fake.plans.append(Plan(input_tokens=300, output_tokens=25, cache_read_input_tokens=100))
    msg = llm.messages.create(model=TEST_MODEL, max_tokens=100, messages=MESSAGES)
    assert msg.usage.output_tokens == 25 and len(fake.requests) == 1
    assert len(budget.queue) == 1
    [owed] = budget.queue.take(1)
    budget.queue.put_back([owed])
    _restart_on_same_port(b, redis_server.url)  # type: ignore[attr-defined]
    assert budget.flush(timeout_s=10) == 1
    assert len(budget.queue) == 0
    assert counters(b) == settled(425, cost(300, 25, 0, 100))
    # A replay that runs twice (e.g. its answer was lost) charges once.
    budget.queue.push(owed.scope, owed.request_id, owed.model, owed.usage)
    assert budget.flush(timeout_s=10) == 1
    assert counters(b) == settled(425, cost(300, 25, 0, 100))
    client.close()


def test_fail_closed_raises_and_sends_nothing(b: Budgetd, fake: FakeProviders,
                                              redis_server: object) -> None:
    client = BudgetClient(b.address, policy=CallPolicy(retries=0))
    b.thread.stop()
    budget = Budget(client, on_unavailable="closed")
    with pytest.raises(BudgetUnavailable):
        guard(claude(fake), budget=budget, scope=SCOPE).messages.create(
            model=TEST_MODEL, max_tokens=100, messages=MESSAGES)
    assert fake.requests == []
    client.close()
    _restart_on_same_port(b, redis_server.url)  # type: ignore[attr-defined]


def test_an_unresponsive_budgetd_adds_at_most_the_delay_budget(fake: FakeProviders) -> None:
    # A TCP listener that never speaks HTTP/2: calls wait for their deadline.
    sink = socket.socket()
    sink.bind(("127.0.0.1", 0))
    sink.listen(16)
    try:
        client = BudgetClient(f"127.0.0.1:{sink.getsockname()[1]}")
        budget = Budget(client, on_unavailable="open", max_delay_s=0.5)
        llm = guard(claude(fake), budget=budget, scope=SCOPE)
        start = time.monotonic()
        llm.messages.create(model=TEST_MODEL, max_tokens=10, messages=MESSAGES)
        reserve_and_call_s = time.monotonic() - start
        assert len(fake.requests) == 1
        # 0.5 s for budgetd in all (before and after the call), plus the local
        # HTTP call itself; twice the delay would be >= 1 s.
        assert reserve_and_call_s < 0.8
        assert len(budget.queue) == 1
        client.close()
    finally:
        sink.close()


def fail_open_client(address: str) -> BudgetClient:
    """Reconnects fast once budgetd is back; retries until the deadline."""
    import grpc
    channel = grpc.insecure_channel(address, options=[
        ("grpc.initial_reconnect_backoff_ms", 50), ("grpc.min_reconnect_backoff_ms", 50),
        ("grpc.max_reconnect_backoff_ms", 100), ("grpc.enable_retries", 0)])
    return BudgetClient(address, channel=channel,
                        policy=CallPolicy(timeout_s=1, total_timeout_s=3, retries=10,
                                          backoff_s=0.05))


@pytest.mark.parametrize("next_call", ["answered", "provider_error"])
def test_fail_open_usage_is_replayed_by_the_next_call_once_budgetd_is_back(
        b: Budgetd, fake: FakeProviders, redis_server: object, next_call: str) -> None:
    client = fail_open_client(b.address)
    budget = Budget(client, on_unavailable="open", max_delay_s=1.0)
    llm = guard(claude(fake), budget=budget, scope=SCOPE)
    b.thread.stop()
    fake.plans.extend([Plan(input_tokens=300, output_tokens=25, cache_read_input_tokens=100),
                       Plan(input_tokens=80, output_tokens=6) if next_call == "answered"
                       else Plan(status=500)])
    llm.messages.create(model=TEST_MODEL, max_tokens=100, messages=MESSAGES)
    assert len(fake.requests) == 1 and len(budget.queue) == 1
    _restart_on_same_port(b, redis_server.url)  # type: ignore[attr-defined]
    # No flush(): the next call's Reserve answers, and the queue goes with it
    # (whether that call is then settled or, failing at the provider, released).
    if next_call == "answered":
        llm.messages.create(model=TEST_MODEL, max_tokens=100, messages=MESSAGES)
        then = (86, cost(80, 6))
    else:
        with pytest.raises(anthropic.InternalServerError):
            llm.messages.create(model=TEST_MODEL, max_tokens=100, messages=MESSAGES)
        then = (0, 0)
    assert len(budget.queue) == 0
    assert counters(b) == settled(425 + then[0], cost(300, 25, 0, 100) + then[1])
    client.close()


def test_queued_usage_is_replayed_at_interpreter_exit(b: Budgetd,
                                                         fake: FakeProviders) -> None:
    # A process that exits with usage queued and no later budgetd call (here a
    # stream dropped mid-way) and no flush(): the exit hook replays it.
    script = textwrap.dedent("""
        import sys, anthropic
        from budgetd_client import BudgetClient
        from budgetd_client.hooks import Budget
        from budgetd_client.integrations import guard
        address, url, model = sys.argv[1:4]
        client = BudgetClient(address)
        budget = Budget(client, max_delay_s=5.0)
        llm = guard(anthropic.Anthropic(api_key="test", base_url=url, max_retries=0),
                    budget=budget, scope="acme/app")
        # A stream dropped without close(): queued by its finalizer, no RPC.
        for event in llm.messages.create(model=model, max_tokens=1000, stream=True,
                                         messages=[{"role": "user", "content": "hi"}]):
            if event.type == "content_block_delta":
                break
        assert len(budget.queue) == 1, len(budget.queue)
    """)
    fake.plans.append(Plan(input_tokens=70, output_tokens=900,
                           chunks=["one two three ", "four five six ", "seven"]))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run([sys.executable, "-c", script, b.address, fake.url, TEST_MODEL],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "dropped without close()" in proc.stderr
    assert "never received" not in proc.stderr
    delivered = count_tokens("one two three ", TEST_MODEL)
    assert counters(b) == settled(70 + delivered, cost(70, delivered))


def test_stream_abandoned_by_break_is_settled_by_the_next_call(
        b: Budgetd, fake: FakeProviders, caplog: pytest.LogCaptureFixture) -> None:
    fake.plans.extend([Plan(input_tokens=70, output_tokens=900,
                            chunks=["alpha beta gamma ", "delta epsilon ", "zeta"]),
                       Plan(input_tokens=20, output_tokens=3)])
    budget = budget_of(b)
    llm = guard(claude(fake), budget=budget, scope=SCOPE)
    texts = []
    with caplog.at_level(logging.WARNING, logger="budgetd_client"):
        for e in llm.messages.create(model=TEST_MODEL, max_tokens=1000, messages=MESSAGES,
                                     stream=True):
            if e.type == "content_block_delta":
                texts.append(e.delta.text)
                break  # no close(): the stream is only dropped
    assert texts == ["alpha beta gamma "]
    assert any("dropped without close()" in r.getMessage() for r in caplog.records)
    assert len(budget.queue) == 1
    inp = estimate_input_tokens(MESSAGES, model=TEST_MODEL)
    assert counters(b) == (0, inp + 1000, 0, cost(inp, 1000))  # still held
    llm.messages.create(model=TEST_MODEL, max_tokens=10, messages=MESSAGES)
    delivered = count_tokens("alpha beta gamma ", TEST_MODEL)
    assert len(budget.queue) == 0
    assert counters(b) == settled(70 + delivered + 23, cost(70, delivered) + cost(20, 3))


def test_a_slow_budgetd_adds_at_most_the_delay_budget_before_and_after(
        slow_budgetd: tuple[Budgetd, list[float]], fake: FakeProviders) -> None:
    bd, delay_s = slow_budgetd
    client = BudgetClient(bd.address, policy=CallPolicy(retries=0))
    budget = Budget(client, on_unavailable="open", max_delay_s=1.0)
    llm = guard(claude(fake), budget=budget, scope=SCOPE)
    fake.plans.extend([Plan(input_tokens=10, output_tokens=2),
                       Plan(input_tokens=100, output_tokens=10),
                       Plan(input_tokens=40, output_tokens=4)])
    llm.messages.create(model=TEST_MODEL, max_tokens=10, messages=MESSAGES)  # warm up
    delay_s[0] = 0.7
    start = time.monotonic()
    llm.messages.create(model=TEST_MODEL, max_tokens=100, messages=MESSAGES)
    call_s = time.monotonic() - start
    # The Reserve answers in 0.7 s (within its 0.9 s share); the Reconcile
    # gets the 0.3 s left, not a second full second: it does not answer in
    # time and the usage is queued. A full delay on each side would be >= 1.4 s.
    assert call_s < 1.0 + 0.3
    assert len(budget.queue) == 1
    delay_s[0] = 0.0
    time.sleep(1.0)  # the abandoned Reconcile may still land: a replay is idempotent
    llm.messages.create(model=TEST_MODEL, max_tokens=100, messages=MESSAGES)
    assert len(budget.queue) == 0
    assert counters(bd) == settled(12 + 110 + 44, cost(10, 2) + cost(100, 10) + cost(40, 4))
    client.close()
