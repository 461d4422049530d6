"""What the SDK wrappers share: fallback lists, and stream wrappers that
settle exactly once however the stream ends (fully read, error or cut,
closed early, or dropped and garbage collected)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from budgetd_client.errors import BudgetError
from budgetd_client.hooks import AsyncHold, Hold, _HoldBase
from budgetd_client.types import Usage

log = logging.getLogger("budgetd_client.integrations")

Fallbacks = Sequence[str] | Mapping[str, Sequence[str]]


def fallbacks_for(fallbacks: Fallbacks, model: str) -> tuple[str, ...]:
    if isinstance(fallbacks, Mapping):
        return tuple(fallbacks.get(model, ()))
    return tuple(m for m in fallbacks if m != model)


class Tracker(Protocol):
    message_id: str | None

    def feed(self, event: Any) -> None: ...

    def usage(self, hold: _HoldBase) -> Usage | None:
        """The usage to settle with; None keeps the estimate."""


def settle_sync(hold: Hold, usage: Usage | None, message_id: str | None) -> None:
    try:
        if usage is None:
            hold.settle_estimate()
        else:
            hold.settle(usage, message_id=message_id)
    except BudgetError:
        # The model answered; a settle problem must not take the answer away.
        log.exception("settling %s failed", hold.reservation_id)


async def settle_async(hold: AsyncHold, usage: Usage | None, message_id: str | None) -> None:
    try:
        if usage is None:
            await hold.settle_estimate()
        else:
            await hold.settle(usage, message_id=message_id)
    except BudgetError:
        log.exception("settling %s failed", hold.reservation_id)


def _settle_dropped(hold: _HoldBase, tracker: Tracker) -> None:
    """A stream garbage collected unfinished: its usage goes to the replay
    queue, sent with the next budgetd call that answers (or at exit)."""
    usage = tracker.usage(hold)
    log.warning("stream of %s dropped without close(): queueing %s for replay",
                hold.reservation_id, "its delivered usage" if usage is not None else "the estimate")
    hold.settle_later(usage)


class GuardedStream:
    """Wraps an SDK Stream: iterates like it, settles when it ends."""

    def __init__(self, inner: Any, hold: Hold, tracker: Tracker) -> None:
        self._finished = True  # until fully built (for __del__)
        self._inner = inner
        self._hold = hold
        self._tracker = tracker
        self._it = iter(inner)
        self._finished = False

    def __iter__(self) -> GuardedStream:
        return self

    def __next__(self) -> Any:
        try:
            event = next(self._it)
        except BaseException:  # StopIteration, a cut connection, anything
            self._finish()
            raise
        self._tracker.feed(event)
        return event

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        settle_sync(self._hold, self._tracker.usage(self._hold), self._tracker.message_id)

    def close(self) -> None:
        """Abandon the stream: settled with what was delivered."""
        try:
            self._inner.close()
        finally:
            self._finish()

    def __enter__(self) -> GuardedStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._inner, name)

    def __del__(self) -> None:
        # Dropped without close(): no RPC from a finalizer, queue it instead.
        if not self._finished:
            self._finished = True
            _settle_dropped(self._hold, self._tracker)


class AsyncGuardedStream:
    """Wraps an SDK AsyncStream."""

    def __init__(self, inner: Any, hold: AsyncHold, tracker: Tracker) -> None:
        self._finished = True
        self._inner = inner
        self._hold = hold
        self._tracker = tracker
        self._it = inner.__aiter__()
        self._finished = False

    def __aiter__(self) -> AsyncGuardedStream:
        return self

    async def __anext__(self) -> Any:
        try:
            event = await self._it.__anext__()
        except BaseException:
            await self._finish()
            raise
        self._tracker.feed(event)
        return event

    async def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        await settle_async(self._hold, self._tracker.usage(self._hold),
                           self._tracker.message_id)

    async def close(self) -> None:
        try:
            await self._inner.close()
        finally:
            await self._finish()

    async def __aenter__(self) -> AsyncGuardedStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._inner, name)

    def __del__(self) -> None:
        if not self._finished:
            self._finished = True
            _settle_dropped(self._hold, self._tracker)


class _GuardedMethod:
    """One SDK resource (anthropic `messages`, openai `chat.completions`) whose
    `create` is reserved around. Subclasses say how to read a request
    (`hold_args`), a stream (`tracker`) and a response's usage (`usage_of`)."""

    def __init__(self, target: Any, budget: Any, scope: str, fallbacks: Fallbacks) -> None:
        self._target, self._budget, self._scope, self._fallbacks = (
            target, budget, scope, fallbacks)

    @staticmethod
    def hold_args(kwargs: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    @staticmethod
    def tracker() -> Tracker:
        raise NotImplementedError

    @staticmethod
    def usage_of(usage: Any) -> Usage:
        raise NotImplementedError

    def _hold(self, kwargs: dict[str, Any]) -> Any:
        model = kwargs["model"]
        return self._budget.reserve(self._scope, model, **self.hold_args(kwargs),
                                    fallback_models=fallbacks_for(self._fallbacks, model))

    def _usage(self, result: Any) -> Usage | None:
        return self.usage_of(result.usage) if result.usage else None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


class GuardedCreate(_GuardedMethod):
    def create(self, **kwargs: Any) -> Any:
        hold: Hold = self._hold(kwargs).open()
        kwargs["model"] = hold.model
        try:
            result = self._target.create(**kwargs)
        except BaseException:
            hold.release()
            raise
        if kwargs.get("stream"):
            return GuardedStream(result, hold, self.tracker())
        settle_sync(hold, self._usage(result), result.id)
        return result


class AsyncGuardedCreate(_GuardedMethod):
    async def create(self, **kwargs: Any) -> Any:
        hold: AsyncHold = await self._hold(kwargs).open()
        kwargs["model"] = hold.model
        try:
            result = await self._target.create(**kwargs)
        except BaseException:
            await hold.release()
            raise
        if kwargs.get("stream"):
            return AsyncGuardedStream(result, hold, self.tracker())
        await settle_async(hold, self._usage(result), result.id)
        return result
