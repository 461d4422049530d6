"""Unit tests of budgetd.pricing: costs computed by hand, lookups, validation."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable

import pytest
from budgetd import pricing_defaults
from budgetd.pricing import (
    MAX_PRICE_MICROS_PER_MTOK,
    MAX_TOKENS,
    InvalidPricingError,
    ModelPricing,
    Prices,
    PriceTable,
    PriceTier,
    PriceVersion,
    PricingError,
    UnknownModelError,
    UsageTokens,
    default_table,
)

# Generated code: its .pyi stubs do not pass --strict (protobuf ships no types), so mypy
# is run without client/ on its path and sees this module as Any.
from budgetd_client._proto.budget.v1 import admin_pb2  # type: ignore[import-not-found, unused-ignore]
from conftest import Budgetd

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return default_table()


def cost(
    table: PriceTable, model: str, batch: bool = False, at: datetime.datetime = NOW, **tokens: int
) -> int:
    return table.cost_micros(model, UsageTokens(**tokens), at, batch=batch)


# --- costs, computed by hand: tokens * $/MTok = micro-USD * 1e-6 per token ---------------


def test_sonnet_4_5_input_and_output(table: PriceTable) -> None:
    # 1000 * $3/MTok = 3000 micros; 500 * $15/MTok = 7500 micros.
    assert cost(table, "claude-sonnet-4-5", input=1000, output=500) == 10_500


def test_opus_4_5_is_5_and_25_not_the_old_opus_tier(table: PriceTable) -> None:
    # 1000 * $5 = 5000; 1000 * $25 = 25000.
    assert cost(table, "claude-opus-4-5", input=1000, output=1000) == 30_000
    assert cost(table, "claude-opus-4-1", input=1000, output=1000) == 90_000


def test_sub_micro_costs_round_up_once_per_request(table: PriceTable) -> None:
    # Haiku 5.5: 0.10 + 0.50 + 0.01 = 0.61 micros -> 1 (per kind it would be 3).
    assert cost(table, "claude-haiku-5-5", input=1, output=1, cache_read=1) == 1
    # 7 * 0.10 + 3 * 0.50 = 2.2 micros -> 3.
    assert cost(table, "claude-haiku-5-5", input=7, output=3) == 3
    # 10 * 0.10 = exactly 1 micro: no rounding up of an exact amount.
    assert cost(table, "claude-haiku-5-5", input=10) == 1
    assert cost(table, "claude-haiku-5-5") == 0


def test_cache_writes_and_reads_priced_separately(table: PriceTable) -> None:
    # Sonnet 4.5: 5m write $3.75, 1h write $6, read $0.30, input $3.
    assert cost(table, "claude-sonnet-4-5", cache_write_5m=1000) == 3_750
    assert cost(table, "claude-sonnet-4-5", cache_write_1h=1000) == 6_000
    assert cost(table, "claude-sonnet-4-5", cache_read=1000) == 300
    assert (
        cost(
            table,
            "claude-sonnet-4-5",
            input=10,
            cache_write_5m=1000,
            cache_write_1h=1000,
            cache_read=1000,
        )
        == 30 + 3_750 + 6_000 + 300
    )
    # Haiku 3 publishes a 1.2x 5m write: $0.30; 1001 * 0.30 = 300.3 -> 301.
    assert cost(table, "claude-3-haiku", cache_write_5m=1001) == 301


def test_openai_cached_input_and_writes_at_input_price(table: PriceTable) -> None:
    # gpt-4o: input $2.50, cached $1.25, output $10.
    assert cost(table, "gpt-4o", input=1000, cache_read=1000, output=100) == 2_500 + 1_250 + 1_000
    assert cost(table, "gpt-4o", cache_write_5m=1000) == 2_500


def test_long_context_tier_prices_whole_request_at_threshold(table: PriceTable) -> None:
    # Exactly 200k prompt: base prices. 200_000 * $3 = 600_000; 1000 * $15 = 15_000.
    assert cost(table, "claude-sonnet-4-5", input=200_000, output=1000) == 615_000
    # One more token: every kind at the tier price. 200_001 * $6 = 1_200_006; 1000 * $22.50.
    assert cost(table, "claude-sonnet-4-5", input=200_001, output=1000) == 1_222_506
    assert cost(table, "claude-sonnet-4", input=200_001, output=1000) == 1_222_506


def test_long_context_prompt_counts_cache_tokens(table: PriceTable) -> None:
    # Prompt = 100_000 input + 100_001 cache read > 200k: tier $6 input, $0.60 read.
    # 600_000 + 60_000.6 -> 660_001.
    assert cost(table, "claude-sonnet-4-5", input=100_000, cache_read=100_001) == 660_001
    # Output does not count toward the prompt: base prices, 100k * $3 + 200k * $15.
    assert cost(table, "claude-sonnet-4-5", input=100_000, output=200_000) == (300_000 + 3_000_000)


def test_haiku_5_5_tier_boundary(table: PriceTable) -> None:
    # 100_000 * $0.10 = 10_000; 100_001 * $0.50 = 50_000.5 -> 50_001.
    assert cost(table, "claude-haiku-5-5", input=100_000) == 10_000
    assert cost(table, "claude-haiku-5-5", input=100_001) == 50_001
    # 100_000 input + 1 cache write: prompt 100_001 -> tier; 50_000 + 0.625 -> 50_001.
    assert cost(table, "claude-haiku-5-5", input=100_000, cache_write_5m=1) == 50_001


def test_batch_discount_on_input_and_output_only(table: PriceTable) -> None:
    assert cost(table, "claude-sonnet-4-5", batch=True, input=1000, output=500) == 5_250
    # Cache read is not discounted: 1500 + 300 + 7500.
    assert (
        cost(table, "claude-sonnet-4-5", batch=True, input=1000, cache_read=1000, output=1000)
        == 9_300
    )
    # Haiku 4.5: 3 * $1 * 50% = 1.5 -> 2; rounding happens once, after the discount.
    assert cost(table, "claude-haiku-4-5", batch=True, input=3) == 2
    # Haiku 5.5: (0.10 + 0.50) * 50% = 0.3 -> 1.
    assert cost(table, "claude-haiku-5-5", batch=True, input=1, output=1) == 1
    # DeepSeek has no batch discount.
    assert cost(table, "deepseek-chat", batch=True, input=1000) == 280


def test_dated_price_change_sonnet_5_5_cache_read(table: PriceTable) -> None:
    before = datetime.datetime(2026, 10, 6, 23, 59, 59, tzinfo=UTC)
    after = datetime.datetime(2026, 10, 7, 0, 0, tzinfo=UTC)
    assert cost(table, "claude-sonnet-5-5", at=before, cache_read=1_000_000) == 200_000
    assert cost(table, "claude-sonnet-5-5", at=after, cache_read=1_000_000) == 100_000
    # The date is the UTC date: 01:00 at +05:00 on the 7th is still the 6th in UTC.
    plus5 = datetime.timezone(datetime.timedelta(hours=5))
    early = datetime.datetime(2026, 10, 7, 1, 0, tzinfo=plus5)
    assert cost(table, "claude-sonnet-5-5", at=early, cache_read=1_000_000) == 200_000
    # A naive datetime is taken as UTC.
    assert (
        cost(table, "claude-sonnet-5-5", at=datetime.datetime(2026, 10, 7), cache_read=1_000_000)
        == 100_000
    )


def test_no_version_in_effect_is_an_error() -> None:
    mp = _row(versions=(PriceVersion(datetime.date(2027, 1, 1), _prices()),))
    t = PriceTable([mp])
    with pytest.raises(UnknownModelError, match="no price in effect on 2026-11-25") as e:
        t.cost_micros("m-1", UsageTokens(input=1), NOW)
    assert e.value.model == "m-1"
    assert t.cost_micros("m-1", UsageTokens(input=1), datetime.datetime(2027, 1, 1)) == 1


def test_versions_pick_latest_effective_date_in_any_order() -> None:
    mp = _row(
        versions=(
            PriceVersion(datetime.date(2026, 6, 1), _prices(3_000_000)),
            PriceVersion(None, _prices(1_000_000)),
            PriceVersion(datetime.date(2026, 1, 1), _prices(2_000_000)),
        )
    )
    t = PriceTable([mp])

    def at(y: int, m: int, d: int) -> int:
        return t.cost_micros("m-1", UsageTokens(input=1), datetime.datetime(y, m, d, tzinfo=UTC))

    assert (at(2025, 12, 31), at(2026, 1, 1), at(2026, 5, 31), at(2026, 6, 1)) == (1, 2, 2, 3)


def test_largest_exceeded_tier_wins() -> None:
    tiers = (PriceTier(1000, _prices(3_000_000)), PriceTier(10, _prices(2_000_000)))
    t = PriceTable([_row(versions=(PriceVersion(None, _prices(1_000_000), tiers),))])

    def price_per_token(n: int) -> int:
        return t.cost_micros("m-1", UsageTokens(input=n), NOW) // n

    assert (
        price_per_token(10),
        price_per_token(11),
        price_per_token(1000),
        price_per_token(1001),
    ) == (1, 2, 2, 3)


def test_extreme_usage_is_exact() -> None:
    big = Prices(*(MAX_PRICE_MICROS_PER_MTOK,) * 5)
    t = PriceTable([_row(versions=(PriceVersion(None, big),))])
    usage = UsageTokens(*(MAX_TOKENS,) * 5)
    assert t.cost_micros("m-1", usage, NOW) == 5 * MAX_TOKENS * MAX_PRICE_MICROS_PER_MTOK // 10**6


# --- estimate --------------------------------------------------------------------------


def test_estimate_caps_output_at_model_limit(table: PriceTable) -> None:
    # Sonnet 4.5 stops at 64_000 output tokens: 1000 * $3 + 64_000 * $15.
    assert table.estimate("claude-sonnet-4-5", 1000, 100_000, NOW) == (65_000, 963_000, 64_000)
    assert table.estimate("claude-sonnet-4-5", 1000, 500, NOW) == (1_500, 10_500, 500)
    assert table.estimate("claude-3-haiku", 0, 10_000, NOW)[2] == 4096
    assert table.estimate("claude-sonnet-4-5", 1000, 500, NOW, batch=True)[1] == 5_250


def test_estimate_uses_input_as_prompt_for_tiers(table: PriceTable) -> None:
    assert table.estimate("claude-sonnet-4-5", 200_001, 0, NOW) == (200_001, 1_200_006, 0)


def test_estimate_and_usage_reject_bad_counts(table: PriceTable) -> None:
    with pytest.raises(InvalidPricingError) as e:
        table.estimate("claude-sonnet-4-5", -1, 10, NOW)
    assert e.value.field == "input_tokens"
    with pytest.raises(InvalidPricingError) as e:
        table.estimate("claude-sonnet-4-5", 1, MAX_TOKENS + 1, NOW)
    assert e.value.field == "max_output_tokens"
    with pytest.raises(InvalidPricingError, match=r"usage\.output"):
        UsageTokens(output=-1)
    with pytest.raises(InvalidPricingError, match=r"usage\.cache_read"):
        UsageTokens(cache_read=MAX_TOKENS + 1)
    with pytest.raises(InvalidPricingError, match=r"usage\.input"):
        UsageTokens(input=1.0)  # type: ignore[arg-type]


def test_usage_totals() -> None:
    u = UsageTokens(input=1, output=2, cache_write_5m=4, cache_write_1h=8, cache_read=16)
    assert (u.prompt, u.total) == (29, 31)


# --- lookup ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "claude-sonnet-4-5",
        "claude-sonnet-4-5-20250929",
        "Claude-Sonnet-4-5",
        "anthropic.claude-sonnet-4-5-20250929-v1:0",
        "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "eu.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "anthropic.claude-sonnet-4-5-v1:0",
        "claude-sonnet-4-5@20250929",
        "anthropic/claude-sonnet-4.5",
        "claude-sonnet-4-5-20260101",
    ],
)
def test_platform_ids_resolve_to_one_row(table: PriceTable, name: str) -> None:
    assert table.require(name) is table.require("claude-sonnet-4-5")


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("claude-opus-4-20250514", "claude-opus-4"),
        ("claude-opus-4@20250514", "claude-opus-4"),
        ("claude-opus-4-1@20250805", "claude-opus-4-1"),
        ("anthropic/claude-opus-4.1", "claude-opus-4-1"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("anthropic/claude-3.5-haiku", "claude-3-5-haiku"),
        ("anthropic.claude-3-haiku-20240307-v1:0", "claude-3-haiku"),
        ("apac.anthropic.claude-haiku-4-5-20251001-v1:0", "claude-haiku-4-5"),
        ("openai/gpt-4.1-mini", "gpt-4.1-mini"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        # OpenAI snapshots not in the table: "-YYYY-MM-DD" is a date suffix too.
        ("gpt-4o-mini-2025-02-03", "gpt-4o-mini"),
        ("GPT-4o-mini-2025-02-03", "gpt-4o-mini"),
        ("gpt-4.1-mini-2025-09-01", "gpt-4.1-mini"),
        ("openai/gpt-4.1-mini-2025-09-01", "gpt-4.1-mini"),
        ("o3-2025-12-01", "o3"),
        ("anthropic/claude-3.5-haiku-20241022", "claude-3-5-haiku"),
        ("google/gemini-2.5-pro", "gemini-2.5-pro"),
        ("deepseek/deepseek-chat", "deepseek-chat"),
    ],
)
def test_lookup_forms(table: PriceTable, name: str, model: str) -> None:
    found = table.lookup(name)
    assert found is not None and found.model == model


def test_explicit_alias_wins_over_normalisation() -> None:
    base = _row("claude-x-1", prices=_prices(1_000_000))
    dated = _row("claude-x-1-special", ("claude-x-1-20250101",), prices=_prices(2_000_000))
    t = PriceTable([base, dated])
    assert t.require("claude-x-1-20250101") is dated
    assert t.require("claude-x-1@20250101") is dated
    assert t.require("claude-x-1-20250102") is base
    gpt = _row("gpt-x", prices=_prices(1_000_000))
    snapshot = _row("gpt-x-special", ("gpt-x-2025-01-01",), prices=_prices(2_000_000))
    t = PriceTable([gpt, snapshot])
    assert t.require("gpt-x-2025-01-01") is snapshot
    assert t.require("gpt-x-2025-01-02") is gpt


@pytest.mark.parametrize(
    "name",
    [
        "gpt-99",
        "claude-sonnet-9",
        "claude-3-5-sonnet-20241022",
        "",
        "bad model",
        "x" * 200,
        "anthropic/claude-unknown-4.5",
        "gpt-99-2025-01-01",
        "gpt-4o-mini-2025-13",
        "gpt-4o-mini-2025-01-01-preview",
    ],
)
def test_unknown_model_raises(table: PriceTable, name: str) -> None:
    assert table.lookup(name) is None
    with pytest.raises(UnknownModelError) as e:
        table.require(name)
    assert e.value.model == name
    assert len(str(e.value)) < 200  # caller-supplied names are truncated in messages
    with pytest.raises(UnknownModelError):
        table.cost_micros(name, UsageTokens(input=1), NOW)
    with pytest.raises(UnknownModelError):
        table.estimate(name, 1, 1, NOW)
    assert issubclass(UnknownModelError, PricingError)


def test_unknown_model_message_names_it(table: PriceTable) -> None:
    with pytest.raises(UnknownModelError, match="gpt-99"):
        table.require("gpt-99")


# --- with_model ----------------------------------------------------------------------------


def test_with_model_replaces_row_by_alias_and_keeps_old_table(table: PriceTable) -> None:
    new = dataclasses.replace(
        table.require("claude-sonnet-4-5"),
        model="claude-sonnet-4-5-20250929",
        aliases=("claude-sonnet-4-5",),
        versions=(PriceVersion(None, _prices(1_000_000)),),
    )
    t2 = table.with_model(new)
    assert len(t2.models()) == len(table.models())
    assert t2.require("anthropic/claude-sonnet-4.5") is new
    assert cost(table, "claude-sonnet-4-5", input=1000) == 3000  # old table unchanged
    assert cost(t2, "claude-sonnet-4-5", input=1000) == 1000


def test_with_model_adds_new_row_and_rejects_ambiguous(table: PriceTable) -> None:
    t2 = table.with_model(_row("my-model"))
    assert t2.require("MY-MODEL").model == "my-model"
    assert table.lookup("my-model") is None
    with pytest.raises(InvalidPricingError) as e:
        table.with_model(_row("claude-opus-4", ("claude-opus-4-1",)))
    assert e.value.field == "pricing.aliases"


def test_table_rejects_duplicate_ids() -> None:
    with pytest.raises(InvalidPricingError, match="already used"):
        PriceTable([_row("a-1"), _row("b-1", ("A-1",))])


# --- proto and JSON -----------------------------------------------------------------------


def _valid_proto() -> admin_pb2.ModelPricing:
    return admin_pb2.ModelPricing(
        model="m-1",
        aliases=["m-1-20250101"],
        max_output_tokens=1000,
        batch_discount_percent=50,
        versions=[
            admin_pb2.PriceVersion(
                effective_from="",
                prices=admin_pb2.Prices(
                    input=1, output=2, cache_write_5m=3, cache_write_1h=4, cache_read=5
                ),
                tiers=[
                    admin_pb2.PriceTier(above_prompt_tokens=10, prices=admin_pb2.Prices(input=6))
                ],
            )
        ],
    )


def _set(attr: str, value: object) -> Callable[[admin_pb2.ModelPricing], None]:
    def mutate(m: admin_pb2.ModelPricing) -> None:
        setattr(m, attr, value)

    return mutate


def _add_version(eff: str) -> Callable[[admin_pb2.ModelPricing], None]:
    def mutate(m: admin_pb2.ModelPricing) -> None:
        m.versions.add(effective_from=eff, prices=admin_pb2.Prices())

    return mutate


def _add_versions(n: int) -> Callable[[admin_pb2.ModelPricing], None]:
    def mutate(m: admin_pb2.ModelPricing) -> None:
        for i in range(n):
            _add_version((datetime.date(2026, 1, 1) + datetime.timedelta(days=i)).isoformat())(m)

    return mutate


def _v0(fn: Callable[[admin_pb2.PriceVersion], None]) -> Callable[[admin_pb2.ModelPricing], None]:
    def mutate(m: admin_pb2.ModelPricing) -> None:
        fn(m.versions[0])

    return mutate


def _add_tiers(n: int, above: int = 0) -> Callable[[admin_pb2.PriceVersion], None]:
    def mutate(v: admin_pb2.PriceVersion) -> None:
        for i in range(n):
            v.tiers.add(above_prompt_tokens=above or 100 + i, prices=admin_pb2.Prices())

    return mutate


INVALID: list[tuple[str, Callable[[admin_pb2.ModelPricing], None], str]] = [
    ("empty model", _set("model", ""), "pricing.model"),
    ("model with space", _set("model", "a b"), "pricing.model"),
    ("model starting with dash", _set("model", "-a"), "pricing.model"),
    ("model too long", _set("model", "a" * 129), "pricing.model"),
    ("bad alias", lambda m: m.aliases.append("x*y"), "pricing.aliases[1]"),
    ("alias equal to model", lambda m: m.aliases.append("M-1"), "pricing.aliases[1]"),
    ("duplicate alias", lambda m: m.aliases.append("m-1-20250101"), "pricing.aliases[1]"),
    ("33 aliases", lambda m: m.aliases.extend(f"a{i}" for i in range(32)), "pricing.aliases"),
    ("max output 0", _set("max_output_tokens", 0), "pricing.max_output_tokens"),
    ("max output too big", _set("max_output_tokens", 10_000_001), "pricing.max_output_tokens"),
    ("negative batch", _set("batch_discount_percent", -1), "pricing.batch_discount_percent"),
    ("batch over 100", _set("batch_discount_percent", 101), "pricing.batch_discount_percent"),
    ("no versions", lambda m: m.ClearField("versions"), "pricing.versions"),
    ("33 versions", _add_versions(32), "pricing.versions"),
    ("effective_from not a date", _add_version("2026-13-01"), "pricing.versions[1].effective_from"),
    ("effective_from wrong format", _add_version("20260101"), "pricing.versions[1].effective_from"),
    (
        "effective_from with time",
        _add_version("2026-01-01T00:00"),
        "pricing.versions[1].effective_from",
    ),
    ("duplicate empty effective_from", _add_version(""), "pricing.versions[1].effective_from"),
    ("missing prices", _v0(lambda v: v.ClearField("prices")), "pricing.versions[0].prices"),
    (
        "negative input price",
        _v0(lambda v: setattr(v.prices, "input", -1)),
        "pricing.versions[0].prices.input",
    ),
    (
        "output price too big",
        _v0(lambda v: setattr(v.prices, "output", MAX_PRICE_MICROS_PER_MTOK + 1)),
        "pricing.versions[0].prices.output",
    ),
    (
        "negative cache write 5m",
        _v0(lambda v: setattr(v.prices, "cache_write_5m", -5)),
        "pricing.versions[0].prices.cache_write_5m",
    ),
    (
        "negative cache write 1h",
        _v0(lambda v: setattr(v.prices, "cache_write_1h", -5)),
        "pricing.versions[0].prices.cache_write_1h",
    ),
    (
        "negative cache read",
        _v0(lambda v: setattr(v.prices, "cache_read", -5)),
        "pricing.versions[0].prices.cache_read",
    ),
    (
        "tier threshold 0",
        _v0(lambda v: setattr(v.tiers[0], "above_prompt_tokens", 0)),
        "pricing.versions[0].tiers[0].above_prompt_tokens",
    ),
    (
        "duplicate tier threshold",
        _v0(_add_tiers(1, above=10)),
        "pricing.versions[0].tiers[1].above_prompt_tokens",
    ),
    ("9 tiers", _v0(_add_tiers(8)), "pricing.versions[0].tiers"),
    (
        "tier missing prices",
        _v0(lambda v: v.tiers[0].ClearField("prices")),
        "pricing.versions[0].tiers[0].prices",
    ),
    (
        "tier negative price",
        _v0(lambda v: setattr(v.tiers[0].prices, "cache_read", -1)),
        "pricing.versions[0].tiers[0].prices.cache_read",
    ),
]


def test_valid_proto_is_accepted() -> None:
    mp = ModelPricing.from_proto(_valid_proto())
    assert mp.versions[0].tiers[0].prices.input == 6
    assert mp.to_proto() == _valid_proto()


@pytest.mark.parametrize(
    ("mutate", "field"), [(m, f) for _, m, f in INVALID], ids=[name for name, _, _ in INVALID]
)
def test_from_proto_rejects_invalid_field(
    mutate: Callable[[admin_pb2.ModelPricing], None], field: str
) -> None:
    msg = _valid_proto()
    mutate(msg)
    with pytest.raises(InvalidPricingError) as e:
        ModelPricing.from_proto(msg)
    assert e.value.field == field
    assert str(e.value).startswith(field + ":")


def test_every_default_row_round_trips(table: PriceTable) -> None:
    for mp in table.models():
        assert ModelPricing.from_proto(mp.to_proto()) == mp
        assert ModelPricing.from_json(mp.to_json()) == mp
        back = admin_pb2.ModelPricing()
        back.ParseFromString(mp.to_proto().SerializeToString())
        assert ModelPricing.from_proto(back) == mp


@pytest.mark.parametrize(
    "bad",
    [
        "not json",
        "[]",
        '{"model": "m-1"}',
        (
            '{"aliases":[],"batch_discount_percent":0,"max_output_tokens":1.0,"model":"m-1",'
            '"versions":[]}'
        ),
        (
            '{"aliases":[],"batch_discount_percent":0,"max_output_tokens":"5","model":"m-1",'
            '"versions":[]}'
        ),
        (
            '{"aliases":[],"batch_discount_percent":0,"max_output_tokens":NaN,"model":"m-1",'
            '"versions":[]}'
        ),
    ],
)
def test_from_json_is_strict(bad: str) -> None:
    with pytest.raises(InvalidPricingError):
        ModelPricing.from_json(bad)


def test_from_json_validates_limits() -> None:
    mp = ModelPricing.from_proto(_valid_proto())
    text = mp.to_json().replace('"batch_discount_percent":50', '"batch_discount_percent":101')
    with pytest.raises(InvalidPricingError) as e:
        ModelPricing.from_json(text)
    assert e.value.field == "pricing.batch_discount_percent"


# --- the default table ---------------------------------------------------------------------


def _walk(value: object, path: str) -> list[str]:
    """Paths of every float (or other non-int number) inside the dataclasses."""
    if isinstance(value, float):
        return [path]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [
            p
            for f in dataclasses.fields(value)
            for p in _walk(getattr(value, f.name), f"{path}.{f.name}")
        ]
    if isinstance(value, tuple):
        return [p for i, v in enumerate(value) for p in _walk(v, f"{path}[{i}]")]
    assert isinstance(value, (int, str, datetime.date, type(None))), path
    return []


def test_default_table_has_no_float(table: PriceTable) -> None:
    assert _walk(tuple(table.models()), "models") == []


def test_default_table_covers_the_facts(table: PriceTable) -> None:
    claude = {
        "claude-opus-4-5",
        "claude-sonnet-4-5",
        "claude-haiku-4-5",
        "claude-opus-4-1",
        "claude-opus-4",
        "claude-sonnet-4",
        "claude-3-5-haiku",
        "claude-3-haiku",
        "claude-opus-4-6",
        "claude-opus-4-7",
        "claude-opus-4-8",
        "claude-opus-5",
        "claude-opus-5-5",
        "claude-sonnet-4-6",
        "claude-sonnet-5",
        "claude-sonnet-5-5",
        "claude-haiku-5-5",
        "claude-fable-5",
        "claude-mythos-5",
        "claude-fable-5-1",
        "claude-mythos-5-1",
    }
    others = {
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "o3",
        "o4-mini",
        "gpt-5",
        "gpt-5-mini",
        "gpt-5-nano",
        "gemini-2.5-pro",
        "gemini-2.5-flash",
        "deepseek-chat",
        "deepseek-reasoner",
    }
    rows = {mp.model: mp for mp in table.models()}
    assert set(rows) == claude | others
    for name in claude:
        assert rows[name].batch_discount_percent == 50
    for alias in [
        "claude-sonnet-4-5-20250929",
        "claude-opus-4-5-20251101",
        "claude-haiku-4-5-20251001",
        "claude-opus-4-1-20250805",
        "claude-opus-4-20250514",
        "claude-sonnet-4-20250514",
        "claude-3-5-haiku-20241022",
        "claude-3-haiku-20240307",
    ]:
        assert alias in table.require(alias).aliases
    max_out = {
        "claude-3-haiku": 4096,
        "claude-3-5-haiku": 8192,
        "claude-opus-4": 32000,
        "claude-opus-4-1": 32000,
        "claude-sonnet-4": 64000,
        "claude-sonnet-4-5": 64000,
        "claude-haiku-4-5": 64000,
        "claude-opus-4-5": 64000,
    }
    for name in claude:
        assert rows[name].max_output_tokens == max_out.get(name, 128_000), name


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        # model: (input, output, 5m write, 1h write, read) in USD/MTok from the facts file
        ("claude-fable-5-1", ("10", "50", "12.50", "20", "0.25")),
        ("claude-mythos-5", ("10", "50", "12.50", "20", "1.00")),
        ("claude-opus-5-5", ("4", "20", "5", "8", "0.20")),
        ("claude-opus-4-6", ("5", "25", "6.25", "10", "0.50")),
        ("claude-opus-4", ("15", "75", "18.75", "30", "1.50")),
        ("claude-sonnet-5", ("2", "10", "2.50", "4", "0.20")),
        ("claude-sonnet-4-6", ("3", "15", "3.75", "6", "0.30")),
        ("claude-haiku-4-5", ("1", "5", "1.25", "2", "0.10")),
        ("claude-3-5-haiku", ("0.80", "4", "1", "1.60", "0.08")),
        ("claude-3-haiku", ("0.25", "1.25", "0.30", "0.50", "0.03")),
    ],
)
def test_default_prices_match_facts(
    table: PriceTable, model: str, expected: tuple[str, ...]
) -> None:
    (version,) = table.require(model).versions
    assert version.prices == Prices(*map(pricing_defaults.usd_to_micros, expected))


def test_usd_parser_is_exact() -> None:
    assert pricing_defaults.usd_to_micros("22.50") == 22_500_000
    assert pricing_defaults.usd_to_micros("0.005") == 5_000
    assert pricing_defaults.usd_to_micros("3") == 3_000_000
    for bad in ["1e3", "0.0000001", "-1", "", "1,5"]:
        with pytest.raises(ValueError):
            pricing_defaults.usd_to_micros(bad)


# --- helpers ---------------------------------------------------------------------------


def _prices(input_micros: int = 1_000_000) -> Prices:
    return Prices(input=input_micros, output=0, cache_write_5m=0, cache_write_1h=0, cache_read=0)


def _row(
    model: str = "m-1",
    aliases: tuple[str, ...] = (),
    prices: Prices | None = None,
    versions: tuple[PriceVersion, ...] | None = None,
) -> ModelPricing:
    return ModelPricing(
        model=model,
        aliases=aliases,
        max_output_tokens=1000,
        batch_discount_percent=50,
        versions=versions or (PriceVersion(None, prices or _prices()),),
    )


# --- through the server ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("snapshot", "model"),
    [("gpt-4o-mini-2025-02-03", "gpt-4o-mini"), ("gpt-4.1-mini-2025-09-01", "gpt-4.1-mini"),
     ("claude-sonnet-4-5-20260101", "claude-sonnet-4-5")],
)
def test_reserve_and_record_price_a_snapshot_like_its_model(
    budgetd: Budgetd, snapshot: str, model: str
) -> None:
    """A dated name the default table does not list is accepted and priced as
    its model (before: unknown model, refused)."""
    got = budgetd.client.reserve("acme/a", snapshot, input_tokens=10_000, max_output_tokens=500)
    want = budgetd.client.reserve("acme/b", model, input_tokens=10_000, max_output_tokens=500)
    assert got.allowed and want.allowed
    assert got.reserved_cost_micros == want.reserved_cost_micros > 0
    rec = budgetd.client.record("acme/a", snapshot, {"input_tokens": 1000, "output_tokens": 100},
                                request_id="snap-1")
    ref = budgetd.client.record("acme/b", model, {"input_tokens": 1000, "output_tokens": 100},
                                request_id="snap-2")
    assert rec.cost_micros == ref.cost_micros > 0
