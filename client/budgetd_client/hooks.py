"""Pre-request hooks: estimate, reserve, call the model, settle from the
usage the response reports.

    budget = Budget(BudgetClient("budgetd:50051"))
    with budget.reserve("acme/search", model="claude-sonnet-4-5",
                        messages=msgs, max_tokens=1024) as r:
        resp = call_any_provider(model=r.model, ...)
        r.settle(resp.usage)

On exit without settle(): if the body raised, the reservation is released
(the call never happened, as far as we know); otherwise the estimate is kept
as spent (the usage is unknown, and spend must not be under-counted).

budgetd never adds more than `max_delay_s` (default 250 ms) to a model call,
before and after it together: the Reserve runs under 90% of it, retries
included, and settling after the call gets what remains (at least 10%). When
budgetd is unreachable the caller's policy applies: fail open (the call goes
ahead and its usage is queued locally) or fail closed (BudgetUnavailable).
Usage that cannot be settled in time is queued too, never dropped silently.
The queue is replayed, within the same per-call bound, after any later
budgetd call that answers (a Reserve or a settle), and the sync Budget makes
one bounded attempt at interpreter exit (EXIT_FLUSH_S), an AsyncBudget when
closed (`async with`, aclose()).
"""

from __future__ import annotations

import atexit
import collections
import logging
import threading
import time
import weakref
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from budgetd_client import _build, _ops, failopen
from budgetd_client.errors import BudgetExceeded, BudgetUnavailable
from budgetd_client.estimate import DEFAULT_MARGIN, estimate_input_tokens
from budgetd_client.failopen import FLUSH_BATCH, ReplayQueue
from budgetd_client.types import Reservation, Scope, ScopeLike, Usage

if TYPE_CHECKING:
    from budgetd_client.aio import AsyncBudgetClient
    from budgetd_client.sync import BudgetClient

log = logging.getLogger("budgetd_client.hooks")

DEFAULT_MAX_DELAY_S = 0.25
MAX_MAX_DELAY_S = 60.0
# The share of max_delay_s kept for settling after the call: the Reserve (and
# a replay before the call) get the rest, so both together stay within it.
SETTLE_SHARE = 0.1
# The bounded attempt, at interpreter exit, to replay what sync Budgets still
# hold queued (all of them together), and AsyncBudget.aclose()'s default;
# past it the queued usage is lost.
EXIT_FLUSH_S = 1.0
# Used when a request gives no output cap (OpenAI allows that): the server
# caps it at the model's maximum output.
UNCAPPED_OUTPUT_TOKENS = 1_000_000
# Message ids remembered to settle each model response once.
SEEN_MESSAGE_IDS = 4096

OnUnavailable = Literal["open", "closed"]
R = TypeVar("R")


class _BudgetBase:
    def __init__(self, *, on_unavailable: OnUnavailable = "open",
                 max_delay_s: float = DEFAULT_MAX_DELAY_S, margin: float = DEFAULT_MARGIN,
                 ttl_seconds: int | None = None, queue: ReplayQueue | None = None) -> None:
        if on_unavailable not in ("open", "closed"):
            raise ValueError("on_unavailable must be 'open' or 'closed'")
        if not 0 < max_delay_s <= MAX_MAX_DELAY_S:
            raise ValueError(f"max_delay_s must be within (0, {MAX_MAX_DELAY_S}]")
        self.on_unavailable = on_unavailable
        self.max_delay_s = max_delay_s
        self.margin = margin
        self.ttl_seconds = ttl_seconds
        self.queue = queue if queue is not None else ReplayQueue()
        self.settle_floor_s = max_delay_s * SETTLE_SHARE
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._seen_lock = threading.Lock()

    def _first_settle_of(self, message_id: str) -> bool:
        """False if a response with this id was settled before (tool loops:
        SDKs may surface one message more than once)."""
        with self._seen_lock:
            if message_id in self._seen:
                return False
            self._seen[message_id] = None
            if len(self._seen) > SEEN_MESSAGE_IDS:
                self._seen.popitem(last=False)
            return True


