"""A Reserve answer becomes its response two ways: the common one (granted,
no alert, no SOFT/SHADOW rule crossed) encoded straight to wire bytes from
its rules' cached parts (wire.py), every other one as a message built from
ledger.reserve_answer's dicts. Both must give the same bytes for any answer
the reserve script can give; a difference would show only to callers, as a
wrong remaining amount or scope, or a response they cannot parse."""

from __future__ import annotations

import random

from budgetd import wire
from budgetd.ledger import reserve_answer
from budgetd.service import reserve_pb, reserve_response
from budgetd_client._proto.budget.v1 import budget_pb2 as pb
from google.protobuf.internal.encoder import _VarintBytes
from hypothesis import given, settings
from hypothesis import strategies as st

ORG = "acme"
RID = "0123456789abcdef0123456789abcdef"
AMOUNT = st.integers(min_value=0, max_value=2**53)

paths = st.sampled_from([ORG, f"{ORG}/search", f"{ORG}/search/rerank", f"{ORG}/ü-team/x"])
rules = st.tuples(paths, st.sampled_from("dm"), st.sampled_from("tc"), AMOUNT,
                  st.sampled_from("hsw"), st.sampled_from(["", "50,90"]), AMOUNT, AMOUNT)


def flat(head: str, rs: list[tuple[str, str, str, int, str, str, int, int]]) -> str:
    return " ".join([head] + [f"{p}|{w}|{u} {limit}|{mode}|{ths} {used} {res}"
                              for p, w, u, limit, mode, ths, used, res in rs])


def general(answer: str, org: str = ORG) -> pb.ReserveResponse:
    return reserve_response(org, RID, reserve_answer(answer))


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(rules, max_size=12), AMOUNT, AMOUNT,
       st.integers(min_value=0, max_value=2**45), st.sampled_from(["m1", "claude-x"]))
def test_a_granted_answer_reads_the_same_both_ways(rs: list[tuple[str, str, str, int, str, str,
                                                                  int, int]],
                                                   tokens: int, cost: int, expires_ms: int,
                                                   model: str) -> None:
    answer = flat(f"a {model} {tokens} {cost} {expires_ms}", rs)
    want = general(answer)
    # The common way serves it unless a SOFT/SHADOW rule went past its limit:
    # its rules' parts encoded the first time they come by, cached the next.
    crossed = any(mode != "h" and used + res + (tokens if u == "t" else cost) > limit
                  for _, _, u, limit, mode, _, used, res in rs)
    for _ in range(2):
        got = wire.allowed_answer(ORG, RID, answer)
        assert (got is None) == crossed
        if got is not None:
            assert got == want.SerializeToString()
        assert reserve_pb(ORG, RID, answer) == want
    # Other orgs with rules of the same shape share the cached parts, each
    # answer naming its own org (one id a prefix of the other, one longer).
    for org in ("acme2", "ac", "x" * 64):
        theirs = flat(f"a {model} {tokens} {cost} {expires_ms}",
                      [(p.replace(ORG, org, 1), *rest) for p, *rest in rs])
        want = general(theirs, org)
        got = wire.allowed_answer(org, RID, theirs)
        assert (got is None) == crossed
        if got is not None:
            assert got == want.SerializeToString()
        assert reserve_pb(org, RID, theirs) == want


def test_the_common_way_gives_the_amounts_left_and_the_expiry() -> None:
    answer = flat("a m1 100 7 1800000000123",
                  [(ORG, "m", "c", 1000, "h", "", 0, 993), (f"{ORG}/search", "d", "t", 500, "h",
                                                            "", 300, 50)])
    raw = wire.allowed_answer(ORG, RID, answer)
    assert raw is not None
    got = pb.ReserveResponse.FromString(raw)
    assert got.decision == pb.DECISION_ALLOWED
    assert got.reservation_id == f"{ORG}:{RID}" and got.model == "m1"
    assert (got.reserved.tokens, got.reserved.cost_micros) == (100, 7)
    assert [(r.scope.org, r.scope.team, r.limit, r.remaining) for r in got.remaining] == [
        (ORG, "", 1000, 0), (ORG, "search", 500, 50)]
    assert got.expires_at.ToMilliseconds() == 1800000000123
    # A second answer naming the same rules reads its own amounts.
    again = wire.allowed_answer(ORG, RID, answer.replace(" 300 50", " 0 0"))
    assert again is not None
    assert [r.remaining for r in pb.ReserveResponse.FromString(again).remaining] == [0, 400]


def test_answers_the_common_way_leaves_to_the_general_one() -> None:
    denied = flat("d m1 100 7 acme|d|t", [(ORG, "d", "t", 50, "h", "", 0, 0)])
    alerting = flat("a m1 100 7 1800000000123", [(ORG, "d", "t", 150, "h", "", 0, 0)]) + (
        '\n[{"kind":"threshold","path":"acme","w":"d","u":"t","mode":"h","th":"50",'
        '"limit":"150","consumed":"100","wid":"d20270315","at":"1","rid":"r","id":"1-0"}]')
    legacy = ('{"decision": "allowed", "model": "m1", "tokens": "5", "cost": "1", '
              '"expires_ms": "1800000000000", "remaining": {}, "crossings": {}, "alerts": {}}')
    for answer in (denied, alerting, legacy):
        assert wire.allowed_answer(ORG, RID, answer) is None
        assert reserve_pb(ORG, RID, answer) == general(answer)
    assert reserve_pb(ORG, RID, denied).denial.limit == 50
    assert len(reserve_pb(ORG, RID, alerting).alerts) == 1


def test_the_cache_of_rules_stays_bounded_and_keeps_the_newest() -> None:
    def answer(i: int) -> str:
        return flat("a m1 1 1 1000", [(ORG, "d", "t", i + 1, "h", "", 0, 0)])

    wire._templates.clear()
    for i in range(wire.MAX_TEMPLATES + 10):
        assert reserve_pb(ORG, RID, answer(i)).remaining[0].remaining == i
        assert len(wire._templates) <= wire.MAX_TEMPLATES
    cached = [key[1] for key in wire._templates]  # the rules' values, oldest first
    assert cached[0] == "11|h|" and cached[-1] == f"{wire.MAX_TEMPLATES + 10}|h|"


def test_varints_are_protobufs_own() -> None:
    edges = [0, 1, 127, 128, 2**14 - 1, 2**14, 2**28, 2**35 + 5, 10**15, 2**63 - 1, -1, -(2**63)]
    rng = random.Random(5)
    for n in edges + [rng.randrange(-(2**63), 2**63) for _ in range(2000)]:
        assert wire.varint(n) == _VarintBytes(n % 2**64), n
