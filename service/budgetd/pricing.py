"""Model prices and request costs, in integer micro-USD.

Prices are micro-USD per million tokens ($3/MTok is 3_000_000). A request's
cost is computed exactly as an integer and rounded up to a whole micro-USD
once, so money never passes through a float and an undercharge can never
accumulate from rounding.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# Generated code: its .pyi stubs do not pass --strict (protobuf ships no types), so mypy
# is run without client/ on its path and sees this module as Any.
from budgetd_client._proto.budget.v1 import admin_pb2  # type: ignore[import-not-found, unused-ignore]

# Name resolution is shared with the client's drift check (budgetd_client/models.py).
from budgetd_client.models import MODEL_ID_RE, model_candidates

MAX_PRICE_MICROS_PER_MTOK = 10**10  # $10,000 per million tokens
MAX_TOKENS = 2**40  # per token kind, per request
MAX_OUTPUT_TOKENS_LIMIT = 10_000_000
MAX_ALIASES = 32
MAX_VERSIONS = 32
MAX_TIERS = 8

_DATE_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")

_PER_MTOK = 1_000_000
_PERCENT = 100


class PricingError(Exception):
    """Base class of every pricing error."""


class UnknownModelError(PricingError):
    """No price row (or no price in effect) for a model: never treated as free."""

    def __init__(self, model: str, detail: str = "no pricing for this model") -> None:
        self.model = model
        super().__init__(f"unknown model {_show(model)}: {detail}")


class InvalidPricingError(PricingError):
    """A price row or a token count is out of its limits; .field names it."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


def _show(text: str) -> str:
    # Model names come from callers: keep error messages bounded.
    return repr(text if len(text) <= 140 else text[:140] + "...")


@dataclass(frozen=True, slots=True)
class Prices:
    """Micro-USD per million tokens, per token kind."""

    input: int
    output: int
    cache_write_5m: int
    cache_write_1h: int
    cache_read: int


@dataclass(frozen=True, slots=True)
class PriceTier:
    """Prices for a whole request whose prompt is larger than above_prompt_tokens."""

    above_prompt_tokens: int
    prices: Prices


@dataclass(frozen=True, slots=True)
class PriceVersion:
    """Prices from effective_from (a UTC date; None: from the beginning)."""

    effective_from: datetime.date | None
    prices: Prices
    tiers: tuple[PriceTier, ...] = ()


_PRICE_FIELDS = tuple(f.name for f in dataclasses.fields(Prices))