class _HoldBase:
    """One model call's reservation."""

    def __init__(self, budget: _BudgetBase, scope: ScopeLike, model: str, *,
                 messages: Sequence[Any] = (), system: Any = None,
                 tools: Sequence[Any] | None = None, max_tokens: int | None = None,
                 input_tokens: int | None = None, fallback_models: Sequence[str] = (),
                 request_id: str | None = None) -> None:
        self._budget = budget
        self.scope = str(Scope.parse(scope))
        self.requested_model = model
        self.fallback_models = tuple(fallback_models)
        self.max_tokens = UNCAPPED_OUTPUT_TOKENS if max_tokens is None else max_tokens
        self.input_estimate = input_tokens if input_tokens is not None else \
            estimate_input_tokens(messages, system, tools, model=model, margin=budget.margin)
        self.request_id = request_id or _build.new_request_id()
        self.reservation: Reservation | None = None
        self.degraded = False  # budgetd was unreachable and we failed open
        self.settled = False
        self.settled_usage: Usage | None = None
        # Time this call has waited on budgetd so far (Reserve, settle, replay).
        self.budgetd_s = 0.0

    @property
    def model(self) -> str:
        """The model to send: the one budgetd granted (maybe a fallback)."""
        if self.reservation is not None and self.reservation.model:
            return self.reservation.model
        return self.requested_model

    @property
    def reservation_id(self) -> str:
        return f"{Scope.parse(self.scope).org}:{self.request_id}"

    def estimate_usage(self) -> Usage:
        """What was reserved, as usage: kept as spent when no usage arrives."""
        if self.reservation is not None:
            out = max(0, self.reservation.reserved_tokens - self.input_estimate)
        else:
            out = self.max_tokens
        return Usage(input_tokens=self.input_estimate, output_tokens=out)

    def _reserve_op(self) -> _ops.Op[Reservation]:
        return _ops.reserve(self.scope, self.requested_model, input_tokens=self.input_estimate,
                            max_output_tokens=self.max_tokens, request_id=self.request_id,
                            ttl_seconds=self._budget.ttl_seconds,
                            fallback_models=self.fallback_models)

    def _reserve_timeout_s(self) -> float:
        b = self._budget
        return b.max_delay_s - b.settle_floor_s

    def _settle_timeout_s(self) -> float:
        """What remains of the call's delay budget, never below the floor
        (a Reserve that took its whole share still leaves that)."""
        b = self._budget
        return max(b.max_delay_s - self.budgetd_s, b.settle_floor_s)

    def _replay_timeout_s(self, keep_s: float) -> float:
        """Time for a replay now, keeping keep_s for what follows; <= 0: none."""
        if not len(self._budget.queue):
            return 0.0
        return self._budget.max_delay_s - self.budgetd_s - keep_s

    def _granted(self, res: Reservation) -> None:
        if not res.allowed:
            raise BudgetExceeded(res.denial)
        self.reservation = res

    def _unreachable(self, err: BudgetUnavailable) -> None:
        if self._budget.on_unavailable == "closed":
            raise err
        self.degraded = True
        log.warning("budgetd unreachable, failing open for %s: %s", self.reservation_id, err)

    def _begin_settle(self, usage: Any, message_id: str | None) -> Usage | None:
        """None: nothing to send (already settled, or a duplicate response)."""
        if self.settled:
            return None
        self.settled = True
        u = Usage.of(usage)
        if message_id and not self._budget._first_settle_of(message_id):
            log.info("response %s was settled before: releasing %s", message_id,
                     self.reservation_id)
            self.settled_usage = Usage()
            return Usage()
        self.settled_usage = u
        return u

    def _queue(self, usage: Usage) -> None:
        self._budget.queue.push(self.scope, self.request_id, self.model, usage)

    def settle_later(self, usage: Any | None = None) -> None:
        """Queue the settlement with no RPC (for finalizers); the next flush
        delivers it. `None` keeps the estimate."""
        if self.settled:
            return
        self.settled = True
        u = self.estimate_usage() if usage is None else Usage.of(usage)
        self.settled_usage = u
        if self.reservation is not None or self.degraded:
            self._queue(u)


