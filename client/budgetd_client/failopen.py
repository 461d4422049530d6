"""The bounded local queue of usage that could not be settled with budgetd
(it was unreachable), replayed once budgetd answers again.

A replay first tries Reconcile of `<org>:<request_id>` (the reservation may
have been made even though its answer never arrived), and when budgetd has
no such reservation it uses Record with the same request_id. Both are
idempotent on the server, so a replay that runs twice charges once.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from budgetd_client import _ops
from budgetd_client.errors import (
    AlreadyExists,
    BudgetError,
    BudgetUnavailable,
    FailedPrecondition,
    NotFound,
)
from budgetd_client.types import Scope, Usage

if TYPE_CHECKING:
    from budgetd_client.aio import AsyncBudgetClient
    from budgetd_client.sync import BudgetClient

log = logging.getLogger("budgetd_client.failopen")

DEFAULT_MAX_ENTRIES = 10_000
MAX_MAX_ENTRIES = 1_000_000
# Entries replayed by one opportunistic flush (after budgetd answered a call).
FLUSH_BATCH = 64


@dataclass(frozen=True, slots=True)
class Pending:
    """Usage owed to budgetd."""

    scope: str
    request_id: str
    model: str
    usage: Usage
    queued_at_s: float

    @property
    def reservation_id(self) -> str:
        return f"{Scope.parse(self.scope).org}:{self.request_id}"


class ReplayQueue:
    """Thread-safe, bounded FIFO. When full the oldest entry is dropped (and
    counted in `dropped`, with a warning): memory stays bounded during a long
    outage, and the newest spend, the likeliest still in the current window,
    is kept."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if not 1 <= max_entries <= MAX_MAX_ENTRIES:
            raise ValueError(f"max_entries must be within [1, {MAX_MAX_ENTRIES}]")
        self.max_entries = max_entries
        self._q: collections.deque[Pending] = collections.deque()
        self._lock = threading.Lock()
        self.dropped = 0

    def push(self, scope: str, request_id: str, model: str, usage: Usage) -> None:
        entry = Pending(scope, request_id, model, usage, time.time())
        with self._lock:
            if len(self._q) >= self.max_entries:
                lost = self._q.popleft()
                self.dropped += 1
                log.warning("budgetd replay queue full (%d): dropped usage of %s",
                            self.max_entries, lost.reservation_id)
            self._q.append(entry)

    def take(self, n: int) -> list[Pending]:
        with self._lock:
            return [self._q.popleft() for _ in range(min(n, len(self._q)))]

    def put_back(self, entries: list[Pending]) -> None:
        """Return unsent entries to the front, in order (still bounded)."""
        with self._lock:
            room = self.max_entries - len(self._q)
            keep = entries[:max(0, room)]
            self.dropped += len(entries) - len(keep)
            self._q.extendleft(reversed(keep))

    def __len__(self) -> int:
        with self._lock:
            return len(self._q)


def _reconcile_op(e: Pending) -> _ops.Op[object]:
    return _ops.reconcile(e.reservation_id, e.usage, model=e.model)  # type: ignore[return-value]


def _record_op(e: Pending, request_id: str) -> _ops.Op[object]:
    return _ops.record(e.scope, e.model, e.usage,  # type: ignore[return-value]
                       request_id=request_id)


def _derived_id(request_id: str) -> str:
    # The request_id is taken by a denied reservation: record under a sibling id
    # (still deterministic, so replays stay idempotent).
    return (request_id[:62] + ".r") if len(request_id) <= 64 else request_id


def _dropped(e: Pending, err: BudgetError) -> None:
    log.error("budgetd refused replayed usage of %s, dropping it: %s", e.reservation_id, err)


def replay_one(client: BudgetClient, e: Pending, timeout_s: float) -> None:
    """Raises BudgetUnavailable when budgetd is still unreachable."""
    try:
        client.run(_reconcile_op(e), timeout_s=timeout_s)
        return
    except NotFound:
        rid = e.request_id
    except FailedPrecondition:
        rid = _derived_id(e.request_id)
    except AlreadyExists:
        return  # settled before, with other usage: a reconcile is final
    except BudgetError as err:
        if isinstance(err, BudgetUnavailable):
            raise
        _dropped(e, err)
        return
    try:
        client.run(_record_op(e, rid), timeout_s=timeout_s)
    except BudgetUnavailable:
        raise
    except AlreadyExists:
        return
    except BudgetError as err:
        _dropped(e, err)


async def replay_one_async(client: AsyncBudgetClient, e: Pending, timeout_s: float) -> None:
    try:
        await client.run(_reconcile_op(e), timeout_s=timeout_s)
        return
    except NotFound:
        rid = e.request_id
    except FailedPrecondition:
        rid = _derived_id(e.request_id)
    except AlreadyExists:
        return
    except BudgetError as err:
        if isinstance(err, BudgetUnavailable):
            raise
        _dropped(e, err)
        return
    try:
        await client.run(_record_op(e, rid), timeout_s=timeout_s)
    except BudgetUnavailable:
        raise
    except AlreadyExists:
        return
    except BudgetError as err:
        _dropped(e, err)


def flush(client: BudgetClient, queue: ReplayQueue, *, max_entries: int,
          timeout_s: float) -> int:
    """Replays up to max_entries within timeout_s; returns how many were sent."""
    deadline = time.monotonic() + timeout_s
    batch = queue.take(max_entries)
    for i, e in enumerate(batch):
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise BudgetUnavailable("flush deadline")
            replay_one(client, e, left)
        except BudgetUnavailable:
            queue.put_back(batch[i:])
            return i
        except BaseException:
            # Cancelled or interrupted mid-replay: keep what is owed (a replay
            # that did land is idempotent).
            queue.put_back(batch[i:])
            raise
    return len(batch)


async def flush_async(client: AsyncBudgetClient, queue: ReplayQueue, *, max_entries: int,
                      timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    batch = queue.take(max_entries)
    for i, e in enumerate(batch):
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise BudgetUnavailable("flush deadline")
            await replay_one_async(client, e, left)
        except BudgetUnavailable:
            queue.put_back(batch[i:])
            return i
        except BaseException:
            # Cancelled or interrupted mid-replay: keep what is owed (a replay
            # that did land is idempotent).
            queue.put_back(batch[i:])
            raise
    return len(batch)
