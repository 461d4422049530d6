"""Bad input: the right status, a message naming the field, and not one key
of Redis changed (the keyspace is dumped before and after)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
import redis
from budgetd_client._proto.budget.v1 import admin_pb2 as apb
from budgetd_client._proto.budget.v1 import admin_pb2_grpc as apb_grpc
from budgetd_client._proto.budget.v1 import budget_pb2 as pb
from budgetd_client._proto.budget.v1 import budget_pb2_grpc as pb_grpc
from conftest import Budgetd, keyspace
from helpers import TEST_MODEL, set_test_pricing

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def reserve(**over: Any) -> pb.ReserveRequest:
    req = pb.ReserveRequest(request_id="r1", scope=pb.Scope(org="acme", team="t"),
                            model=TEST_MODEL)
    req.estimate.token_estimate.input_tokens = 10
    req.estimate.token_estimate.max_output_tokens = 10
    scope = over.pop("scope", None)
    if scope is not None:
        req.scope.CopyFrom(scope)
    est = over.pop("estimate", None)
    if est is not None:
        req.ClearField("estimate")
        if est != "none":
            req.estimate.CopyFrom(est)
    for k, v in over.items():
        if isinstance(v, list):
            getattr(req, k).extend(v)
        else:
            setattr(req, k, v)
    return req


def tokens(input_tokens: int = 10, max_output_tokens: int = 10) -> pb.Estimate:
    e = pb.Estimate()
    e.token_estimate.input_tokens = input_tokens
    e.token_estimate.max_output_tokens = max_output_tokens
    return e


def explicit(t: int, cost: int | None = None) -> pb.Estimate:
    e = pb.Estimate()
    e.explicit.tokens = t
    if cost is not None:
        e.explicit.cost_micros = cost
    return e


BAD_IDS = ["a:b", "{x}", "*", "", "x" * 65, "caf\u00e9", "a b", "-lead", "a\n", "a/b"]

CASES: list[tuple[str, str, Any, grpc.StatusCode, str]] = []
for bad in BAD_IDS:
    CASES += [
        (f"request_id={bad!r}", "Reserve", reserve(request_id=bad), INVALID, "request_id"),
        (f"org={bad!r}", "Reserve", reserve(scope=pb.Scope(org=bad)), INVALID, "scope.org"),
        (f"team={bad!r}", "Reserve", reserve(scope=pb.Scope(org="acme", team=bad or "\u00e9")),
         INVALID, "scope.team"),
        (f"feature={bad!r}", "Reserve",
         reserve(scope=pb.Scope(org="acme", team="t", feature=bad or "{f}")),
         INVALID, "scope.feature"),
    ]
CASES += [
    ("feature without team", "Reserve", reserve(scope=pb.Scope(org="acme", feature="f")),
     INVALID, "scope.team"),
    ("no scope", "Reserve", pb.ReserveRequest(request_id="r1", model=TEST_MODEL,
                                              estimate=tokens()), INVALID, "scope"),
    ("bad model", "Reserve", reserve(model="bad model"), INVALID, "model"),
    ("empty model", "Reserve", reserve(model=""), INVALID, "model"),
    ("bad fallback", "Reserve", reserve(fallback_models=["ok", "{x}"]), INVALID,
     "fallback_models[1]"),
    ("too many fallbacks", "Reserve", reserve(fallback_models=["a", "b", "c", "d", "e"]),
     INVALID, "fallback_models"),
    ("negative input", "Reserve", reserve(estimate=tokens(input_tokens=-1)), INVALID,
     "estimate.token_estimate.input_tokens"),
    ("absurd input", "Reserve", reserve(estimate=tokens(input_tokens=2**53 + 1)), INVALID,
     "estimate.token_estimate.input_tokens"),
    ("zero output", "Reserve", reserve(estimate=tokens(max_output_tokens=0)), INVALID,
     "estimate.token_estimate.max_output_tokens"),
    ("absurd output", "Reserve", reserve(estimate=tokens(max_output_tokens=2**62)), INVALID,
     "estimate.token_estimate.max_output_tokens"),
    ("negative explicit", "Reserve", reserve(estimate=explicit(-5, 1)), INVALID,
     "estimate.explicit.tokens"),
    ("absurd explicit cost", "Reserve", reserve(estimate=explicit(5, 2**53 + 1)), INVALID,
     "estimate.explicit.cost_micros"),
    ("empty explicit", "Reserve", reserve(estimate=explicit(0, 0)), INVALID,
     "estimate.explicit"),
    ("no estimate", "Reserve", reserve(estimate="none"), INVALID, "estimate"),
    ("ttl 0", "Reserve", reserve(ttl_seconds=0), INVALID, "ttl_seconds"),
    ("ttl negative", "Reserve", reserve(ttl_seconds=-3), INVALID, "ttl_seconds"),
    ("ttl huge", "Reserve", reserve(ttl_seconds=10**9), INVALID, "ttl_seconds"),
    ("unknown model", "Reserve", reserve(model="nobody-knows-me"),
     grpc.StatusCode.FAILED_PRECONDITION, "model"),
    ("unknown model explicit tokens only", "Reserve",
     reserve(model="nobody-knows-me", estimate=explicit(10)),
     grpc.StatusCode.FAILED_PRECONDITION, "model"),
    ("reconcile bad id", "Reconcile", pb.ReconcileRequest(reservation_id="acme", usage=pb.Usage()),
     INVALID, "reservation_id"),
    ("reconcile injected id", "Reconcile",
     pb.ReconcileRequest(reservation_id="acme:{x}*", usage=pb.Usage()), INVALID,
     "reservation_id"),
    ("reconcile unknown id", "Reconcile",
     pb.ReconcileRequest(reservation_id="acme:nope", usage=pb.Usage(input_tokens=1)),
     grpc.StatusCode.NOT_FOUND, "reservation_id"),
    ("reconcile no usage", "Reconcile", pb.ReconcileRequest(reservation_id="acme:held"),
     INVALID, "usage"),
    ("reconcile negative usage", "Reconcile",
     pb.ReconcileRequest(reservation_id="acme:held", usage=pb.Usage(output_tokens=-1)),
     INVALID, "usage.output_tokens"),
    ("reconcile absurd usage", "Reconcile",
     pb.ReconcileRequest(reservation_id="acme:held", usage=pb.Usage(input_tokens=2**60)),
     INVALID, "usage.input_tokens"),
    ("reconcile split > writes", "Reconcile",
     pb.ReconcileRequest(reservation_id="acme:held", usage=pb.Usage(
         cache_creation_input_tokens=5, ephemeral_1h_input_tokens=9)),
     INVALID, "usage.cache_creation_input_tokens"),
    ("reconcile unknown model", "Reconcile",
     pb.ReconcileRequest(reservation_id="acme:held", usage=pb.Usage(input_tokens=1),
                         model="nobody-knows-me"),
     grpc.StatusCode.FAILED_PRECONDITION, "model"),
    ("release empty id", "Release", pb.ReleaseRequest(), INVALID, "reservation_id"),
    ("release unknown id", "Release", pb.ReleaseRequest(reservation_id="acme:nope"),
     grpc.StatusCode.NOT_FOUND, "reservation_id"),
    ("record bad id", "Record", pb.RecordRequest(request_id="*", scope=pb.Scope(org="acme"),
                                                 model=TEST_MODEL, usage=pb.Usage()),
     INVALID, "request_id"),
    ("record unknown model", "Record",
     pb.RecordRequest(request_id="x1", scope=pb.Scope(org="acme"), model="nobody-knows-me",
                      usage=pb.Usage(input_tokens=5)),
     grpc.StatusCode.FAILED_PRECONDITION, "model"),
    ("get budget bad org", "GetBudget", pb.GetBudgetRequest(scope=pb.Scope(org="a:b")),
     INVALID, "scope.org"),
]

ADMIN_CASES: list[tuple[str, str, Any, grpc.StatusCode, str]] = [
    ("rule limit 0", "SetBudget", apb.SetBudgetRequest(rule=apb.BudgetRule(
        scope=pb.Scope(org="acme"), window=pb.WINDOW_DAY, unit=pb.UNIT_TOKENS, limit=0)),
     INVALID, "rule.limit"),
    ("rule limit absurd", "SetBudget", apb.SetBudgetRequest(rule=apb.BudgetRule(
        scope=pb.Scope(org="acme"), window=pb.WINDOW_DAY, unit=pb.UNIT_TOKENS, limit=2**60)),
     INVALID, "rule.limit"),
    ("rule no window", "SetBudget", apb.SetBudgetRequest(rule=apb.BudgetRule(
        scope=pb.Scope(org="acme"), unit=pb.UNIT_TOKENS, limit=5)), INVALID, "rule.window"),
    ("rule no unit", "SetBudget", apb.SetBudgetRequest(rule=apb.BudgetRule(
        scope=pb.Scope(org="acme"), window=pb.WINDOW_DAY, limit=5)), INVALID, "rule.unit"),
    ("rule bad org", "SetBudget", apb.SetBudgetRequest(rule=apb.BudgetRule(
        scope=pb.Scope(org="{acme}"), window=pb.WINDOW_DAY, unit=pb.UNIT_TOKENS, limit=5)),
     INVALID, "rule.scope.org"),
    ("rule bad threshold", "SetBudget", apb.SetBudgetRequest(rule=apb.BudgetRule(
        scope=pb.Scope(org="acme"), window=pb.WINDOW_DAY, unit=pb.UNIT_TOKENS, limit=5,
        alert_thresholds_percent=[50, 0])), INVALID, "rule.alert_thresholds_percent[1]"),
    ("bad time zone", "SetOrgSettings", apb.SetOrgSettingsRequest(settings=apb.OrgSettings(
        org="acme", time_zone="Mars/Olympus")), INVALID, "settings.time_zone"),
    ("pricing bad model", "SetPricing", apb.SetPricingRequest(pricing=apb.ModelPricing(
        model="{x}")), INVALID, "pricing.model"),
    ("pricing negative", "SetPricing", apb.SetPricingRequest(pricing=apb.ModelPricing(
        model="m1", max_output_tokens=10, versions=[apb.PriceVersion(prices=apb.Prices(
            input=-1))])), INVALID, "pricing.versions[0].prices.input"),
    ("list bad org", "ListBudgets", apb.ListBudgetsRequest(org="*"), INVALID, "org"),
]


@pytest.fixture()
def stubs(budgetd: Budgetd, r: redis.Redis) -> dict[str, Callable[..., Any]]:
    set_test_pricing(budgetd.admin)
    budgetd.admin.set_budget("acme", "day", "tokens", 1000)
    # A held reservation, so Reconcile cases reach their checks.
    budgetd.client.reserve("acme/t", TEST_MODEL, tokens=5, cost_micros=5, request_id="held")
    channel = grpc.insecure_channel(budgetd.address)
    b = pb_grpc.BudgetServiceStub(channel)
    a = apb_grpc.BudgetAdminServiceStub(channel)
    return {name: getattr(b, name) for name in ("Reserve", "Reconcile", "Release", "Record",
                                                "GetBudget")} | {
        name: getattr(a, name) for name in ("SetBudget", "SetOrgSettings", "SetPricing",
                                            "ListBudgets")}


@pytest.mark.parametrize("name,method,request_msg,code,field",
                         CASES + ADMIN_CASES, ids=[c[0] for c in CASES + ADMIN_CASES])
def test_bad_input_is_rejected_and_changes_nothing(
        stubs: dict[str, Callable[..., Any]], r: redis.Redis, name: str, method: str,
        request_msg: Any, code: grpc.StatusCode, field: str) -> None:
    before = keyspace(r)
    with pytest.raises(grpc.RpcError) as info:
        stubs[method](request_msg, timeout=10)
    err = info.value
    assert err.code() == code, f"{name}: {err.code()} {err.details()}"
    assert field in err.details(), f"{name}: message {err.details()!r} does not name {field}"
    assert keyspace(r) == before, f"{name}: Redis changed"


def test_pricing_error_names_the_field_once(stubs: dict[str, Callable[..., Any]]) -> None:
    req = apb.SetPricingRequest(pricing=apb.ModelPricing(
        model="m1", max_output_tokens=10,
        versions=[apb.PriceVersion(prices=apb.Prices(input=-1))]))
    with pytest.raises(grpc.RpcError) as info:
        stubs["SetPricing"](req, timeout=10)
    details = info.value.details()
    assert details.count("pricing.versions[0].prices.input") == 1, details
