"""ReserveBatch throughput vs a plain redis-py pipelined script loop, same
Redis, same run. The baseline replays the exact script calls budgetd's ledger
makes (captured from the real Ledger), 500 per pipeline, from one sync
redis-py client: Redis plus the thinnest Python around it. budgetd answers
ReserveBatch calls of 500 reservations, 2 calls in flight.
Target: >= 0.5 x the baseline. Issue 5 puts it as ">= 17k reservations/s, half
of a plain redis-py pipelined script loop measured in the same run": 17k was
half the loop on the host the issue was written on, and the loop's own rate
moves with the host (8.6k-24k/s on this machine's hosts), so the figure is
held to half the loop of the same run and reservations/s are printed as
measured."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import grpc.aio
import redis
import redis.asyncio as aioredis
from _common import (
    BENCH_ORGS,
    budgetd,
    parser,
    redis_server,
    reserve_request,
    set_budgets,
    use_uvloop,
    verdict,
)
from budgetd import validate
from budgetd.batching import ScriptBatcher
from budgetd.clock import SystemClock
from budgetd.ledger import Ledger, PricingSource
from budgetd.scripts import Script, ScriptCall
from budgetd_client._proto.budget.v1 import budget_pb2 as pb
from budgetd_client._proto.budget.v1 import budget_pb2_grpc as pb_grpc

BATCH = 500
IN_FLIGHT = 2
MIN_PER_S = 17_000
MIN_RATIO = 0.5


class Capture(ScriptBatcher):
    """Records every script call the ledger makes, then runs it."""

    def __init__(self, r: Any) -> None:
        super().__init__(r)
        self.calls: list[tuple[Script, list[str], list[str | int]]] = []

    async def call(self, script: Script, keys: list[str], args: list[str | int],
                   encoded: bytes | None = None) -> Any:
        self.calls.append((script, keys, args))
        return await super().call(script, keys, args, encoded)

    async def call_many(self, script: Script, calls: list[ScriptCall]) -> list[Any]:
        self.calls += [(script, keys, args) for keys, args, _ in calls]
        return await super().call_many(script, calls)


async def capture(url: str, n: int) -> list[tuple[Script, list[str], list[str | int]]]:
    r = aioredis.from_url(url)
    ledger = Ledger(r, SystemClock(), PricingSource(r))
    cap = Capture(r)
    ledger.scripts.attach(cap)
    for lo in range(0, n, BATCH):
        reqs = [validate.reserve(reserve_request(i)) for i in range(lo, min(n, lo + BATCH))]
        answers = await ledger.reserve_many(reqs)
        assert not any(isinstance(a, BaseException) for a in answers), answers[:3]
    await r.aclose()
    return [c for c in cap.calls if c[0].name == "reserve"]


def baseline(url: str, calls: list[tuple[Script, list[str], list[str | int]]]
             ) -> tuple[float, float]:
    """Reservations/s, and Redis CPU per reserve script call (µs, from INFO
    commandstats)."""
    r = redis.Redis.from_url(url)
    r.script_load(calls[0][0].source)
    r.config_resetstat()
    t0 = time.perf_counter()
    for lo in range(0, len(calls), BATCH):
        pipe = r.pipeline(transaction=False)
        for script, keys, args in calls[lo:lo + BATCH]:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        for out in pipe.execute():
            assert isinstance(out, list) and out[0] == b"ok", out  # a real reservation
    took = time.perf_counter() - t0
    usec = float(r.info("commandstats").get("cmdstat_evalsha", {}).get("usec_per_call", 0))
    r.close()
    return len(calls) / took, usec


async def through_budgetd(address: str, seconds: float) -> tuple[float, int]:
    async with grpc.aio.insecure_channel(address) as ch:
        stub = pb_grpc.BudgetServiceStub(ch)
        done = 0
        bad = 0
        counter = 0
        stop_at = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal done, bad, counter
            while time.monotonic() < stop_at:
                reqs = [reserve_request(counter + i) for i in range(BATCH)]
                counter += BATCH
                resp = await stub.ReserveBatch(pb.ReserveBatchRequest(requests=reqs),
                                               timeout=30)
                done += sum(1 for x in resp.results
                            if x.HasField("response")
                            and x.response.decision == pb.DECISION_ALLOWED)
                bad += sum(1 for x in resp.results if not x.HasField("response"))

        await stub.ReserveBatch(pb.ReserveBatchRequest(
            requests=[reserve_request(i) for i in range(BATCH)]), timeout=30)  # warm
        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
        return done / (time.monotonic() - t0), bad


def main() -> int:
    args = parser(__doc__ or "").parse_args()
    use_uvloop()
    seconds = 0.5 if args.smoke else args.seconds
    n = 1000 if args.smoke else 20_000
    with redis_server() as server, budgetd(server.url) as bd:
        set_budgets(bd)
        r = redis.Redis.from_url(server.url)
        # The capture runs in db 1 (with the same rules), so the replay in
        # db 0 makes fresh reservations, as budgetd does.
        for i in range(BENCH_ORGS):
            for kind in ("rules", "cfg"):
                r.copy(f"bd:{{bench{i}}}:{kind}", f"bd:{{bench{i}}}:{kind}", destination_db=1)
        r.close()
        calls = asyncio.run(capture(server.url.rsplit("/", 1)[0] + "/1", n))
        base, usec = baseline(server.url, calls)
        per_s, bad = asyncio.run(through_budgetd(bd, seconds))
    ratio = per_s / base
    print(f"Redis CPU per reserve script call (3 levels with rules): {usec:.1f} µs")
    print(f"redis-py pipelined loop: {base:,.0f} reservations/s; "
          f"budgetd ReserveBatch: {per_s:,.0f} reservations/s ({bad} item errors)")
    ok = verdict("reserve_batch_ratio", ratio, f">= {MIN_RATIO}", ratio >= MIN_RATIO, args.smoke)
    print(f"RESULT reserve_batch_per_s = {per_s:.3f}   (measured on this host; "
          f"{MIN_PER_S:,} where the loop ran {MIN_PER_S / MIN_RATIO:,.0f}/s)", flush=True)
    return 0 if ok and not bad else 1


if __name__ == "__main__":
    sys.exit(main())
