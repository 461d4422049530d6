"""Budget rules, org settings and pricing overrides, stored in Redis.

A rule is one field of the org's rules hash, read by the reserve script:
  field "<path>|<d|m>|<t|c>"  value "<limit>|<h|s|w>|<thresholds csv>"
The default thresholds (limits.DEFAULT_ALERT_THRESHOLDS) are stored as an
empty csv: most rules have them, and every byte of a rule is Redis memory
per org. A rule always has thresholds (none given means the defaults).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from budgetd import orgcache
from budgetd import windows as w
from budgetd.codec import text
from budgetd.errors import FailedPrecondition, InvalidArgument, NotFound
from budgetd.ledger import Ledger, ScopePath
from budgetd.limits import (
    DEFAULT_ALERT_THRESHOLDS,
    MAX_ALERT_THRESHOLDS,
    MAX_LIMIT,
    MAX_RULES_PER_ORG,
    MAX_THRESHOLD_PERCENT,
)
from budgetd.pricing import ModelPricing

WINDOW_CODES = {"d": "day", "m": "month"}
UNIT_CODES = {"t": "tokens", "c": "cost_micros"}
MODE_CODES = {"h": "hard", "s": "soft", "w": "shadow"}


@dataclass(frozen=True, slots=True)
class Rule:
    scope: ScopePath
    window: str  # 'd' | 'm'
    unit: str  # 't' | 'c'
    limit: int
    mode: str = "h"  # 'h' | 's' | 'w'
    thresholds: tuple[int, ...] = DEFAULT_ALERT_THRESHOLDS

    @property
    def field(self) -> str:
        return f"{self.scope.path}|{self.window}|{self.unit}"

    @property
    def value(self) -> str:
        th = "" if self.thresholds == DEFAULT_ALERT_THRESHOLDS else ",".join(
            str(t) for t in self.thresholds)
        return f"{self.limit}|{self.mode}|{th}"

    @staticmethod
    def parse(field: str, value: str) -> Rule:
        path, window, unit = field.split("|")
        parts = path.split("/")
        limit, mode, th = value.split("|")
        return Rule(
            ScopePath(parts[0], parts[1] if len(parts) > 1 else "",
                      parts[2] if len(parts) > 2 else ""),
            window, unit, int(limit), mode,
            tuple(int(t) for t in th.split(",")) if th else DEFAULT_ALERT_THRESHOLDS,
        )


def check_rule(scope: ScopePath, window: str, unit: str, limit: int, mode: str,
               thresholds: list[int]) -> Rule:
    if limit < 1 or limit > MAX_LIMIT:
        raise InvalidArgument("rule.limit", f"{limit} is out of range 1..{MAX_LIMIT}")
    if len(thresholds) > MAX_ALERT_THRESHOLDS:
        raise InvalidArgument("rule.alert_thresholds_percent",
                              f"at most {MAX_ALERT_THRESHOLDS} thresholds")
    for i, t in enumerate(thresholds):
        if t < 1 or t > MAX_THRESHOLD_PERCENT:
            raise InvalidArgument(f"rule.alert_thresholds_percent[{i}]",
                                  f"{t} is out of range 1..{MAX_THRESHOLD_PERCENT}")
    th = tuple(sorted(set(thresholds))) if thresholds else DEFAULT_ALERT_THRESHOLDS
    return Rule(scope, window, unit, limit, mode, th)


class Admin:
    def __init__(self, redis: Any, ledger: Ledger) -> None:
        self.redis = redis
        self.ledger = ledger

    async def _change_rule(self, org: str, args: list[str | int]) -> int:
        """Runs the rules script (the change and the generation bump, atomic)
        and drops this replica's cached copy of the org."""
        changed = int(await self.ledger.scripts.rules(
            self.redis, [w.rules_key(org), w.settings_key(org)], args))
        self.ledger.forget_org(org)
        return changed

    async def set_budget(self, rule: Rule) -> bool:
        org = rule.scope.org
        changed = await self._change_rule(org, ["set", rule.field, rule.value,
                                                MAX_RULES_PER_ORG])
        if changed == -1:
            raise FailedPrecondition(f"rule.scope.org: the org has {MAX_RULES_PER_ORG} rules, "
                                     "the maximum", "rule.scope.org")
        if changed:
            await self.redis.sadd(w.ORGS_KEY, org)
        return bool(changed)

    async def delete_budget(self, scope: ScopePath, window: str, unit: str) -> bool:
        return bool(await self._change_rule(scope.org,
                                            ["del", f"{scope.path}|{window}|{unit}"]))

    async def list_budgets(self, org: str) -> list[Rule]:
        raw = await self.redis.hgetall(w.rules_key(org))
        # Not the generation and zone ('#c': orgcache.py).
        rules = [Rule.parse(text(k), text(v)) for k, v in raw.items()
                 if not text(k).startswith("#")]
        rules.sort(key=lambda r: (r.scope.path, r.window, r.unit))
        return rules

    async def get_settings(self, org: str) -> tuple[str, str]:
        tz, expiry = await self.redis.hmget(w.settings_key(org), "tz", "expiry")
        return (text(tz) if tz else "UTC", text(expiry) if expiry else "keep")

    async def set_settings(self, org: str, tz: str | None, expiry: str | None) -> tuple[str, str]:
        if tz is not None and not w.valid_zone(tz):
            raise InvalidArgument("settings.time_zone", f"{tz!r} is not an IANA time zone")
        mapping: dict[str, str] = {}
        if tz is not None:
            mapping["tz"] = tz
        if expiry is not None:
            mapping["expiry"] = expiry
        if mapping:
            await self.redis.hset(w.settings_key(org), mapping=mapping)
            if tz is not None:
                # The reserve script checks the zone's copy in the rules hash.
                await orgcache.copy_zone(self.redis, self.ledger.scripts.org_tz, org)
            await self.redis.sadd(w.ORGS_KEY, org)
        self.ledger.forget_org(org)
        return await self.get_settings(org)

    async def set_pricing(self, mp: ModelPricing) -> ModelPricing:
        await self.redis.hset(w.PRICING_KEY, mp.model, mp.to_json())
        await self.ledger.pricing.refresh(force=True)
        return mp

    async def get_pricing(self, model: str) -> list[ModelPricing]:
        table = await self.ledger.pricing.refresh(force=True)
        if not model:
            return sorted(table.models(), key=lambda m: m.model)
        found = table.lookup(model)
        if found is None:
            raise NotFound(f"model: no pricing for {model!r}", "model")
        return [found]


