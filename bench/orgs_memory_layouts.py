"""Redis memory of one active org/team/feature under the key layout before
0.2, the changes 0.2 made (cumulative, the last of them is the current
layout), and two changes not made (they need a migration: docs/scaling.md),
measured on synthetic keys in an embedded Redis: used_memory delta per scope
over many scopes (what a deployment pays, hash-table buckets included). Also
the request record under the default and a larger hash-max-listpack-value.

    .venv/bin/python bench/orgs_memory_layouts.py [--scopes 20000]

Informational (no target): bench/orgs_scale.py measures the real layout
through budgetd; the "now" row here should agree with it, but for the rules
generation field (#c) and the bd:orgs member, which only that one writes.
The key contents copy what reserve.lua / settle.lua write after one Reserve
and one Reconcile (input, output and cache-read tokens), with the rules
`set_budgets` sets."""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from _common import redis_server

DAY, MONTH = "d20261125", "m202611"
TEAM, FEATURE = "team", "feat"
RULE_VALUE = "1000000000000000|h|50,75,90,100"
RULE_VALUE_DEFAULT_TH = "1000000000000000|h|"  # thresholds omitted = the defaults
USED = {"t": "100", "c": "8"}
REPORT = {"i": "60", "o": "30", "cr": "10", "c": "8", "n": "1"}
REPORT_PACKED = {"u": "60 30 0 10 8", "n": "1"}  # "i o cw cr c" in one field
PIPELINE_SCOPES = 1_000
HINCRBY_CALLS = 10_000
FEATURES = (1, 10, 30, 100, 300)
# The record reserve.lua + settle.lua leave for one reconciled reservation
# (captured from budgetd; `resp` and `settle_resp` are its stored answers).
RECORD = {
    "kind": "reserve", "scope": "{org}/team/feat", "model": "bench-model",
    "estimate": "x:100:10", "ttl": "300", "fallbacks": "", "batch": "0",
    "created_ms": "1795648204557", "state": "reconciled", "granted": "bench-model",
    "tokens": "100", "cost": "10", "dwid": DAY, "mwid": MONTH, "dexp": "1798761600",
    "mexp": "1830643200", "paths": "{org},{org}/team,{org}/team/feat",
    "expires_ms": "1795648504557",
    "resp": '{"alerts":{},"remaining":[{"path":"{org}","limit":"1000000000000000","u":"c",'
            '"mode":"h","w":"m","remaining":"999999999999990"},{"path":"{org}\\/team",'
            '"limit":"1000000000000000","u":"t","mode":"h","w":"d","remaining":'
            '"999999999999900"},{"path":"{org}\\/team\\/feat","limit":"1000000000000000",'
            '"u":"c","mode":"h","w":"d","remaining":"999999999999990"}],"tokens":"100",'
            '"model":"bench-model","crossings":{},"decision":"allowed","expires_ms":'
            '"1795648504557","cost":"10"}',
    "settle_model": "bench-model", "settle_usage": "60:30:0:0:10:8",
    "settle_resp": '{"state":"reconciled","tokens":"100","cost":"10","late":false,'
                   '"alerts":{},"actual_cost":"8","actual_tokens":"100"}',
    "late": "0",
}


@dataclass(frozen=True)
class Layout:
    name: str
    relative_fields: bool = False  # "u|team|t", not "u|acme/team|t" (the key names the org)
    drop_zero_reserved: bool = False  # HDEL an r| counter that settles back to 0
    report_in_window: bool = False  # sm| fields in the window's counter hash
    units_in_one_field: bool = False  # "u|team" = "tokens:cost"
    default_thresholds_implicit: bool = False  # rule value without "50,75,90,100"
    report_packed: bool = False  # "sm|...|u" = "i o cw cr c", and "sm|...|n"


NOW = Layout("now: + default thresholds implicit in rule values", drop_zero_reserved=True,
             report_in_window=True, report_packed=True, default_thresholds_implicit=True)
