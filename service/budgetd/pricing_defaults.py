"""The shipped default price table.

Claude rows: /work/shared/pricing-facts.md (Anthropic's pricing page: model
pricing, batch processing, long context pricing, prompt caching), collected
2026-11-25. OpenAI, Gemini and DeepSeek rows: the providers' public list prices
(openai.com/api/pricing, ai.google.dev/gemini-api/docs/pricing,
api-docs.deepseek.com/quick_start/pricing) as known to the author in 2025, put in
this table 2026-11-25; re-check them before a release. SetPricing overrides any row.

Prices are written as USD strings exactly as published and converted with
integer arithmetic, so that the table reads like the source and holds no float.
"""

from __future__ import annotations

import datetime
import re

from budgetd.pricing import ModelPricing, Prices, PriceTable, PriceTier, PriceVersion

_USD_RE = re.compile(r"^([0-9]+)(?:\.([0-9]{1,6}))?$")


def usd_to_micros(text: str) -> int:
    """ "3.75" -> 3_750_000, without a float (USD per MTok -> micro-USD per MTok)."""
    m = _USD_RE.match(text)
    if not m:
        raise ValueError(f"not a USD amount with at most 6 decimals: {text!r}")
    return int(m.group(1)) * 1_000_000 + int((m.group(2) or "").ljust(6, "0"))


def _p(inp: str, write_5m: str, write_1h: str, read: str, out: str) -> Prices:
    # Argument order follows the facts file's columns.
    return Prices(
        input=usd_to_micros(inp),
        output=usd_to_micros(out),
        cache_write_5m=usd_to_micros(write_5m),
        cache_write_1h=usd_to_micros(write_1h),
        cache_read=usd_to_micros(read),
    )


def _no_write(inp: str, cached: str, out: str) -> Prices:
    # OpenAI, Gemini and DeepSeek bill no cache write: written tokens cost input.
    return _p(inp, inp, inp, cached, out)


_Version = tuple[str | None, Prices, tuple[tuple[int, Prices], ...]]

# Sonnet 4 / 4.5 above 200k prompt tokens: $6 / $22.50, cache at 1.25x / 2x / 0.1x of $6.
_SONNET_4_LONG = ((200_000, _p("6", "7.50", "12", "0.60", "22.50")),)
_OPUS_5 = _p("5", "6.25", "10", "0.50", "25")
_OPUS_4 = _p("15", "18.75", "30", "1.50", "75")
_SONNET_4 = _p("3", "3.75", "6", "0.30", "15")
_SONNET_5 = _p("2", "2.50", "4", "0.20", "10")
_FABLE_5 = _p("10", "12.50", "20", "1.00", "50")
_FABLE_5_1 = _p("10", "12.50", "20", "0.25", "50")


def _v(
    prices: Prices, tiers: tuple[tuple[int, Prices], ...] = (), since: str | None = None
) -> _Version:
    return (since, prices, tiers)


