"""Helpers for the process-level suites (concurrency, faults, soak): budgetd
server subprocesses, a load driver that logs what every call was granted and
settled, and the audit that compares those logs with the Redis counters."""

from __future__ import annotations

import os
import pathlib
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import redis
from budgetd.embedded import free_port
from budgetd_client import BudgetClient, BudgetError, CallPolicy, Usage

MODEL = "test-model"  # every amount is explicit: no pricing needed


class BudgetdProc:
    """`budgetd serve --redis-url ...` as a subprocess on a free port."""

    def __init__(self, redis_url: str, log_dir: pathlib.Path, *, expiry_interval_s: float = 0.2,
                 redis_timeout_s: float = 0.5, name: str = "budgetd") -> None:
        self.redis_url = redis_url
        self.log_path = log_dir / f"{name}.log"
        self.expiry_interval_s = expiry_interval_s
        self.redis_timeout_s = redis_timeout_s
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout_s: float = 30.0) -> BudgetdProc:
        self.port = free_port()
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "budgetd.cli", "serve", "--listen", self.address,
             "--redis-url", self.redis_url, "--expiry-interval-s", str(self.expiry_interval_s),
             # Another replica expires what a killed one granted: walk every org often.
             "--expiry-full-sweep-s", "1",
             "--redis-timeout-s", str(self.redis_timeout_s), "--drain-s", "1",
             "--log-format", "text", "--log-level", "WARNING"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.address) as ch:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"budgetd exited: {self.log_tail()}")
                try:
                    grpc.channel_ready_future(ch).result(timeout=0.5)
                    return self
                except grpc.FutureTimeoutError:
                    continue
        raise RuntimeError(f"budgetd did not start in {timeout_s} s: {self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text()[-3000:]
        except OSError:
            return ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=15)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def rss_kb(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Log:
    """What one client saw: every grant, and what each became."""

    granted: dict[str, tuple[str, int, int]] = field(default_factory=dict)  # rid: scope, t, c
    # rid -> (tokens, cost) that must end up in `used`: the actual if
    # reconciled, 0 if released, the estimate if abandoned (expiry keeps it).
    final: dict[str, tuple[int, int]] = field(default_factory=dict)
    reconciled_acked: set[str] = field(default_factory=set)
    answered_by: dict[str, str] = field(default_factory=dict)  # rid -> target that granted it
    abandoned: set[str] = field(default_factory=set)  # never settled by the client
    denials: int = 0
    calls: int = 0
    failures: list[tuple[str, str, float]] = field(default_factory=list)  # op, code, seconds
    retried_reserves: int = 0

    def merge(self, other: Log) -> None:
        self.granted.update(other.granted)
        self.final.update(other.final)
        self.reconciled_acked |= other.reconciled_acked
        self.answered_by.update(other.answered_by)
        self.abandoned |= other.abandoned
        self.denials += other.denials
        self.calls += other.calls
        self.failures += other.failures
        self.retried_reserves += other.retried_reserves


class Driver:
    """Reserve, then reconcile (actual <= estimate), release or abandon;
    every failed call is retried with the same request (same request_id),
    on the next replica, until it succeeds or `give_up_s` passes."""

    def __init__(self, targets: Sequence[str], org: str, teams: Sequence[str], prefix: str,
                 *, seed: int = 0, deadline_s: float = 2.0, give_up_s: float = 60.0,
                 mix: tuple[float, float] = (0.75, 0.9), abandon_ttl_s: int = 1,
                 settle_ttl_s: int = 60, max_tokens: int = 400,
                 duplicate_reserve: float = 0.0) -> None:
        policy = CallPolicy(timeout_s=deadline_s, total_timeout_s=deadline_s, retries=0)
        self.targets = list(targets)
        self.clients = [BudgetClient(t, policy=policy) for t in self.targets]
        self.last_target = ""  # the target that answered the last successful call
        self.org, self.teams, self.prefix = org, list(teams), prefix
        self.rng = random.Random(seed)
        self.give_up_s = give_up_s
        self.mix = mix
        self.abandon_ttl_s, self.settle_ttl_s = abandon_ttl_s, settle_ttl_s
        self.max_tokens = max_tokens
        self.duplicate_reserve = duplicate_reserve
        self.log = Log()
        self.n = 0
        self.on_ack: Callable[[str, str], None] | None = None  # (op, rid) after a success

    def close(self) -> None:
        for c in self.clients:
            c.close()

    def _retrying(self, op: str, fn: Callable[[BudgetClient], Any]) -> Any:
        give_up = time.monotonic() + self.give_up_s
        i = self.rng.randrange(len(self.clients))
        while True:
            client = self.clients[i % len(self.clients)]
            t0 = time.monotonic()
            self.log.calls += 1
            try:
                got = fn(client)
                self.last_target = self.targets[i % len(self.clients)]
                return got
            except BudgetError as e:
                code = e.code.name if e.code else "?"
                if code not in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
                    raise
                self.log.failures.append((op, code, time.monotonic() - t0))
                if time.monotonic() > give_up:
                    raise
                i += 1  # the next replica
                time.sleep(0.05)

    def one(self) -> None:
        self.n += 1
        rid = f"{self.prefix}-{self.n}"
        team = self.rng.choice(self.teams)
        scope = f"{self.org}/{team}"
        est = self.rng.randint(20, self.max_tokens)
        roll = self.rng.random()
        ttl = self.abandon_ttl_s if roll >= self.mix[1] else self.settle_ttl_s

        def reserve(c: BudgetClient) -> Any:
            return c.reserve(scope, MODEL, tokens=est, cost_micros=est, request_id=rid,
                             ttl_seconds=ttl)

        res = self._retrying("reserve", reserve)
        if self.rng.random() < self.duplicate_reserve:
            # The same request again, on another replica: the first answer.
            again = self._retrying("reserve", reserve)
            self.log.retried_reserves += 1
            assert again.raw == res.raw, (
                f"retry of reserve {rid} answered differently: {again.raw} != {res.raw}")
        if not res.allowed:
            self.log.denials += 1
            return
        assert (res.reserved_tokens, res.reserved_cost_micros) == (est, est), res
        self.log.granted[res.reservation_id] = (scope, est, est)
        self.log.answered_by[res.reservation_id] = self.last_target
        if self.on_ack:
            self.on_ack("reserve", res.reservation_id)
        if roll < self.mix[0]:
            act = self.rng.randint(0, est)
            self._retrying("reconcile", lambda c: c.reconcile(
                res.reservation_id, Usage(input_tokens=act), cost_micros=act))
            self.log.final[res.reservation_id] = (act, act)
            self.log.reconciled_acked.add(res.reservation_id)
            if self.on_ack:
                self.on_ack("reconcile", res.reservation_id)
        elif roll < self.mix[1]:
            self._retrying("release", lambda c: c.release(res.reservation_id))
            self.log.final[res.reservation_id] = (0, 0)
        else:
            self.log.final[res.reservation_id] = (est, est)  # abandoned: expiry keeps it
            self.log.abandoned.add(res.reservation_id)

    def run_for(self, seconds: float, pause_s: float = 0.0) -> Log:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.one()
            if pause_s:
                time.sleep(pause_s)
        return self.log


# The two window kinds every charge lands in (window ids d20270315, m202703).
WINDOW_KINDS = {"d": "day", "m": "month"}


def counters(r: redis.Redis, org: str, kind: str = "d") -> dict[str, int]:
    """Sum of every budget counter field of the org over all its windows of
    one kind: "d" (day windows) or "m" (month windows). Not the report
    counters (sm|...), which share the hashes."""
    assert kind in WINDOW_KINDS, kind
    out: dict[str, int] = {}
    for key in r.scan_iter(match=f"bd:{{{org}}}:w:{kind}*", count=1000):
        for f, v in r.hgetall(key).items():
            k = f.decode() if isinstance(f, bytes) else str(f)
            if k.startswith("sm|"):
                continue
            out[k] = out.get(k, 0) + int(v)
    return out


def expected_used(log: Log, org: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for rid, (scope, _, _) in log.granted.items():
        t, c = log.final[rid]
        for path in (org, scope):
            out[f"u|{path}|t"] = out.get(f"u|{path}|t", 0) + t
            out[f"u|{path}|c"] = out.get(f"u|{path}|c", 0) + c
    return out


def audit(r: redis.Redis, log: Log, org: str, settle_timeout_s: float = 20.0) -> dict[str, int]:
    """Waits for every abandoned reservation to expire, then checks that the
    counters of both the day and the month windows equal the logs: not one
    token off. Returns the day counters."""
    deadline = time.monotonic() + settle_timeout_s
    while True:
        got = {kind: counters(r, org, kind) for kind in WINDOW_KINDS}
        reserved = {f"{kind}:{k}": v for kind, one in got.items()
                    for k, v in one.items() if k.startswith("r|") and v}
        if not reserved or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not reserved, (
        f"invariant 'abandoned reservations expire' broke: still reserved {reserved} "
        f"{settle_timeout_s} s after the load stopped")
    want = expected_used(log, org)
    for kind, name in WINDOW_KINDS.items():
        used = {k: v for k, v in got[kind].items() if k.startswith("u|") and (v or k in want)}
        if used != want:
            diff = {k: {"counters": used.get(k, 0), "logs": want.get(k, 0),
                        "off_by": used.get(k, 0) - want.get(k, 0)}
                    for k in sorted(set(used) | set(want)) if used.get(k, 0) != want.get(k, 0)}
            raise AssertionError(
                f"invariant 'counters == sum of logged actuals + kept estimates' broke in the "
                f"{name} windows ({len(log.granted)} grants, {len(log.reconciled_acked)} "
                f"reconciles): {diff}")
    return got["d"]


def stop_all(*procs: Any) -> None:
    for p in procs:
        try:
            p.stop()
        except Exception as e:
            print(f"stopping {p}: {e}", file=sys.stderr)


def sigcont(pid: int) -> None:
    os.kill(pid, signal.SIGCONT)


def worker(args: tuple[list[str], str, list[str], str, int, float, float]) -> Log:
    """One client process of the concurrency checker (multiprocessing, spawn)."""
    targets, org, teams, prefix, seed, run_s, duplicate = args
    d = Driver(targets, org, teams, prefix, seed=seed, duplicate_reserve=duplicate)
    try:
        return d.run_for(run_s)
    finally:
        d.close()
