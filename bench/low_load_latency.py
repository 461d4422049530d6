"""Reserve latency at low load: open loop at 200 requests/s (calls leave on a
fixed schedule, whatever the answers). Targets: p50 <= 1.5 ms, p99 <= 5 ms.
The echo server's figures under the same load are printed for context."""

from __future__ import annotations

import asyncio
import sys

from _common import (
    budgetd,
    echo_server,
    open_loop,
    parser,
    redis_server,
    set_budgets,
    use_uvloop,
    verdict,
)

RATE_PER_S = 200.0
P50_MS = 1.5
P99_MS = 5.0


def main() -> int:
    args = parser(__doc__ or "").parse_args()
    use_uvloop()
    seconds = 0.5 if args.smoke else args.seconds
    with redis_server() as redis, budgetd(redis.url) as bd, echo_server() as echo:
        set_budgets(bd)
        # Warm-up (discarded): connections, caches, the first pricing load.
        asyncio.run(open_loop(bd, RATE_PER_S, min(seconds, 1.0)))
        asyncio.run(open_loop(echo, RATE_PER_S, min(seconds, 1.0)))
        e = asyncio.run(open_loop(echo, RATE_PER_S, seconds))
        b = asyncio.run(open_loop(bd, RATE_PER_S, seconds))
    print(f"echo    : {e.calls} calls, p50 {e.pct_ms(50):.2f} ms, p99 {e.pct_ms(99):.2f} ms")
    print(f"budgetd : {b.calls} calls, p50 {b.pct_ms(50):.2f} ms, p99 {b.pct_ms(99):.2f} ms, "
          f"{b.errors} errors")
    ok = verdict("low_load_p50_ms", b.pct_ms(50), f"<= {P50_MS}", b.pct_ms(50) <= P50_MS,
                 args.smoke)
    ok &= verdict("low_load_p99_ms", b.pct_ms(99), f"<= {P99_MS}", b.pct_ms(99) <= P99_MS,
                  args.smoke)
    return 0 if ok and not b.errors else 1


if __name__ == "__main__":
    sys.exit(main())
