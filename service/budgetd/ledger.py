"""The ledger: reserve, settle, record, expire and read budgets, each decision
one atomic Lua script. Inputs arrive validated (budgetd.validate); this module
prices them, picks the keys and window ids, and interprets the answers."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from budgetd import orgcache, resp
from budgetd import windows as w
from budgetd.alerts import alerts_key, fired_key
from budgetd.batching import pipeline_encoded
from budgetd.clock import Clock
from budgetd.codec import text
from budgetd.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from budgetd.limits import (
    DENIED_RETENTION_S,
    EXPIRE_BATCH,
    MAX_REQUEST_COST_MICROS,
    MONTH_RETENTION_S,
    RECORD_RETENTION_S,
)
from budgetd.orgcache import OrgConfig
from budgetd.pricing import PriceTable, PricingError, UnknownModelError, UsageTokens
from budgetd.redis_conn import is_cluster
from budgetd.scripts import Scripts

log = logging.getLogger("budgetd.ledger")


@dataclass(frozen=True, slots=True)
class ScopePath:
    org: str
    team: str = ""
    feature: str = ""

    @property
    def paths(self) -> list[str]:
        return w.scope_paths(self.org, self.team, self.feature)

    @property
    def path(self) -> str:
        return self.paths[-1]


@dataclass(frozen=True, slots=True)
class ReserveInput:
    request_id: str
    scope: ScopePath
    model: str
    ttl_s: int
    # Either a token estimate (input_tokens, max_output_tokens) ...
    input_tokens: int | None = None
    max_output_tokens: int | None = None
    # ... or an explicit amount.
    explicit_tokens: int | None = None
    explicit_cost_micros: int | None = None
    fallback_models: tuple[str, ...] = ()
    batch: bool = False

    def estimate_key(self) -> str:
        if self.input_tokens is not None:
            return f"t:{self.input_tokens}:{self.max_output_tokens}"
        cost = "-" if self.explicit_cost_micros is None else str(self.explicit_cost_micros)
        return f"x:{self.explicit_tokens}:{cost}"


@dataclass(frozen=True, slots=True)
class SettleInput:
    org: str
    request_id: str
    usage: UsageTokens | None = None  # None: release
    model: str = ""
    cost_micros: int | None = None


@dataclass(frozen=True, slots=True)
class RecordInput:
    request_id: str
    scope: ScopePath
    model: str
    usage: UsageTokens
    cost_micros: int | None = None
    batch: bool = False
    # Past usage (imports): charged to the windows of this time; None: now.
    occurred_ms: int | None = None


# Record.occurred_at: how far back (the month counters' retention) and ahead
# (clock skew) a recorded usage may be dated.
MAX_RECORD_AGE_MS = MONTH_RETENTION_S * 1000
MAX_RECORD_AHEAD_MS = 60_000


@dataclass(slots=True)
class Answer:
    """A script's answer: the JSON payload and whether it is a replay."""

    data: dict[str, Any]
    replay: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    # A Reserve's answer as the script gave it (data is then empty: the
    # service reads the flat form, see service.reserve_out).
    flat: str = ""


def usage_key(u: UsageTokens) -> str:
    return f"{u.input}:{u.output}:{u.cache_write_5m}:{u.cache_write_1h}:{u.cache_read}"


def usage_split(u: UsageTokens) -> tuple[int, int, int, int]:
    """Input, output, cache-write and cache-read tokens, as reports count them."""
    return (u.input, u.output, u.cache_write_5m + u.cache_write_1h, u.cache_read)


# (second, org) pairs the frequent expiry sweep keeps per process; past this
# new ones are left to the full walk (expire_all).
MAX_DUE_ENTRIES = 1_000_000
# The walk lease (hold_walk) lasts at most this long: a dead holder's walk is
# taken over within it.
MAX_WALK_LEASE_MS = 3_600_000
# Orgs this process remembers having added to bd:orgs; past this it starts
# over (adding an org again is one idempotent SADD).
MAX_KNOWN_ORGS = 1_000_000
# The reserve script's keys (reserve.lua): the request record, then the org's.
RESERVE_KEYS = 8

# What a Reserve retry must repeat, in the order of its fingerprint.
FINGERPRINT_FIELDS = ("scope", "model", "estimate", "ttl_seconds", "fallback_models", "batch")


