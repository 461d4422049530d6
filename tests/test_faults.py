"""Faults under load, with real processes: budgetd SIGKILLed, Redis killed
and restarted (append-only, fsync always), Redis paused with SIGSTOP, the
network to Redis dropped or delayed through a proxy, a client that reserves
and vanishes.

Every load client retries a failed call with the same request (same
request_id), on the next replica, until it succeeds. What must hold after
each fault:
- every failed attempt was UNAVAILABLE, answered within the client deadline;
- calls succeed again by themselves soon after the fault is lifted;
- the counters equal the clients' logs exactly (audit): no retry charged
  twice, no acknowledged reconcile lost, abandoned reservations expired per
  policy.
"""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from budgetd.embedded import EmbeddedRedis
from budgetd.scripts import Scripts
from budgetd.windows import WALKER_KEY
from budgetd_client import AdminClient, BudgetClient, CallPolicy
from procs import MODEL, BudgetdProc, Driver, Log, audit, counters, stop_all
from tcp_proxy import TcpProxy

ORG = "faulty"
TEAMS = ["t0", "t1"]
DEADLINE_S = 2.0  # each client attempt
SLACK_S = 0.5  # scheduling noise on 2 shared cores
RECOVER_S = 5.0  # from the fault lifted to the first successful call
REDIS_TIMEOUT_S = 0.5  # budgetd's per-command Redis timeout


