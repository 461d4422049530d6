"""Redis CPU per Reserve, from INFO commandstats (cmdstat_evalsha
usec_per_call): the exact reserve script calls budgetd's ledger makes
(captured from the real Ledger) replayed into a fresh database in pipelines
of 250, the stats reset before each pipeline. The median over the pipelines
is the figure (a pipeline that shared the CPU with a neighbour reads high;
the minimum is printed too).

Two rule sets: 3 levels with a rule each (org month cost, team day tokens,
feature day cost: the bench's standard), and every rule there can be (3
levels x 2 windows x 2 units = 12). Target: <= 25 µs per call.

The target was set on another host (issue 5: "an 11-key hierarchical reserve
script ... ~17 µs of Redis CPU per call"), and hosts of this machine's kind
differ by ~30 %. So the same run also replays such a script, the yardstick
(reference_reserve.lua), the same way: each figure is printed as measured and
adjusted to the yardstick's host, x 17 / (the yardstick's µs per call here),
and the adjusted figure is held to the target. The series are replayed in
interleaved rounds (a pipeline of each per round), and the ratio to the
yardstick is the median of the rounds' ratios: a neighbour's burst during one
replay moved a single-pass figure by up to 2x."""

from __future__ import annotations

import asyncio
import pathlib
import statistics
import sys
import uuid
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio as aioredis
from _common import BENCH_ORGS, budgetd, parser, redis_server, reserve_request, set_budgets, verdict
from budgetd import validate
from budgetd.batching import ScriptBatcher
from budgetd.clock import SystemClock
from budgetd.ledger import Ledger, PricingSource
from budgetd.scripts import ScriptCall
from budgetd_client import AdminClient, CallPolicy
from budgetd_client._proto.budget.v1 import budget_pb2 as pb

MAX_US = 25.0
# The yardstick's Redis CPU per call on the host the target was set on (issue 5).
REFERENCE_US = 17.0
BATCH = 250
REFERENCE = pathlib.Path(__file__).resolve().parent / "reference_reserve.lua"
Call = tuple[str, list[str], list[Any]]


class Capture(ScriptBatcher):
    """Records every reserve script call the ledger makes, then runs it."""

    def __init__(self, r: Any) -> None:
        super().__init__(r)
        self.calls: list[Call] = []
        self.source = ""

    async def call(self, script: Any, keys: list[str], args: list[str | int],
                   encoded: bytes | None = None) -> Any:
        if script.name == "reserve":
            self.calls.append((script.sha, keys, args))
            self.source = script.source
        return await super().call(script, keys, args, encoded)

    async def call_many(self, script: Any, calls: list[ScriptCall]) -> list[Any]:
        if script.name == "reserve":
            self.calls += [(script.sha, keys, args) for keys, args, _ in calls]
            self.source = script.source
        return await super().call_many(script, calls)


async def capture(url: str, n: int, make: Callable[[int], pb.ReserveRequest]
                  ) -> tuple[str, list[Call]]:
    r = aioredis.from_url(url)
    ledger = Ledger(r, SystemClock(), PricingSource(r))
    cap = Capture(r)
    ledger.scripts.attach(cap)
    for lo in range(0, n, 500):
        reqs = [validate.reserve(make(i)) for i in range(lo, min(n, lo + 500))]
        answers = await ledger.reserve_many(reqs)
        assert not any(isinstance(a, BaseException) for a in answers), answers[:3]
    await r.aclose()
    return cap.source, cap.calls


def full_request(i: int) -> pb.ReserveRequest:
    req = pb.ReserveRequest(request_id=uuid.uuid4().hex,
                            scope=pb.Scope(org=f"full{i % BENCH_ORGS}", team="team",
                                           feature="feat"),
                            model="bench-model", ttl_seconds=300)
    req.estimate.explicit.tokens = 100
    req.estimate.explicit.cost_micros = 10
    return req


def replay(r: redis.Redis, source: str, calls: list[Call]) -> tuple[float, float, float]:
    """Median and minimum µs per call over the pipelines, and the commands
    the script ran per call."""
    sha = r.script_load(source)
    per_call: list[float] = []
    inner = 0
    for lo in range(0, len(calls), BATCH):
        r.config_resetstat()
        pipe = r.pipeline(transaction=False)
        for _, keys, args in calls[lo:lo + BATCH]:
            pipe.evalsha(sha, len(keys), *keys, *args)
        for out in pipe.execute():
            assert (out[0] if isinstance(out, list) else out) == b"ok", out
        stats = r.info("commandstats")
        per_call.append(float(stats["cmdstat_evalsha"]["usec_per_call"]))
        inner = sum(int(v["calls"]) for k, v in stats.items()
                    if k not in ("cmdstat_evalsha", "cmdstat_config|resetstat"))
    return statistics.median(per_call), min(per_call), inner / min(BATCH, len(calls))