class Hold(_HoldBase):
    """`with budget.reserve(...) as r:` — see the module docstring."""

    _budget: Budget

    def _run(self, op: _ops.Op[R], timeout_s: float) -> R:
        start = time.monotonic()
        try:
            return self._budget.client.run(op, timeout_s=timeout_s)
        finally:
            self.budgetd_s += time.monotonic() - start

    def _replay(self, keep_s: float) -> None:
        """budgetd answered: deliver what an outage or a dropped stream left
        queued, within what remains of this call's delay budget."""
        timeout_s = self._replay_timeout_s(keep_s)
        if timeout_s <= 0:
            return
        start = time.monotonic()
        try:
            failopen.flush(self._budget.client, self._budget.queue, max_entries=FLUSH_BATCH,
                           timeout_s=timeout_s)
        except Exception:
            # Never take the model call away for an older call's usage (the
            # entries stay queued).
            log.exception("replaying queued usage failed")
        finally:
            self.budgetd_s += time.monotonic() - start

    def open(self) -> Hold:
        try:
            res = self._run(self._reserve_op(), self._reserve_timeout_s())
        except BudgetUnavailable as e:
            self._unreachable(e)
            return self
        self._replay(keep_s=self._budget.settle_floor_s)
        self._granted(res)
        return self

    def settle(self, usage: Any, *, model: str | None = None,
               message_id: str | None = None) -> None:
        """Reconcile with the usage the response reported (an SDK usage
        object, a dict or a Usage). Idempotent."""
        u = self._begin_settle(usage, message_id)
        if u is None:
            return
        if self.degraded:
            self._queue(u)
            return
        try:
            self._run(_ops.reconcile(self.reservation_id, u, model=model or self.model),
                      self._settle_timeout_s())
        except BudgetUnavailable as e:
            log.warning("budgetd did not answer in time, queueing usage of %s: %s",
                        self.reservation_id, e)
            self._queue(u)
            return
        self._replay(keep_s=0.0)

    def settle_estimate(self) -> None:
        """No usage arrived: keep what was reserved as spent."""
        self.settle(self.estimate_usage())

    def release(self) -> None:
        """The call never reached the provider: give the reservation back."""
        if self.settled:
            return
        self.settled = True
        self.settled_usage = Usage()
        if self.degraded or self.reservation is None:
            return
        try:
            self._run(_ops.release(self.reservation_id), self._settle_timeout_s())
        except BudgetUnavailable:
            # Reconciling with zero usage later has the same effect.
            self._queue(Usage())
            return
        self._replay(keep_s=0.0)

    def __enter__(self) -> Hold:
        return self.open()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.settled:
            return
        if exc_type is None:
            self.settle_estimate()
        else:
            self.release()


class AsyncHold(_HoldBase):
    """`async with budget.reserve(...) as r:`."""

    _budget: AsyncBudget

    async def _run(self, op: _ops.Op[R], timeout_s: float) -> R:
        start = time.monotonic()
        try:
            return await self._budget.client.run(op, timeout_s=timeout_s)
        finally:
            self.budgetd_s += time.monotonic() - start

    async def _replay(self, keep_s: float) -> None:
        timeout_s = self._replay_timeout_s(keep_s)
        if timeout_s <= 0:
            return
        start = time.monotonic()
        try:
            await failopen.flush_async(self._budget.client, self._budget.queue,
                                       max_entries=FLUSH_BATCH, timeout_s=timeout_s)
        except Exception:
            log.exception("replaying queued usage failed")
        finally:
            self.budgetd_s += time.monotonic() - start

    async def open(self) -> AsyncHold:
        try:
            res = await self._run(self._reserve_op(), self._reserve_timeout_s())
        except BudgetUnavailable as e:
            self._unreachable(e)
            return self
        await self._replay(keep_s=self._budget.settle_floor_s)
        self._granted(res)
        return self

    async def settle(self, usage: Any, *, model: str | None = None,
                     message_id: str | None = None) -> None:
        u = self._begin_settle(usage, message_id)
        if u is None:
            return
        if self.degraded:
            self._queue(u)
            return
        try:
            await self._run(_ops.reconcile(self.reservation_id, u, model=model or self.model),
                            self._settle_timeout_s())
        except BudgetUnavailable as e:
            log.warning("budgetd did not answer in time, queueing usage of %s: %s",
                        self.reservation_id, e)
            self._queue(u)
            return
        await self._replay(keep_s=0.0)

    async def settle_estimate(self) -> None:
        await self.settle(self.estimate_usage())

    async def release(self) -> None:
        if self.settled:
            return
        self.settled = True
        self.settled_usage = Usage()
        if self.degraded or self.reservation is None:
            return
        try:
            await self._run(_ops.release(self.reservation_id), self._settle_timeout_s())
        except BudgetUnavailable:
            self._queue(Usage())
            return
        await self._replay(keep_s=0.0)

    async def __aenter__(self) -> AsyncHold:
        return await self.open()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.settled:
            return
        if exc_type is None:
            await self.settle_estimate()
        else:
            await self.release()


