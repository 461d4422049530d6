"""Reserve throughput of one budgetd process vs a bare grpc.aio echo server,
same client, same run, 64 calls in flight. Target: ratio >= 0.85."""

from __future__ import annotations

import asyncio
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


def main() -> int:
    args = parser(__doc__ or "").parse_args()
    use_uvloop()
    seconds = 0.5 if args.smoke else args.seconds
    rounds = 1 if args.smoke else 2
    echo_rps: list[float] = []
    bd_rps: list[float] = []
    with redis_server() as redis, budgetd(redis.url) as bd, echo_server() as echo:
        set_budgets(bd)
        # Alternate, so a noisy neighbour hurts both sides alike.
        for _ in range(rounds):
            e = asyncio.run(closed_loop(echo, CONCURRENCY, seconds))
            b = asyncio.run(closed_loop(bd, CONCURRENCY, seconds))
            print(f"echo {e.rps:8.0f} rps ({e.errors} errors)   budgetd {b.rps:8.0f} rps "
                  f"({b.errors} errors)", flush=True)
            if b.errors:
                print("budgetd answered errors", file=sys.stderr)
                return 2
            echo_rps.append(e.rps)
            bd_rps.append(b.rps)
    ratio = sum(bd_rps) / sum(echo_rps)
    print(f"echo {sum(echo_rps) / rounds:.0f} rps, budgetd {sum(bd_rps) / rounds:.0f} rps")
    return 0 if verdict("reserve_throughput_ratio", ratio, f">= {TARGET}", ratio >= TARGET,
                        args.smoke) else 1


if __name__ == "__main__":
    sys.exit(main())
