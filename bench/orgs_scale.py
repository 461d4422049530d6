"""100,000 configured orgs, one Redis, one budgetd, one run:

- throughput: Reserve closed loop (64 in flight), each request on a random org
  of all configured orgs, vs every request on one org; alternated (ABAB…),
  the median of the rounds' ratios (a neighbour's burst in one window moves
  that round's ratio, not the median). Target: ratio (many/one) >= 0.9.
  Interleaved with them, a
  reference budgetd + Redis holding only that one org (measured, no target):
  what merely having 100,000 orgs costs, which the same-server ratio cannot
  see (budgetd's expiry sweeper walks every org once a second, in A and B).
  CPU µs per call of budgetd and Redis are printed too: they move far less
  than calls/s with the neighbours' load on a shared machine.
- memory: the Redis memory one active org/team/feature costs (its rules, day
  and month counters with the report counters among them, its bd:orgs member),
  after one Reserve and one Reconcile each; the per-request records
  (bd:{org}:q:<request_id>, gone after the reservation's life) measured
  apart and excluded. Target: <= 1024 bytes.

The rules of 100,000 orgs are written as SetBudget writes them (the rules
script, then the orgs set) over a pipeline (300k SetBudget RPCs would take
minutes); the result is checked key for key against an org configured
through the real RPC."""

from __future__ import annotations

import asyncio
import os
import pathlib
import random
import statistics
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc.aio
import redis
from _common import (
    Load,
    budgetd,
    closed_loop,
    median,
    parser,
    redis_server,
    use_uvloop,
    verdict,
)
from budgetd import windows as w
from budgetd.admin import UNIT_CODES, WINDOW_CODES, check_rule
from budgetd.ledger import ScopePath
from budgetd.limits import MAX_RULES_PER_ORG, RECORD_RETENTION_S
from budgetd.scripts import Script
from budgetd_client import AdminClient, CallPolicy
from budgetd_client._proto.budget.v1 import budget_pb2 as pb
from budgetd_client._proto.budget.v1 import budget_pb2_grpc as pb_grpc

TARGET_RATIO = 0.9
TARGET_BYTES = 1024
CONCURRENCY = 64
ORGS, SMOKE_ORGS = 100_000, 2_000
# Orgs made active for the memory figure: enough that per-key noise averages out.
ACTIVE, SMOKE_ACTIVE = 10_000, 200
# Orgs per pipeline when writing rules (3 rules + 3 SADD each).
BULK_ORGS = 2_000
LIMIT = 10**15  # never reached: no alerts, no denials
TEAM, FEATURE = "team", "feat"
# Orgs whose keys are listed one by one for the per-kind table.
SAMPLE_ORGS = 200
# Extra orgs with a 36-character id (a UUID), to show how id length moves the figure.
UUID_ORGS = 50
# ReserveBatch size of the pass that touches every org before the throughput
# runs. budgetd sends one SADD and one HGET per org it has not seen (or whose
# cached zone is older than 30 s) outside its script pipeline, each on its own
# pooled connection; 500 such orgs in one batch exceed the pool's 256
# connections and part of the batch fails "Too many connections".
TOUCH_BATCH = 100


def org_name(i: int) -> str:
    return f"bench{i}"


def rules_of(org: str) -> list[tuple[ScopePath, str, str]]:
    """The rules `set_budgets` (bench/_common.py) sets: month cost at org,
    day tokens at team, day cost at feature."""
    return [(ScopePath(org), "m", "c"), (ScopePath(org, TEAM), "d", "t"),
            (ScopePath(org, TEAM, FEATURE), "d", "c")]


# -- configuring the orgs ----------------------------------------------------