class Budget(_BudgetBase):
    """Reservations around model calls, over a (sync) BudgetClient."""

    def __init__(self, client: BudgetClient, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.client = client
        _AT_EXIT.add(self)

    def reserve(self, scope: ScopeLike, model: str, *, messages: Sequence[Any] = (),
                system: Any = None, tools: Sequence[Any] | None = None,
                max_tokens: int | None = None, input_tokens: int | None = None,
                fallback_models: Sequence[str] = (), request_id: str | None = None) -> Hold:
        """A context manager; the Reserve runs on `with`. The estimate of
        input tokens is made here (tiktoken, offline) unless input_tokens is
        given; max_tokens is the output estimate."""
        return Hold(self, scope, model, messages=messages, system=system, tools=tools,
                    max_tokens=max_tokens, input_tokens=input_tokens,
                    fallback_models=fallback_models, request_id=request_id)

    def flush(self, *, max_entries: int = failopen.MAX_MAX_ENTRIES,
              timeout_s: float | None = None) -> int:
        """Replay queued usage now; returns how many entries were delivered."""
        return failopen.flush(self.client, self.queue, max_entries=max_entries,
                              timeout_s=timeout_s or self.client.policy.total_timeout_s)


class AsyncBudget(_BudgetBase):
    """The asyncio twin of Budget, over an AsyncBudgetClient."""

    def __init__(self, client: AsyncBudgetClient, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.client = client

    def reserve(self, scope: ScopeLike, model: str, *, messages: Sequence[Any] = (),
                system: Any = None, tools: Sequence[Any] | None = None,
                max_tokens: int | None = None, input_tokens: int | None = None,
                fallback_models: Sequence[str] = (), request_id: str | None = None) -> AsyncHold:
        return AsyncHold(self, scope, model, messages=messages, system=system, tools=tools,
                         max_tokens=max_tokens, input_tokens=input_tokens,
                         fallback_models=fallback_models, request_id=request_id)

    async def flush(self, *, max_entries: int = failopen.MAX_MAX_ENTRIES,
                    timeout_s: float | None = None) -> int:
        return await failopen.flush_async(
            self.client, self.queue, max_entries=max_entries,
            timeout_s=timeout_s or self.client.policy.total_timeout_s)

    async def aclose(self, *, timeout_s: float = EXIT_FLUSH_S) -> None:
        """Replays the usage still queued, within timeout_s; what remains is
        lost, and said so. The asyncio counterpart of a sync Budget's replay
        at interpreter exit, which an AsyncBudget cannot have (its event loop
        is gone by then): `async with AsyncBudget(...)` calls it on exit.
        Leaves the client open (the caller owns it)."""
        if len(self.queue):
            await self.flush(timeout_s=timeout_s)
        if len(self.queue):
            log.warning("closing with %d usage entries budgetd never received",
                        len(self.queue))

    async def __aenter__(self) -> AsyncBudget:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()


# Sync Budgets alive at interpreter exit; weak, so a Budget can still be freed.
_AT_EXIT: weakref.WeakSet[Budget] = weakref.WeakSet()


def _flush_at_exit(total_s: float = EXIT_FLUSH_S) -> None:
    """Best effort: usage still queued when the process ends is replayed
    within total_s (all Budgets together); what remains is lost, and said so."""
    deadline = time.monotonic() + total_s
    for budget in list(_AT_EXIT):
        if not len(budget.queue):
            continue
        left = deadline - time.monotonic()
        try:
            if left > 0:
                budget.flush(timeout_s=left)
        except Exception as e:  # a closed channel, anything: exit must go on
            log.warning("replaying queued usage at exit failed: %s", e)
        if len(budget.queue):
            log.warning("exiting with %d usage entries budgetd never received",
                        len(budget.queue))


# Registered after grpc is imported (it has exit handlers too): runs before them.
atexit.register(_flush_at_exit)
