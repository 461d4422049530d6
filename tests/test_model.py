"""Model-based test: random sequences of budget calls against a real budgetd
(real gRPC, real Redis, manual clock), each step checked against a small
in-memory model of the ledger.

After every step: used and reserved of every level/window/unit in Redis equal
the model's, the expiry index holds exactly the held reservations, and
GetBudget of the org agrees. Every retry returns its first answer; every
grant leaves each HARD rule it touches at used + reserved <= limit.
"""

from __future__ import annotations

import collections
import datetime as dt
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import redis
from budgetd.clock import ManualClock
from budgetd.config import Settings
from budgetd.embedded import EmbeddedRedis
from budgetd.server import ServerThread
from budgetd_client import AlreadyExists, FailedPrecondition, Usage
from conftest import T0, Budgetd, ms
from helpers import TEST_BIG, TEST_MODEL, TEST_SMALL, set_test_pricing
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

# Model prices, micro-USD per million tokens: (input, output, cache write 5m,
# cache write 1h, cache read), max output tokens; as tests/helpers.py sets them.
PRICES = {
    TEST_MODEL: ((1_000_000, 2_000_000, 1_250_000, 2_000_000, 100_000), 4096),
    TEST_SMALL: ((100_000, 200_000, 125_000, 200_000, 10_000), 4096),
    TEST_BIG: ((10_000_000, 20_000_000, 12_500_000, 20_000_000, 1_000_000), 8192),
}
MODELS = list(PRICES)
TEAMS = ("a", "b")
MAX_EXAMPLES = int(os.environ.get("BUDGETD_MODEL_EXAMPLES", "200"))
STEPS = 50
# CI runs a fixed sequence of examples (reproducible, no flaky coverage);
# BUDGETD_EXPLORE=1 draws new ones on every run.
EXPLORE = os.environ.get("BUDGETD_EXPLORE") == "1"


