"""Soak: a steady load of reserves, reconciles, releases and expiries against
a budgetd process on a Redis process, for 30 s in CI (BUDGETD_SOAK_S
overrides, e.g. 300). What must hold, with the figures printed:

- budgetd's RSS is flat after warm-up: growth over the last two thirds of
  the run <= max(8 MiB, 10%);
- Redis memory grows only with the request records (each kept for its
  retention), at most 2 KiB per new key, and every key except the few
  per-org/global ones carries a TTL;
- no error other than deliberate denials; the counters equal the logs.
"""

from __future__ import annotations

import os
import pathlib
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from budgetd.embedded import EmbeddedRedis
from budgetd.limits import MAX_TTL_S, RECORD_RETENTION_S
from budgetd_client import AdminClient
from procs import BudgetdProc, Driver, audit, rss_kb, stop_all

SOAK_S = float(os.environ.get("BUDGETD_SOAK_S", "30"))
RATE_PER_S = 60.0  # reserves per second, each followed by its settle
ORG = "soak"
TEAMS = ["t0", "t1", "t2"]
BUDGETD_GROWTH_KB = 8 * 1024
BUDGETD_GROWTH_FRACTION = 0.10
REDIS_BYTES_PER_KEY = 2048
REDIS_SLACK_BYTES = 4 * 1024 * 1024
PERMANENT = {b"bd:orgs", b"bd:pricing", f"bd:{{{ORG}}}:rules".encode(),
             f"bd:{{{ORG}}}:cfg".encode(), f"bd:{{{ORG}}}:exp".encode(),
             # Capped by length (XADD MAXLEN), not by TTL.
             f"bd:{{{ORG}}}:alerts".encode(),
             # The expiry walk's lease: PX of a few sweep intervals, renewed.
             b"bd:walker"}


@pytest.fixture()
def stack(tmp_path: pathlib.Path) -> Iterator[tuple[EmbeddedRedis, BudgetdProc]]:
    server = EmbeddedRedis(tmp_path / "redis", appendonly=False)
    server.start()
    b = BudgetdProc(server.url, tmp_path, name="soak", expiry_interval_s=0.2)
    try:
        b.start()
        yield server, b
    finally:
        stop_all(b)
        server.stop()


@pytest.mark.timeout(int(SOAK_S) + 120)
def test_soak_memory_flat_keys_bounded_no_errors(
        stack: tuple[EmbeddedRedis, BudgetdProc]) -> None:
    server, b = stack
    assert server.proc is not None
    r = redis.Redis.from_url(server.url)
    with AdminClient(b.address) as admin:
        admin.set_budget(ORG, "month", "tokens", 10**12)
        # A small HARD budget on one team: its callers get deliberate denials.
        admin.set_budget(f"{ORG}/t1", "day", "tokens", 20_000)
    driver = Driver([b.address], ORG, TEAMS, "s", seed=7, mix=(0.6, 0.8), abandon_ttl_s=1,
                    settle_ttl_s=30)
    samples: list[tuple[float, int, int, int, int]] = []  # t, budgetd kB, redis kB, mem, keys
    stop = threading.Event()

    def sample() -> None:
        assert server.proc is not None
        while not stop.is_set():
            info = r.info("memory")
            samples.append((time.monotonic(), rss_kb(b.pid), rss_kb(server.proc.pid),
                            int(info["used_memory"]), int(r.dbsize())))
            stop.wait(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.monotonic()
    n = 0
    while (now := time.monotonic()) - t0 < SOAK_S:
        n += 1
        driver.one()
        # A steady rate: sleep until this reserve's slot.
        time.sleep(max(0.0, t0 + n / RATE_PER_S - time.monotonic()))
    elapsed = now - t0
    stop.set()
    sampler.join(timeout=5)
    driver.close()
    log = driver.log
    got = audit(r, log, ORG)

    warm = next(s for s in samples if s[0] - t0 >= SOAK_S / 3)
    end = samples[-1]
    peak_budgetd = max(s[1] for s in samples if s[0] >= warm[0])
    grown_kb = peak_budgetd - warm[1]
    new_keys = end[4] - warm[4]
    redis_grown = end[3] - warm[3]
    expired = sum(1 for rid, (scope, t, _) in log.granted.items()
                  if log.final[rid] == (t, t) and rid not in log.reconciled_acked)
    print(f"\nsoak {elapsed:.0f} s: {n} reserves ({n / elapsed:.0f}/s), {len(log.granted)} "
          f"grants, {log.denials} denials, {len(log.reconciled_acked)} reconciles, "
          f"{expired} left to expire, {log.calls} calls\n"
          f"  budgetd RSS kB: start {samples[0][1]}, after warm-up {warm[1]}, peak after "
          f"{peak_budgetd}, end {end[1]} (growth {grown_kb} kB)\n"
          f"  redis RSS kB: start {samples[0][2]}, warm {warm[2]}, end {end[2]}; used_memory "
          f"warm {warm[3]} end {end[3]} (+{redis_grown} B for +{new_keys} keys)\n"
          f"  keys: warm {warm[4]}, end {end[4]}; counters {got}")

    assert not log.failures, f"errors other than denials: {log.failures[:5]}"
    assert log.denials > 0, "the soak never hit its HARD budget: no deliberate denials"
    assert expired > 0 and len(log.reconciled_acked) > 0
    allowed_kb = max(BUDGETD_GROWTH_KB, int(warm[1] * BUDGETD_GROWTH_FRACTION))
    assert grown_kb <= allowed_kb, (
        f"invariant 'budgetd memory flat after warm-up' broke: RSS grew {grown_kb} kB "
        f"(from {warm[1]} to {peak_budgetd}) > {allowed_kb} kB")
    allowed_bytes = REDIS_SLACK_BYTES + REDIS_BYTES_PER_KEY * max(new_keys, 0)
    assert redis_grown <= allowed_bytes, (
        f"invariant 'Redis memory bounded by its keys' broke: used_memory grew {redis_grown} B "
        f"for {new_keys} new keys (> {allowed_bytes} B)")
    # Key count bounded by TTLs: one record per request, each with a TTL no
    # longer than its ttl + the record retention; only a few keys are permanent.
    assert end[4] <= n + len(PERMANENT) + 4, f"{end[4]} keys for {n} requests"
    assert r.zcard(f"bd:{{{ORG}}}:exp") == 0, "held reservations left in the expiry index"
    for key in r.scan_iter(count=1000):
        ttl = r.ttl(key)
        if key in PERMANENT:
            continue
        if b":w:" in key or b":rep:" in key or b":fired:" in key:
            # Per-window keys (counters, reports, fired alerts) live as long as
            # their window plus the report retention.
            assert 0 < ttl <= (31 + 400) * 86_400, f"window key {key!r} has TTL {ttl}"
            continue
        assert 0 < ttl <= MAX_TTL_S + RECORD_RETENTION_S, f"{key!r} has TTL {ttl}"
    r.close()