# model, aliases, max output tokens, batch discount %, versions (effective from, prices, tiers)
# fmt: off  (one row per model reads like the facts table)
DEFAULT_ROWS: tuple[tuple[str, tuple[str, ...], int, int, tuple[_Version, ...]], ...] = (
    # Anthropic Claude: batch API is 50% off input and output.
    ("claude-fable-5-1", (), 128_000, 50, (_v(_FABLE_5_1),)),
    ("claude-mythos-5-1", (), 128_000, 50, (_v(_FABLE_5_1),)),
    ("claude-fable-5", (), 128_000, 50, (_v(_FABLE_5),)),
    ("claude-mythos-5", (), 128_000, 50, (_v(_FABLE_5),)),
    # Opus 5.5 cache prices: 1.25x / 2x input and its 0.05x read ratio (consistent).
    ("claude-opus-5-5", (), 128_000, 50, (_v(_p("4", "5", "8", "0.20", "20")),)),
    ("claude-opus-5", (), 128_000, 50, (_v(_OPUS_5),)),
    ("claude-opus-4-8", (), 128_000, 50, (_v(_OPUS_5),)),
    ("claude-opus-4-7", (), 128_000, 50, (_v(_OPUS_5),)),
    ("claude-opus-4-6", (), 128_000, 50, (_v(_OPUS_5),)),
    # Opus 4.5 is $5/$25; $15/$75 was the older Opus 4 / 4.1 tier.
    ("claude-opus-4-5", ("claude-opus-4-5-20251101",), 64_000, 50, (_v(_OPUS_5),)),
    ("claude-opus-4-1", ("claude-opus-4-1-20250805",), 32_000, 50, (_v(_OPUS_4),)),
    ("claude-opus-4", ("claude-opus-4-20250514", "claude-opus-4-0"), 32_000, 50, (_v(_OPUS_4),)),
    (
        "claude-sonnet-5-5",
        (),
        128_000,
        50,
        (
            _v(_p("2", "2.50", "4", "0.20", "10")),
            _v(_p("2", "2.50", "4", "0.10", "10"), since="2026-10-07"),  # cache-read cut
        ),
    ),
    ("claude-sonnet-5", (), 128_000, 50, (_v(_SONNET_5),)),
    ("claude-sonnet-4-6", (), 128_000, 50, (_v(_SONNET_4),)),
    (
        "claude-sonnet-4-5",
        ("claude-sonnet-4-5-20250929",),
        64_000,
        50,
        (_v(_SONNET_4, _SONNET_4_LONG),),
    ),
    (
        "claude-sonnet-4",
        ("claude-sonnet-4-20250514", "claude-sonnet-4-0"),
        64_000,
        50,
        (_v(_SONNET_4, _SONNET_4_LONG),),
    ),
    (
        "claude-haiku-5-5",
        (),
        128_000,
        50,
        (
            _v(
                _p("0.10", "0.125", "0.20", "0.01", "0.50"),
                ((100_000, _p("0.50", "0.625", "1.00", "0.05", "2.50")),),
            ),
        ),
    ),
    (
        "claude-haiku-4-5",
        ("claude-haiku-4-5-20251001",),
        64_000,
        50,
        (_v(_p("1", "1.25", "2", "0.10", "5")),),
    ),
    (
        "claude-3-5-haiku",
        ("claude-3-5-haiku-20241022", "claude-3-5-haiku-latest"),
        8_192,
        50,
        (_v(_p("0.80", "1", "1.60", "0.08", "4")),),
    ),
    (
        "claude-3-haiku",
        ("claude-3-haiku-20240307",),
        4_096,
        50,
        (_v(_p("0.25", "0.30", "0.50", "0.03", "1.25")),),
    ),
    # OpenAI: input, cached input, output; batch API 50% off.
    (
        "gpt-4o",
        ("gpt-4o-2024-08-06", "gpt-4o-2024-11-20"),
        16_384,
        50,
        (_v(_no_write("2.50", "1.25", "10")),),
    ),
    (
        "gpt-4o-mini",
        ("gpt-4o-mini-2024-07-18",),
        16_384,
        50,
        (_v(_no_write("0.15", "0.075", "0.60")),),
    ),
    ("gpt-4.1", ("gpt-4.1-2025-04-14",), 32_768, 50, (_v(_no_write("2", "0.50", "8")),)),
    (
        "gpt-4.1-mini",
        ("gpt-4.1-mini-2025-04-14",),
        32_768,
        50,
        (_v(_no_write("0.40", "0.10", "1.60")),),
    ),
    (
        "gpt-4.1-nano",
        ("gpt-4.1-nano-2025-04-14",),
        32_768,
        50,
        (_v(_no_write("0.10", "0.025", "0.40")),),
    ),
    (
        "o3",
        ("o3-2025-04-16",),
        100_000,
        50,
        (
            _v(_no_write("10", "2.50", "40")),
            _v(_no_write("2", "0.50", "8"), since="2025-06-10"),  # OpenAI's 80% o3 price cut
        ),
    ),
    ("o4-mini", ("o4-mini-2025-04-16",), 100_000, 50, (_v(_no_write("1.10", "0.275", "4.40")),)),
    ("gpt-5", ("gpt-5-2025-08-07",), 128_000, 50, (_v(_no_write("1.25", "0.125", "10")),)),
    ("gpt-5-mini", ("gpt-5-mini-2025-08-07",), 128_000, 50, (_v(_no_write("0.25", "0.025", "2")),)),
    (
        "gpt-5-nano",
        ("gpt-5-nano-2025-08-07",),
        128_000,
        50,
        (_v(_no_write("0.05", "0.005", "0.40")),),
    ),
    # Google Gemini (paid tier, text): batch mode 50% off. Context-cache storage
    # (per token-hour) is not a per-request price and is not modelled.
    (
        "gemini-2.5-pro",
        (),
        65_536,
        50,
        (
            _v(
                _no_write("1.25", "0.125", "10"),
                ((200_000, _no_write("2.50", "0.25", "15")),),
            ),
        ),
    ),
    ("gemini-2.5-flash", (), 65_536, 50, (_v(_no_write("0.30", "0.03", "2.50")),)),
    # DeepSeek (V3.2 prices; cache hit as cache read, cache miss as input): no batch API.
    ("deepseek-chat", (), 8_192, 0, (_v(_no_write("0.28", "0.028", "0.42")),)),
    ("deepseek-reasoner", (), 65_536, 0, (_v(_no_write("0.28", "0.028", "0.42")),)),
)
# fmt: on


def default_models() -> tuple[ModelPricing, ...]:
    return tuple(
        ModelPricing(
            model=model,
            aliases=aliases,
            max_output_tokens=max_output,
            batch_discount_percent=batch,
            versions=tuple(
                PriceVersion(
                    effective_from=None if since is None else datetime.date.fromisoformat(since),
                    prices=prices,
                    tiers=tuple(PriceTier(above, tier) for above, tier in tiers),
                )
                for since, prices, tiers in versions
            ),
        )
        for model, aliases, max_output, batch, versions in DEFAULT_ROWS
    )


def default_table() -> PriceTable:
    return PriceTable(default_models())