async def write_rules(r: redis.Redis, orgs: list[str]) -> None:
    """What SetBudget does (admin.py: the rules script, then the orgs set),
    pipelined: check_bulk_path compares the result with a real SetBudget."""
    script = Script("rules")
    r.script_load(script.source)
    for lo in range(0, len(orgs), BULK_ORGS):
        pipe = r.pipeline(transaction=False)
        for org in orgs[lo:lo + BULK_ORGS]:
            for scope, window, unit in rules_of(org):
                # check_rule is what the SetBudget servicer calls (default mode, thresholds).
                rule = check_rule(scope, window, unit, LIMIT, "h", [])
                pipe.evalsha(script.sha, 2, w.rules_key(org), w.settings_key(org), "set",
                             rule.field, rule.value, MAX_RULES_PER_ORG)
            pipe.sadd(w.ORGS_KEY, org)
        pipe.execute()


def set_rules_rpc(address: str, org: str) -> None:
    with AdminClient(address, policy=CallPolicy(timeout_s=10, total_timeout_s=30)) as admin:
        for scope, window, unit in rules_of(org):
            admin.set_budget(scope.path, WINDOW_CODES[window], UNIT_CODES[unit], LIMIT)


def org_keys(r: redis.Redis, org: str) -> list[str]:
    """Every key of one org, by SCAN (walks the whole keyspace: use sparingly)."""
    return sorted(k.decode() for k in r.scan_iter(match=f"{w.org_tag(org)}:*", count=10_000))


def snapshot(r: redis.Redis, org: str) -> dict[str, Any]:
    out: dict[str, Any] = {"member of bd:orgs": bool(r.sismember(w.ORGS_KEY, org))}
    for k in org_keys(r, org):
        kind = r.type(k).decode()
        content: Any = r.hgetall(k) if kind == "hash" else r.dump(k)
        out[k] = (kind, r.ttl(k), content)
    return out


def check_bulk_path(r: redis.Redis, address: str) -> str:
    """The same org configured by SetBudget RPCs, then by the bulk path:
    identical keys, types, TTLs and contents."""
    org = "verify0"
    set_rules_rpc(address, org)
    by_rpc = snapshot(r, org)
    for k in org_keys(r, org):
        r.delete(k)
    r.srem(w.ORGS_KEY, org)
    asyncio.run(write_rules(r, [org]))
    by_bulk = snapshot(r, org)
    if by_rpc != by_bulk:
        raise SystemExit(f"bulk rule writes differ from SetBudget:\n{by_rpc}\n{by_bulk}")
    keys = [v for k, v in by_rpc.items() if k != "member of bd:orgs"]
    return f"{len(keys)} key(s), {sum(len(v[2]) for v in keys)} field(s), bd:orgs member"


# -- activity ------------------------------------------------------------------

def reserve_on(org: str) -> pb.ReserveRequest:
    req = pb.ReserveRequest(request_id=uuid.uuid4().hex,
                            scope=pb.Scope(org=org, team=TEAM, feature=FEATURE),
                            model="bench-model", ttl_seconds=300)
    req.estimate.explicit.tokens = 100
    req.estimate.explicit.cost_micros = 10
    return req


async def activate(address: str, orgs: list[str]) -> list[str]:
    """One Reserve and one Reconcile per org (input, output and cache-read
    tokens, as a prompt-cached call reports them); the request record key of
    each org, in the order of `orgs`."""
    todo = iter(orgs)
    records: dict[str, str] = {}
    async with grpc.aio.insecure_channel(address) as ch:
        stub = pb_grpc.BudgetServiceStub(ch)

        async def worker() -> None:
            for org in todo:
                req = reserve_on(org)
                res = await stub.Reserve(req, timeout=30)
                if res.decision != pb.DECISION_ALLOWED:
                    raise SystemExit(f"reserve on {org} was not allowed: {res}")
                rec = pb.ReconcileRequest(reservation_id=res.reservation_id, cost_micros=8)
                rec.usage.input_tokens = 60
                rec.usage.output_tokens = 30
                rec.usage.cache_read_input_tokens = 10
                await stub.Reconcile(rec, timeout=30)
                records[org] = w.request_key(org, req.request_id)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return [records[org] for org in orgs]