@dataclass(frozen=True, slots=True)
class ModelPricing:
    """One price row: a model, its other ids and its dated prices."""

    model: str
    aliases: tuple[str, ...]
    max_output_tokens: int
    batch_discount_percent: int
    versions: tuple[PriceVersion, ...]

    def names(self) -> tuple[str, ...]:
        return (self.model, *self.aliases)

    def to_proto(self) -> admin_pb2.ModelPricing:
        return admin_pb2.ModelPricing(
            model=self.model,
            aliases=list(self.aliases),
            max_output_tokens=self.max_output_tokens,
            batch_discount_percent=self.batch_discount_percent,
            versions=[
                admin_pb2.PriceVersion(
                    effective_from=_date_str(v.effective_from),
                    prices=_prices_to_proto(v.prices),
                    tiers=[
                        admin_pb2.PriceTier(
                            above_prompt_tokens=t.above_prompt_tokens,
                            prices=_prices_to_proto(t.prices),
                        )
                        for t in v.tiers
                    ],
                )
                for v in self.versions
            ],
        )

    @classmethod
    def from_proto(cls, msg: admin_pb2.ModelPricing) -> ModelPricing:
        """Convert and validate; errors name the field as "pricing.<path>"."""
        p = "pricing"
        versions = []
        for i, v in enumerate(msg.versions):
            vp = f"{p}.versions[{i}]"
            tiers = []
            for j, t in enumerate(v.tiers):
                tp = f"{vp}.tiers[{j}]"
                if not t.HasField("prices"):
                    raise InvalidPricingError(f"{tp}.prices", "required")
                tiers.append(PriceTier(t.above_prompt_tokens, _prices_from_proto(t.prices)))
            if not v.HasField("prices"):
                # An unset message would read as all zeros: a free model by accident.
                raise InvalidPricingError(f"{vp}.prices", "required")
            versions.append(
                PriceVersion(
                    _parse_date(v.effective_from, f"{vp}.effective_from"),
                    _prices_from_proto(v.prices),
                    tuple(tiers),
                )
            )
        mp = cls(
            model=msg.model,
            aliases=tuple(msg.aliases),
            max_output_tokens=msg.max_output_tokens,
            batch_discount_percent=msg.batch_discount_percent,
            versions=tuple(versions),
        )
        validate_model_pricing(mp, p)
        return mp

    def to_json(self) -> str:
        return json.dumps(
            {
                "model": self.model,
                "aliases": list(self.aliases),
                "max_output_tokens": self.max_output_tokens,
                "batch_discount_percent": self.batch_discount_percent,
                "versions": [
                    {
                        "effective_from": _date_str(v.effective_from),
                        "prices": dataclasses.asdict(v.prices),
                        "tiers": [
                            {
                                "above_prompt_tokens": t.above_prompt_tokens,
                                "prices": dataclasses.asdict(t.prices),
                            }
                            for t in v.tiers
                        ],
                    }
                    for v in self.versions
                ],
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, s: str | bytes) -> ModelPricing:
        """Parse what to_json wrote; strict: integers only, no unknown keys."""
        p = "pricing"
        try:
            raw = json.loads(s, parse_float=_reject_number, parse_constant=_reject_number)
        except ValueError as e:  # includes JSONDecodeError and our float rejection
            raise InvalidPricingError(p, f"not valid pricing JSON ({e})") from None
        obj = _obj(
            raw, p, {"model", "aliases", "max_output_tokens", "batch_discount_percent", "versions"}
        )
        versions = []
        for i, rv in enumerate(_list(obj["versions"], f"{p}.versions")):
            vp = f"{p}.versions[{i}]"
            v = _obj(rv, vp, {"effective_from", "prices", "tiers"})
            tiers = []
            for j, rt in enumerate(_list(v["tiers"], f"{vp}.tiers")):
                tp = f"{vp}.tiers[{j}]"
                t = _obj(rt, tp, {"above_prompt_tokens", "prices"})
                tiers.append(
                    PriceTier(
                        _int(t["above_prompt_tokens"], f"{tp}.above_prompt_tokens"),
                        _prices_from_json(t["prices"], f"{tp}.prices"),
                    )
                )
            versions.append(
                PriceVersion(
                    _parse_date(
                        _str(v["effective_from"], f"{vp}.effective_from"), f"{vp}.effective_from"
                    ),
                    _prices_from_json(v["prices"], f"{vp}.prices"),
                    tuple(tiers),
                )
            )
        mp = cls(
            model=_str(obj["model"], f"{p}.model"),
            aliases=tuple(
                _str(a, f"{p}.aliases[{i}]")
                for i, a in enumerate(_list(obj["aliases"], f"{p}.aliases"))
            ),
            max_output_tokens=_int(obj["max_output_tokens"], f"{p}.max_output_tokens"),
            batch_discount_percent=_int(
                obj["batch_discount_percent"], f"{p}.batch_discount_percent"
            ),
            versions=tuple(versions),
        )
        validate_model_pricing(mp, p)
        return mp


@dataclass(frozen=True, slots=True)
class UsageTokens:
    """Tokens of one request by kind; input excludes cache writes and reads."""

    input: int = 0
    output: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    cache_read: int = 0

    def __post_init__(self) -> None:
        for f in _PRICE_FIELDS:
            _check_int(getattr(self, f), f"usage.{f}", 0, MAX_TOKENS)

    @property
    def total(self) -> int:
        return self.prompt + self.output

    @property
    def prompt(self) -> int:
        return self.input + self.cache_write_5m + self.cache_write_1h + self.cache_read


class PriceTable:
    """An immutable set of price rows, looked up by model id, alias or platform id."""

    def __init__(self, models: Iterable[ModelPricing]) -> None:
        rows = tuple(models)
        index: dict[str, ModelPricing] = {}
        for i, mp in enumerate(rows):
            validate_model_pricing(mp, f"models[{i}]")
            for name in mp.names():
                key = name.lower()
                if key in index:
                    raise InvalidPricingError(
                        f"models[{i}]",
                        f"id {_show(name)} is already used by {_show(index[key].model)}",
                    )
                index[key] = mp
        self._rows = rows
        self._index = index

    def lookup(self, model: str) -> ModelPricing | None:
        for candidate in model_candidates(model):
            mp = self._index.get(candidate)
            if mp is not None:
                return mp
        return None

    def require(self, model: str) -> ModelPricing:
        mp = self.lookup(model)
        if mp is None:
            raise UnknownModelError(model)
        return mp

    def cost_micros(
        self, model: str, usage: UsageTokens, at: datetime.datetime, batch: bool = False
    ) -> int:
        mp = self.require(model)
        prices = _prices_for(mp, usage.prompt, at)
        # Sum exactly in units of 1e-8 micro-USD (per-MTok prices x percent),
        # then round up once: rounding each kind, or using floats, would drift
        # from the provider's invoice, and a tiny cost must never round down to 0.
        keep = _PERCENT - mp.batch_discount_percent if batch else _PERCENT
        exact = (usage.input * prices.input + usage.output * prices.output) * keep + (
            usage.cache_write_5m * prices.cache_write_5m
            + usage.cache_write_1h * prices.cache_write_1h
            + usage.cache_read * prices.cache_read
        ) * _PERCENT
        return -(-exact // (_PER_MTOK * _PERCENT))

    def estimate(
        self,
        model: str,
        input_tokens: int,
        max_output_tokens: int,
        at: datetime.datetime,
        batch: bool = False,
    ) -> tuple[int, int, int]:
        """Worst case of a request: (tokens, cost_micros, capped max output tokens)."""
        _check_int(input_tokens, "input_tokens", 0, MAX_TOKENS)
        _check_int(max_output_tokens, "max_output_tokens", 0, MAX_TOKENS)
        mp = self.require(model)
        # The provider stops at the model's limit, so reserving more would lock up budget.
        capped = min(max_output_tokens, mp.max_output_tokens)
        usage = UsageTokens(input=input_tokens, output=capped)
        return usage.total, self.cost_micros(model, usage, at, batch), capped

    def with_model(self, mp: ModelPricing) -> PriceTable:
        """A new table where mp replaces the row sharing its model id or an alias."""
        validate_model_pricing(mp, "pricing")
        keys = {n.lower() for n in mp.names()}
        hits = [i for i, row in enumerate(self._rows) if keys & {n.lower() for n in row.names()}]
        if len(hits) > 1:
            # Merging two rows silently would drop one row's prices.
            clash = ", ".join(_show(self._rows[i].model) for i in hits)
            raise InvalidPricingError("pricing.aliases", f"ids match several models: {clash}")
        rows = list(self._rows)
        if hits:
            rows[hits[0]] = mp
        else:
            rows.append(mp)
        return PriceTable(rows)

    def models(self) -> list[ModelPricing]:
        return list(self._rows)


def default_table() -> PriceTable:
    from budgetd.pricing_defaults import default_table as _default

    return _default()


def validate_model_pricing(mp: ModelPricing, prefix: str = "pricing") -> None:
    """Check every limit of a price row; raise InvalidPricingError naming the field."""
    p = prefix
    _check_id(mp.model, f"{p}.model")
    if not isinstance(mp.aliases, tuple):
        raise InvalidPricingError(f"{p}.aliases", "must be a tuple")
    if len(mp.aliases) > MAX_ALIASES:
        raise InvalidPricingError(f"{p}.aliases", f"at most {MAX_ALIASES} aliases")
    seen = {mp.model.lower()}
    for i, alias in enumerate(mp.aliases):
        _check_id(alias, f"{p}.aliases[{i}]")
        if alias.lower() in seen:
            raise InvalidPricingError(f"{p}.aliases[{i}]", f"duplicate id {_show(alias)}")
        seen.add(alias.lower())
    _check_int(mp.max_output_tokens, f"{p}.max_output_tokens", 1, MAX_OUTPUT_TOKENS_LIMIT)
    _check_int(mp.batch_discount_percent, f"{p}.batch_discount_percent", 0, _PERCENT)
    if not isinstance(mp.versions, tuple) or not 1 <= len(mp.versions) <= MAX_VERSIONS:
        raise InvalidPricingError(f"{p}.versions", f"1..{MAX_VERSIONS} versions required")
    dates: set[datetime.date | None] = set()
    for i, v in enumerate(mp.versions):
        vp = f"{p}.versions[{i}]"
        eff = v.effective_from
        if eff is not None and type(eff) is not datetime.date:
            raise InvalidPricingError(f"{vp}.effective_from", "must be a date or None")
        if eff in dates:
            raise InvalidPricingError(f"{vp}.effective_from", "duplicate effective date")
        dates.add(eff)
        _check_prices(v.prices, f"{vp}.prices")
        if not isinstance(v.tiers, tuple) or len(v.tiers) > MAX_TIERS:
            raise InvalidPricingError(f"{vp}.tiers", f"at most {MAX_TIERS} tiers")
        thresholds: set[int] = set()
        for j, t in enumerate(v.tiers):
            tp = f"{vp}.tiers[{j}]"
            _check_int(t.above_prompt_tokens, f"{tp}.above_prompt_tokens", 1, MAX_TOKENS)
            if t.above_prompt_tokens in thresholds:
                raise InvalidPricingError(f"{tp}.above_prompt_tokens", "duplicate threshold")
            thresholds.add(t.above_prompt_tokens)
            _check_prices(t.prices, f"{tp}.prices")


def _check_prices(prices: Prices, field: str) -> None:
    if type(prices) is not Prices:
        raise InvalidPricingError(field, "required")
    for f in _PRICE_FIELDS:
        _check_int(getattr(prices, f), f"{field}.{f}", 0, MAX_PRICE_MICROS_PER_MTOK)


def _check_int(value: object, field: str, lo: int, hi: int) -> None:
    # type() rather than isinstance(): bool is an int, and a float is never money.
    if type(value) is not int:
        raise InvalidPricingError(field, f"must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise InvalidPricingError(field, f"must be in {lo}..{hi}, got {value}")


def _check_id(value: object, field: str) -> None:
    if type(value) is not str or not MODEL_ID_RE.match(value):
        raise InvalidPricingError(field, f"must match {MODEL_ID_RE.pattern}")


def _prices_for(mp: ModelPricing, prompt_tokens: int, at: datetime.datetime) -> Prices:
    """The prices of the version in effect on at's UTC date, tier chosen by prompt size."""
    if at.tzinfo is None:
        day = at.date()  # naive datetimes are taken as UTC, never as local time
    else:
        day = at.astimezone(datetime.timezone.utc).date()
    in_effect = [v for v in mp.versions if v.effective_from is None or v.effective_from <= day]
    if not in_effect:
        raise UnknownModelError(mp.model, f"no price in effect on {day.isoformat()}")
    version = max(in_effect, key=lambda v: v.effective_from or datetime.date.min)
    tier = max(
        (t for t in version.tiers if prompt_tokens > t.above_prompt_tokens),
        key=lambda t: t.above_prompt_tokens,
        default=None,
    )
    return tier.prices if tier is not None else version.prices


def _date_str(day: datetime.date | None) -> str:
    return "" if day is None else day.isoformat()


def _parse_date(text: str, field: str) -> datetime.date | None:
    if text == "":
        return None
    if not _DATE_RE.match(text):
        raise InvalidPricingError(field, "must be empty or YYYY-MM-DD")
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise InvalidPricingError(field, f"not a calendar date: {text!r}") from None


def _prices_to_proto(prices: Prices) -> admin_pb2.Prices:
    return admin_pb2.Prices(**dataclasses.asdict(prices))


def _prices_from_proto(msg: admin_pb2.Prices) -> Prices:
    return Prices(
        input=msg.input,
        output=msg.output,
        cache_write_5m=msg.cache_write_5m,
        cache_write_1h=msg.cache_write_1h,
        cache_read=msg.cache_read,
    )


def _prices_from_json(raw: object, field: str) -> Prices:
    obj = _obj(raw, field, set(_PRICE_FIELDS))
    return Prices(**{f: _int(obj[f], f"{field}.{f}") for f in _PRICE_FIELDS})


def _reject_number(text: str) -> Any:
    raise ValueError(f"non-integer number {text[:40]!r}")


def _obj(raw: object, field: str, keys: set[str]) -> dict[str, object]:
    if not isinstance(raw, dict):
        raise InvalidPricingError(field, "must be an object")
    if set(raw) != keys:
        raise InvalidPricingError(field, f"keys must be {sorted(keys)}, got {sorted(raw)}")
    return raw


def _list(raw: object, field: str) -> list[object]:
    if not isinstance(raw, list):
        raise InvalidPricingError(field, "must be a list")
    return raw


def _int(raw: object, field: str) -> int:
    if type(raw) is not int:
        raise InvalidPricingError(field, "must be an integer")
    return raw


def _str(raw: object, field: str) -> str:
    if not isinstance(raw, str):
        raise InvalidPricingError(field, "must be a string")
    return raw