LAYOUTS = [
    Layout("before 0.2"),
    Layout("+ report counters in the window hash, reserved counters at 0 deleted",
           drop_zero_reserved=True, report_in_window=True),
    Layout("+ usage report metrics in one field", drop_zero_reserved=True,
           report_in_window=True, report_packed=True),
    NOW,
    Layout("(not made) + counter/rule fields relative to the org", relative_fields=True,
           drop_zero_reserved=True, report_in_window=True, report_packed=True,
           default_thresholds_implicit=True),
    Layout("(not made) + tokens and cost in one field", relative_fields=True,
           drop_zero_reserved=True, report_in_window=True, report_packed=True,
           default_thresholds_implicit=True, units_in_one_field=True),
]


def scope_keys(org: str, lay: Layout, features: int = 1
               ) -> list[tuple[str, dict[str, str], bool]]:
    """(key, fields, has a TTL) of one org with one team and `features`
    active features (one active scope each), each with a day cost rule."""
    tag = f"bd:{{{org}}}"
    feats = [FEATURE] if features == 1 else [f"{FEATURE}{j}" for j in range(features)]
    levels = ["", TEAM, *(f"{TEAM}/{f}" for f in feats)]
    rule_paths = [("", "m", "c"), (TEAM, "d", "t"), *((f"{TEAM}/{f}", "d", "c") for f in feats)]

    def path(rel: str) -> str:
        if lay.relative_fields:
            return rel
        return f"{org}/{rel}" if rel else org

    rules = {f"{path(rel)}|{w}|{u}": RULE_VALUE_DEFAULT_TH if lay.default_thresholds_implicit
             else RULE_VALUE for rel, w, u in rule_paths}
    counters: dict[str, str] = {}
    for rel in levels:
        if lay.units_in_one_field:
            counters[f"u|{path(rel)}"] = f"{USED['t']}:{USED['c']}"
            if not lay.drop_zero_reserved:
                counters[f"r|{path(rel)}"] = "0:0"
            continue
        for u in ("t", "c"):
            counters[f"u|{path(rel)}|{u}"] = USED[u]
            if not lay.drop_zero_reserved:
                counters[f"r|{path(rel)}|{u}"] = "0"
    metrics = REPORT_PACKED if lay.report_packed else REPORT
    report = {f"sm|{TEAM}/{f}|bench-model|{m}": v for f in feats for m, v in metrics.items()}
    out = [(f"{tag}:rules", rules, False)]
    for wid in (DAY, MONTH):
        if lay.report_in_window:
            out.append((f"{tag}:w:{wid}", {**counters, **report}, True))
        else:
            out += [(f"{tag}:w:{wid}", counters, True), (f"{tag}:rep:{wid}", report, True)]
    return out


def measure(r: redis.Redis, n: int, write: Callable[[Any, int], None]) -> float:
    """used_memory delta per item over n items (FLUSHALL first)."""
    r.flushall()
    time.sleep(1.0)  # idle clients' query buffers shrink
    before = int(r.info("memory")["used_memory"])
    for lo in range(0, n, PIPELINE_SCOPES):
        pipe = r.pipeline(transaction=False)
        for i in range(lo, min(n, lo + PIPELINE_SCOPES)):
            write(pipe, i)
        pipe.execute()
    time.sleep(1.0)
    return (int(r.info("memory")["used_memory"]) - before) / n


def org_ids(style: str, n: int) -> list[str]:
    return [str(uuid.uuid4()) if style == "uuid" else f"bench{i}" for i in range(n)]


def layout_row(r: redis.Redis, lay: Layout, n: int, orgs: list[str]) -> tuple[int, float, float]:
    def write(pipe: Any, i: int) -> None:
        for key, fields, ttl in scope_keys(orgs[i], lay):
            pipe.hset(key, mapping=fields)
            if ttl:
                pipe.expire(key, 86_400 * 30)
        pipe.sadd("bd:orgs", orgs[i])

    per_scope = measure(r, n, write)
    usage = sum(int(r.memory_usage(k, samples=0) or 0) for k, _, _ in scope_keys(orgs[0], lay))
    return len(scope_keys(orgs[0], lay)), per_scope, float(usage)