# -- memory --------------------------------------------------------------------

def used_memory(r: redis.Redis) -> dict[str, int]:
    """INFO used_memory, and the MEMORY STATS parts that explain it."""
    # Let clientsCron shrink idle clients' query buffers, so they do not count.
    time.sleep(1.5)
    info = r.info("memory")
    stats = r.memory_stats()
    db: dict[str, int] = stats.get("db.0", {}) or {}
    return {"used": int(info["used_memory"]),
            "table_main": int(db.get("overhead.hashtable.main", 0)),
            "table_expires": int(db.get("overhead.hashtable.expires", 0))}


def key_kind(key: str) -> str:
    """'bd:{o}:w:d20261125' -> 'w:d'; 'bd:{o}:q:<id>' -> 'q'; 'bd:{o}:rules' -> 'rules'."""
    parts = key.split("}:", 1)[1].split(":")
    if len(parts) > 1 and parts[0] in ("w", "rep", "fired"):
        return f"{parts[0]}:{parts[1][0]}"
    return parts[0]


def describe_keys(r: redis.Redis, keys: list[str]) -> dict[str, dict[str, float | str]]:
    """MEMORY USAGE, encoding, fields and field-name bytes per key kind (mean)."""
    pipe = r.pipeline(transaction=False)
    for k in keys:
        pipe.memory_usage(k, samples=0)
        pipe.object("encoding", k)
        pipe.hgetall(k)
    got = pipe.execute()
    rows: dict[str, list[tuple[int, str, dict[bytes, bytes]]]] = defaultdict(list)
    for i, k in enumerate(keys):
        usage, enc, fields = got[3 * i:3 * i + 3]
        rows[key_kind(k)].append((int(usage or 0), (enc or b"?").decode(), fields or {}))
    out: dict[str, dict[str, float | str]] = {}
    for kind, xs in rows.items():
        out[kind] = {
            "bytes": statistics.mean(x[0] for x in xs),
            "encoding": ",".join(sorted({x[1] for x in xs})),
            "fields": statistics.mean(len(x[2]) for x in xs),
            "name_bytes": statistics.mean(sum(len(f) for f in x[2]) for x in xs),
            "value_bytes": statistics.mean(sum(len(v) for v in x[2].values()) for x in xs),
        }
    return out


def scope_keys(r: redis.Redis, org: str, record: str) -> list[str]:
    """The long-lived keys of an active org, named from its request record's
    windows; SCAN of a few orgs checks that nothing else exists."""
    hold = r.hget(record, "hold")
    assert hold is not None, record
    dwid, mwid = hold.decode().split(" ")[3:5]  # ledger.HOLD_PARTS
    keys = [w.rules_key(org), w.window_key(org, dwid), w.window_key(org, mwid)]
    # Only an org with settings of its own has a settings hash.
    return [*keys, w.settings_key(org)] if r.exists(w.settings_key(org)) else keys


def print_kinds(title: str, kinds: dict[str, dict[str, float | str]]) -> float:
    print(title)
    print(f"  {'key':<8}{'MEMORY USAGE':>13}  {'encoding':<10}{'fields':>7}"
          f"{'field names':>12}{'values':>8}")
    total = 0.0
    for kind, row in sorted(kinds.items(), key=lambda kv: -float(kv[1]["bytes"])):
        total += float(row["bytes"])
        print(f"  {kind:<8}{row['bytes']:>11.0f} B  {row['encoding']:<10}{row['fields']:>7.1f}"
              f"{row['name_bytes']:>10.0f} B{row['value_bytes']:>6.0f} B")
    print(f"  {'sum':<8}{total:>11.0f} B")
    return total


def orgs_member_bytes(r: redis.Redis) -> float:
    return int(r.memory_usage(w.ORGS_KEY, samples=0) or 0) / max(1, int(r.scard(w.ORGS_KEY)))


