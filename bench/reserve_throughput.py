"""Reserve throughput of one budgetd process vs a bare grpc.aio echo server,
same client, same run, 64 calls in flight. Target: ratio >= 0.85.

The two are measured in pairs of back-to-back windows, which side goes first
alternating, and the figure is the median of the pairs' ratios: on this
shared machine a neighbour's burst lands in one window of a pair and moves
that pair's ratio by up to ±0.3, which a median of 6 pairs sets aside and a
ratio of sums does not (it is printed too)."""

from __future__ import annotations

import asyncio
import statistics
import sys

from _common import (
    budgetd,
    closed_loop,
    echo_server,
    parser,
    redis_server,
    set_budgets,
    use_uvloop,
    verdict,
)

TARGET = 0.85
CONCURRENCY = 64
PAIRS = 6


def main() -> int:
    args = parser(__doc__ or "").parse_args()
    use_uvloop()
    seconds = 0.5 if args.smoke else args.seconds
    rounds = 1 if args.smoke else PAIRS
    echo_rps: list[float] = []
    bd_rps: list[float] = []
    with redis_server() as redis, budgetd(redis.url) as bd, echo_server() as echo:
        set_budgets(bd)
        for i in range(rounds):
            sides = [echo, bd] if i % 2 == 0 else [bd, echo]
            loads = {a: asyncio.run(closed_loop(a, CONCURRENCY, seconds)) for a in sides}
            e, b = loads[echo], loads[bd]
            print(f"echo {e.rps:8.0f} rps ({e.errors} errors)   budgetd {b.rps:8.0f} rps "
                  f"({b.errors} errors)   ratio {b.rps / e.rps:.3f}", flush=True)
            if b.errors:
                print("budgetd answered errors", file=sys.stderr)
                return 2
            echo_rps.append(e.rps)
            bd_rps.append(b.rps)
    ratio = statistics.median(b / e for b, e in zip(bd_rps, echo_rps, strict=True))
    print(f"echo {sum(echo_rps) / rounds:.0f} rps, budgetd {sum(bd_rps) / rounds:.0f} rps "
          f"(ratio of sums {sum(bd_rps) / sum(echo_rps):.3f}, median of pairs {ratio:.3f})")
    return 0 if verdict("reserve_throughput_ratio", ratio, f">= {TARGET}", ratio >= TARGET,
                        args.smoke) else 1


if __name__ == "__main__":
    sys.exit(main())