class _ReserveArgs(Sequence[Any]):
    """A reserve call's ARGV, put together only where it is sent plain (a
    cluster, the NOSCRIPT fallback): a single server gets the call encoded,
    and decoding the scope's run on every call would cost ~1 µs for nothing."""

    __slots__ = ("_all", "_day", "_own", "_scope")

    def __init__(self, day: list[Any], scope: orgcache.ScopeRules, own: list[Any]) -> None:
        self._day, self._scope, self._own = day, scope, own
        self._all: list[Any] | None = None

    def _list(self) -> list[Any]:
        if self._all is None:
            self._all = [*self._day, *self._scope.script_args, *self._own]
        return self._all

    def __len__(self) -> int:
        return len(self._day) + self._scope.nargs + len(self._own)

    @overload
    def __getitem__(self, i: int) -> Any: ...
    @overload
    def __getitem__(self, i: slice) -> list[Any]: ...
    def __getitem__(self, i: int | slice) -> Any:
        return self._list()[i]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._list())


def _fingerprint(req: ReserveInput) -> str:
    # No part holds a space (ids, model names and estimates are validated).
    return (f"{req.scope.path} {req.model} {req.estimate_key()} {req.ttl_s} "
            f"{','.join(req.fallback_models)} {int(req.batch)}")


def _fingerprint_differs(stored: str, mine: str) -> str:
    """The name of the first field in which a retry differs from the first call."""
    for name, a, b in zip(FINGERPRINT_FIELDS, stored.split(" "), mine.split(" "), strict=False):
        if a != b:
            return name
    return "request"


def reserve_answer(payload: Any) -> dict[str, Any]:
    """The reserve script's flat answer as the dict the service reads (a
    record written before the flat format holds JSON)."""
    s = payload.decode() if isinstance(payload, bytes) else str(payload)
    if s.startswith("{"):
        return dict(json.loads(s))
    head, _, alerts = s.partition("\n")
    p = head.split(" ")
    allowed = p[0] == "a"
    tokens, cost = p[2], p[3]
    remaining = []
    crossings = []
    denial: dict[str, str] = {}
    for k in range(5, len(p), 4):
        rule_field, rule_value, used_s, reserved_s = p[k:k + 4]
        path, win, unit = rule_field.split("|")
        limit_s, mode, _ = rule_value.split("|")
        asked = tokens if unit == "t" else cost
        limit, consumed = int(limit_s), int(used_s) + int(reserved_s)
        if allowed:
            consumed += int(asked)
        remaining.append({"path": path, "w": win, "u": unit, "mode": mode, "limit": limit_s,
                          "remaining": str(limit - consumed)})
        info = {"path": path, "w": win, "u": unit, "mode": mode, "limit": limit_s,
                "used": used_s, "reserved": reserved_s, "requested": asked}
        if allowed and mode != "h" and consumed > limit:
            crossings.append(info)
        elif not allowed and rule_field == p[4]:
            denial = dict(info, model=p[1])
    out: dict[str, Any] = {"remaining": remaining,
                           "alerts": json.loads(alerts) if alerts else []}
    if allowed:
        out.update(decision="allowed", model=p[1], tokens=tokens, cost=cost, expires_ms=p[4],
                   crossings=crossings)
    else:
        out.update(decision="denied", denial=denial)
    return out


# A held reservation's facts, as the reserve script packs them in the
# record's 'hold' field (space-separated), and (records written before that
# field) the fields that held them, the last two as separate fields.
HOLD_PARTS = ("granted", "tokens", "cost", "dwid", "mwid", "dexp", "mexp", "expires_ms",
              "paths", "created_ms")
LEGACY_HOLD_FIELDS = ("granted", "dwid", "mwid", "created_ms", "batch")


def hold_of(hold: str, fp: str, legacy: list[str]) -> dict[str, str]:
    """model (granted), window ids, created_ms and batch of a reservation."""
    if hold:
        out = dict(zip(HOLD_PARTS, hold.split(" "), strict=True))
        out["batch"] = fp.rsplit(" ", 1)[-1]  # the fingerprint ends with it
        return out
    return dict(zip(LEGACY_HOLD_FIELDS, legacy, strict=True))


def _windows_of(hold: Any, dwid: Any, mwid: Any) -> tuple[Any, Any]:
    """The window ids of a record, packed or (older records) separate."""
    if hold:
        parts = text(hold).split(" ")
        return parts[HOLD_PARTS.index("dwid")], parts[HOLD_PARTS.index("mwid")]
    return dwid, mwid


