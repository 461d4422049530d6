"""Scheduled drift check (off by default; --drift-provider turns it on).

Every --drift-interval-s the server runs what `budgetctl drift` runs, on the
current month (UTC days) up to yesterday: the provider's usage API (admin key
from ANTHROPIC_ADMIN_KEY / OPENAI_ADMIN_KEY) vs the report counters, priced
with the server's own pricing table. Each (day, scope, model) that drifts more
than --drift-threshold-percent raises one alert of kind "drift" on the org's
alert stream (WatchAlerts, the webhook), once: drift_alert.lua keeps a marker
in the day's fired hash like the threshold alerts do.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
from dataclasses import dataclass
from typing import Any

from budgetd_client.cli.apply import SpecError, load_data
from budgetd_client.providers import drift as dr
from budgetd_client.providers import mapping as mp
from budgetd_client.providers._http import HttpPolicy, ProviderError
from budgetd_client.providers.anthropic import AnthropicAdmin
from budgetd_client.providers.openai import OpenAIAdmin

from budgetd.alerts import alerts_key, fired_key
from budgetd.clock import Clock
from budgetd.ledger import Ledger
from budgetd.limits import DAY_RETENTION_S
from budgetd.reports import usage_report

log = logging.getLogger("budgetd.drift")
# Alerts one run may raise (a broken mapping must not flood the stream).
MAX_ALERTS_PER_RUN = 100
MIN_INTERVAL_S = 0.05


class DriftConfigError(ValueError):
    """A --drift-* setting is invalid: the server does not start."""


@dataclass(frozen=True, slots=True)
class DriftConfig:
    provider: str
    mapping_file: str
    org: str | None = None
    interval_s: float = 86_400.0
    threshold_percent: float = 1.0
    base_url: str = ""
    use_cost_report: bool = True


class DriftChecker:
    def __init__(self, redis: Any, ledger: Ledger, clock: Clock, cfg: DriftConfig) -> None:
        if cfg.provider not in mp.PROVIDERS:
            raise DriftConfigError(f"--drift-provider: {cfg.provider!r} is not one of "
                                   f"{', '.join(mp.PROVIDERS)}")
        if cfg.interval_s < MIN_INTERVAL_S or cfg.threshold_percent < 0:
            raise DriftConfigError("--drift-interval-s must be > 0 and "
                                   "--drift-threshold-percent >= 0")
        if not cfg.mapping_file:
            raise DriftConfigError("--drift-mapping-file: required with --drift-provider")
        try:
            self.map = mp.load(load_data(cfg.mapping_file), cfg.provider, cfg.org,
                               cfg.mapping_file)
        except (SpecError, mp.MappingError) as e:
            raise DriftConfigError(str(e)) from None
        kw: dict[str, Any] = {"policy": HttpPolicy(max_attempts=5, max_retry_after_s=300)}
        if cfg.base_url:
            kw["base_url"] = cfg.base_url
        try:  # The admin key is read here, from the environment, and never logged.
            self.importer: AnthropicAdmin | OpenAIAdmin = (
                AnthropicAdmin(**kw) if cfg.provider == "anthropic" else OpenAIAdmin(**kw))
        except ProviderError as e:
            raise DriftConfigError(str(e)) from None
        self.redis, self.ledger, self.clock, self.cfg = redis, ledger, clock, cfg

    async def run(self) -> None:
        while True:
            try:
                n = await self.check_once()
                if n:
                    log.warning("drift alerts raised", extra={"count": n,
                                                             "provider": self.cfg.provider})
            except ProviderError as e:
                log.warning("drift check failed: %s", e)
            except Exception:
                log.exception("drift check crashed")
            await asyncio.sleep(self.cfg.interval_s)

    async def check_once(self) -> int:
        """One check; returns how many alerts it raised."""
        now_ms = self.clock.now_ms()
        today = dt.datetime.fromtimestamp(now_ms / 1000, dt.timezone.utc).date()
        end = today  # Today is incomplete at the provider: up to yesterday.
        start = (today - dt.timedelta(days=1)).replace(day=1)
        if end <= start:
            return 0
        usage = await asyncio.to_thread(self.importer.usage, start, end)
        costs = None
        if isinstance(self.importer, AnthropicAdmin) and self.cfg.use_cost_report:
            costs = await asyncio.to_thread(self.importer.costs, start, end)
        org = self.map.org
        pricing = await self.ledger.pricing.refresh(force=True)
        pricer = dr.Pricer(m.to_proto() for m in pricing.models())
        ledger: dict[dr.Key, dr.LedgerRow] = {}
        day = start
        while day < end:
            rep = await usage_report(self.redis, org, f"d{day:%Y%m%d}", "scope_model")
            for r in rep.rows:
                scope, model = dr.parse_ledger_group(r.group)
                ledger[(day, scope, model)] = dr.LedgerRow(
                    r.input_tokens, r.output_tokens, r.cache_write_tokens,
                    r.cache_read_tokens, r.cost_micros)
            day += dt.timedelta(days=1)
        raised = 0
        for row in dr.compare(self.map, usage, costs, pricer, ledger):
            if raised >= MAX_ALERTS_PER_RUN:
                log.warning("drift: more rows over the threshold than one run alerts on",
                            extra={"max": MAX_ALERTS_PER_RUN})
                break
            if row.over(self.cfg.threshold_percent) and await self._alert(org, row, now_ms):
                raised += 1
        return raised

    async def _alert(self, org: str, row: dr.DriftRow, now_ms: int) -> bool:
        path = org if row.scope in ("", dr.UNMAPPED) else f"{org}/{row.scope}"
        wid = f"d{row.day:%Y%m%d}"
        if row.provider_cost_micros is not None:
            unit, limit, consumed = "c", row.provider_cost_micros, row.ledger.cost_micros
        else:
            unit, limit, consumed = "t", row.provider_tokens.total, row.ledger.total
        pct = min(abs(row.drift_percent), 1e6)
        # Unmapped usage alerts on the org's path too: its own id keeps its
        # once-per-day marker apart from the org-level row's.
        rid = (f"drift:{self.cfg.provider}:{row.model}"
               + (":unmapped" if row.scope == dr.UNMAPPED else ""))
        day_end_s = int(dt.datetime(row.day.year, row.day.month, row.day.day,
                                    tzinfo=dt.timezone.utc).timestamp()) + 86_400
        fields = ["kind", "drift", "path", path, "w", "d", "u", unit, "mode", "",
                  "th", str(math.ceil(pct)), "limit", str(limit), "consumed", str(consumed),
                  "wid", wid, "at", str(now_ms), "rid", rid]
        got = await self.ledger.scripts.drift_alert(
            self.redis, [fired_key(org, wid), alerts_key(org)],
            [f"{path}|d|{rid}", max(day_end_s + DAY_RETENTION_S,
                                           now_ms // 1000 + 86_400), *fields])
        return bool(got)
