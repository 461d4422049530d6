"""The cost of --redis-wait-replicas 1: budgetd on a master with one replica,
Reserve throughput (64 in flight) and low-load latency (200/s), with and
without WAIT, in the same run. No target: the figures are for choosing."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
from collections.abc import Iterator

import redis
from _common import budgetd, closed_loop, open_loop, parser, redis_server, set_budgets, use_uvloop
from budgetd.embedded import EmbeddedRedis
from cluster import wait_until


@contextlib.contextmanager
def replica_of(port: int) -> Iterator[EmbeddedRedis]:
    with tempfile.TemporaryDirectory(prefix="budgetd-bench-replica-") as d:
        rep = EmbeddedRedis(d, appendonly=False, extra_args=["--replicaof", "127.0.0.1",
                                                             str(port)])
        rep.start()
        try:
            c = redis.Redis(port=rep.port, decode_responses=True)
            wait_until(lambda: c.info("replication")["master_link_status"] == "up", 20,
                       "replica in sync")
            c.close()
            yield rep
        finally:
            rep.stop()


def main() -> int:
    args = parser(__doc__ or "").parse_args()
    use_uvloop()
    seconds = 0.5 if args.smoke else args.seconds
    rounds = 1 if args.smoke else 2
    wait_flags = ("--redis-wait-replicas", "1", "--redis-wait-timeout-ms", "1000")
    stats: dict[str, list[float]] = {"no WAIT": [0.0, 0.0, 0.0, 0.0],
                                     "WAIT 1": [0.0, 0.0, 0.0, 0.0]}
    with redis_server() as master, replica_of(master.port), budgetd(master.url) as plain, \
            budgetd(master.url, *wait_flags) as waiting:
        set_budgets(plain)
        # Both servers share the master; measurements alternate so a noisy
        # neighbour hurts both alike.
        for _ in range(rounds):
            for label, bd in (("no WAIT", plain), ("WAIT 1", waiting)):
                tput = asyncio.run(closed_loop(bd, 64, seconds))
                lat = asyncio.run(open_loop(bd, 200, seconds))
                acc = stats[label]
                acc[0] += tput.rps / rounds
                acc[1] += lat.pct_ms(50) / rounds
                acc[2] += lat.pct_ms(99) / rounds
                acc[3] += tput.errors + lat.errors
    rows = [(label, *vals) for label, vals in stats.items()]
    for label, rps, p50, p99, errors in rows:
        print(f"{label:8}: {rps:7.0f} rps at 64 in flight; at 200/s p50 {p50:.2f} ms, "
              f"p99 {p99:.2f} ms; {errors} errors")
    ratio = rows[1][1] / rows[0][1] if rows[0][1] else 0.0
    print(f"RESULT wait_throughput_ratio = {ratio:.3f}   target none (measured)   ok")
    print(f"RESULT wait_p50_added_ms = {rows[1][2] - rows[0][2]:.3f}   target none (measured)   ok")
    return 0 if not any(r[4] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