def measure_memory(r: redis.Redis, address: str, orgs: list[str], active: int,
                   base: dict[str, int]) -> float:
    """Bytes per active scope, request records excluded. `base` was taken
    before the rules of `orgs` were written."""
    configured = used_memory(r)
    rules_per_org = (configured["used"] - base["used"]) / len(orgs)
    print(f"configured {len(orgs)} orgs: used_memory +{configured['used'] - base['used']:,} B "
          f"= {rules_per_org:.0f} B per org (rules hash + bd:orgs member; main table "
          f"+{configured['table_main'] - base['table_main']:,} B)", flush=True)

    act = orgs[:active]
    t0 = time.monotonic()
    records = asyncio.run(activate(address, act))
    print(f"activated {active} orgs (Reserve + Reconcile each) in {time.monotonic() - t0:.1f} s",
          flush=True)
    after = used_memory(r)
    sample = list(zip(act[:SAMPLE_ORGS], records[:SAMPLE_ORGS], strict=True))
    # Nothing but the expected keys (and the request record) exists for an active org.
    for org, rec in sample[:3]:
        extra = set(org_keys(r, org)) - {*scope_keys(r, org, rec), rec}
        if extra:
            raise SystemExit(f"unexpected keys for {org}: {sorted(extra)}")
    kinds = describe_keys(r, [k for org, rec in sample for k in scope_keys(r, org, rec)])
    pipe = r.pipeline(transaction=False)
    for rec in records:
        pipe.memory_usage(rec, samples=0)
    record_bytes = sum(int(x or 0) for x in pipe.execute()) / len(records)
    rec_kind = describe_keys(r, records[:SAMPLE_ORGS])["q"]
    pipe = r.pipeline(transaction=False)
    for rec in records:
        pipe.delete(rec)
    pipe.execute()
    without = used_memory(r)

    with_records = rules_per_org + (after["used"] - configured["used"]) / active
    per_scope = rules_per_org + (without["used"] - configured["used"]) / active
    print(f"per active org/team/feature, from used_memory deltas over {active} orgs:")
    print(f"  with its request record    {with_records:7.0f} B")
    print(f"  without (long-lived keys)  {per_scope:7.0f} B   = rules {rules_per_org:.0f} B "
          f"+ activity {per_scope - rules_per_org:.0f} B")
    print(f"  request record             {record_bytes:7.0f} B by MEMORY USAGE, "
          f"{(after['used'] - without['used']) / active:.0f} B by used_memory "
          f"({rec_kind['fields']:.0f} fields, {rec_kind['encoding']}, "
          f"values {rec_kind['value_bytes']:.0f} B)")
    rec_used = (after["used"] - without["used"]) / active
    print(f"  records stay {RECORD_RETENTION_S // 86_400} days after settling: "
          f"{rec_used * RECORD_RETENTION_S / 1e9:.2f} GB held per 1 Reserve/s sustained")
    tables = sum(without[t] - configured[t] for t in ("table_main", "table_expires"))
    print(f"  of which Redis's key tables  {tables / active:7.0f} B (main + expires dicts: entries "
          "and bucket arrays, which double at powers of two)")
    summed = print_kinds(f"keys of one active scope (mean of {len(sample)} orgs, "
                         f"org ids {min(len(o) for o in act)}-{max(len(o) for o in act)} chars):",
                         kinds)
    member = orgs_member_bytes(r)
    print(f"  + bd:orgs member ~{member:.0f} B; MEMORY USAGE sum {summed + member:.0f} B vs "
          f"{per_scope:.0f} B used_memory (the rest: expires-dict entries, table buckets)")
    return per_scope


