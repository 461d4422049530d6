"""guard() for openai.OpenAI and openai.AsyncOpenAI: `chat.completions.create`
(with or without stream=True) is reserved before the request leaves and
settled with the reported usage. With stream=True,
stream_options={"include_usage": True} is added when the caller gave no
include_usage, so the final chunk carries the usage. Everything else passes
through to the SDK client unguarded."""

from __future__ import annotations

from typing import Any

from budgetd_client.estimate import count_tokens
from budgetd_client.hooks import AsyncBudget, AsyncHold, Budget, Hold, _HoldBase
from budgetd_client.integrations._common import (
    AsyncGuardedStream,
    Fallbacks,
    GuardedStream,
    fallbacks_for,
    settle_async,
    settle_sync,
)
from budgetd_client.types import Usage


def usage_from_openai(u: Any) -> Usage:
    """prompt_tokens includes the cached part: the rest is input at the input
    price, the cached part is a cache read at the cache-read price."""
    get = u.get if isinstance(u, dict) else (lambda k, d=None: getattr(u, k, d))
    details = get("prompt_tokens_details")
    if isinstance(details, dict):
        cached = details.get("cached_tokens") or 0
    else:
        cached = getattr(details, "cached_tokens", 0) or 0
    prompt = int(get("prompt_tokens") or 0)
    cached = min(int(cached), prompt)
    return Usage(input_tokens=prompt - cached, output_tokens=int(get("completion_tokens") or 0),
                 cache_read_input_tokens=cached)


class OpenAITracker:
    def __init__(self) -> None:
        self.message_id: str | None = None
        self._usage: Usage | None = None
        self._text: list[str] = []

    def feed(self, chunk: Any) -> None:
        self.message_id = getattr(chunk, "id", None) or self.message_id
        if getattr(chunk, "usage", None):
            self._usage = usage_from_openai(chunk.usage)
        for choice in getattr(chunk, "choices", None) or ():
            delta = choice.delta
            if delta is None:
                continue
            for attr in ("content", "refusal"):
                v = getattr(delta, attr, None)
                if v:
                    self._text.append(v)
            for call in getattr(delta, "tool_calls", None) or ():
                fn = call.function
                if fn is not None:
                    self._text.append((fn.name or "") + (fn.arguments or ""))

    def usage(self, hold: _HoldBase) -> Usage | None:
        if self._usage is not None:
            return self._usage
        if not self._text:
            return None
        # Cut before the usage chunk: the input estimate, and the output delivered.
        return Usage(input_tokens=hold.input_estimate,
                     output_tokens=count_tokens("".join(self._text), hold.requested_model))


def _prepare(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Hold arguments; adds include_usage to streaming requests."""
    cap = kwargs.get("max_completion_tokens") or kwargs.get("max_tokens")
    n = int(kwargs.get("n") or 1)
    if kwargs.get("stream"):
        opts = dict(kwargs.get("stream_options") or {})
        opts.setdefault("include_usage", True)
        kwargs["stream_options"] = opts
    return {"messages": kwargs.get("messages", ()), "tools": kwargs.get("tools"),
            "max_tokens": None if cap is None else int(cap) * n}


class GuardedCompletions:
    def __init__(self, completions: Any, budget: Budget, scope: str,
                 fallbacks: Fallbacks) -> None:
        self._completions, self._budget, self._scope, self._fallbacks = (
            completions, budget, scope, fallbacks)

    def _hold(self, kwargs: dict[str, Any]) -> Hold:
        model = kwargs["model"]
        return self._budget.reserve(self._scope, model, **_prepare(kwargs),
                                    fallback_models=fallbacks_for(self._fallbacks, model))

    def create(self, **kwargs: Any) -> Any:
        hold = self._hold(kwargs).open()
        kwargs["model"] = hold.model
        try:
            result = self._completions.create(**kwargs)
        except BaseException:
            hold.release()
            raise
        if kwargs.get("stream"):
            return GuardedStream(result, hold, OpenAITracker())
        settle_sync(hold, usage_from_openai(result.usage) if result.usage else None, result.id)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._completions, name)


class AsyncGuardedCompletions:
    def __init__(self, completions: Any, budget: AsyncBudget, scope: str,
                 fallbacks: Fallbacks) -> None:
        self._completions, self._budget, self._scope, self._fallbacks = (
            completions, budget, scope, fallbacks)

    def _hold(self, kwargs: dict[str, Any]) -> AsyncHold:
        model = kwargs["model"]
        return self._budget.reserve(self._scope, model, **_prepare(kwargs),
                                    fallback_models=fallbacks_for(self._fallbacks, model))

    async def create(self, **kwargs: Any) -> Any:
        hold = await self._hold(kwargs).open()
        kwargs["model"] = hold.model
        try:
            result = await self._completions.create(**kwargs)
        except BaseException:
            await hold.release()
            raise
        if kwargs.get("stream"):
            return AsyncGuardedStream(result, hold, OpenAITracker())
        await settle_async(hold, usage_from_openai(result.usage) if result.usage else None,
                           result.id)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._completions, name)


class _Chat:
    def __init__(self, chat: Any, completions: Any) -> None:
        self._chat = chat
        self.completions = completions

    def __getattr__(self, name: str) -> Any:
        return getattr(self._chat, name)


class GuardedOpenAI:
    """An OpenAI / AsyncOpenAI client whose chat completions are budgeted."""

    def __init__(self, client: Any, budget: Budget | AsyncBudget, scope: str,
                 fallbacks: Fallbacks = ()) -> None:
        self._client, self._budget, self._scope, self._fallbacks = (
            client, budget, scope, fallbacks)
        completions: Any
        if isinstance(budget, AsyncBudget):
            completions = AsyncGuardedCompletions(client.chat.completions, budget, scope,
                                                  fallbacks)
        else:
            completions = GuardedCompletions(client.chat.completions, budget, scope, fallbacks)
        self.chat = _Chat(client.chat, completions)

    def with_options(self, **kwargs: Any) -> GuardedOpenAI:
        return GuardedOpenAI(self._client.with_options(**kwargs), self._budget, self._scope,
                             self._fallbacks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)
