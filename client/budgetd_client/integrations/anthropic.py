"""guard() for anthropic.Anthropic and anthropic.AsyncAnthropic:
`messages.create(...)` (with or without stream=True) and `messages.stream(...)`
are reserved before the request leaves and settled with the usage the
response reports (cache writes and reads at their own prices). Everything
else passes through to the SDK client unguarded."""

from __future__ import annotations

from typing import Any

from budgetd_client.estimate import count_tokens
from budgetd_client.hooks import AsyncBudget, AsyncHold, Budget, Hold, _HoldBase
from budgetd_client.integrations._common import (
    AsyncGuardedCreate,
    Fallbacks,
    GuardedCreate,
    settle_async,
    settle_sync,
)
from budgetd_client.types import Usage

_FIELDS = ("input_tokens", "output_tokens", "cache_creation_input_tokens",
           "cache_read_input_tokens")


def _delivered_text(block: Any) -> str:
    """The generated text of a content block (a delta or a snapshot block)."""
    for attr in ("text", "partial_json", "thinking"):
        v = getattr(block, attr, None)
        if isinstance(v, str) and v:
            return v
    inp = getattr(block, "input", None)
    if getattr(block, "type", "") == "tool_use" and inp:
        import json
        return json.dumps(inp, separators=(",", ":"))
    return ""


def _with_delivered(u: Usage, complete: bool, text: str, hold: _HoldBase) -> Usage:
    """A stream cut before its final usage: output is what was delivered."""
    if complete:
        return u
    delivered = count_tokens(text, hold.requested_model)
    return Usage(u.input_tokens, max(u.output_tokens, delivered), u.cache_creation_input_tokens,
                 u.cache_read_input_tokens, u.ephemeral_5m_input_tokens,
                 u.ephemeral_1h_input_tokens)


class AnthropicTracker:
    """Usage from raw Messages stream events. message_delta counts are
    cumulative: each field takes its latest value, never a sum."""

    def __init__(self) -> None:
        self.message_id: str | None = None
        self._usage: Usage | None = None
        self._latest: dict[str, int] = {}
        self._complete = False
        self._text: list[str] = []

    def feed(self, event: Any) -> None:
        kind = getattr(event, "type", "")
        if kind == "message_start":
            self.message_id = event.message.id
            self._usage = Usage.of(event.message.usage)
        elif kind == "message_delta":
            self._complete = True
            for f in _FIELDS:
                v = getattr(event.usage, f, None)
                if v is not None:
                    self._latest[f] = int(v)
        elif kind == "content_block_delta":
            self._text.append(_delivered_text(event.delta))

    def usage(self, hold: _HoldBase) -> Usage | None:
        if self._usage is None:
            return None
        u = self._usage
        fields = {f: self._latest.get(f, getattr(u, f)) for f in _FIELDS}
        merged = Usage(**fields, ephemeral_5m_input_tokens=u.ephemeral_5m_input_tokens,
                       ephemeral_1h_input_tokens=u.ephemeral_1h_input_tokens)
        return _with_delivered(merged, self._complete, "".join(self._text), hold)


def _snapshot_usage(stream: Any, hold: _HoldBase) -> tuple[Usage | None, str | None]:
    """From a MessageStream's accumulated message (the SDK already applies
    message_delta's cumulative counts correctly), by its public property,
    which asserts that a message started (or, under -O, is None)."""
    try:
        snap = stream.current_message_snapshot
    except AssertionError:
        snap = None
    if snap is None:
        return None, None
    text = "".join(_delivered_text(b) for b in snap.content)
    return _with_delivered(Usage.of(snap.usage), snap.stop_reason is not None, text,
                           hold), snap.id


def _hold_args(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"messages": kwargs.get("messages", ()), "system": kwargs.get("system"),
            "tools": kwargs.get("tools"), "max_tokens": kwargs.get("max_tokens")}


class _StreamManager:
    """messages.stream(...): reserve on enter, settle on exit."""

    def __init__(self, messages: Any, hold: Hold, kwargs: dict[str, Any]) -> None:
        self._messages, self._hold, self._kwargs = messages, hold, kwargs
        self._mgr: Any = None
        self._stream: Any = None

    def __enter__(self) -> Any:
        self._hold.open()
        self._kwargs["model"] = self._hold.model
        try:
            self._mgr = self._messages.stream(**self._kwargs)
            self._stream = self._mgr.__enter__()
        except BaseException:
            self._hold.release()
            raise
        return self._stream

    def __exit__(self, *exc: Any) -> None:
        try:
            self._mgr.__exit__(*exc)
        finally:
            usage, message_id = _snapshot_usage(self._stream, self._hold)
            settle_sync(self._hold, usage, message_id)


class _AsyncStreamManager:
    def __init__(self, messages: Any, hold: AsyncHold, kwargs: dict[str, Any]) -> None:
        self._messages, self._hold, self._kwargs = messages, hold, kwargs
        self._mgr: Any = None
        self._stream: Any = None

    async def __aenter__(self) -> Any:
        await self._hold.open()
        self._kwargs["model"] = self._hold.model
        try:
            self._mgr = self._messages.stream(**self._kwargs)
            self._stream = await self._mgr.__aenter__()
        except BaseException:
            await self._hold.release()
            raise
        return self._stream

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self._mgr.__aexit__(*exc)
        finally:
            usage, message_id = _snapshot_usage(self._stream, self._hold)
            await settle_async(self._hold, usage, message_id)


class _AnthropicMessages:
    hold_args = staticmethod(_hold_args)
    tracker = AnthropicTracker
    usage_of = staticmethod(Usage.of)


class GuardedMessages(_AnthropicMessages, GuardedCreate):
    def stream(self, **kwargs: Any) -> _StreamManager:
        return _StreamManager(self._target, self._hold(kwargs), kwargs)


class AsyncGuardedMessages(_AnthropicMessages, AsyncGuardedCreate):
    def stream(self, **kwargs: Any) -> _AsyncStreamManager:
        return _AsyncStreamManager(self._target, self._hold(kwargs), kwargs)


class GuardedAnthropic:
    """An Anthropic / AsyncAnthropic client whose model calls are budgeted."""

    def __init__(self, client: Any, budget: Budget | AsyncBudget, scope: str,
                 fallbacks: Fallbacks = ()) -> None:
        self._client, self._budget, self._scope, self._fallbacks = (
            client, budget, scope, fallbacks)
        if isinstance(budget, AsyncBudget):
            self.messages: Any = AsyncGuardedMessages(client.messages, budget, scope, fallbacks)
        else:
            self.messages = GuardedMessages(client.messages, budget, scope, fallbacks)

    def with_options(self, **kwargs: Any) -> GuardedAnthropic:
        return GuardedAnthropic(self._client.with_options(**kwargs), self._budget, self._scope,
                                self._fallbacks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)
