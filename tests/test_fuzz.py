"""Bad input: hypothesis over every unary request message of both services
(random field values: huge and unicode strings, negative and huge ints,
unknown enum values, many repeated entries), and raw malformed protobuf
bytes, sent over real gRPC to a real budgetd on a real Redis; and the
server-streaming WatchAlerts, which must also give back its watcher slot.

For every case: the server answers a proper status (never UNKNOWN, INTERNAL,
UNAVAILABLE or a hang), an INVALID_ARGUMENT names a field of the request,
and after every rejected call the Redis keyspace is byte-for-byte unchanged.
Configured limits reject oversized messages, long repeated fields and huge
strings.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import redis
from budgetd.embedded import EmbeddedRedis
from budgetd.server import MAX_MESSAGE_BYTES
from budgetd_client import Usage
from budgetd_client._proto.budget.v1 import admin_pb2, budget_pb2
from conftest import Budgetd, keyspace, start_budgetd
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from helpers import TEST_MODEL, set_test_pricing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# CI replays the same cases on every run; BUDGETD_EXPLORE=1 draws new ones.
EXPLORE = os.environ.get("BUDGETD_EXPLORE") == "1"
CASES = 500
RAW_CASES = 300
DEADLINE_S = 10.0

# A proper answer to bad input. UNKNOWN means an unhandled exception in the
# server, INTERNAL a server fault, UNAVAILABLE/DEADLINE_EXCEEDED a hang or an
# outage that did not happen.
PROPER = {
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNIMPLEMENTED,
}


def unary_methods() -> list[tuple[str, MethodDescriptor]]:
    out = []
    for fd in (budget_pb2.DESCRIPTOR, admin_pb2.DESCRIPTOR):
        for svc in fd.services_by_name.values():
            for m in svc.methods:
                if not m.client_streaming and not m.server_streaming:
                    out.append((f"/{svc.full_name}/{m.name}", m))
    return out


METHODS = unary_methods()

# Values that sit on validation edges, or look like valid ids so that a
# case gets past the first check and reaches a deeper one.
STRINGS = ["", "acme", "acme/t1", "t1", "f1", "seed-1", "acme:seed-1", "acme:seed-2",
           "acme:nope", TEST_MODEL, "test-small", "UTC", "Europe/Paris", "Mars/Base",
           "a" * 64, "a" * 65, "m" * 128, "m" * 129, "{acme}", "a}b", "a{b", "*", "a*", "a|b",
           "a:b", "a/b", "../x", "a\nb", "\x00", "é", "日本", "🙂", "a b", "-a", ".a",
           "bd:{acme}:rules", "x" * 5000]
INTS = [0, 1, -1, 2, 99, 100, 101, 1000, 2**31 - 1, -(2**31), 2**40, 2**40 + 1, 2**50,
        2**50 + 1, 2**53, 2**53 + 1, 2**63 - 1, -(2**63), 86_400, 86_401]
LIMITS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def scalar(f: FieldDescriptor) -> st.SearchStrategy[Any]:
    t = f.type
    if t == FieldDescriptor.TYPE_STRING:
        return st.one_of(st.sampled_from(STRINGS), st.text(max_size=80),
                         st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,10}", fullmatch=True))
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_ENUM:
        # proto3 enums are open: unknown values arrive as plain ints.
        return st.integers(-3, 8)
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    lo, hi = LIMITS[t]
    return st.one_of(st.sampled_from([i for i in INTS if lo <= i <= hi]),
                     st.integers(lo, hi), st.integers(0, 5000))


@st.composite
def message(draw: st.DrawFn, desc: Descriptor, depth: int = 0) -> Message:
    cls = message_factory.GetMessageClass(desc)
    msg = cls()
    for f in desc.fields:
        if not draw(st.booleans()):
            continue  # unset
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 4:
                continue
            assert f.message_type is not None
            sub = message(f.message_type, depth + 1)
            if f.is_repeated:
                n = draw(st.sampled_from([0, 1, 2, 3, 9, 40]))
                getattr(msg, f.name).extend([draw(sub) for _ in range(n)])
            else:
                getattr(msg, f.name).CopyFrom(draw(sub))
        elif f.is_repeated:
            n = draw(st.sampled_from([0, 1, 2, 4, 5, 9, 1000]))
            v = scalar(f)
            getattr(msg, f.name).extend(draw(st.lists(v, min_size=min(n, 10), max_size=min(n, 10)))
                                        * max(1, n // 10))
        else:
            setattr(msg, f.name, draw(scalar(f)))
    return msg


@st.composite
def request(draw: st.DrawFn) -> tuple[str, Message]:
    path, m = draw(st.sampled_from(METHODS))
    return path, draw(message(m.input_type))


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Budgetd,
                                                                             redis.Redis]]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("fuzz-redis"), appendonly=False)
    server.start()
    b = start_budgetd(server.url, expiry_interval_s=3600)
    # State for fuzzed calls to collide with: rules, a held and a settled
    # reservation, a record, pricing.
    set_test_pricing(b.admin)
    b.admin.set_budget("acme", "day", "tokens", 100_000)
    b.admin.set_budget("acme/t1", "month", "cost_micros", 100_000, mode="soft")
    b.client.reserve("acme/t1/f1", TEST_MODEL, tokens=100, cost_micros=100, request_id="seed-1")
    r2 = b.client.reserve("acme/t1", TEST_MODEL, input_tokens=10, max_output_tokens=10,
                          request_id="seed-2")
    b.client.reconcile(r2.reservation_id, Usage(input_tokens=5, output_tokens=5))
    b.client.record("acme", TEST_MODEL, Usage(input_tokens=7), request_id="rec-1")
    client = redis.Redis.from_url(server.url)
    yield b, client
    client.close()
    b.close()
    server.stop()


def raw_call(b: Budgetd, path: str, payload: bytes) -> tuple[grpc.StatusCode, str]:
    ch = b.client.channel
    fn = ch.unary_unary(path, request_serializer=None, response_deserializer=None)
    try:
        fn(payload, timeout=DEADLINE_S)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        return e.code(), e.details() or ""


def check_case(b: Budgetd, r: redis.Redis, path: str, payload: bytes,
               fields: list[str] | None) -> grpc.StatusCode:
    before = keyspace(r)
    code, details = raw_call(b, path, payload)
    assert code in PROPER, (
        f"{path} answered {code.name} ({details[:300]!r}) to {len(payload)} bytes "
        f"{payload[:80]!r}: invariant 'bad input gets a proper status' broke")
    if code != grpc.StatusCode.OK:
        after = keyspace(r)
        if after != before:
            changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
            raise AssertionError(
                f"{path} rejected with {code.name} ({details[:200]!r}) but changed "
                f"{len(changed)} Redis keys: {changed[:10]}: invariant 'a rejected call "
                "changes nothing in Redis' broke")
    if code == grpc.StatusCode.INVALID_ARGUMENT and fields is not None:
        assert details and any(f in details for f in fields), (
            f"{path}: INVALID_ARGUMENT {details[:200]!r} names none of the fields {fields}")
    return code


@settings(max_examples=CASES, deadline=None, database=None,
          suppress_health_check=list(HealthCheck), derandomize=not EXPLORE)
@given(req=request())
def test_fuzzed_messages_get_proper_status_and_change_nothing_when_rejected(
        fuzz_server: tuple[Budgetd, redis.Redis], req: tuple[str, Message]) -> None:
    b, r = fuzz_server
    path, msg = req
    payload = msg.SerializeToString()
    fields = [f.name for f in msg.DESCRIPTOR.fields] + ["request", "estimate", "usage"]
    if len(payload) > MAX_MESSAGE_BYTES:
        assert raw_call(b, path, payload)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
        return
    check_case(b, r, path, payload, fields)


@st.composite
def malformed(draw: st.DrawFn) -> tuple[str, bytes]:
    path, m = draw(st.sampled_from(METHODS))
    kind = draw(st.sampled_from(["random", "truncated", "flipped", "bad-tag", "bad-length"]))
    if kind == "random":
        return path, draw(st.binary(min_size=1, max_size=300))
    valid = draw(message(m.input_type)).SerializeToString() or b"\x0a\x04acme"
    if kind == "truncated":
        return path, valid[: draw(st.integers(0, max(0, len(valid) - 1)))]
    if kind == "flipped":
        i = draw(st.integers(0, len(valid) - 1))
        return path, valid[:i] + bytes([valid[i] ^ draw(st.integers(1, 255))]) + valid[i + 1:]
    if kind == "bad-tag":  # field number 0 / wire type 7 are never valid
        return path, draw(st.sampled_from([b"\x00", b"\x07", b"\x0f\x01"])) + valid
    # A length prefix far past the end of the message.
    return path, b"\x0a\xff\xff\xff\x0f" + valid


@settings(max_examples=RAW_CASES, deadline=None, database=None,
          suppress_health_check=list(HealthCheck), derandomize=not EXPLORE)
@given(case=malformed())
def test_malformed_bytes_get_proper_status_and_change_nothing(
        fuzz_server: tuple[Budgetd, redis.Redis], case: tuple[str, bytes]) -> None:
    b, r = fuzz_server
    path, payload = case
    check_case(b, r, path, payload, None)


def test_undecodable_protobuf_is_invalid_argument(
        fuzz_server: tuple[Budgetd, redis.Redis]) -> None:
    """Bytes that are not the request message: INVALID_ARGUMENT naming the
    message type, not UNKNOWN from an exception in the server."""
    b, r = fuzz_server
    for path, _ in METHODS:
        before = keyspace(r)
        code, details = raw_call(b, path, b"\x0a\xff\xff\xff\x0f")
        if code == grpc.StatusCode.UNIMPLEMENTED:
            continue
        assert code == grpc.StatusCode.INVALID_ARGUMENT, f"{path}: {code.name} {details!r}"
        assert "request" in details and "budget.v1." in details, details
        assert keyspace(r) == before


@pytest.mark.parametrize("path,msg,code,field", [
    # Over the server's max receive size (1 MiB): grpc refuses it before any code runs.
    ("/budget.v1.BudgetService/Reserve",
     budget_pb2.ReserveRequest(request_id="x" * (MAX_MESSAGE_BYTES + 10)),
     grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
    # Under it, but far over every field limit.
    ("/budget.v1.BudgetService/Reserve",
     budget_pb2.ReserveRequest(request_id="x" * 900_000),
     grpc.StatusCode.INVALID_ARGUMENT, "request_id"),
    ("/budget.v1.BudgetService/Reserve",
     budget_pb2.ReserveRequest(request_id="r1", scope=budget_pb2.Scope(org="acme"),
                               model=TEST_MODEL, fallback_models=["m"] * 50_000),
     grpc.StatusCode.INVALID_ARGUMENT, "fallback_models"),
    ("/budget.v1.BudgetService/Reserve",
     budget_pb2.ReserveRequest(request_id="r1", scope=budget_pb2.Scope(org="acme"),
                               model="m" * 500_000),
     grpc.StatusCode.INVALID_ARGUMENT, "model"),
    ("/budget.v1.BudgetService/Record",
     budget_pb2.RecordRequest(request_id="r1",
                              scope=budget_pb2.Scope(org="acme", team="é" * 300_000),
                              model=TEST_MODEL),
     grpc.StatusCode.INVALID_ARGUMENT, "scope.team"),
    ("/budget.v1.BudgetAdminService/SetBudget",
     admin_pb2.SetBudgetRequest(rule=admin_pb2.BudgetRule(
         scope=budget_pb2.Scope(org="acme"), window=budget_pb2.WINDOW_DAY,
         unit=budget_pb2.UNIT_TOKENS, limit=10, alert_thresholds_percent=[50] * 100_000)),
     grpc.StatusCode.INVALID_ARGUMENT, "alert_thresholds"),
    ("/budget.v1.BudgetAdminService/SetPricing",
     admin_pb2.SetPricingRequest(pricing=admin_pb2.ModelPricing(
         model="big", max_output_tokens=10, aliases=[f"a{i}" for i in range(20_000)],
         versions=[admin_pb2.PriceVersion(prices=admin_pb2.Prices(input=1, output=1))])),
     grpc.StatusCode.INVALID_ARGUMENT, "aliases"),
    ("/budget.v1.BudgetAdminService/SetPricing",
     admin_pb2.SetPricingRequest(pricing=admin_pb2.ModelPricing(
         model="big", max_output_tokens=10, versions=[admin_pb2.PriceVersion()] * 20_000)),
     grpc.StatusCode.INVALID_ARGUMENT, "versions"),
])
def test_configured_limits_reject_oversized_input(
        fuzz_server: tuple[Budgetd, redis.Redis], path: str, msg: Message,
        code: grpc.StatusCode, field: str) -> None:
    b, r = fuzz_server
    before = keyspace(r)
    got, details = raw_call(b, path, msg.SerializeToString())
    assert (got, field in details) == (code, True), (
        f"{path}: expected {code.name} naming {field!r}, got {got.name} {details[:200]!r}")
    # The error message quotes a bounded prefix of a huge value, never all of it.
    assert len(details) < 2000, f"{path}: a {len(details)}-character error message"
    assert keyspace(r) == before


def test_server_still_serves_after_fuzzing(fuzz_server: tuple[Budgetd, redis.Redis]) -> None:
    b, r = fuzz_server
    # Fuzzed calls that happened to be valid may have charged acme or settled
    # the seeded reservation (the fuzzer knows its id): it must still exist in
    # a valid state, and the server still answer.
    assert r.hget("bd:{acme}:q:seed-1", "state") in (b"held", b"reconciled", b"released")
    st_ = b.client.get_budget("acme")
    assert st_.get("day", "tokens").reserved >= 0
    res = b.client.reserve("fresh-org/after", TEST_MODEL, tokens=1, cost_micros=1)
    assert res.allowed


# WatchAlerts streams until the caller leaves: a valid request ends at the
# caller's deadline, which here is short.
WATCH = "/budget.v1.BudgetAdminService/WatchAlerts"
WATCH_CASES = 60
WATCH_DEADLINE_S = 0.3


def watch_call(b: Budgetd, payload: bytes) -> tuple[grpc.StatusCode, str]:
    fn = b.client.channel.unary_stream(WATCH, request_serializer=None,
                                       response_deserializer=None)
    try:
        for _ in fn(payload, timeout=WATCH_DEADLINE_S):
            pass
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        return e.code(), e.details() or ""


@st.composite
def watch_payload(draw: st.DrawFn) -> bytes:
    msg = draw(message(admin_pb2.WatchAlertsRequest.DESCRIPTOR))
    valid = msg.SerializeToString()
    kind = draw(st.sampled_from(["message", "message", "random", "truncated", "bad-length"]))
    if kind == "message":
        return valid
    if kind == "random":
        return draw(st.binary(min_size=1, max_size=300))
    if kind == "truncated":
        return valid[: draw(st.integers(0, max(0, len(valid) - 1)))]
    return b"\x0a\xff\xff\xff\x0f" + valid


@settings(max_examples=WATCH_CASES, deadline=None, database=None,
          suppress_health_check=list(HealthCheck), derandomize=not EXPLORE)
@given(payload=watch_payload())
def test_fuzzed_watch_alerts_gets_proper_status_changes_nothing_and_leaks_no_watcher(
        fuzz_server: tuple[Budgetd, redis.Redis], payload: bytes) -> None:
    """The server-streaming method: bad input is INVALID_ARGUMENT naming a
    field (or the request), a valid one streams until the caller's deadline;
    either way nothing in Redis changes and the stream's watcher slot is
    given back (a leaked slot would end in RESOURCE_EXHAUSTED for everyone)."""
    b, r = fuzz_server
    before = keyspace(r)
    code, details = watch_call(b, payload)
    assert code in PROPER | {grpc.StatusCode.DEADLINE_EXCEEDED}, (
        f"WatchAlerts answered {code.name} ({details[:300]!r}) to {payload[:80]!r}")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert any(f in details for f in ("org", "after_id", "request")), details
    assert keyspace(r) == before
    service = b.thread.app.admin_service
    deadline = time.monotonic() + 5
    while service.watchers and time.monotonic() < deadline:
        time.sleep(0.01)
    assert service.watchers == 0, "a WatchAlerts stream kept its watcher slot"
