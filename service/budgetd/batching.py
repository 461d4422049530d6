"""Natural batching of Lua script calls.

Concurrent script calls coalesce into one pipeline: a call queues itself and,
when a pipeline slot is free, starts one on the next event-loop tick; while
MAX_IN_FLIGHT pipelines are in flight, new calls queue and leave together when
one returns. An idle server sends each call at once, from the caller's own
task; a loaded one waits a few ms for the calls its arrival rate predicts (the
adaptive linger) and sends batches as large as the load makes them. One round
trip and one socket write per batch is what brings a Python server near the
gRPC ceiling (see docs/scaling.md). On one server the batcher keeps the connections it
sends on (one per pipeline in flight) instead of taking one from the pool per
pipeline.

Each call keeps its own answer: an error reply fails only its own call. A
NOSCRIPT reply (a restarted or newly promoted master has an empty script
cache) re-sends that call with EVAL, which runs and caches it on the node that
owns its keys. With `wait_replicas` > 0 every pipeline ends with
`WAIT n timeout` on the same connection (in a cluster: on each node's
connection), and a call is acknowledged only once its write reached n
replicas; otherwise it fails UNAVAILABLE and the client's retry (same
request_id) replays it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from budgetd import resp
from budgetd.errors import Unavailable

if TYPE_CHECKING:
    from budgetd.scripts import Script, ScriptCall

if sys.version_info >= (3, 11):
    from asyncio import timeout as _timeout
else:  # redis-py depends on async-timeout before 3.11
    from async_timeout import timeout as _timeout

log = logging.getLogger("budgetd.batching")

# Calls per pipeline: bounds the reply a single read waits for and the time
# Redis spends on one batch (~17 µs per reserve: 512 calls ≈ 9 ms).
MAX_BATCH = 512
# A cluster call that met MOVED/ASK/TRYAGAIN/CLUSTERDOWN or a dead node is
# tried again after a slot-map refresh at most this many times.
CLUSTER_ATTEMPTS = 3
CLUSTER_RETRY_SLEEP_S = 0.05
# Before sending, the pump yields to the event loop while the queue keeps
# growing (each turn lets gRPC start more handlers), at most this many turns;
# below LINGER_MIN_RATE none: the call leaves at once.
MAX_GATHER_TURNS = 8
MAX_WAIT_REPLICAS = 16
# Adaptive linger: above this arrival rate (calls/s) the pump waits up to
# max_linger_s for the calls that rate predicts. gRPC in Python starts one
# handler per loop turn, so without a short wait batches stay near 1 call and
# every call pays its own socket write, read wakeup and Redis syscalls.
LINGER_MIN_RATE = 800.0
MAX_LINGER_S = 0.004
LINGER_STEP_S = 0.001
LINGER_BATCH = 64
RATE_ALPHA = 0.2
MAX_WAIT_TIMEOUT_MS = 60_000
# Pipelines in flight at once (one server; a cluster keeps one, see
# _run_cluster's slot-map refresh). Two let the next batch gather and leave
# while Redis still runs the previous one, so neither side idles through the
# other's half of the cycle: +4 to +8 % Reserve throughput at 64 concurrent
# callers. Each pipeline holds one pooled connection.
MAX_IN_FLIGHT = 2

_CLUSTER_RETRYABLE = (MovedError, AskError, TryAgainError, ClusterDownError,
                      RedisConnectionError, RedisTimeoutError, OSError)


async def send_encoded(conn: Any, commands: list[bytes]) -> list[Any]:
    """Encoded commands (resp.py) in one write on `conn`; their replies, an
    error reply as its exception (each command's own)."""
    out: list[Any] = []
    # One socket timeout for the write and all the replies, not one per step:
    # send_packed_command's runs the write in a task of its own, and
    # read_response's arms and cancels a timer per reply (~3 µs each; math.inf:
    # none, as redis-py's PubSub reads).
    try:
        async with _timeout(conn.socket_timeout):
            try:
                conn._writer.write(b"".join(commands))
                await conn._writer.drain()
            except OSError as e:
                raise RedisConnectionError(f"Error while writing to redis: {e}") from e
            for _ in commands:
                try:
                    out.append(await conn.read_response(timeout=math.inf))
                except ResponseError as e:
                    # An error reply fails one command; keep reading the others.
                    out.append(e)
    except asyncio.TimeoutError:
        # read_response dropped the connection (cancelled mid-read), as on its
        # own timeout; the callers see the same error class.
        raise RedisTimeoutError(f"Timeout reading from redis ({len(commands)} "
                                f"replies due in {conn.socket_timeout} s)") from None
    return out


async def pipeline_encoded(redis: Any, commands: list[bytes]) -> list[Any]:
    """Encoded commands in one pipeline on a pooled connection of a
    one-server client (not a cluster): a few µs per command, where redis-py's
    pipeline spends ~15-25 building, packing and parsing each."""
    assert not isinstance(redis, RedisCluster)
    pool = redis.connection_pool
    conn = await pool.get_connection()
    try:
        return await send_encoded(conn, commands)
    except BaseException:
        await conn.disconnect()  # replies half-read: unusable
        raise
    finally:
        await pool.release(conn)


class ReplicationTimeout(Unavailable):
    """The write ran on the master but fewer than n replicas acknowledged it
    within the WAIT timeout."""


@dataclass(slots=True)
class Call:
    script: Script
    keys: list[str]
    args: Sequence[Any]
    future: asyncio.Future[Any]
    # The EVALSHA command as the caller encoded it (resp.py), or None.
    encoded: bytes | None = None
    # After NOSCRIPT: send the source with EVAL.
    use_eval: bool = False

    def command(self) -> tuple[Any, ...]:
        if self.use_eval:
            return ("EVAL", self.script.source, len(self.keys), *self.keys, *self.args)
        return ("EVALSHA", self.script.sha, len(self.keys), *self.keys, *self.args)

    def packed(self) -> bytes:
        """The command in RESP, for one connection's pipeline."""
        if self.encoded is not None and not self.use_eval:
            return self.encoded
        return resp.command(self.command())


@dataclass
class Stats:
    """Counters for benchmarks and logs."""

    batches: int = 0
    calls: int = 0
    noscript: int = 0
    wait_short: int = 0
    # Pipelines held back a few ms to gather more calls.
    lingers: int = 0
    # Calls sent by their caller's own task (light traffic: no pump, no gathering).
    direct: int = 0
    largest: int = 0

    @property
    def mean_batch(self) -> float:
        return self.calls / self.batches if self.batches else 0.0


class ScriptBatcher:
    """Runs script calls for one redis.asyncio client (Redis or RedisCluster)."""

    def __init__(self, redis: Any, *, max_batch: int = MAX_BATCH, wait_replicas: int = 0,
                 wait_timeout_ms: int = 100, max_linger_s: float = MAX_LINGER_S,
                 linger_min_rate: float = LINGER_MIN_RATE) -> None:
        if not 0 <= max_linger_s <= 0.05:
            raise ValueError(f"max_linger_s {max_linger_s} out of range 0..0.05")
        if not 1 <= max_batch <= 10_000:
            raise ValueError(f"max_batch {max_batch} out of range 1..10000")
        if not 0 <= wait_replicas <= MAX_WAIT_REPLICAS:
            raise ValueError(f"wait_replicas {wait_replicas} out of range 0..{MAX_WAIT_REPLICAS}")
        if not 0 <= wait_timeout_ms <= MAX_WAIT_TIMEOUT_MS:
            raise ValueError(f"wait_timeout_ms {wait_timeout_ms} out of range "
                             f"0..{MAX_WAIT_TIMEOUT_MS}")
        self.redis = redis
        self.cluster = isinstance(redis, RedisCluster)
        self.max_batch = max_batch
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self.max_linger_s = max_linger_s
        self.linger_min_rate = linger_min_rate
        # Recent arrival rate (calls/s), an EWMA over batches.
        self.rate = 0.0
        self._last_send = time.monotonic()
        self._last_size = 0
        self.stats = Stats()
        self._queue: list[Call] = []
        self._pump: asyncio.Task[None] | None = None
        self.max_in_flight = 1 if self.cluster else MAX_IN_FLIGHT
        self._in_flight = 0
        # Resolved when a pipeline returns while the pump waits for a slot.
        self._slot: asyncio.Future[None] | None = None
        # The pipelines in flight (the loop keeps only weak references to tasks).
        self._sends: set[asyncio.Task[None]] = set()
        # One server: the connections this batcher took from the pool and
        # keeps (at most MAX_IN_FLIGHT), idle ones here. Taking one from the
        # pool and giving it back costs ~15 µs per pipeline, ~75 µs from idle
        # (a lock, two metrics records, a read probe, an event dispatch). They
        # stay in the pool's in-use set, so closing the client closes them.
        self._conns: list[Any] = []

    async def call(self, script: Script, keys: list[str], args: Sequence[Any],
                   encoded: bytes | None = None) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if (self._pump is None and not self._in_flight and not self._queue
                and self.rate < self.linger_min_rate):
            # Idle or light traffic: the caller's own task sends its call at
            # once. No pump task to start, and no wake-up through the future
            # for the answer: ~70 µs less from idle on this host. Not above
            # the linger rate: a loaded server whose calls went alone would
            # stay that way, and never gather them. (Cancelled mid-call, it
            # drops the connection; the next call reconnects it.)
            batch = [Call(script, keys, args, fut, encoded)]
            self._note_rate(1)
            self._count(batch)
            self.stats.direct += 1
            try:
                await self._send_here(batch)
            finally:
                if fut.done() and not fut.cancelled():
                    fut.exception()  # retrieved: result() raises it below
            return fut.result()
        self._queue.append(Call(script, keys, args, fut, encoded))
        if self._pump is None:
            # Started as a task: it first runs on the next tick, after every
            # handler already runnable in this tick has queued its call.
            self._pump = asyncio.ensure_future(self._run())
        return await fut

    async def call_many(self, script: Script, calls: list[ScriptCall]) -> list[Any]:
        """Several calls queued at once (a ReserveBatch): each its reply or
        its exception, in order. One wait for them all, not a task each."""
        loop = asyncio.get_running_loop()
        batch = [Call(script, keys, args, loop.create_future(), encoded)
                 for keys, args, encoded in calls]
        self._queue.extend(batch)
        if self._pump is None and batch:
            self._pump = asyncio.ensure_future(self._run())
        out: list[Any] = []
        for c in batch:
            try:
                out.append(await c.future)
            except Exception as e:  # handed back per call
                out.append(e)
        return out

    async def _run(self) -> None:
        handed_over = False
        try:
            while self._queue:
                await self._gather()
                # Below the linger rate a turn would only delay the call: two
                # calls in one tick are unlikely, and each may go alone.
                turns = MAX_GATHER_TURNS if self.rate >= self.linger_min_rate else 0
                for _ in range(turns):
                    n = len(self._queue)
                    if n >= self.max_batch:
                        break
                    await asyncio.sleep(0)
                    if len(self._queue) == n:
                        break
                while self._in_flight >= self.max_in_flight:
                    self._slot = asyncio.get_running_loop().create_future()
                    await self._slot
                batch = self._queue[:self.max_batch]
                del self._queue[:self.max_batch]
                self._count(batch)
                if not self._queue:
                    # Nothing more to gather: this task sends the batch itself
                    # (no task of its own: one loop turn less from idle), and
                    # a call that comes meanwhile starts a new pump.
                    self._pump, handed_over = None, True
                    await self._send_here(batch)
                    return
                self._in_flight += 1
                send = asyncio.ensure_future(self._send_batch(batch))
                self._sends.add(send)
                send.add_done_callback(self._sent)
        finally:
            # Once handed over, the queue is a newer pump's.
            if not handed_over:
                self._pump = None
                # Cancelled with calls queued: they must not hang.
                for c in self._queue:
                    if not c.future.done():
                        c.future.set_exception(Unavailable("server shutting down"))
                self._queue.clear()

    async def _send_here(self, batch: list[Call]) -> None:
        """Sends `batch` from the calling task, holding a pipeline slot."""
        self._in_flight += 1
        try:
            await self._send_batch(batch)
        finally:
            self._free_slot()

    def _sent(self, send: asyncio.Task[None]) -> None:
        self._sends.discard(send)
        self._free_slot()

    def _free_slot(self) -> None:
        self._in_flight -= 1
        if self._slot is not None and not self._slot.done():
            self._slot.set_result(None)

    async def _send_batch(self, batch: list[Call]) -> None:
        try:
            if self.cluster:
                await self._run_cluster(batch)
            else:
                await self._run_single(batch)
        except BaseException as e:  # handed to each caller
            for c in batch:
                if not c.future.done():
                    c.future.set_exception(e)
            if isinstance(e, asyncio.CancelledError):
                raise

    async def _gather(self) -> None:
        """Under concurrent load only, wait a few ms for more calls. The load
        is the recent arrival rate: idle or light traffic (< LINGER_MIN_RATE
        calls/s) never waits, so low-load latency is one round trip."""
        now = self._note_rate(len(self._queue))
        # A lone sequential caller makes batches of 1 at any rate: waiting
        # would only slow it. Concurrency shows as a previous batch of 2+.
        if (self.rate < self.linger_min_rate or self.max_linger_s <= 0
                or self._last_size < 2):
            return
        # A batch this large already amortises the round trip: no wait (a
        # ReserveBatch call arrives with hundreds of calls at once).
        target = min(self.max_batch, LINGER_BATCH, int(self.rate * self.max_linger_s))
        if len(self._queue) >= target:
            return
        self.stats.lingers += 1
        deadline = now + self.max_linger_s
        while len(self._queue) < target and time.monotonic() < deadline:
            await asyncio.sleep(LINGER_STEP_S)
        self._last_send = time.monotonic()

    def _note_rate(self, calls: int) -> float:
        """The arrival rate's EWMA, with `calls` arrived since the last send."""
        now = time.monotonic()
        elapsed = max(now - self._last_send, 1e-6)
        self._last_send = now
        self.rate = (1 - RATE_ALPHA) * self.rate + RATE_ALPHA * (calls / elapsed)
        return now

    def _count(self, batch: list[Call]) -> None:
        self._last_size = len(batch)
        self.stats.batches += 1
        self.stats.calls += len(batch)
        self.stats.largest = max(self.stats.largest, len(batch))

    def _settle(self, call: Call, result: Any) -> None:
        if call.future.done():
            return
        if isinstance(result, BaseException):
            call.future.set_exception(result)
        else:
            call.future.set_result(result)

    def _wait_cmd(self) -> tuple[Any, ...]:
        return ("WAIT", self.wait_replicas, self.wait_timeout_ms)

    def _check_wait(self, acked: Any, calls: list[Call]) -> BaseException | None:
        if isinstance(acked, BaseException):
            return acked
        if int(acked) < self.wait_replicas:
            self.stats.wait_short += 1
            return ReplicationTimeout(
                f"redis: the write reached {int(acked)} of {self.wait_replicas} replicas "
                f"within {self.wait_timeout_ms} ms; retry with the same request_id")
        return None

    # -- one server (or a Sentinel-managed master) ---------------------------

    async def _connection(self) -> Any:
        """A connected connection of this batcher's own."""
        if not self._conns:
            # Kept for good: given back only by closing the client.
            return await self.redis.connection_pool.get_connection()
        conn = self._conns.pop()
        try:
            # Closed by the server while idle (a restart, CLIENT KILL, a
            # timeout): reconnect before sending, as the pool's checkout would.
            # A FIN leaves the stream at EOF, a reset closes the transport.
            if conn.is_connected and (conn._writer.is_closing() or conn._reader.at_eof()):
                await conn.disconnect()
            if not conn.is_connected:
                await conn.connect()
        except BaseException:
            self._conns.append(conn)  # still ours: the next batch tries again
            raise
        return conn

    async def _run_single(self, batch: list[Call]) -> None:
        conn = await self._connection()
        try:
            todo = batch
            for _ in range(2):
                cmds = [c.packed() for c in todo]
                if self.wait_replicas:
                    cmds.append(resp.command(self._wait_cmd()))
                replies = await send_encoded(conn, cmds)
                wait_err = self._check_wait(replies[-1], todo) if self.wait_replicas else None
                retry: list[Call] = []
                for c, r in zip(todo, replies, strict=False):
                    if isinstance(r, NoScriptError) and not c.use_eval:
                        self.stats.noscript += 1
                        c.use_eval = True
                        retry.append(c)
                    elif wait_err is not None and not isinstance(r, BaseException):
                        self._settle(c, wait_err)
                    else:
                        self._settle(c, r)
                if not retry:
                    return
                todo = retry
        except BaseException:
            # The connection's state is unknown (half-read replies): close it;
            # its next use connects again.
            await conn.disconnect()
            raise
        finally:
            self._conns.append(conn)

    # -- Redis Cluster ---------------------------------------------------------

    async def _run_cluster(self, batch: list[Call]) -> None:
        """One pipeline per node, sent in parallel, each on one connection
        (so WAIT covers exactly that node's writes). Every call's keys share
        the org's hash tag, so each call lives on one node."""
        cluster: RedisCluster = self.redis
        todo = batch
        for attempt in range(CLUSTER_ATTEMPTS + 1):
            if cluster._initialize:
                await cluster.initialize()
            groups: dict[str, tuple[ClusterNode, list[Call]]] = {}
            for c in todo:
                node = cluster.get_node_from_key(c.keys[0])
                if node is None:
                    # No master for the slot (yet): refresh and try again.
                    raise ClusterDownError(f"no node serves the slot of {c.keys[0]!r}")
                groups.setdefault(node.name, (node, []))[1].append(c)
            outcomes = await asyncio.gather(
                *(self._node_pipeline(node, calls) for node, calls in groups.values()),
                return_exceptions=True)
            retry: list[Call] = []
            last_error: BaseException | None = None
            refresh = False
            for (_node, calls), outcome in zip(groups.values(), outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    # The node is unreachable: the whole group may go again.
                    refresh = True
                    last_error = outcome
                    if isinstance(outcome, _CLUSTER_RETRYABLE):
                        retry.extend(calls)
                    else:
                        for c in calls:
                            self._settle(c, outcome)
                    continue
                for c, r in zip(calls, outcome, strict=True):
                    if isinstance(r, NoScriptError) and not c.use_eval:
                        self.stats.noscript += 1
                        c.use_eval = True
                        retry.append(c)
                    elif isinstance(r, _CLUSTER_RETRYABLE):
                        # Not run (redirect), or unknown (connection lost mid
                        # pipeline): every script is idempotent by request_id,
                        # so sending it again is safe.
                        refresh = True
                        last_error = r
                        retry.append(c)
                    else:
                        self._settle(c, r)
            if not retry:
                return
            if attempt == CLUSTER_ATTEMPTS:
                err = last_error or Unavailable("redis cluster: no answer")
                for c in retry:
                    self._settle(c, err)
                return
            if refresh:
                # Refresh the slot map from the seed nodes (a failover or a
                # slot migration moved these keys), after a short pause.
                await cluster.aclose()
                await asyncio.sleep(CLUSTER_RETRY_SLEEP_S)
            todo = retry

    async def _node_pipeline(self, node: ClusterNode, calls: list[Call]) -> list[Any]:
        cmds = [PipelineCommand(i, *c.command()) for i, c in enumerate(calls)]
        if self.wait_replicas:
            cmds.append(PipelineCommand(len(cmds), *self._wait_cmd()))
        # A connection closed under the send by a slot-map refresh fails as
        # a lost connection (redis_conn._SendGuard): the calls go again.
        await node.execute_pipeline(cmds)
        results = [cmd.result for cmd in cmds[:len(calls)]]
        if not self.wait_replicas:
            return results
        wait_err = self._check_wait(cmds[-1].result, calls)
        if wait_err is None:
            return results
        return [r if isinstance(r, BaseException) else wait_err for r in results]
