"""Reserve throughput of `budgetd serve --workers 2` vs `--workers 1`, same
load, same run: 64 calls in flight, spread over LOAD_PROCS load-generator
processes of CHANNELS connections each (one grpc.aio client process can be
the bottleneck itself, and one connection always reaches one worker). No
target: whether a second worker helps depends on free cores, and on this
machine the 2 cores are shared with the load generator and Redis."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pathlib
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from _common import budgetd, closed_loop, parser, redis_server, set_budgets, use_uvloop

CONCURRENCY = 64
LOAD_PROCS = 2
CHANNELS = 8  # per load process: 16 connections over the workers
READY_TIMEOUT_S = 30.0


def _load(address: str, concurrency: int, channels: int, seconds: float) -> tuple[int, float, int]:
    """One load process: (calls, seconds measured, errors)."""
    use_uvloop()
    load = asyncio.run(closed_loop(address, concurrency, seconds, channels=channels))
    return load.calls, load.seconds, load.errors


def _listeners(port: int) -> int:
    """LISTEN sockets on `port` (/proc/net/tcp): one per worker that serves."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = pathlib.Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                n += 1
    return n


def _wait_listeners(address: str, n: int) -> None:
    """The port answers once worker 0 serves; the others follow a moment later."""
    port = int(address.rsplit(":", 1)[1])
    deadline = time.monotonic() + READY_TIMEOUT_S
    while _listeners(port) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{n} workers not listening on {port} in {READY_TIMEOUT_S} s")
        time.sleep(0.05)


def _measure(pool: ProcessPoolExecutor, address: str, seconds: float) -> tuple[float, int]:
    """Reserves per second summed over the load processes, and errors."""
    futures = [pool.submit(_load, address, CONCURRENCY // LOAD_PROCS, CHANNELS, seconds)
               for _ in range(LOAD_PROCS)]
    results = [f.result(timeout=seconds + 120) for f in futures]
    rps = sum(calls / secs for calls, secs, _ in results if secs)
    return rps, sum(errors for *_, errors in results)


def main() -> int:
    args = parser(__doc__ or "").parse_args()
    seconds = 0.5 if args.smoke else args.seconds
    rounds = 1 if args.smoke else 2
    print(f"cores {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, "
          f"{CONCURRENCY} in flight over {LOAD_PROCS} load processes x {CHANNELS} connections",
          flush=True)
    totals = {1: 0.0, 2: 0.0}
    ctx = multiprocessing.get_context("spawn")
    with redis_server() as redis, budgetd(redis.url) as one, \
            budgetd(redis.url, "--workers", "2") as two, \
            ProcessPoolExecutor(LOAD_PROCS, mp_context=ctx) as pool:
        _wait_listeners(two, 2)
        set_budgets(one)
        # Alternate, so a noisy neighbour hurts both sides alike.
        for _ in range(rounds):
            for n, address in ((1, one), (2, two)):
                rps, errors = _measure(pool, address, seconds)
                print(f"--workers {n}: {rps:8.0f} rps ({errors} errors)", flush=True)
                if errors:
                    print(f"budgetd --workers {n} answered errors", file=sys.stderr)
                    return 2
                totals[n] += rps
    ratio = totals[2] / totals[1]
    print(f"--workers 1 {totals[1] / rounds:.0f} rps, --workers 2 {totals[2] / rounds:.0f} rps")
    print(f"RESULT workers_2_vs_1_ratio = {ratio:.3f}   target none (measured)   ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
