"""Concurrency checker: client processes (not threads) hammer one org through
two budgetd server processes on one Redis. Every client logs what it was
granted and what it reconciled; afterwards the counters must equal the logs,
not one token off. A sampler reads GetBudget during the run: no HARD limit is
ever exceeded by reservations (reconciles stay <= their estimate, so actual
usage cannot push a counter over)."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from budgetd.embedded import EmbeddedRedis
from budgetd_client import AdminClient, BudgetClient, CallPolicy
from procs import BudgetdProc, Log, audit, stop_all, worker

ORG = "race"
TEAMS = ["t0", "t1", "t2"]
WORKERS = 4
RUN_S = 8.0
# HARD rules at every level, both units: tight enough that the run spends
# most of its time at the limits. Each amount is tokens = cost, so both org
# rules count the teams' sum, at most 50k + 60k + 70k = 180k: the org's day
# rule (175k) binds across teams, and whenever the org is near full every
# team is near its own limit too (t0 >= 175k - 60k - 70k = 45k, i.e. 90%, t1
# >= 55k, t2 >= 65k): every rule is driven to >= 90% fill.
FILL_MIN = 0.9  # what docs/guarantees.md claims every HARD rule reaches
RULES = [(ORG, "day", "tokens", 175_000), (ORG, "month", "cost_micros", 185_000),
         (f"{ORG}/t0", "day", "tokens", 50_000), (f"{ORG}/t1", "day", "cost_micros", 60_000),
         (f"{ORG}/t2", "month", "tokens", 70_000)]


@pytest.fixture()
def replicas(r: redis.Redis, redis_server: EmbeddedRedis,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[BudgetdProc]]:
    logs = tmp_path_factory.mktemp("replicas")
    procs = [BudgetdProc(redis_server.url, logs, name=f"budgetd{i}") for i in range(2)]
    try:
        for p in procs:
            p.start()
        yield procs
    finally:
        stop_all(*procs)


def test_many_processes_two_replicas_never_overspend_and_lose_nothing(
        r: redis.Redis, replicas: list[BudgetdProc]) -> None:
    targets = [p.address for p in replicas]
    with AdminClient(targets[0]) as admin:
        for scope, window, unit, limit in RULES:
            admin.set_budget(scope, window, unit, limit, mode="hard")
    limits = {(s, w, u): lim for s, w, u, lim in RULES}

    stop = threading.Event()
    violations: list[str] = []
    sampler_errors: list[BaseException] = []  # re-raised after the run: no silent death
    samples = [0]
    peak: dict[tuple[str, str, str], float] = {}

    def sample() -> None:
        policy = CallPolicy(timeout_s=2, total_timeout_s=2, retries=0)
        clients = [BudgetClient(t, policy=policy) for t in targets]
        i = 0
        try:
            while not stop.is_set():
                for scope in (ORG, *(f"{ORG}/{t}" for t in TEAMS)):
                    i += 1
                    st = clients[i % 2].get_budget(scope)
                    samples[0] += 1
                    for w in st.windows:
                        key = (scope, w.window, w.unit)
                        if key not in limits:
                            continue
                        assert w.has_limit and w.mode == "hard", (key, w)
                        peak[key] = max(peak.get(key, 0), (w.used + w.reserved) / w.limit)
                        if w.used + w.reserved > w.limit:
                            violations.append(
                                f"HARD limit exceeded at {scope} {w.window} {w.unit}: used "
                                f"{w.used} + reserved {w.reserved} = {w.used + w.reserved} > "
                                f"{w.limit}")
                time.sleep(0.01)
        except BaseException as e:
            sampler_errors.append(e)
        finally:
            for c in clients:
                c.close()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    ctx = mp.get_context("spawn")
    args = [(targets, ORG, TEAMS, f"w{i}", 1000 + i, RUN_S, 0.1) for i in range(WORKERS)]
    t0 = time.monotonic()
    with ctx.Pool(WORKERS) as pool:
        logs = pool.map(worker, args, chunksize=1)
    elapsed = time.monotonic() - t0
    stop.set()
    sampler.join(timeout=10)
    assert not sampler.is_alive(), "the sampler did not stop within 10 s"
    if sampler_errors:
        raise AssertionError(
            f"the GetBudget sampler failed after {samples[0]} samples: {sampler_errors[0]!r}"
        ) from sampler_errors[0]

    log = Log()
    for one in logs:
        log.merge(one)
    got = audit(r, log, ORG)
    print(f"\nconcurrency: {WORKERS} processes x 2 replicas, {elapsed:.1f} s: "
          f"{len(log.granted)} grants, {log.denials} denials, "
          f"{len(log.reconciled_acked)} reconciles, {log.retried_reserves} duplicate reserves, "
          f"{samples[0]} GetBudget samples; peak fill "
          f"{ {'/'.join(k): round(v, 3) for k, v in peak.items()} }; counters {got}")
    assert not violations, f"{len(violations)} samples over a HARD limit: {violations[:5]}"
    assert samples[0] > 50, f"the sampler took only {samples[0]} samples"
    assert len(log.granted) > 100 and log.denials > 0, (
        f"too little contention to prove anything: {len(log.granted)} grants, "
        f"{log.denials} denials")
    low = {"/".join(k): round(peak.get(k, 0.0), 3) for k in limits
           if peak.get(k, 0.0) < FILL_MIN}
    assert not low, (
        f"HARD rules never driven to {FILL_MIN:.0%} fill, so never contended: {low} "
        f"(peak {peak})")
    assert not log.failures, f"calls failed with no fault injected: {log.failures[:5]}"