def price(model: str, inp: int, out: int, cw5: int = 0, cw1: int = 0, cr: int = 0,
          batch: bool = False) -> int:
    """A request's cost, rounded up once (50% batch discount on input/output)."""
    p, _ = PRICES[model]
    keep = 50 if batch else 100
    exact = (inp * p[0] + out * p[1]) * keep + (cw5 * p[2] + cw1 * p[3] + cr * p[4]) * 100
    return -(-exact // 100_000_000)


def day_id(now_ms: int) -> str:
    return "d" + dt.datetime.fromtimestamp(now_ms / 1000, dt.timezone.utc).strftime("%Y%m%d")


def month_id(now_ms: int) -> str:
    return "m" + dt.datetime.fromtimestamp(now_ms / 1000, dt.timezone.utc).strftime("%Y%m")


def paths_of(scope: str) -> list[str]:
    parts = scope.split("/")
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


@dataclass
class Res:
    """A reservation as the model sees it."""

    rid: str
    request_id: str
    paths: list[str]
    model: str
    tokens: int
    cost: int
    dwid: str
    mwid: str
    expires_ms: int
    batch: bool
    state: str = "held"  # held | expired | reconciled | released
    expired_policy: str = ""
    settle_key: tuple[Any, ...] | None = None
    settle_raw: Any = None
    release_raw: Any = None


@dataclass
class Sent:
    """A call and its first answer, for retries."""

    kind: str  # reserve | record
    kwargs: dict[str, Any]
    raw: Any


class LedgerModel:
    def __init__(self) -> None:
        self.counters: dict[tuple[str, str], int] = {}  # (window id, 'u|path|t') -> n
        self.rules: dict[tuple[str, str, str], tuple[int, str]] = {}  # (path,w,u)->(limit,mode)
        self.res: dict[str, Res] = {}
        self.policy = "keep"

    def get(self, wid: str, f: str) -> int:
        return self.counters.get((wid, f), 0)

    def add(self, wid: str, paths: list[str], kind: str, tokens: int, cost: int) -> None:
        for p in paths:
            for u, n in (("t", tokens), ("c", cost)):
                k = (wid, f"{kind}|{p}|{u}")
                self.counters[k] = self.counters.get(k, 0) + n

    def both(self, r: Res, kind: str, tokens: int, cost: int) -> None:
        self.add(r.dwid, r.paths, kind, tokens, cost)
        self.add(r.mwid, r.paths, kind, tokens, cost)

    def expire(self, r: Res) -> None:
        assert r.state == "held"
        self.both(r, "r", -r.tokens, -r.cost)
        if self.policy == "keep":
            self.both(r, "u", r.tokens, r.cost)
        r.state, r.expired_policy = "expired", self.policy

    def nonzero(self) -> dict[tuple[str, str], int]:
        return {k: v for k, v in self.counters.items() if v != 0}


class BudgetMachine(RuleBasedStateMachine):
    # Set by the test before the machine runs.
    b: Budgetd
    r: Any  # redis.Redis; Any: its stubs type replies as bytes | str
    orgs = itertools.count()
    # Outcomes seen over all examples: the test asserts the interesting ones happened.
    seen: ClassVar[collections.Counter[str]] = collections.Counter()

    reservations = Bundle("reservations")
    sent = Bundle("sent")

    def __init__(self) -> None:
        super().__init__()
        # A fresh org per example: no flush needed, no state leaks across examples.
        self.org = f"m{next(self.orgs)}"
        self.m = LedgerModel()
        self.ids = itertools.count()
        self.clock: ManualClock = self.b.clock
        self.clock.set_ms(ms(T0))
        self.scopes = [self.org, *(f"{self.org}/{t}" for t in TEAMS), f"{self.org}/a/x"]

    def now(self) -> int:
        return self.clock.now_ms()

    def new_id(self) -> str:
        return f"q{next(self.ids)}"

    # -- configuration -----------------------------------------------------

    @initialize()
    def start(self) -> None:
        pass

    @rule(level=st.integers(0, 3), window=st.sampled_from(["day", "month"]),
          unit=st.sampled_from(["tokens", "cost_micros"]),
          limit=st.integers(1, 5_000) | st.integers(1, 60_000),
          mode=st.sampled_from(["hard", "hard", "soft", "shadow"]))
    def set_budget(self, level: int, window: str, unit: str, limit: int, mode: str) -> None:
        scope = self.scopes[level]
        self.b.admin.set_budget(scope, window, unit, limit, mode=mode)
        self.m.rules[(scope, window[0], unit[0])] = (limit, mode[0] if mode != "shadow" else "w")

    @rule(level=st.integers(0, 3), window=st.sampled_from(["day", "month"]),
          limit=st.integers(2_000, 30_000))
    def set_hard_cost_budget(self, level: int, window: str, limit: int) -> None:
        # Cost limits in the range where the dear model is denied and a
        # cheaper fallback fits: fallbacks get granted, not just tried.
        self.set_budget(level, window, "cost_micros", limit, "hard")

    @rule(policy=st.sampled_from(["keep", "release"]))
    def set_expiry_policy(self, policy: str) -> None:
        self.b.admin.set_org_settings(self.org, expiry_policy=policy)
        self.m.policy = policy

    # -- reserve -----------------------------------------------------------

    def candidates(self, model: str, fallbacks: list[str], est: dict[str, Any],
                   batch: bool) -> list[tuple[str, int, int]]:
        out = []
        for mdl in [model, *fallbacks]:
            if "input_tokens" in est:
                capped = min(est["max_output_tokens"], PRICES[mdl][1])
                out.append((mdl, est["input_tokens"] + capped,
                            price(mdl, est["input_tokens"], capped, batch=batch)))
            elif est.get("cost_micros") is not None:
                out.append((mdl, est["tokens"], est["cost_micros"]))
            else:  # no cost: every token priced as output, an upper bound
                out.append((mdl, est["tokens"], price(mdl, 0, est["tokens"], batch=batch)))
        return out

    def decide(self, paths: list[str], cands: list[tuple[str, int, int]]
               ) -> tuple[tuple[str, int, int] | None, dict[str, Any] | None]:
        now = self.now()
        wids = {"d": day_id(now), "m": month_id(now)}
        first: dict[str, Any] | None = None
        for cand in cands:
            violation = None
            for p in paths:
                for w in ("d", "m"):
                    for u in ("t", "c"):
                        rule_ = self.m.rules.get((p, w, u))
                        if rule_ is None or rule_[1] != "h":
                            continue
                        used = self.m.get(wids[w], f"u|{p}|{u}")
                        reserved = self.m.get(wids[w], f"r|{p}|{u}")
                        asked = cand[1] if u == "t" else cand[2]
                        if used + reserved + asked > rule_[0] and violation is None:
                            violation = dict(path=p, w=w, u=u, limit=rule_[0], used=used,
                                             reserved=reserved, requested=asked,
                                             model=cand[0])
            if violation is None:
                return cand, None
            if first is None:
                first = violation
        return None, first

    @rule(target=reservations,
          # Mostly the dear model first, cheaper fallbacks after: fallbacks get used.
          level=st.integers(0, 3), model=st.sampled_from([TEST_BIG, TEST_BIG, *MODELS]),
          fallbacks=st.lists(st.sampled_from([TEST_SMALL, TEST_MODEL]), max_size=2,
                             unique=True),
          est=st.one_of(
              st.fixed_dictionaries({"input_tokens": st.integers(0, 3000),
                                     "max_output_tokens": st.integers(1, 9000)}),
              st.fixed_dictionaries({"tokens": st.integers(1, 5000),
                                     "cost_micros": st.none() | st.integers(0, 20_000)})),
          ttl_s=st.sampled_from([None, 1, 30, 300, 3600]), batch=st.booleans())
    def reserve(self, level: int, model: str, fallbacks: list[str], est: dict[str, Any],
                ttl_s: int | None, batch: bool) -> Any:
        return self._reserve(level, model, fallbacks, est, ttl_s, batch)

    @rule(target=reservations, level=st.integers(0, 3), input_tokens=st.integers(0, 500),
          max_output_tokens=st.integers(1, 1000))
    def reserve_dear_with_fallbacks(self, level: int, input_tokens: int,
                                    max_output_tokens: int) -> Any:
        est = {"input_tokens": input_tokens, "max_output_tokens": max_output_tokens}
        return self._reserve(level, TEST_BIG, [TEST_MODEL, TEST_SMALL], est, None, False)

    def _reserve(self, level: int, model: str, fallbacks: list[str], est: dict[str, Any],
                 ttl_s: int | None, batch: bool) -> Any:
        fallbacks = [f for f in fallbacks if f != model]
        scope = self.scopes[level]
        paths = paths_of(scope)
        request_id = self.new_id()
        kwargs: dict[str, Any] = dict(scope=scope, model=model, request_id=request_id,
                                      ttl_seconds=ttl_s,
                      fallback_models=fallbacks, batch=batch, **est)
        granted, violation = self.decide(paths, self.candidates(model, fallbacks, est, batch))
        got = self.b.client.reserve(**kwargs)
        self.sent_calls.append(Sent("reserve", kwargs, got.raw))
        if granted is None:
            assert violation is not None
            assert not got.allowed, f"model denies ({violation}) but budgetd granted {got}"
            d = got.denial
            assert d is not None
            assert (str(d.scope), d.window[0], d.unit[0], d.limit, d.used, d.reserved,
                    d.requested, d.model) == (
                violation["path"], violation["w"], violation["u"], violation["limit"],
                violation["used"], violation["reserved"], violation["requested"],
                violation["model"]), f"denial differs from the model's {violation}: {d}"
            self.seen["reserve denied"] += 1
            if violation["model"] != model or len(fallbacks) > 0:
                self.seen["denied with fallbacks"] += 1
            return multiple()
        self.seen["reserve granted" if granted[0] == model else "fallback granted"] += 1
        assert got.allowed, f"model grants {granted} but budgetd denied: {got.denial}"
        answer = (got.model, got.reserved_tokens, got.reserved_cost_micros)
        assert answer == granted, f"granted (model, tokens, cost) {answer} != model {granted}"
        now = self.now()
        res = Res(got.reservation_id, request_id, paths, granted[0], granted[1], granted[2],
                  day_id(now), month_id(now), now + (ttl_s or 300) * 1000, batch)
        self.m.both(res, "r", res.tokens, res.cost)
        self.m.res[res.rid] = res
        self.check_hard_limits_after_grant(res)
        return res

    def check_hard_limits_after_grant(self, res: Res) -> None:
        """Invariant: a grant never takes a HARD rule past its limit."""
        for p in res.paths:
            for w, wid in (("d", res.dwid), ("m", res.mwid)):
                raw = self.r.hgetall(f"bd:{{{self.org}}}:w:{wid}")
                for u in ("t", "c"):
                    rule_ = self.m.rules.get((p, w, u))
                    if rule_ is None or rule_[1] != "h":
                        continue
                    used = int(raw.get(f"u|{p}|{u}".encode(), 0))
                    reserved = int(raw.get(f"r|{p}|{u}".encode(), 0))
                    assert used + reserved <= rule_[0], (
                        f"HARD limit exceeded by a reservation at {p} {w} {u}: used {used} + "
                        f"reserved {reserved} = {used + reserved} > limit {rule_[0]} "
                        f"after granting {res.rid} ({res.tokens} tokens, {res.cost} micros)")

    # -- settle ------------------------------------------------------------

    def settle_state(self, res: Res) -> bool:
        """Expire a due held reservation inline, as settle.lua does; True if late."""
        if res.state == "held" and res.expires_ms <= self.now():
            self.m.expire(res)
            self.seen[f"expired ({self.m.policy})"] += 1
        return res.state == "expired"

    @rule(res=reservations, inp=st.integers(0, 3000), out=st.integers(0, 5000),
          cc=st.integers(0, 500), e1_frac=st.integers(0, 2), cr=st.integers(0, 2000),
          model=st.sampled_from(["", *MODELS]), cost=st.none() | st.integers(0, 20_000))
    def reconcile(self, res: Res, inp: int, out: int, cc: int, e1_frac: int, cr: int,
                  model: str, cost: int | None) -> None:
        e1 = cc * e1_frac // 2
        usage = Usage(input_tokens=inp, output_tokens=out, cache_creation_input_tokens=cc,
                      ephemeral_1h_input_tokens=e1, cache_read_input_tokens=cr)
        key = (inp, out, cc, e1, cr, model or res.model, cost)
        if res.state == "reconciled":
            if key == res.settle_key:
                got = self.b.client.reconcile(res.rid, usage, model=model, cost_micros=cost)
                assert got.raw == res.settle_raw, "reconcile retry answered differently"
            else:
                with pytest.raises(AlreadyExists):
                    self.b.client.reconcile(res.rid, usage, model=model, cost_micros=cost)
            return
        act_t = inp + out + cc + cr
        act_c = cost if cost is not None else price(model or res.model, inp, out, cc - e1, e1,
                                                    cr, batch=res.batch)
        late = self.settle_state(res)
        got = self.b.client.reconcile(res.rid, usage, model=model, cost_micros=cost)
        if res.state == "held":
            self.m.both(res, "r", -res.tokens, -res.cost)
            self.m.both(res, "u", act_t, act_c)
        elif res.state == "expired" and res.expired_policy == "keep":
            self.m.both(res, "u", act_t - res.tokens, act_c - res.cost)
        else:  # expired with release, or released: the actual is still spent
            self.m.both(res, "u", act_t, act_c)
        assert (got.state, got.late, got.actual_tokens, got.actual_cost_micros) == (
            "reconciled", late, act_t, act_c), (
            f"reconcile answer {got} != model (reconciled, late={late}, {act_t}, {act_c})")
        self.seen[f"reconcile {'late' if late else 'on time'}"] += 1
        self.seen[f"reconcile {'up' if act_t > res.tokens else 'down'}"] += 1
        res.state, res.settle_key, res.settle_raw = "reconciled", key, got.raw

    @rule(res=reservations)
    def release(self, res: Res) -> None:
        if res.state == "reconciled":
            with pytest.raises(FailedPrecondition):
                self.b.client.release(res.rid)
            return
        if res.state == "released":
            assert self.b.client.release(res.rid).raw == res.release_raw, (
                "release retry answered differently")
            return
        late = self.settle_state(res)
        got = self.b.client.release(res.rid)
        back = (res.tokens, res.cost)
        if res.state == "held":
            self.m.both(res, "r", -res.tokens, -res.cost)
        elif res.expired_policy == "keep":
            self.m.both(res, "u", -res.tokens, -res.cost)
        else:
            back = (0, 0)
        assert (got.state, got.late, got.reserved_tokens, got.reserved_cost_micros) == (
            "released", late, *back), f"release answer {got} != model (late={late}, {back})"
        self.seen[f"release {'late' if late else 'on time'}"] += 1
        res.state, res.release_raw = "released", got.raw

    # -- record ------------------------------------------------------------

    @rule(level=st.integers(0, 3), model=st.sampled_from(MODELS), inp=st.integers(0, 3000),
          out=st.integers(0, 3000), cost=st.none() | st.integers(0, 9000))
    def record(self, level: int, model: str, inp: int, out: int, cost: int | None) -> None:
        scope = self.scopes[level]
        kwargs: dict[str, Any] = dict(scope=scope, model=model, request_id=self.new_id(),
                      usage=Usage(input_tokens=inp, output_tokens=out), cost_micros=cost)
        got = self.b.client.record(**kwargs)
        c = cost if cost is not None else price(model, inp, out)
        assert (got.tokens, got.cost_micros) == (inp + out, c), (
            f"record answer {(got.tokens, got.cost_micros)} != model {(inp + out, c)}")
        now = self.now()
        for wid in (day_id(now), month_id(now)):
            self.m.add(wid, paths_of(scope), "u", inp + out, c)
        self.sent_calls.append(Sent("record", kwargs, got.raw))

    # -- retries -----------------------------------------------------------

    @property
    def sent_calls(self) -> list[Sent]:
        if not hasattr(self, "_sent"):
            self._sent: list[Sent] = []
        return self._sent

    @precondition(lambda self: bool(self.sent_calls))
    @rule(i=st.integers(0, 10_000), change=st.sampled_from(
        ["same", "same", "scope", "model", "estimate", "ttl", "kind"]))
    def retry(self, i: int, change: str) -> None:
        """Same id, same content: the first answer, nothing charged again.
        Same id, other content: ALREADY_EXISTS, nothing changed."""
        s = self.sent_calls[i % len(self.sent_calls)]
        before = self.m.nonzero()
        kw = dict(s.kwargs)
        if change == "same":
            call = self.b.client.reserve if s.kind == "reserve" else self.b.client.record
            got = call(**kw)
            assert got.raw == s.raw, f"retry of {s.kind} {kw['request_id']} answered differently"
            assert self.m.nonzero() == before
            self.seen["retry same"] += 1
            return
        if change == "kind":
            # A reserve id reused by a record, or the reverse.
            with pytest.raises(AlreadyExists, match="request_id"):
                if s.kind == "reserve":
                    self.b.client.record(kw["scope"], kw["model"], Usage(input_tokens=1),
                                         request_id=kw["request_id"])
                else:
                    self.b.client.reserve(kw["scope"], kw["model"], tokens=1, cost_micros=1,
                                          request_id=kw["request_id"])
            return
        if change == "scope":
            kw["scope"] = self.scopes[(self.scopes.index(kw["scope"]) + 1) % 4]
        elif change == "model" and (others := [
                m for m in MODELS if m != kw["model"] and m not in kw.get("fallback_models", ())]):
            kw["model"] = others[0]
        elif s.kind == "record":
            kw["usage"] = Usage(input_tokens=kw["usage"].input_tokens + 1,
                                output_tokens=kw["usage"].output_tokens)
        elif change in ("estimate", "model"):
            if "tokens" in kw:
                kw["tokens"] += 1
            else:
                kw["input_tokens"] += 1
        else:
            kw["ttl_seconds"] = (kw["ttl_seconds"] or 300) + 1
        call = self.b.client.reserve if s.kind == "reserve" else self.b.client.record
        with pytest.raises(AlreadyExists):
            call(**kw)
        assert self.m.nonzero() == before
        self.seen["retry differs"] += 1

    # -- time and expiry ---------------------------------------------------

    @rule(step_s=st.sampled_from([1, 2, 29, 61, 301, 3599, 86_400]))
    def advance(self, step_s: int) -> None:
        self.clock.advance_s(step_s)

    @rule(before_s=st.integers(1, 120), month=st.booleans())
    def to_window_end(self, before_s: int, month: bool) -> None:
        """Jump close to the end of the day (or month), so the next steps cross it."""
        now = dt.datetime.fromtimestamp(self.now() / 1000, dt.timezone.utc)
        end = now.replace(hour=0, minute=0, second=0, microsecond=0) + dt.timedelta(days=1)
        if month:
            end = (now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
                   + dt.timedelta(days=32)).replace(day=1)
        target = ms(end) - before_s * 1000
        if target > self.now():
            self.clock.set_ms(target)

    @rule()
    def expire_sweep(self) -> None:
        due = [x for x in self.m.res.values() if x.state == "held" and x.expires_ms <= self.now()]
        # One sweep of this org, as the server's loop runs it for every org
        # (expire_all would also count earlier examples' orgs).
        ledger = self.b.thread.app.ledger
        assert ledger is not None
        n = int(self.b.thread.call(ledger.expire_org(self.org)))
        for x in due:
            self.m.expire(x)
            self.seen[f"expired ({self.m.policy})"] += 1
        assert n == len(due), f"expiry sweep expired {n} reservations, the model {len(due)}"

    # -- invariants --------------------------------------------------------

    @invariant()
    def counters_match_model(self) -> None:
        real: dict[tuple[str, str], int] = {}
        for key in self.r.scan_iter(match=f"bd:{{{self.org}}}:w:*", count=1000):
            wid = key.decode().rsplit(":", 1)[1]
            for f, v in self.r.hgetall(key).items():
                # Budget counters; the report counters (sm|...) share the hash.
                if not f.startswith(b"sm|") and int(v) != 0:
                    real[(wid, f.decode())] = int(v)
        want = self.m.nonzero()
        if real != want:
            diff = {k: (real.get(k, 0), want.get(k, 0)) for k in set(real) | set(want)
                    if real.get(k, 0) != want.get(k, 0)}
            raise AssertionError(
                "counters differ from the model (window, counter): (redis, model): "
                f"{dict(sorted(diff.items()))}")
        held = {x.request_id for x in self.m.res.values() if x.state == "held"}
        index = {k.decode() for k in self.r.zrange(f"bd:{{{self.org}}}:exp", 0, -1)}
        assert index == held, f"expiry index {sorted(index)} != held reservations {sorted(held)}"

    @invariant()
    def get_budget_matches_model(self) -> None:
        now = self.now()
        st_ = self.b.client.get_budget(self.org)
        for w in st_.windows:
            wid = day_id(now) if w.window == "day" else month_id(now)
            u = w.unit[0]
            want = (self.m.get(wid, f"u|{self.org}|{u}"), self.m.get(wid, f"r|{self.org}|{u}"))
            assert (w.used, w.reserved) == want, (
                f"GetBudget {w.window} {w.unit} used/reserved {(w.used, w.reserved)} "
                f"!= model {want}")


@pytest.fixture(scope="module")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Budgetd,
                                                                              redis.Redis]]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("model-redis"), appendonly=False)
    server.start()
    clock = ManualClock(ms(T0))
    # The background sweeper sleeps for an hour: expiry happens only when the
    # model says so (expire_sweep, or a settle past the ttl), so every step
    # is deterministic.
    s = Settings(listen="127.0.0.1:0", redis_url=server.url, expiry_interval_s=3600,
                 redis_timeout_s=5.0)
    thread = ServerThread(s, clock).start()
    b = Budgetd(thread, clock)
    set_test_pricing(b.admin)
    client = redis.Redis.from_url(server.url)
    yield b, client
    client.close()
    b.close()
    server.stop()