def reservation_id(org: str, request_id: str) -> str:
    return f"{org}:{request_id}"




def _decode(raw: Any) -> tuple[str, Any]:
    status = text(raw[0])
    payload = raw[1] if len(raw) > 1 else None
    if isinstance(payload, bytes):
        payload = payload.decode()
    return status, payload




class Ledger:
    def __init__(self, redis: Any, clock: Clock, pricing: PricingSource) -> None:
        self.redis = redis
        self.clock = clock
        self.pricing = pricing
        self.scripts = Scripts()
        self._reserve_head = resp.encode(("EVALSHA", self.scripts.reserve.sha, RESERVE_KEYS))
        self._orgs: dict[str, OrgConfig] = {}
        self._known_orgs: set[str] = set()
        # Expiry second -> the orgs in which this process granted a
        # reservation expiring then: the frequent sweep visits only the orgs
        # whose second has come (expire_active).
        self._due: dict[int, set[str]] = {}
        self._due_entries = 0
        # Where the walk over every org (expire_walk) resumes: an SSCAN cursor.
        self._walk_cursor = 0

    # -- helpers -----------------------------------------------------------

    async def org_config(self, org: str, fresh: bool = False) -> OrgConfig:
        """The org's zone and rules as this replica caches them (orgcache.py)."""
        hit = None if fresh else self._cached(org)
        if hit is not None:
            return hit
        return self._cache_orgs(await orgcache.load(self.redis, [org], self.scripts.org_tz))[org]

    def _cached(self, org: str) -> OrgConfig | None:
        """The org's cached config if still fresh (no await: the hot path
        checks it before calling org_config)."""
        hit = self._orgs.get(org)
        return hit if hit is not None and hit.fresh() else None

    def _cache_orgs(self, got: dict[str, OrgConfig]) -> dict[str, OrgConfig]:
        if len(self._orgs) + len(got) > orgcache.MAX_CACHED_ORGS:
            self._orgs.clear()
        self._orgs.update(got)
        return got

    async def _prepare_orgs(self, orgs: set[str]) -> None:
        """Notes and loads every org a batch names that this process has not
        seen, in one pipeline: one round trip per org, each on its own
        connection, would exhaust the pool with a batch of 500 new orgs."""
        new = [o for o in orgs if o not in self._known_orgs]
        if new:
            await self.redis.sadd(w.ORGS_KEY, *new)
            self._remember_orgs(new)
        cold = [o for o in orgs if self._cached(o) is None]
        if cold:
            self._cache_orgs(await orgcache.load(self.redis, cold, self.scripts.org_tz))

    async def org_tz(self, org: str, fresh: bool = False) -> str:
        return (await self.org_config(org, fresh)).tz

    def forget_org(self, org: str) -> None:
        self._orgs.pop(org, None)

    async def _note_org(self, org: str) -> None:
        # The sweeper finds orgs here; in a cluster this set lives in another
        # slot than the org's keys, so it is written before the script runs.
        if org not in self._known_orgs:
            await self.redis.sadd(w.ORGS_KEY, org)
            self._remember_orgs([org])

    def _remember_orgs(self, orgs: list[str]) -> None:
        if len(self._known_orgs) + len(orgs) > MAX_KNOWN_ORGS:
            self._known_orgs.clear()
        self._known_orgs.update(orgs)

    def _at(self, ms: int) -> dt.datetime:
        return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc)

    def _price(self, table: PriceTable, model: str, field_name: str, usage: UsageTokens,
               at_ms: int, batch: bool) -> int:
        try:
            cost = table.cost_micros(model, usage, self._at(at_ms), batch=batch)
        except UnknownModelError as e:
            raise FailedPrecondition(
                f"{field_name}: unknown model {model!r}; set its pricing with SetPricing "
                "or pass an explicit cost_micros (an unknown model is never free)", field_name
            ) from e
        except PricingError as e:
            raise FailedPrecondition(f"{field_name}: {e}", field_name) from e
        if cost > MAX_REQUEST_COST_MICROS:
            raise InvalidArgument(field_name, f"cost {cost} micro-USD exceeds the per-request "
                                  f"maximum {MAX_REQUEST_COST_MICROS}")
        return cost

    def _candidates(self, req: ReserveInput, now_ms: int) -> list[tuple[str, int, int]]:
        if (req.explicit_cost_micros is not None and req.input_tokens is None
                and not req.fallback_models):
            # The common explicit reservation: nothing to price.
            assert req.explicit_tokens is not None
            return [(req.model, req.explicit_tokens, req.explicit_cost_micros)]
        table = self.pricing.table()
        at = self._at(now_ms)
        out: list[tuple[str, int, int]] = []
        models = [("model", req.model)] + [
            (f"fallback_models[{i}]", m) for i, m in enumerate(req.fallback_models)
        ]
        for field_name, model in models:
            if req.input_tokens is not None:
                assert req.max_output_tokens is not None
                try:
                    tokens, cost, _ = table.estimate(model, req.input_tokens,
                                                     req.max_output_tokens, at, batch=req.batch)
                except UnknownModelError as e:
                    raise FailedPrecondition(
                        f"{field_name}: unknown model {model!r}; set its pricing with "
                        "SetPricing or reserve an explicit amount with cost_micros "
                        "(an unknown model is never free)", field_name) from e
                except PricingError as e:
                    raise FailedPrecondition(f"{field_name}: {e}", field_name) from e
                if cost > MAX_REQUEST_COST_MICROS:
                    raise InvalidArgument(field_name, f"estimated cost {cost} micro-USD exceeds "
                                          f"the per-request maximum {MAX_REQUEST_COST_MICROS}")
            else:
                assert req.explicit_tokens is not None
                tokens = req.explicit_tokens
                if req.explicit_cost_micros is not None:
                    cost = req.explicit_cost_micros
                else:
                    # No cost given: price every token as output, an upper bound.
                    cost = self._price(table, model, field_name, UsageTokens(output=tokens),
                                       now_ms, req.batch)
            out.append((model, tokens, cost))
        return out

    # -- calls -------------------------------------------------------------

    @staticmethod
    def _reserve_keys(org: str, cfg: OrgConfig, win: w.Windows) -> tuple[str, ...]:
        """The reserve script's keys but the request's own: the same for every
        call of an org in one day, so built once per org and day (kept with
        the org's cached config, whose size bounds them)."""
        ck = (win.day_id, win.month_id)
        keys = cfg.keys.get(ck)
        if keys is None:
            if len(cfg.keys) >= 4:
                cfg.keys.clear()  # past days
            keys = cfg.keys[ck] = (
                w.rules_key(org), w.window_key(org, win.day_id),
                w.window_key(org, win.month_id), w.expiry_key(org), fired_key(org, win.day_id),
                fired_key(org, win.month_id), alerts_key(org))
        return keys

    def _reserve_call(self, req: ReserveInput, cfg: OrgConfig, now_ms: int,
                      cands: list[tuple[str, int, int]]
                      ) -> tuple[list[str], Sequence[Any], bytes]:
        """The reserve script's KEYS and ARGV (str, int and bytes) for one
        request, and the whole EVALSHA command encoded (see resp.py): the
        scope's arguments as the org cache keeps them encoded, the rest
        encoded here."""
        org = req.scope.org
        win = w.windows_at(now_ms, cfg.tz)
        expires_ms = now_ms + req.ttl_s * 1000
        sr = cfg.scope_rules(org, req.scope.team, req.scope.feature)
        keys = [w.request_key(org, req.request_id), *self._reserve_keys(org, cfg, win)]
        assert len(keys) == RESERVE_KEYS
        day: list[Any] = [cfg.check, win.day_id, win.month_id, win.day_expire_at_s,
                          win.month_expire_at_s, now_ms + DENIED_RETENTION_S * 1000]
        own: list[Any] = [req.request_id, _fingerprint(req), now_ms, expires_ms,
                          expires_ms + RECORD_RETENTION_S * 1000, len(cands)]
        # Per candidate, what the script would otherwise build in Lua: its
        # report field, its record's hold and its answer's head.
        hold_tail = (f"{win.day_id} {win.month_id} {win.day_expire_at_s} "
                     f"{win.month_expire_at_s} {expires_ms} {sr.joined} {now_ms}")
        for model, tokens, cost in cands:
            own += [model, tokens, cost, f"{sr.group}{model}|n",
                    f"{model} {tokens} {cost} {hold_tail}",
                    f"a {model} {tokens} {cost} {expires_ms}"]
        encoded = resp.join(3 + RESERVE_KEYS + len(day) + sr.nargs + len(own),
                            self._reserve_head, resp.encode((*keys, *day)), sr.encoded_args,
                            resp.encode(own))
        return keys, _ReserveArgs(day, sr, own), encoded

    def _reserve_result(self, req: ReserveInput, cfg: OrgConfig, raw: Any) -> Answer | None:
        """The script's answer for one request; None: the org's zone or rules
        changed since we cached them (reload and call again)."""
        status, payload = _decode(raw)
        if status == "stale_cfg":
            return None
        if status == "exists":
            raise _exists(payload, "request_id", req.request_id)
        if status == "exists_fp":
            raise _exists(_fingerprint_differs(text(payload), _fingerprint(req)),
                          "request_id", req.request_id)
        flat = text(payload)
        if flat.startswith("a "):
            self._note_due(req.scope.org, int(flat.split(" ", 5)[4]))
        elif flat.startswith("{"):  # a record written before the flat format
            legacy = reserve_answer(flat)
            if legacy["decision"] == "allowed":
                self._note_due(req.scope.org, int(legacy["expires_ms"]))
        return Answer({}, replay=status == "dup", extra={"tz": cfg.tz}, flat=flat)

    async def reserve(self, req: ReserveInput) -> Answer:
        org = req.scope.org
        # Each await below only when needed: a coroutine per call costs more
        # than the check.
        if self.pricing.due():
            await self.pricing.refresh()
        now_ms = self.clock.now_ms()
        cands = self._candidates(req, now_ms)
        if org not in self._known_orgs:
            await self._note_org(org)
        cfg = self._cached(org) or await self.org_config(org)
        for attempt in range(3):
            if attempt:
                cfg = await self.org_config(org, fresh=True)
            keys, args, encoded = self._reserve_call(req, cfg, now_ms, cands)
            got = self._reserve_result(req, cfg, await self.scripts.reserve(
                self.redis, keys, args, encoded=encoded))
            if got is not None:
                return got
        raise Unavailable("the org's time zone or rules changed during the call; retry")

    async def reserve_many(self, reqs: list[ReserveInput]) -> list[Answer | BaseException]:
        """ReserveBatch: each reservation as `reserve` makes it, with its own
        answer or error, all script calls in one pipeline: built here in one
        pass, with no coroutine per reservation."""
        if self.pricing.due():
            await self.pricing.refresh()
        await self._prepare_orgs({r.scope.org for r in reqs})
        now_ms = self.clock.now_ms()
        out: list[Answer | BaseException | None] = [None] * len(reqs)
        calls: list[tuple[int, OrgConfig, tuple[list[str], Sequence[Any], bytes]]] = []
        for i, req in enumerate(reqs):
            try:
                cfg = self._cached(req.scope.org) or await self.org_config(req.scope.org)
                calls.append((i, cfg, self._reserve_call(req, cfg, now_ms,
                                                         self._candidates(req, now_ms))))
            except Exception as e:  # each item gets its own error
                out[i] = e
        script = self.scripts.reserve
        replies = await script.many(self.redis, [c for _, _, c in calls])
        for (i, cfg, _), raw in zip(calls, replies, strict=True):
            try:
                if isinstance(raw, BaseException):
                    raise raw
                got = self._reserve_result(reqs[i], cfg, raw)
                # Stale (a rule changed meanwhile): this one again, alone.
                out[i] = got if got is not None else await self.reserve(reqs[i])
            except Exception as e:
                out[i] = e
        assert all(o is not None for o in out)
        return [o for o in out if o is not None]

    async def _read_reservation(self, org: str, request_id: str) -> dict[str, str]:
        raw = await self.redis.hmget(w.request_key(org, request_id), "kind", "state", "hold",
                                     "fp", *LEGACY_HOLD_FIELDS)
        vals = [text(v) if v is not None else "" for v in raw]
        if vals[0] != "reserve":
            raise NotFound(f"reservation_id: no reservation {reservation_id(org, request_id)!r} "
                           "(never made, or settled more than 7 days ago)", "reservation_id")
        if vals[1] == "denied":
            raise FailedPrecondition("reservation_id: the reservation was denied",
                                     "reservation_id")
        return hold_of(vals[2], vals[3], vals[4:])

    async def settle(self, req: SettleInput) -> Answer:
        org = req.org
        await self.pricing.refresh()
        rec = await self._read_reservation(org, req.request_id)
        now_ms = self.clock.now_ms()
        split = (0, 0, 0, 0)
        if req.usage is None:
            op, tokens, cost, model, ukey = "release", 0, 0, "", ""
        else:
            split = usage_split(req.usage)
            op = "reconcile"
            model = req.model or rec["granted"]
            ukey = usage_key(req.usage) + (f":{req.cost_micros}" if req.cost_micros is not None
                                           else "")
            tokens = req.usage.total
            if req.cost_micros is not None:
                cost = req.cost_micros
            else:
                # Priced at the prices in effect when the request was made.
                cost = self._price(self.pricing.table(), model, "model" if req.model else
                                   "reservation.model", req.usage, int(rec["created_ms"]),
                                   rec["batch"] == "1")
        keys = [
            w.request_key(org, req.request_id),
            w.window_key(org, rec["dwid"]),
            w.window_key(org, rec["mwid"]),
            w.expiry_key(org),
            w.settings_key(org),
            w.rules_key(org),
            fired_key(org, rec["dwid"]),
            fired_key(org, rec["mwid"]),
            alerts_key(org),
        ]
        args: list[str | int] = [op, req.request_id, rec["dwid"], rec["mwid"], tokens, cost,
                                 model, ukey, now_ms, RECORD_RETENTION_S, *split]
        status, payload = _decode(await self.scripts.settle(self.redis, keys, args))
        if status in ("ok", "dup"):
            return Answer(json.loads(payload), replay=status == "dup")
        if status == "not_found":
            raise NotFound("reservation_id: no such reservation", "reservation_id")
        if status == "exists":
            raise AlreadyExists(
                f"reservation_id: already reconciled with a different {text(payload)}; "
                "a reconcile is final", text(payload))
        if status == "precondition":
            raise FailedPrecondition(f"reservation_id: {text(payload)}", "reservation_id")
        if status == "stale":
            # The record changed between our read and the script (it expired
            # and its id was reused): nothing was written; a retry re-reads.
            raise Unavailable("reservation_id: the reservation changed during the call; retry",
                              "reservation_id")
        raise AssertionError(f"settle script answered {status!r}")

    async def record(self, req: RecordInput) -> Answer:
        org = req.scope.org
        await self.pricing.refresh()
        now_ms = self.clock.now_ms()
        at_ms = now_ms
        if req.occurred_ms is not None:
            if not now_ms - MAX_RECORD_AGE_MS <= req.occurred_ms <= now_ms + MAX_RECORD_AHEAD_MS:
                raise InvalidArgument("occurred_at", "must be within the last "
                                      f"{MAX_RECORD_AGE_MS // 86_400_000} days, not in the future")
            at_ms = req.occurred_ms
        if req.cost_micros is not None:
            cost = req.cost_micros
        else:
            cost = self._price(self.pricing.table(), req.model, "model", req.usage, at_ms,
                               req.batch)
        await self._note_org(org)
        tz = await self.org_tz(org)
        ukey = usage_key(req.usage) + (f":{req.cost_micros}" if req.cost_micros is not None
                                       else "") + (":b" if req.batch else "") + (
            f"@{req.occurred_ms}" if req.occurred_ms is not None else "")
        for _ in range(2):
            win = w.windows_at(at_ms, tz)
            paths = req.scope.paths
            keys = [w.request_key(org, req.request_id),
                    w.window_key(org, win.day_id), w.window_key(org, win.month_id),
                    w.rules_key(org), fired_key(org, win.day_id),
                    fired_key(org, win.month_id), alerts_key(org)]
            args: list[str | int] = [
                req.request_id, req.scope.path, req.model, ukey, tz, now_ms, win.day_id,
                win.month_id, win.day_expire_at_s, win.month_expire_at_s, RECORD_RETENTION_S,
                req.usage.total, cost, len(paths), *paths, *usage_split(req.usage),
            ]
            status, payload = _decode(await self.scripts.record(self.redis, keys, args))
            if status == "stale_tz":
                # The org's zone changed since we cached it: retry with the stored one.
                tz = (await self.org_config(org, fresh=True)).tz
                continue
            if status == "exists":
                raise _exists(payload, "request_id", req.request_id)
            return Answer(json.loads(payload), replay=status == "dup")
        raise Unavailable("the org's time zone changed during the call; retry")

    async def expire_org(self, org: str, limit: int = EXPIRE_BATCH) -> int:
        """Expire up to `limit` due reservations of one org; returns how many."""
        now_ms = self.clock.now_ms()
        ids = await self.redis.zrangebyscore(w.expiry_key(org), "-inf", now_ms, start=0,
                                             num=limit)
        if not ids:
            return 0
        rids = [text(i) for i in ids]
        pipe = self.redis.pipeline(transaction=False)
        for rid in rids:
            pipe.hmget(w.request_key(org, rid), "hold", "dwid", "mwid")
        recs = [_windows_of(*r) for r in await pipe.execute()]
        keys = [w.expiry_key(org), w.settings_key(org)]
        args: list[str | int] = [now_ms, RECORD_RETENTION_S]
        for rid, (dwid, mwid) in zip(rids, recs, strict=True):
            # A vanished record still gets a slot so the script drops its index entry.
            d = text(dwid) if dwid else "d0"
            m = text(mwid) if mwid else "m0"
            keys += [w.request_key(org, rid), w.window_key(org, d), w.window_key(org, m)]
            args.append(rid)
        return int(await self.scripts.expire(self.redis, keys, args))

    def _note_due(self, org: str, expires_ms: int) -> None:
        second = -(-expires_ms // 1000)
        orgs = self._due.get(second)
        if orgs is None:
            orgs = self._due[second] = set()
        if org not in orgs and self._due_entries < MAX_DUE_ENTRIES:
            orgs.add(org)
            self._due_entries += 1

    async def expire_all(self) -> int:
        """One sweep over every org; bounded work per org per sweep."""
        total = 0
        cursor = 0
        while True:
            cursor, raw = await self.redis.sscan(w.ORGS_KEY, cursor=cursor, count=500)
            total += await self._expire_orgs([text(o) for o in raw])
            if int(cursor) == 0:
                return total

    async def hold_walk(self, owner: str, lease_ms: int) -> bool:
        """Takes or renews the lease on the walk over every org: True if
        `owner` holds it (walks), False if another process does."""
        assert 0 < lease_ms <= MAX_WALK_LEASE_MS, lease_ms
        return bool(await self.scripts.walker(self.redis, [w.WALKER_KEY], [owner, lease_ms],
                                             batched=False))

    async def expire_walk(self, share: float) -> int:
        """The next `share` (0 < share <= 1) of the walk over every org in
        bd:orgs, from where the previous step stopped; a step that completes
        the walk ends there. Spread over the full-sweep period, not one burst:
        the walk costs this process a few µs of CPU per org (~14 through
        redis-py's pipeline, in a cluster), which at 100,000 orgs in one piece
        stalls every call on the event loop."""
        assert 0 < share <= 1, share
        want = max(1, math.ceil(int(await self.redis.scard(w.ORGS_KEY)) * share))
        total = seen = 0
        while seen < want:
            self._walk_cursor, raw = await self.redis.sscan(
                w.ORGS_KEY, cursor=self._walk_cursor, count=min(500, want - seen))
            seen += len(raw)
            total += await self._expire_orgs([text(o) for o in raw])
            if int(self._walk_cursor) == 0:
                break
        return total

    async def expire_active(self) -> int:
        """One sweep over the orgs where a reservation this process granted
        has just expired: work in proportion to what expires, not to the
        number of orgs."""
        now_s = self.clock.now_ms() // 1000
        orgs: set[str] = set()
        for second in [t for t in self._due if t <= now_s]:
            got = self._due.pop(second)
            self._due_entries -= len(got)
            orgs |= got
        todo = sorted(orgs)
        total = 0
        for lo in range(0, len(todo), 500):
            total += await self._expire_orgs(todo[lo:lo + 500], recheck_s=now_s + 1)
        return total

    async def _expire_orgs(self, orgs: list[str], recheck_s: int | None = None) -> int:
        if not orgs:
            return 0
        # One round trip tells which orgs have anything due, so an idle org
        # costs one pipelined command per sweep.
        now_ms = self.clock.now_ms()
        if is_cluster(self.redis):
            pipe = self.redis.pipeline(transaction=False)
            for org in orgs:
                pipe.zrangebyscore(w.expiry_key(org), "-inf", now_ms, start=0, num=1)
            due = await pipe.execute()
        else:
            # Encoded as sent: the walk visits every org, and redis-py's
            # pipeline cost ~4x this per org (most of the walk's CPU).
            due = await pipeline_encoded(self.redis, [
                resp.command(("ZRANGEBYSCORE", w.expiry_key(org), "-inf", now_ms, "LIMIT", 0, 1))
                for org in orgs])
            for reply in due:
                if isinstance(reply, BaseException):
                    raise reply
        total = 0
        for org, first in zip(orgs, due, strict=True):
            if first:
                n = await self.expire_org(org)
                total += n
                if n >= EXPIRE_BATCH and recheck_s is not None:
                    self._note_due(org, recheck_s * 1000)  # more than one batch due
        return total

    async def get_budget(self, scope: ScopePath) -> dict[str, Any]:
        org = scope.org
        tz = await self.org_tz(org, fresh=True)
        now_ms = self.clock.now_ms()
        win = w.windows_at(now_ms, tz)
        p = scope.path
        rfields = [f"{p}|{wn}|{u}" for wn in ("d", "m") for u in ("t", "c")]
        cfields = [f"{k}|{p}|{u}" for u in ("t", "c") for k in ("u", "r")]
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(w.rules_key(org), *rfields)
        pipe.hmget(w.window_key(org, win.day_id), *cfields)
        pipe.hmget(w.window_key(org, win.month_id), *cfields)
        rules, day, month = await pipe.execute()
        out: list[dict[str, Any]] = []
        i = 0
        for wn, counters, start, end, wid in (
            ("d", day, win.day_start_ms, win.day_end_ms, win.day_id),
            ("m", month, win.month_start_ms, win.month_end_ms, win.month_id),
        ):
            for ui, u in enumerate(("t", "c")):
                rule = text(rules[i]) if rules[i] else None
                i += 1
                used = int(counters[2 * ui] or 0)
                reserved = int(counters[2 * ui + 1] or 0)
                entry: dict[str, Any] = {"w": wn, "u": u, "used": used, "reserved": reserved,
                                         "window_id": wid, "resets_at_ms": end}
                elapsed = max(now_ms - start, 1)
                entry["projected"] = (used + reserved) * (end - start) // elapsed
                if rule:
                    limit_s, mode = rule.split("|")[:2]
                    limit = int(limit_s)
                    entry.update(limit=limit, mode=mode, remaining=limit - used - reserved,
                                 percent=(used + reserved) * 100 // limit)
                out.append(entry)
        return {"tz": tz, "windows": out}


def _exists(payload: Any, id_field: str, id_value: str) -> AlreadyExists:
    differs = text(payload)
    if differs == "request_id":
        return AlreadyExists(f"request_id: {id_value!r} was already used by another kind of "
                             "call (Reserve vs Record)", id_field)
    return AlreadyExists(f"request_id: {id_value!r} was already used with a different "
                         f"{differs}", differs)


class PricingSource:
    """The pricing table: shipped defaults overlaid with SetPricing overrides
    stored in Redis, refreshed every `refresh_s` so every replica converges."""

    def __init__(self, redis: Any, refresh_s: float = 2.0) -> None:
        from budgetd.pricing import default_table

        self.redis = redis
        self.refresh_s = refresh_s
        self._defaults = default_table()
        self._table = self._defaults
        self._loaded_at = -1e9
        self._lock = asyncio.Lock()

    def table(self) -> PriceTable:
        return self._table

    def due(self) -> bool:
        """Whether refresh() would read Redis (or wait for a reader)."""
        return time.monotonic() - self._loaded_at >= self.refresh_s

    async def refresh(self, force: bool = False) -> PriceTable:
        if not force and time.monotonic() - self._loaded_at < self.refresh_s:
            return self._table
        if self._lock.locked() and self._loaded_at > 0:
            # Another call is refreshing: use the current table rather than
            # queue behind it (in an outage each waiter would add one Redis
            # timeout, and calls would blow past their deadlines).
            return self._table
        async with self._lock:
            if not force and time.monotonic() - self._loaded_at < self.refresh_s:
                # Another caller refreshed while this one waited for the lock.
                return self._table
            from budgetd.pricing import ModelPricing

            raw = await self.redis.hgetall(w.PRICING_KEY)
            table = self._defaults
            for _, value in sorted(raw.items()):
                try:
                    table = table.with_model(ModelPricing.from_json(text(value)))
                except PricingError:
                    log.exception("ignoring a stored price row that no longer validates")
            self._table = table
            self._loaded_at = time.monotonic()
        return self._table