def uuid_org_figure(r: redis.Redis, address: str) -> None:
    """The same scope with a 36-character org id: field names repeat the path."""
    orgs = [str(uuid.uuid4()) for _ in range(UUID_ORGS)]
    for org in orgs:
        set_rules_rpc(address, org)
    records = asyncio.run(activate(address, orgs))
    kinds = describe_keys(r, [k for org, rec in zip(orgs, records, strict=True)
                              for k in scope_keys(r, org, rec)])
    print_kinds(f"the same with 36-character org ids (UUIDs, {UUID_ORGS} orgs):", kinds)


# -- throughput ----------------------------------------------------------------

def pid_listening(address: str) -> int:
    """The pid of the budgetd serving `address` (Linux /proc)."""
    needle = f"--listen\0{address}\0".encode()
    for d in pathlib.Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if needle in (d / "cmdline").read_bytes():
                    return int(d.name)
            except OSError:
                continue
    raise SystemExit(f"no process listens on {address}")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu(pids: dict[str, int], seconds: float) -> str:
    """Share of one core each process burns with no traffic (the expiry sweeper
    walks every org once a second)."""
    before = {name: cpu_s(pid) for name, pid in pids.items()}
    time.sleep(seconds)
    return ", ".join(f"{name} {100 * (cpu_s(pid) - before[name]) / seconds:.1f} %"
                     for name, pid in pids.items())


def timed_loop(address: str, pids: dict[str, int], seconds: float,
               make: Callable[[int], pb.ReserveRequest]) -> tuple[Load, dict[str, float]]:
    """A closed loop, and each process's CPU µs per Reserve over it (calls
    during the warm-up estimated at the measured rate): CPU per call moves
    far less with the neighbours' load than calls per second."""
    before = {name: cpu_s(pid) for name, pid in pids.items()}
    t0 = time.monotonic()
    load = asyncio.run(closed_loop(address, CONCURRENCY, seconds, make))
    calls = max(1.0, load.rps * (time.monotonic() - t0))
    return load, {name: 1e6 * (cpu_s(pid) - before[name]) / calls for name, pid in pids.items()}


async def touch_all(address: str, orgs: list[str]) -> None:
    """One Reserve on every org: a long-running server has seen every org, and
    every active org has its day and month keys (the steady state, not the
    first minutes after a restart or a midnight)."""
    async with grpc.aio.insecure_channel(address) as ch:
        stub = pb_grpc.BudgetServiceStub(ch)
        for lo in range(0, len(orgs), TOUCH_BATCH):
            req = pb.ReserveBatchRequest(requests=[reserve_on(org)
                                                   for org in orgs[lo:lo + TOUCH_BATCH]])
            res = await stub.ReserveBatch(req, timeout=60)
            failed = [x.error_message for x in res.results if not x.HasField("response")]
            if failed:
                raise SystemExit(f"{len(failed)} reservations failed: {failed[0]}")


@dataclass
class Server:
    address: str
    pids: dict[str, int]


@dataclass
class Series:
    label: str
    rps: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)

    def run(self, server: Server, seconds: float,
            make: Callable[[int], pb.ReserveRequest]) -> str:
        load, cpu = timed_loop(server.address, server.pids, seconds, make)
        if load.errors:
            raise SystemExit(f"{self.label} budgetd answered {load.errors} errors, the first "
                             f"{load.first_error}")
        self.rps.append(load.rps)
        self.cpu_us.append(sum(cpu.values()))
        return f"{self.label} {load.rps:5.0f} rps (CPU µs/call {_fmt(cpu)})"


