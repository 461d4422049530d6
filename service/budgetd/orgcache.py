"""What a replica keeps of an org between calls: its time zone and its
budget rules, with the rules' generation (field `#c` of the rules hash,
"<generation>[ <zone>]", the generation bumped in the same script that
changes a rule: scripts/rules.lua). The zone is set in the org's settings
hash (`tz`) and copied into `#c` when not UTC (scripts/org_tz.lua), so the
reserve script checks zone and generation by comparing one field, and an org
without settings needs no settings hash.

The reserve script receives the rules of the scope, already parsed into the
strings it needs, with the generation and zone they came from; it compares
both with the stored ones and answers 'stale_cfg' if either moved, so a
cached copy is never used after a change. Parsing rules once here instead of
in Lua on every call is most of what keeps Reserve cheap for Redis.

Rules, generation and zone are one HGETALL: a consistent snapshot."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from budgetd import resp
from budgetd import windows as w
from budgetd.codec import text
from budgetd.limits import DEFAULT_ALERT_THRESHOLDS

# A cached org is reloaded after this long even if no call found it stale.
# The scripts' generation check makes the cache exact; this bounds only how
# long a change made by a replica of an earlier version (which bumps no
# generation, or the settings hash's `rgen` of before 0.2, or sets the zone
# in the settings hash only) can go unseen during a rolling upgrade.
ORG_CACHE_S = 300.0
# Orgs a replica keeps (~2.1 KB each with one scope, measured; the scope's
# arguments are kept as one bytes string, encoded as sent: ~160 B more than
# NUL-joined); past this the cache starts over (rebuilding an org is one
# round trip).
MAX_CACHED_ORGS = 120_000
# Scopes compiled per org.
MAX_SCOPES_PER_ORG = 1_000
DEFAULT_THRESHOLDS_CSV = ",".join(str(t) for t in DEFAULT_ALERT_THRESHOLDS)
# A rule's mode in its layout character (see reserve.lua's header).
_MODE_BITS = {"h": 0, "s": 16, "w": 32}


def threshold_amount(limit: int, pct: int) -> int:
    """The consumption at which a `pct`% threshold of `limit` is reached:
    ceil(limit * pct / 100), as the Lua helper of the same name computes it."""
    return -(-limit * pct // 100)


def lua_number(n: int) -> str:
    """`n` as the reserve script converts it, its trailing zeros an exponent
    ('1e15'): Lua reads the shorter string to the same double (both are
    correctly rounded), ~20 ns faster, twice per rule on every Reserve."""
    digits = str(n)
    zeros = len(digits) - len(digits.rstrip("0"))
    return f"{digits[:-zeros]}e{zeros}" if zeros >= 2 and n else digits


@dataclass(frozen=True, slots=True)
class ScopeRules:
    """The reserve script's arguments for one scope under one rule set."""

    paths: list[str]
    joined: str  # the paths comma-joined, as the record stores them
    group: str  # the usage report group prefix "sm|<team[/feature]>|"
    # ARGV[7] of reserve.lua and on: the group prefix, the number of paths,
    # of rules, of day and of month rules, the rules' layout, the counters,
    # per rule "<field> <value>", limit and lowest threshold amount; encoded
    # as a command's arguments (resp.py), which every call sends as they are;
    # one object instead of ~30 also keeps 100k orgs in memory.
    encoded_args: bytes
    nargs: int

    @property
    def script_args(self) -> list[bytes]:
        return resp.decode(self.encoded_args)


