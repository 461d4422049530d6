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
    rows = []
    with redis_server() as master, replica_of(master.port):
        for label, flags in (("no WAIT", ()),
                             ("WAIT 1", ("--redis-wait-replicas", "1",
                                         "--redis-wait-timeout-ms", "1000"))):
            with budgetd(master.url, *flags) as bd:
                set_budgets(bd)
                tput = asyncio.run(closed_loop(bd, 64, seconds))
                lat = asyncio.run(open_loop(bd, 200, seconds))
                rows.append((label, tput.rps, lat.pct_ms(50), lat.pct_ms(99),
                             tput.errors + lat.errors))
    for label, rps, p50, p99, errors in rows:
        print(f"{label:8}: {rps:7.0f} rps at 64 in flight; at 200/s p50 {p50:.2f} ms, "
              f"p99 {p99:.2f} ms; {errors} errors")
    ratio = rows[1][1] / rows[0][1] if rows[0][1] else 0.0
    print(f"RESULT wait_throughput_ratio = {ratio:.3f}   target none (measured)   ok")
    print(f"RESULT wait_p50_added_ms = {rows[1][2] - rows[0][2]:.3f}   target none (measured)   ok")
    return 0 if not any(r[4] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
