"""Request validation: every field checked against budgetd.limits before
Redis is touched. Errors name the field (InvalidArgument)."""

from __future__ import annotations

from budgetd_client._proto.budget.v1 import budget_pb2 as pb

from budgetd.errors import InvalidArgument
from budgetd.ledger import RecordInput, ReserveInput, ScopePath, SettleInput
from budgetd.limits import (
    DEFAULT_TTL_S,
    ID_RE,
    MAX_FALLBACK_MODELS,
    MAX_REQUEST_COST_MICROS,
    MAX_REQUEST_TOKENS,
    MAX_TTL_S,
    MODEL_RE,
)
from budgetd.pricing import UsageTokens


def _valid_id(value: str) -> bool:
    return bool(value) and ID_RE.fullmatch(value) is not None and value.isascii()


def check_id(field: str, value: str) -> str:
    if not value:
        raise InvalidArgument(field, "is required")
    if not ID_RE.fullmatch(value) or not value.isascii():
        raise InvalidArgument(
            field, f"{_show(value)} is not a valid id: 1-64 characters of A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit")
    return value


def check_model(field: str, value: str) -> str:
    if not value:
        raise InvalidArgument(field, "is required")
    if not MODEL_RE.fullmatch(value) or not value.isascii():
        raise InvalidArgument(
            field, f"{_show(value)} is not a valid model name: 1-128 characters of "
            "A-Z a-z 0-9 . _ : / @ -, starting with a letter or digit")
    return value


def _show(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:80] + "...")


def check_amount(field: str, value: int, maximum: int, minimum: int = 0) -> int:
    if value < minimum or value > maximum:
        raise InvalidArgument(field, f"{value} is out of range {minimum}..{maximum}")
    return value


# Scopes already found valid: callers send the same few on every call, and
# ScopePath is immutable, so one instance serves them all. Sized like the
# org cache (orgcache.MAX_CACHED_ORGS): past this many it starts over.
MAX_CACHED_SCOPES = 120_000
_valid_scopes: dict[tuple[str, str, str], ScopePath] = {}


def scope(msg: pb.Scope, field: str = "scope") -> ScopePath:
    org, team, feature = msg.org, msg.team, msg.feature
    key = (org, team, feature)
    known = _valid_scopes.get(key)
    if known is not None:
        return known
    # The valid case first, without building the field names.
    if _valid_id(org) and (not team or _valid_id(team)) and (
            not feature or (team and _valid_id(feature))):
        if len(_valid_scopes) >= MAX_CACHED_SCOPES:
            _valid_scopes.clear()
        sp = _valid_scopes[key] = ScopePath(org, team, feature)
        return sp
    check_id(f"{field}.org", org)
    if team:
        check_id(f"{field}.team", team)
    if feature:
        if not team:
            raise InvalidArgument(f"{field}.team", "is required when feature is set")
        check_id(f"{field}.feature", feature)
    raise AssertionError("unreachable: an invalid scope passed every check")


def org_only(field: str, value: str) -> str:
    return check_id(field, value)


def usage(msg: pb.Usage, field: str = "usage") -> UsageTokens:
    vals = {}
    for name in ("input_tokens", "output_tokens", "cache_creation_input_tokens",
                 "cache_read_input_tokens", "ephemeral_5m_input_tokens",
                 "ephemeral_1h_input_tokens"):
        vals[name] = check_amount(f"{field}.{name}", getattr(msg, name), MAX_REQUEST_TOKENS)
    split = vals["ephemeral_5m_input_tokens"] + vals["ephemeral_1h_input_tokens"]
    writes = vals["cache_creation_input_tokens"]
    if writes and split > writes:
        raise InvalidArgument(
            f"{field}.cache_creation_input_tokens",
            f"{writes} is less than ephemeral_5m_input_tokens + ephemeral_1h_input_tokens "
            f"({split})")
    writes = max(writes, split)
    # Writes not split by duration are priced as 5-minute writes (the default ttl).
    u = UsageTokens(
        input=vals["input_tokens"],
        output=vals["output_tokens"],
        cache_write_5m=writes - vals["ephemeral_1h_input_tokens"],
        cache_write_1h=vals["ephemeral_1h_input_tokens"],
        cache_read=vals["cache_read_input_tokens"],
    )
    check_amount(f"{field} (total tokens)", u.total, MAX_REQUEST_TOKENS)
    return u