class Load:
    """Driver threads running reserve/reconcile/release/abandon for run_s."""

    def __init__(self, targets: list[str], run_s: float, threads: int = 2,
                 abandon_ttl_s: int = 1) -> None:
        self.ok_times: list[float] = []
        self.acked_reconciles: list[tuple[float, str]] = []
        self.errors: list[BaseException] = []
        self.drivers = []
        for i in range(threads):
            d = Driver(targets, ORG, TEAMS, f"L{i}-{time.monotonic_ns()}", seed=i,
                       deadline_s=DEADLINE_S, abandon_ttl_s=abandon_ttl_s)
            d.on_ack = self._ack
            self.drivers.append(d)
        self.threads = [threading.Thread(target=self._run, args=(d, run_s), daemon=True)
                        for d in self.drivers]

    def _ack(self, op: str, rid: str) -> None:
        now = time.monotonic()
        self.ok_times.append(now)
        if op == "reconcile":
            self.acked_reconciles.append((now, rid))

    def _run(self, d: Driver, run_s: float) -> None:
        try:
            d.run_for(run_s, pause_s=0.005)
        except BaseException as e:  # re-raised by join()
            self.errors.append(e)

    def start(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def join(self) -> Log:
        for t in self.threads:
            t.join(timeout=120)
        for d in self.drivers:
            d.close()
        if self.errors:
            raise AssertionError(f"a load client failed: {self.errors[0]!r}") from self.errors[0]
        log = Log()
        for d in self.drivers:
            log.merge(d.log)
        return log


def run_with_fault(targets: list[str], inject: Callable[[], None], lift: Callable[[], None],
                   *, before_s: float = 1.5, hold_s: float = 3.0,
                   after_s: float = 3.5, abandon_ttl_s: int = 1,
                   ) -> tuple[Log, Load, float, float]:
    load = Load(targets, before_s + hold_s + after_s, abandon_ttl_s=abandon_ttl_s).start()
    time.sleep(before_s)
    t_inject = time.monotonic()
    inject()
    time.sleep(hold_s)
    lift()
    t_lift = time.monotonic()
    log = load.join()
    return log, load, t_inject, t_lift


def check_fault_run(name: str, log: Log, load: Load, t_inject: float, t_lift: float,
                    codes: tuple[str, ...] = ("UNAVAILABLE",)) -> None:
    fails = log.failures
    assert fails, f"{name}: no call failed: the fault did not bite"
    bad = [f for f in fails if f[1] not in codes or f[2] > DEADLINE_S + SLACK_S]
    assert not bad, (
        f"{name}: invariant 'fail fast with UNAVAILABLE within the {DEADLINE_S} s deadline' "
        f"broke for {len(bad)} of {len(fails)} failed attempts, e.g. (op, code, seconds) "
        f"{bad[:5]}")
    before = [t for t in load.ok_times if t < t_inject]
    after = [t for t in load.ok_times if t > t_lift]
    assert before, f"{name}: nothing succeeded before the fault"
    assert after, f"{name}: nothing succeeded after the fault was lifted: no recovery"
    recovered_s = after[0] - t_lift
    assert recovered_s <= RECOVER_S, (
        f"{name}: invariant 'recovers by itself' broke: first success {recovered_s:.2f} s after "
        f"the fault was lifted (> {RECOVER_S} s)")
    slowest = max(f[2] for f in fails)
    print(f"\n{name}: {len(log.granted)} grants, {len(log.reconciled_acked)} reconciles, "
          f"{len(fails)} failed attempts (slowest {slowest:.2f} s), recovered "
          f"{recovered_s:.2f} s after the fault was lifted")


def set_rules(target: str) -> None:
    with AdminClient(target) as admin:
        admin.set_budget(ORG, "day", "tokens", 10**9)  # a HARD rule on the path: checked
        admin.set_budget(f"{ORG}/t0", "month", "cost_micros", 10**9, mode="soft")


@pytest.fixture()
def aof_redis(tmp_path: pathlib.Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "aof", appendonly=True, appendfsync="always")
    server.start()
    yield server
    if server.proc and server.proc.poll() is None:
        os.kill(server.proc.pid, signal.SIGCONT)
    server.stop()


def walker_pid(r: redis.Redis) -> int | None:
    """The pid of the process holding the walk lease (bd:walker holds
    host:pid:nonce), None if no one holds it."""
    holder = r.get(WALKER_KEY)
    return int(holder.decode().rsplit(":", 2)[1]) if holder else None


def wait_for(pred: Callable[[], bool], timeout_s: float, poll_s: float = 0.05) -> float | None:
    """Seconds until pred() held, polled every poll_s; None if not within timeout_s."""
    t0 = time.monotonic()
    while time.monotonic() - t0 <= timeout_s:
        if pred():
            return time.monotonic() - t0
        time.sleep(poll_s)
    return None


# Orphans live in an org of their own, reserved in through the replica
# about to die only: the survivor never granted there, so only its walk over
# every org (the one it runs once it holds the walk lease) can expire them.
ORPHAN_ORG = "orphaned"
ORPHANS = 5
ORPHAN_TTL_S = 2  # due after the kill: the dying replica cannot expire them itself
LOAD_ABANDON_TTL_S = 3  # every load reservation the killed replica granted outlives it
EXPIRY_INTERVAL_S = 0.2  # BudgetdProc's default
WALK_LEASE_S = 1.0  # 3 expiry intervals, at least 1 s (server.py _sweep_loop)
FULL_SWEEP_S = 1.0  # BudgetdProc's --expiry-full-sweep-s


def test_budgetd_sigkill_mid_load(r: redis.Redis, redis_server: EmbeddedRedis,
                                  tmp_path: pathlib.Path) -> None:
    a = BudgetdProc(redis_server.url, tmp_path, name="a")
    b = BudgetdProc(redis_server.url, tmp_path, name="b")
    orphan_scope = f"{ORPHAN_ORG}/t0"
    orphan_sum = sum(100 + i for i in range(ORPHANS))
    times: dict[str, float] = {}
    index = f"bd:{{{ORPHAN_ORG}}}:exp"

    def orphans_expired() -> bool:
        states = [r.hget(f"bd:{{{ORPHAN_ORG}}}:q:orphan-{i}", "state") for i in range(ORPHANS)]
        return states == [b"expired"] * ORPHANS and r.zcard(index) == 0

    def watch() -> None:  # from the kill on: when did the orphans expire?
        if wait_for(orphans_expired, 10.0, poll_s=0.02) is not None:
            times["expired"] = time.monotonic()

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        a.start()
        # a holds the walk lease before b exists, so the kill must hand the
        # walk over to b.
        assert wait_for(lambda: walker_pid(r) == a.pid, 5.0) is not None, (
            f"the first replica never took the walk lease: {r.get(WALKER_KEY)!r}")
        b.start()
        set_rules(a.address)
        with AdminClient(a.address) as admin:
            # Not the default (keep): the survivor must expire per this org's policy.
            admin.set_org_settings(ORPHAN_ORG, expiry_policy="release")

        def reserve_orphans_then_kill() -> None:
            assert walker_pid(r) == a.pid, (
                f"the replica to be killed does not hold the walk lease: {r.get(WALKER_KEY)!r}")
            times["orphans"] = time.monotonic()
            with BudgetClient(a.address) as c:
                for i in range(ORPHANS):
                    res = c.reserve(orphan_scope, MODEL, tokens=100 + i, cost_micros=100 + i,
                                    request_id=f"orphan-{i}", ttl_seconds=ORPHAN_TTL_S)
                    assert res.allowed, res
            times["orphans_done"] = time.monotonic()
            # Charged as reserved: the release at expiry gives them back.
            held = counters(r, ORPHAN_ORG, "m").get(f"r|{orphan_scope}|t")
            assert held == orphan_sum, held
            a.kill(signal.SIGKILL)
            times["dead"] = time.monotonic()
            watcher.start()

        t_load = time.monotonic()
        log, load, t_inject, t_lift = run_with_fault(
            [a.address, b.address], reserve_orphans_then_kill, lambda: None,
            hold_s=1.0, abandon_ttl_s=LOAD_ABANDON_TTL_S)
        # A call in flight on the replica as it dies gets no answer at all:
        # the client's own deadline ends it (DEADLINE_EXCEEDED), never later.
        check_fault_run("budgetd SIGKILL", log, load, t_inject, t_lift,
                        codes=("UNAVAILABLE", "DEADLINE_EXCEEDED"))

        # The orphans were not due while their replica lived: it expired none.
        assert times["dead"] < times["orphans"] + ORPHAN_TTL_S, (
            f"the kill came {times['dead'] - times['orphans']:.2f} s after the orphans' "
            f"reserves, not before their {ORPHAN_TTL_S} s ttl: the test proves nothing")
        # The survivor takes the walk over once the dead one's lease lapses,
        # and its walk expires them, with no traffic in their org.
        watcher.join(timeout=30)
        # From the later of "due" and "the dead replica's lease lapsed": the
        # survivor's next sweep takes the lease, then at most one full walk.
        start_s = max(times["orphans_done"] + ORPHAN_TTL_S, times["dead"] + WALK_LEASE_S)
        bound_s = EXPIRY_INTERVAL_S + FULL_SWEEP_S + EXPIRY_INTERVAL_S + SLACK_S
        done_s = times.get("expired", time.monotonic()) - start_s
        assert "expired" in times and done_s <= bound_s, (
            f"invariant 'a surviving replica expires what a killed one granted' broke: "
            f"not all expired {done_s:.2f} s after they were due and the killed replica's lease "
            f"lapsed (bound {bound_s:.1f} s): orphan states "
            f"{[r.hget(f'bd:{{{ORPHAN_ORG}}}:q:orphan-{i}', 'state') for i in range(ORPHANS)]}, "
            f"expiry index {r.zrange(index, 0, -1)}, walk lease {r.get(WALKER_KEY)!r}")
        assert walker_pid(r) == b.pid, f"the walk lease is not b's: {r.get(WALKER_KEY)!r}"
        policies = {r.hget(f"bd:{{{ORPHAN_ORG}}}:q:orphan-{i}", "expired_policy")
                    for i in range(ORPHANS)}
        assert policies == {b"release"}, policies
        # Per the org's policy (release): the estimates given back, nothing spent.
        for kind in ("d", "m"):
            got = counters(r, ORPHAN_ORG, kind)
            want = {f"{c}|{p}|{u}": 0 for c in "ru" for p in (ORPHAN_ORG, orphan_scope)
                    for u in "tc"}
            assert {k: got.get(k, 0) for k in want} == want, (kind, got)
        print(f"orphans expired by the survivor {done_s:.2f} s after they were due and the "
              f"killed replica's lease lapsed")

        # Load reservations the killed replica granted and the clients abandoned
        # were still held at the kill (ttl > time from load start to kill):
        # the audit below proves the survivor expired them per policy (keep).
        by_a = [rid for rid in log.abandoned if log.answered_by[rid] == a.address]
        assert times["dead"] - t_load < LOAD_ABANDON_TTL_S, "the load ran too long before the kill"
        assert by_a, ("no load reservation granted by the killed replica was abandoned: "
                      "the audit proves nothing about them")
        print(f"{len(by_a)} abandoned load reservations were held by the killed replica")
        audit(r, log, ORG)
    finally:
        stop_all(a, b)


def test_redis_killed_and_restarted_with_aof(aof_redis: EmbeddedRedis,
                                             tmp_path: pathlib.Path) -> None:
    r = redis.Redis.from_url(aof_redis.url)
    a = BudgetdProc(aof_redis.url, tmp_path, name="a", redis_timeout_s=REDIS_TIMEOUT_S)
    b = BudgetdProc(aof_redis.url, tmp_path, name="b", redis_timeout_s=REDIS_TIMEOUT_S)
    acked_before: list[str] = []
    shas = [s.sha for s in Scripts().all()]
    try:
        a.start()
        b.start()
        set_rules(a.address)
        load_ref: list[Load] = []

        def crash() -> None:
            assert aof_redis.proc is not None
            aof_redis.proc.kill()  # SIGKILL: no shutdown, no final fsync
            aof_redis.proc.wait()

        def restart() -> None:
            aof_redis.proc = None
            aof_redis.start()  # same port, same data dir: replays the AOF

        # Snapshot the acknowledged reconciles at the moment of the crash.
        def inject() -> None:
            acked_before.extend(rid for _, rid in list(load_ref[0].acked_reconciles))
            crash()

        load = Load([a.address, b.address], 1.5 + 1.5 + 4.0)
        load_ref.append(load)
        load.start()
        time.sleep(1.5)
        t_inject = time.monotonic()
        inject()
        time.sleep(1.5)
        restart()
        t_lift = time.monotonic()
        log = load.join()
        check_fault_run("redis kill + restart", log, load, t_inject, t_lift)
        assert acked_before, "no reconcile was acknowledged before the crash"
        lost = [rid for rid in acked_before
                if r.hget(f"bd:{{{ORG}}}:q:{rid.split(':', 1)[1]}", "state") != b"reconciled"]
        assert not lost, (
            f"invariant 'an acknowledged reconcile survives a Redis restart' broke: "
            f"{len(lost)} of {len(acked_before)} lost, e.g. {lost[:5]}")
        audit(r, log, ORG)
        # The restarted Redis started with an empty script cache: budgetd's
        # EVALSHA got NOSCRIPT and fell back to EVAL (counted since the
        # restart), which loaded the scripts again.
        stats = r.info("commandstats")
        evals = int(stats.get("cmdstat_eval", {}).get("calls", 0))
        assert evals >= 1, f"no EVAL after the restart: NOSCRIPT path not taken ({stats})"
        assert all(r.script_exists(*shas[:2])), "reserve/settle were not loaded again"
    finally:
        stop_all(a, b)
        r.close()


def test_redis_paused_longer_than_the_deadline(aof_redis: EmbeddedRedis,
                                               tmp_path: pathlib.Path) -> None:
    r = redis.Redis.from_url(aof_redis.url)
    a = BudgetdProc(aof_redis.url, tmp_path, name="a", redis_timeout_s=REDIS_TIMEOUT_S)
    b = BudgetdProc(aof_redis.url, tmp_path, name="b", redis_timeout_s=REDIS_TIMEOUT_S)
    assert aof_redis.proc is not None
    pid = aof_redis.proc.pid
    try:
        a.start()
        b.start()
        set_rules(a.address)
        log, load, t_inject, t_lift = run_with_fault(
            [a.address, b.address], lambda: os.kill(pid, signal.SIGSTOP),
            lambda: os.kill(pid, signal.SIGCONT), hold_s=DEADLINE_S + 1.5)
        check_fault_run("redis SIGSTOP", log, load, t_inject, t_lift)
        audit(r, log, ORG)
    finally:
        os.kill(pid, signal.SIGCONT)
        stop_all(a, b)
        r.close()


@pytest.mark.parametrize("mode", ["drop", "delay"])
def test_network_cut_between_budgetd_and_redis(r: redis.Redis, redis_server: EmbeddedRedis,
                                               tmp_path: pathlib.Path, mode: str) -> None:
    proxy = TcpProxy("127.0.0.1", redis_server.port)
    # Both replicas reach Redis only through the proxy.
    a = BudgetdProc(proxy.url, tmp_path, name="a", redis_timeout_s=REDIS_TIMEOUT_S)
    b = BudgetdProc(proxy.url, tmp_path, name="b", redis_timeout_s=REDIS_TIMEOUT_S)
    try:
        a.start()
        b.start()
        set_rules(a.address)
        log, load, t_inject, t_lift = run_with_fault(
            [a.address, b.address],
            lambda: proxy.set_mode(mode, delay_s=2 * REDIS_TIMEOUT_S),
            lambda: proxy.set_mode("pass"))
        check_fault_run(f"network {mode}", log, load, t_inject, t_lift)
        audit(r, log, ORG)
    finally:
        stop_all(a, b)
        proxy.close()


@pytest.mark.parametrize("policy,kept", [("keep", 700), ("release", 0)])
def test_client_reserves_and_vanishes(r: redis.Redis, redis_server: EmbeddedRedis,
                                      tmp_path: pathlib.Path, policy: str, kept: int) -> None:
    """Expiry settles an abandoned reservation with no further traffic."""
    a = BudgetdProc(redis_server.url, tmp_path, name="a", expiry_interval_s=0.2)
    try:
        a.start()
        with AdminClient(a.address) as admin:
            admin.set_org_settings(ORG, expiry_policy=policy)
        with BudgetClient(a.address) as c:
            res = c.reserve(f"{ORG}/t0", MODEL, tokens=700, cost_micros=700, ttl_seconds=1)
            assert res.allowed
        t0 = time.monotonic()
        # No more calls to budgetd: only Redis is read from here on.
        while time.monotonic() - t0 < 5:
            got = counters(r, ORG)
            if got.get(f"r|{ORG}|t", 0) == 0:
                break
            time.sleep(0.05)
        settled_s = time.monotonic() - t0
        print(f"\nvanished client ({policy}): settled {settled_s:.2f} s after its reserve "
              "(ttl 1 s, sweep every 0.2 s)")
        want = {f"r|{ORG}|t": 0, f"u|{ORG}|t": kept, f"r|{ORG}/t0|c": 0, f"u|{ORG}/t0|c": kept}
        have = {k: got.get(k, 0) for k in want}
        assert have == want, (
            f"invariant 'an abandoned reservation expires per policy ({policy})' broke "
            f"{settled_s:.1f} s after the reserve: counters {have}, expected {want}")
        assert settled_s <= 1 + 0.2 + 1.5, f"expiry took {settled_s:.2f} s"
        rid = res.reservation_id.split(":", 1)[1]
        assert r.hget(f"bd:{{{ORG}}}:q:{rid}", "state") == b"expired"
    finally:
        stop_all(a)


def test_concurrent_calls_during_an_outage_each_fail_within_the_redis_timeout(
        r: redis.Redis, redis_server: EmbeddedRedis, tmp_path: pathlib.Path) -> None:
    """Regression: calls waited in line for the pricing refresh lock, each
    behind the previous one's Redis timeout, so 20 concurrent calls during
    an outage took up to 20 x the timeout, past the client's deadline."""
    proxy = TcpProxy("127.0.0.1", redis_server.port)
    a = BudgetdProc(proxy.url, tmp_path, name="a", redis_timeout_s=REDIS_TIMEOUT_S)
    try:
        a.start()
        set_rules(a.address)
        with BudgetClient(a.address) as c:
            assert c.reserve(ORG, MODEL, tokens=1, cost_micros=1).allowed
        time.sleep(2.5)  # past the pricing refresh interval: the next call refreshes
        proxy.set_mode("drop")

        def one(i: int) -> tuple[str, float]:
            t0 = time.monotonic()
            # No client retries: each call is one attempt.
            policy = CallPolicy(timeout_s=DEADLINE_S, total_timeout_s=DEADLINE_S, retries=0)
            with BudgetClient(a.address, policy=policy) as c:
                try:
                    c.reserve(ORG, MODEL, tokens=1, cost_micros=1, request_id=f"out-{i}")
                    return "OK", time.monotonic() - t0
                except Exception as e:
                    return type(e).__name__ + ":" + str(getattr(e, "code", "")), (
                        time.monotonic() - t0)

        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            got = list(pool.map(one, range(20)))
        proxy.set_mode("pass")
        slow = [g for g in got if g[1] > 2 * REDIS_TIMEOUT_S + SLACK_S
                or "UNAVAILABLE" not in g[0]]
        assert not slow, (
            f"invariant 'each call fails within the Redis timeout ({REDIS_TIMEOUT_S} s)' broke "
            f"for {len(slow)} of 20 concurrent calls: {sorted(slow, key=lambda g: -g[1])[:5]}")
    finally:
        stop_all(a)
        proxy.close()
