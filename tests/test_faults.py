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

    def __init__(self, targets: list[str], run_s: float, threads: int = 2) -> None:
        self.ok_times: list[float] = []
        self.acked_reconciles: list[tuple[float, str]] = []
        self.errors: list[BaseException] = []
        self.drivers = []
        for i in range(threads):
            d = Driver(targets, ORG, TEAMS, f"L{i}-{time.monotonic_ns()}", seed=i,
                       deadline_s=DEADLINE_S)
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
                   after_s: float = 3.5) -> tuple[Log, Load, float, float]:
    load = Load(targets, before_s + hold_s + after_s).start()
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


def test_budgetd_sigkill_mid_load(r: redis.Redis, redis_server: EmbeddedRedis,
                                  tmp_path: pathlib.Path) -> None:
    a = BudgetdProc(redis_server.url, tmp_path, name="a")
    b = BudgetdProc(redis_server.url, tmp_path, name="b")
    try:
        a.start()
        b.start()
        set_rules(a.address)
        # Reservations granted by the replica about to die, never settled.
        orphans = Log()
        with BudgetClient(a.address) as c:
            for i in range(5):
                res = c.reserve(f"{ORG}/t0", MODEL, tokens=100 + i, cost_micros=100 + i,
                                request_id=f"orphan-{i}", ttl_seconds=1)
                assert res.allowed
                orphans.granted[res.reservation_id] = (f"{ORG}/t0", 100 + i, 100 + i)
                orphans.final[res.reservation_id] = (100 + i, 100 + i)  # kept at expiry
        log, load, t_inject, t_lift = run_with_fault(
            [a.address, b.address], lambda: a.kill(signal.SIGKILL), lambda: None,
            hold_s=1.0)
        # A call in flight on the replica as it dies gets no answer at all:
        # the client's own deadline ends it (DEADLINE_EXCEEDED), never later.
        check_fault_run("budgetd SIGKILL", log, load, t_inject, t_lift,
                        codes=("UNAVAILABLE", "DEADLINE_EXCEEDED"))
        log.merge(orphans)
        audit(r, log, ORG)
        states = [r.hget(f"bd:{{{ORG}}}:q:orphan-{i}", "state") for i in range(5)]
        assert states == [b"expired"] * 5, (
            f"reservations granted by the killed replica did not expire: states {states}")
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