def reserve(req: pb.ReserveRequest) -> ReserveInput:
    request_id = check_id("request_id", req.request_id)
    if not req.HasField("scope"):
        raise InvalidArgument("scope", "is required")
    sc = scope(req.scope)
    model = check_model("model", req.model)
    fallbacks: tuple[str, ...] = ()
    if req.fallback_models:
        if len(req.fallback_models) > MAX_FALLBACK_MODELS:
            raise InvalidArgument("fallback_models",
                                  f"at most {MAX_FALLBACK_MODELS} fallback models")
        seen = {model}
        for i, m in enumerate(req.fallback_models):
            check_model(f"fallback_models[{i}]", m)
            if m in seen:
                raise InvalidArgument(f"fallback_models[{i}]", f"{m!r} is listed twice")
            seen.add(m)
        fallbacks = tuple(req.fallback_models)
    ttl_s = DEFAULT_TTL_S
    if req.HasField("ttl_seconds"):
        ttl_s = check_amount("ttl_seconds", req.ttl_seconds, MAX_TTL_S, minimum=1)
    estimate = req.estimate
    kind = estimate.WhichOneof("kind")
    if kind == "token_estimate":
        te = estimate.token_estimate
        in_t = check_amount("estimate.token_estimate.input_tokens", te.input_tokens,
                            MAX_REQUEST_TOKENS)
        out_t = check_amount("estimate.token_estimate.max_output_tokens", te.max_output_tokens,
                             MAX_REQUEST_TOKENS, minimum=1)
        return ReserveInput(request_id, sc, model, ttl_s, input_tokens=in_t,
                            max_output_tokens=out_t, fallback_models=fallbacks,
                            batch=req.batch)
    if kind == "explicit":
        ex = estimate.explicit
        tokens = check_amount("estimate.explicit.tokens", ex.tokens, MAX_REQUEST_TOKENS)
        cost = None
        if ex.HasField("cost_micros"):
            cost = check_amount("estimate.explicit.cost_micros", ex.cost_micros,
                                MAX_REQUEST_COST_MICROS)
        if tokens == 0 and not cost:
            raise InvalidArgument("estimate.explicit", "tokens or cost_micros must be > 0")
        return ReserveInput(request_id, sc, model, ttl_s, explicit_tokens=tokens,
                            explicit_cost_micros=cost, fallback_models=fallbacks,
                            batch=req.batch)
    raise InvalidArgument("estimate", "is required: token_estimate or explicit")


def parse_reservation_id(value: str) -> tuple[str, str]:
    field = "reservation_id"
    if not value:
        raise InvalidArgument(field, "is required")
    org, sep, request_id = value.partition(":")
    ok = sep and ID_RE.fullmatch(org) and ID_RE.fullmatch(request_id) and value.isascii()
    if not ok:
        raise InvalidArgument(field, f"{_show(value)} is not a reservation id "
                              "(as returned by Reserve: '<org>:<request_id>')")
    return org, request_id


def reconcile(req: pb.ReconcileRequest) -> SettleInput:
    org, request_id = parse_reservation_id(req.reservation_id)
    if not req.HasField("usage"):
        raise InvalidArgument("usage", "is required")
    u = usage(req.usage)
    model = check_model("model", req.model) if req.model else ""
    cost = None
    if req.HasField("cost_micros"):
        cost = check_amount("cost_micros", req.cost_micros, MAX_REQUEST_COST_MICROS)
    return SettleInput(org, request_id, usage=u, model=model, cost_micros=cost)


def release(req: pb.ReleaseRequest) -> SettleInput:
    org, request_id = parse_reservation_id(req.reservation_id)
    return SettleInput(org, request_id)


def record(req: pb.RecordRequest) -> RecordInput:
    request_id = check_id("request_id", req.request_id)
    if not req.HasField("scope"):
        raise InvalidArgument("scope", "is required")
    sc = scope(req.scope)
    model = check_model("model", req.model)
    if not req.HasField("usage"):
        raise InvalidArgument("usage", "is required")
    u = usage(req.usage)
    cost = None
    if req.HasField("cost_micros"):
        cost = check_amount("cost_micros", req.cost_micros, MAX_REQUEST_COST_MICROS)
    occurred_ms = None
    if req.HasField("occurred_at"):
        occurred_ms = req.occurred_at.ToMilliseconds()
        if occurred_ms <= 0:
            raise InvalidArgument("occurred_at", "must be after 1970-01-01")
    return RecordInput(request_id, sc, model, u, cost_micros=cost, batch=req.batch,
                       occurred_ms=occurred_ms)