@pytest.mark.timeout(180)
def test_ledger_matches_model(model_server: tuple[Budgetd, redis.Redis]) -> None:
    b, client = model_server
    BudgetMachine.b = b
    BudgetMachine.r = client
    run_state_machine_as_test(BudgetMachine, settings=settings(
        max_examples=MAX_EXAMPLES, stateful_step_count=STEPS, deadline=None,
        database=None, suppress_health_check=list(HealthCheck), derandomize=not EXPLORE))
    seen = BudgetMachine.seen
    print("model test outcomes:", dict(sorted(seen.items())))
    wanted = ["reserve denied", "reserve granted", "fallback granted", "reconcile late",
              "reconcile on time", "reconcile up", "reconcile down", "release late",
              "release on time", "retry same", "retry differs", "expired (keep)",
              "expired (release)"]
    missing = [k for k in wanted if not seen[k]]
    assert not missing, f"the random runs never reached {missing}: the generator degenerated"


def test_model_catches_a_wrong_counter(model_server: tuple[Budgetd, redis.Redis]) -> None:
    """The checker can fail: a counter nudged behind budgetd's back is reported
    with the window, the counter and both numbers."""
    b, client = model_server
    BudgetMachine.b = b
    BudgetMachine.r = client
    machine = BudgetMachine()
    b.client.record(machine.org, TEST_MODEL, Usage(input_tokens=10), request_id="x1")
    now = machine.now()
    machine.m.add(day_id(now), [machine.org], "u", 10, 10)
    machine.m.add(month_id(now), [machine.org], "u", 10, 10)
    machine.counters_match_model()
    client.hincrby(f"bd:{{{machine.org}}}:w:{day_id(now)}", f"u|{machine.org}|t", 1)
    with pytest.raises(AssertionError, match=r"counters differ.*u\|m\d+\|t.*\(11, 10\)"):
        machine.counters_match_model()