def reference_calls(r: redis.Redis, n: int) -> list[Call]:
    """The yardstick's calls: BENCH_ORGS orgs, a day and a month limit on each
    of 3 levels (never reached), one reservation per call."""
    calls: list[Call] = []
    for i in range(n):
        org, rid = f"{{ref{i % BENCH_ORGS}}}", uuid.uuid4().hex
        levels = [org, f"{org}/team", f"{org}/team/feat"]
        keys = ([f"ref:{org}:q:{rid}"] + [f"ref:{p}:limits" for p in levels]
                + [f"ref:{p}:{w}" for p in levels for w in ("d20261126", "m202611")]
                + [f"ref:{org}:exp"])
        calls.append(("", keys, [rid, 100, 1795673651706, 300]))
    for i in range(BENCH_ORGS):
        org = f"{{ref{i}}}"
        for p in (org, f"{org}/team", f"{org}/team/feat"):
            r.hset(f"ref:{p}:limits", mapping={"d": 10**15, "m": 10**15})
    return calls


def main() -> int:
    args = parser(__doc__ or "").parse_args()
    n = 1000 if args.smoke else 10_000
    ok = True
    with redis_server() as server, budgetd(server.url) as bd:
        set_budgets(bd)
        with AdminClient(bd, policy=CallPolicy(timeout_s=10, total_timeout_s=30)) as admin:
            for i in range(BENCH_ORGS):
                for scope in (f"full{i}", f"full{i}/team", f"full{i}/team/feat"):
                    for window in ("day", "month"):
                        for unit in ("tokens", "cost_micros"):
                            admin.set_budget(scope, window, unit, 10**15)
        r = redis.Redis.from_url(server.url)
        # Captured in db 1 (same rules and settings), replayed in db 0:
        # fresh reservations.
        for pattern in ("bd:*:rules", "bd:*:cfg"):
            for key in r.scan_iter(match=pattern):
                r.copy(key, key, destination_db=1)
        db1 = server.url.rsplit("/", 1)[0] + "/1"
        captured = [(name, label, *asyncio.run(capture(db1, n, make))) for name, make, label in (
            ("redis_cpu_per_reserve", reserve_request, "3 levels, a rule each"),
            ("redis_cpu_per_reserve_12_rules", full_request, "3 levels, 12 rules"))]
        series = [("redis_cpu_reference", "yardstick", REFERENCE.read_text(),
                   reference_calls(r, n)), *captured]
        # Interleaved rounds, each replaying the next pipeline of every
        # series' calls: a neighbour's burst moves one round's ratio, not the
        # median.
        rounds, per = n // BATCH, BATCH
        us: dict[str, list[float]] = {name: [] for name, *_ in series}
        cmds: dict[str, float] = {}
        for i in range(rounds):
            for name, _, source, calls in series:
                med, _, cmds[name] = replay(r, source, calls[i * per:(i + 1) * per])
                us[name].append(med)
        ref = us["redis_cpu_reference"]
        ref_us = statistics.median(ref)
        print(f"Yardstick (reference_reserve.lua, 11 keys, {cmds['redis_cpu_reference']:.0f} "
              f"commands): {ref_us:.1f} µs per call here (median of {rounds} rounds), "
              f"{REFERENCE_US:.0f} on the target's host")
        print(f"RESULT redis_cpu_reference_us = {ref_us:.3f}   (measured)", flush=True)
        for name, label, _, _ in captured:
            med = statistics.median(us[name])
            times = statistics.median(u / y for u, y in zip(us[name], ref, strict=True))
            print(f"Redis CPU per Reserve ({label}): median {med:.1f} µs per call, "
                  f"{cmds[name]:.0f} commands per call, {n} calls; {times:.2f} x the "
                  "yardstick (median of the rounds' ratios)")
            print(f"RESULT {name}_us = {med:.3f}   (measured on this host)", flush=True)
            adjusted = times * REFERENCE_US
            ok &= verdict(f"{name}_adjusted_us", adjusted, f"<= {MAX_US:.0f}",
                          adjusted <= MAX_US, args.smoke)
        r.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