@dataclass(slots=True)
class OrgConfig:
    tz: str
    check: str  # the rules hash's '#c' as read ('' if none), which the reserve script compares
    rules: dict[str, str]  # rule field "<path>|<d|m>|<t|c>" -> "<limit>|<mode>|<thresholds>"
    loaded_s: float = field(default_factory=time.monotonic)
    scopes: dict[tuple[str, str, str], ScopeRules] = field(default_factory=dict)
    # (day_id, month_id) -> the reserve script's per-org keys (Ledger._reserve_keys).
    keys: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)

    def fresh(self) -> bool:
        return time.monotonic() - self.loaded_s < ORG_CACHE_S

    def scope_rules(self, org: str, team: str, feature: str) -> ScopeRules:
        key = (org, team, feature)
        got = self.scopes.get(key)
        if got is None:
            if len(self.scopes) >= MAX_SCOPES_PER_ORG:
                self.scopes.clear()
            got = self.scopes[key] = self._compile(org, team, feature)
        return got

    def _compile(self, org: str, team: str, feature: str) -> ScopeRules:
        paths = w.scope_paths(org, team, feature)
        reserved = [f"r|{p}|{u}" for p in paths for u in ("t", "c")]
        # Rules in the order a denial names the first one violated: org
        # before team before feature, day before month, tokens before cost.
        rules = [(f"{p}|{win}|{u}", i, win, u) for i, p in enumerate(paths)
                 for win in ("d", "m") for u in ("t", "c") if f"{p}|{win}|{u}" in self.rules]
        used: dict[str, list[str]] = {"d": [], "m": []}
        layout: list[str] = []
        described: list[str] = []
        for f, i, win, u in rules:
            used[win].append(f"u|{paths[i]}|{u}")
            value = self.rules[f]
            limit, mode, ths = value.split("|")
            if not ths:
                # Stored empty: the defaults (admin.py); so are they passed
                # to the script and in its answer (which reads no thresholds).
                ths = DEFAULT_THRESHOLDS_CSV
            # One character says which reserved counter, window and mode.
            ri = 2 * i + (1 if u == "t" else 2)
            layout.append(chr(48 + ri + (8 if win == "m" else 0) + _MODE_BITS[mode]))
            lowest = min((int(t) for t in ths.split(",") if t), default=None)
            low = "" if lowest is None else lua_number(threshold_amount(int(limit), lowest))
            described += [f"{f} {value}", lua_number(int(limit)), low]
        group = f"sm|{paths[-1][len(org) + 1:]}|"
        args = [group, str(len(paths)), str(len(rules)), str(len(used["d"])),
                str(len(used["m"])), "".join(layout), *used["d"], *reserved, *used["m"],
                *described]
        # Ids, rule values and numbers hold no CR LF (validate.py): the run decodes back.
        assert not any("\r" in a or "\n" in a for a in args), args
        return ScopeRules(paths, ",".join(paths), group, resp.encode(args), len(args))


CHECK_FIELD = "#c"


def zone_of(check: str) -> str:
    """The zone in a '#c' value "<generation>[ <zone>]"."""
    _, _, zone = check.partition(" ")
    return zone or "UTC"


async def copy_zone(redis: Any, org_tz: Any, org: str) -> list[Any]:
    """Runs the org_tz script: the zone of the org's settings hash copied into
    its rules hash's '#c'. Returns the rules hash after, as HGETALL flat."""
    return list(await org_tz(redis, [w.rules_key(org), w.settings_key(org)], [],
                             batched=False))


async def load(redis: Any, orgs: list[str], org_tz: Any) -> dict[str, OrgConfig]:
    """Reads orgs' rules hashes (rules, generation, zone) in one pipeline,
    with each zone as set in its settings hash. Where the two zones differ
    (an org configured before 0.2, or a zone an older replica changed) the
    org_tz script copies it over first: the copy is what the reserve script
    checks."""
    pipe = redis.pipeline(transaction=False)
    for org in orgs:
        pipe.hget(w.settings_key(org), "tz")
        pipe.hgetall(w.rules_key(org))
    got = await pipe.execute()
    out = {}
    for i, org in enumerate(orgs):
        tz, raw = got[2 * i], got[2 * i + 1]
        rules = {text(k): text(v) for k, v in raw.items()}
        if (text(tz) if tz else "UTC") != zone_of(rules.get(CHECK_FIELD, "")):
            flat = await copy_zone(redis, org_tz, org)
            rules = {text(flat[j]): text(flat[j + 1]) for j in range(0, len(flat), 2)}
        check = rules.pop(CHECK_FIELD, "")
        out[org] = OrgConfig(zone_of(check), check, rules)
    return out