def throughput(main: Server, ref: Server, orgs: list[str], rounds: int,
               seconds: float) -> tuple[float, float]:
    """Rounds of: random orgs of all on the main server (A), one org on it
    (B), one org on the reference server, which has only that org (C); the
    medians of the rounds' A/B (the target) and A/C ratios. A/C adds what
    merely having the orgs costs (the expiry sweeper walks every org each
    second, in both A and B)."""
    rng = random.Random(1)
    many = Series(f"{len(orgs)} orgs:")
    one = Series("one org:")
    alone = Series("one-org server:")

    def spread(_: int) -> pb.ReserveRequest:
        return reserve_on(orgs[rng.randrange(len(orgs))])

    def first(_: int) -> pb.ReserveRequest:
        return reserve_on(orgs[0])

    # Interleaved, so a noisy neighbour hurts every side alike.
    for _ in range(rounds):
        print("   ".join([many.run(main, seconds, spread), one.run(main, seconds, first),
                          alone.run(ref, seconds, first)]), flush=True)
    for s in (many, one, alone):
        print(f"median {s.label} {median(s.rps):.0f} rps, budgetd + Redis CPU "
              f"{median(s.cpu_us):.0f} µs per call")
    return (median([m / o for m, o in zip(many.rps, one.rps, strict=True)]),
            median([m / a for m, a in zip(many.rps, alone.rps, strict=True)]))


def _fmt(cpu: dict[str, float]) -> str:
    return " ".join(f"{name} {us:.0f}" for name, us in cpu.items())


def main() -> int:
    p = parser(__doc__ or "")
    p.add_argument("--expiry-interval-s", type=float, default=None,
                   help="pass to budgetd (e.g. 3600 to see throughput without the sweeper)")
    args = p.parse_args()
    flags = [] if args.expiry_interval_s is None else ["--expiry-interval-s",
                                                        str(args.expiry_interval_s)]
    use_uvloop()
    n_orgs = SMOKE_ORGS if args.smoke else ORGS
    active = SMOKE_ACTIVE if args.smoke else ACTIVE
    seconds = 0.5 if args.smoke else args.seconds
    rounds = 1 if args.smoke else 5
    idle_s = 1.0 if args.smoke else 3.0
    orgs = [org_name(i) for i in range(n_orgs)]
    with redis_server() as server, budgetd(server.url, *flags) as bd, \
            redis_server() as ref_server, budgetd(ref_server.url, *flags) as ref_bd:
        r = redis.Redis.from_url(server.url)
        print(f"bulk rule writes match SetBudget RPCs: {check_bulk_path(r, bd)}", flush=True)
        # Load the scripts and warm the server before the baseline.
        asyncio.run(activate(bd, ["verify0"]))
        pids = {"budgetd": pid_listening(bd), "redis": server.proc.pid}  # type: ignore[union-attr]
        set_rules_rpc(ref_bd, orgs[0])
        ref = Server(ref_bd, {"budgetd": pid_listening(ref_bd),
                              "redis": ref_server.proc.pid})  # type: ignore[union-attr]
        print(f"idle CPU with 1 org: {idle_cpu(pids, idle_s)}", flush=True)
        base = used_memory(r)
        t0 = time.monotonic()
        asyncio.run(write_rules(r, orgs))
        print(f"wrote the rules of {n_orgs} orgs in {time.monotonic() - t0:.1f} s", flush=True)
        per_scope = measure_memory(r, bd, orgs, active, base)
        uuid_org_figure(r, bd)
        print(f"idle CPU with {n_orgs} orgs: {idle_cpu(pids, idle_s)}", flush=True)
        t0 = time.monotonic()
        asyncio.run(touch_all(bd, orgs))
        print(f"one Reserve on each of the {n_orgs} orgs in {time.monotonic() - t0:.1f} s",
              flush=True)
        ratio, vs_alone = throughput(Server(bd, pids), ref, orgs, rounds, seconds)
        r.close()
    ok = verdict("orgs_scale_throughput_ratio", ratio, f">= {TARGET_RATIO}",
                 ratio >= TARGET_RATIO, args.smoke)
    print(f"RESULT orgs_scale_vs_one_org_server_ratio = {vs_alone:.3f}   target none (measured)"
          "   ok")
    ok = verdict("orgs_memory_bytes_per_scope", per_scope, f"<= {TARGET_BYTES}",
                 per_scope <= TARGET_BYTES, args.smoke) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