def features_row(r: redis.Redis, n: int, features: int, listpack_entries: int
                 ) -> tuple[float, str, float]:
    """Bytes per scope when each org has `features` active features, the
    encoding of its window hash, and Redis µs per HINCRBY on it."""
    r.config_set("hash-max-listpack-entries", listpack_entries)
    orgs = org_ids("short", max(1, n // features))

    def write(pipe: Any, i: int) -> None:
        for key, fields, ttl in scope_keys(orgs[i], NOW, features):
            pipe.hset(key, mapping=fields)
            if ttl:
                pipe.expire(key, 86_400 * 30)
        pipe.sadd("bd:orgs", orgs[i])

    per_scope = measure(r, len(orgs), write) / features
    window = f"bd:{{{orgs[0]}}}:w:{DAY}"
    enc = (r.object("encoding", window) or b"?").decode()  # type: ignore[union-attr]
    # Integer fields (not the packed usage report field "...|u").
    fields = [f for f in r.hkeys(window) if not f.endswith(b"|u")]
    us = float("inf")
    for _ in range(3):  # the least disturbed of 3 runs: the machine is shared
        r.config_resetstat()
        pipe = r.pipeline(transaction=False)
        for j in range(HINCRBY_CALLS):
            pipe.hincrby(window, fields[(j * 7919) % len(fields)], 1)
        pipe.execute()
        us = min(us, float(r.info("commandstats")["cmdstat_hincrby"]["usec_per_call"]))
    r.config_set("hash-max-listpack-entries", 128)
    return per_scope, enc, us


def record_row(r: redis.Redis, n: int, listpack_value: int) -> tuple[str, float, int]:
    r.config_set("hash-max-listpack-value", listpack_value)

    def write(pipe: Any, i: int) -> None:
        org = f"bench{i}"
        key = f"bd:{{{org}}}:q:{uuid.uuid4().hex}"
        pipe.hset(key, mapping={k: v.replace("{org}", org) for k, v in RECORD.items()})
        pipe.expire(key, 604_800)

    per_record = measure(r, n, write)
    key = r.randomkey()
    enc = (r.object("encoding", key) or b"?").decode()  # type: ignore[union-attr]
    return enc, per_record, int(r.memory_usage(key, samples=0) or 0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--scopes", type=int, default=20_000, help="scopes written per layout")
    p.add_argument("--smoke", action="store_true", help="2,000 scopes")
    args = p.parse_args()
    n = 2_000 if args.smoke else args.scopes
    with redis_server() as server:
        r = redis.Redis.from_url(server.url)
        version = r.info("server")["redis_version"]
        print(f"redis {version}, {n} scopes per row; bytes per active org/team/feature "
              "(used_memory delta / scopes; MEMORY USAGE sum of one scope's keys)")
        print(f"  {'layout':<72}{'keys':>5}{'org id 5-9 chars':>18}{'36-char org id':>16}")
        for lay in LAYOUTS:
            keys, short, short_usage = layout_row(r, lay, n, org_ids("short", n))
            _, long, long_usage = layout_row(r, lay, n, org_ids("uuid", n))
            print(f"  {lay.name:<72}{keys:>5}{short:>8.0f} ({short_usage:>4.0f}){long:>9.0f} "
                  f"({long_usage:>4.0f})", flush=True)
        print("orgs with one team and F active features (one scope each), current layout: "
              "bytes per scope, window hash encoding, Redis µs per HINCRBY on it")
        for entries in (128, 512, 1024):
            row = []
            for f in FEATURES:
                per_scope, enc, us = features_row(r, n, f, entries)
                row.append(f"F={f}: {per_scope:5.0f} {enc[:2]} {us:.2f}µs")
            print(f"  hash-max-listpack-entries {entries:<5} " + "  ".join(row), flush=True)
        print("request record (one reconciled reservation), bytes per record:")
        for value in (64, 1024):
            enc, per_record, usage = record_row(r, n, value)
            print(f"  hash-max-listpack-value {value:<5} {enc:<10} {per_record:6.0f} "
                  f"(MEMORY USAGE {usage})", flush=True)
        r.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
