"""`budgetctl apply -f budgets.yaml`: a declarative org/team/feature tree of
limits, compared with the server's rules and applied as a diff.

The file (docs/budgetctl.md has the full description):

  orgs:
    acme:
      time_zone: Europe/Paris        # optional
      expiry_policy: keep            # optional: keep | release
      limits:
        - {window: month, unit: cost, limit_usd: "5000", mode: hard}
      teams:
        search:
          limits:
            - {window: day, unit: tokens, limit: 2000000, thresholds: [80, 100]}
          features:
            rerank:
              limits: [...]
"""

from __future__ import annotations

import pathlib
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from budgetd_client.providers.mapping import MappingError
from budgetd_client.providers.mapping import parse_org as parse_providers
from budgetd_client.types import MODES, UNITS, WINDOWS, Rule, Scope

# The server's defaults and bounds, mirrored so a file is checked whole
# before the first change is made.
DEFAULT_THRESHOLDS = (50, 75, 90, 100)
MAX_THRESHOLDS = 16
MAX_THRESHOLD_PERCENT = 1000
MAX_FILE_BYTES = 4 << 20
MAX_ORGS = 1000
MAX_RULES_PER_ORG = 10_000
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_UNIT_NAMES = {"tokens": "tokens", "cost": "cost_micros", "cost_micros": "cost_micros"}
_ORG_KEYS = {"time_zone", "expiry_policy", "limits", "teams", "providers"}
_TEAM_KEYS = {"limits", "features"}
_FEATURE_KEYS = {"limits"}
_LIMIT_KEYS = {"window", "unit", "limit", "limit_usd", "mode", "thresholds"}

RuleKey = tuple[str, str, str]  # (scope path, window, unit)


class SpecError(Exception):
    """The file is not a valid budget tree; the message names the place."""


@dataclass
class OrgSpec:
    org: str
    time_zone: str | None = None
    expiry_policy: str | None = None
    rules: dict[RuleKey, Rule] = field(default_factory=dict)


@dataclass(frozen=True)
class Change:
    kind: str  # 'settings' | 'add' | 'change' | 'delete' | 'kept'
    org: str
    key: RuleKey | None = None
    old: Rule | None = None
    new: Rule | None = None
    setting: str = ""
    old_value: str = ""
    new_value: str = ""

    def describe(self) -> str:
        if self.kind == "settings":
            return f"~ {self.org} {self.setting}: {self.old_value} -> {self.new_value}"
        assert self.key is not None
        where = f"{self.key[0]} {self.key[1]} {self.key[2]}"
        if self.kind == "add":
            assert self.new is not None
            return f"+ {where}: {rule_text(self.new)}"
        if self.kind == "delete":
            assert self.old is not None
            return f"- {where}: {rule_text(self.old)}"
        if self.kind == "kept":
            return f"  {where}: not in the file, kept (--prune deletes it)"
        assert self.old is not None and self.new is not None
        diffs = []
        for name, a, b in (("limit", self.old.limit, self.new.limit),
                           ("mode", self.old.mode, self.new.mode),
                           ("thresholds", _th(self.old), _th(self.new))):
            if a != b:
                diffs.append(f"{name} {a} -> {b}")
        return f"~ {where}: {', '.join(diffs)}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "org": self.org}
        if self.key is not None:
            out.update(scope=self.key[0], window=self.key[1], unit=self.key[2])
        if self.kind == "settings":
            out.update(setting=self.setting, old=self.old_value, new=self.new_value)
        if self.old is not None:
            out["old"] = rule_json(self.old)
        if self.new is not None:
            out["new"] = rule_json(self.new)
        return out


def _th(r: Rule) -> str:
    return ",".join(str(t) for t in r.alert_thresholds_percent)


def rule_text(r: Rule) -> str:
    return f"limit {r.limit} {r.mode} thresholds {_th(r)}"


def rule_json(r: Rule) -> dict[str, Any]:
    return {"scope": str(r.scope), "window": r.window, "unit": r.unit, "limit": r.limit,
            "mode": r.mode, "thresholds": list(r.alert_thresholds_percent)}


def normalize(r: Rule) -> Rule:
    """As the server stores it: thresholds sorted, deduplicated, defaulted."""
    th = tuple(sorted(set(r.alert_thresholds_percent))) or DEFAULT_THRESHOLDS
    return Rule(r.scope, r.window, r.unit, r.limit, r.mode, th)


def key_of(r: Rule) -> RuleKey:
    return (str(r.scope), r.window, r.unit)


def load(path: str) -> list[OrgSpec]:
    return parse(load_data(path), path)


def load_data(path: str) -> Any:
    """A YAML (or JSON, which is YAML) document, size-checked."""
    p = pathlib.Path(path)
    try:
        if p.stat().st_size > MAX_FILE_BYTES:
            raise SpecError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
        text = p.read_text()
    except OSError as e:
        raise SpecError(f"{path}: cannot read: {e.strerror}") from e
    if p.suffix.lower() == ".json":
        import json

        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"{path}: invalid JSON: {e}") from e
    try:
        import yaml  # lazily: the client itself needs only grpcio and protobuf
    except ImportError as e:
        raise SpecError("reading YAML needs PyYAML: pip install 'budgetd-client[cli]'") from e
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: invalid YAML: {e}") from e


def _mapping(v: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise SpecError(f"{where}: expected a mapping")
    unknown = set(map(str, v)) - allowed
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} "
                        f"(allowed: {', '.join(sorted(allowed))})")
    return v


def _id(v: Any, where: str) -> str:
    s = str(v)
    if not ID_RE.fullmatch(s) or not s.isascii():
        raise SpecError(f"{where}: {s!r} is not a valid id ({ID_RE.pattern})")
    return s


def parse(doc: Any, source: str = "file") -> list[OrgSpec]:
    top = _mapping(doc, source, {"orgs"})
    orgs = _mapping(top.get("orgs"), f"{source}: orgs", set(map(str, top.get("orgs") or {})))
    if not orgs:
        raise SpecError(f"{source}: orgs: expected at least one org")
    if len(orgs) > MAX_ORGS:
        raise SpecError(f"{source}: orgs: at most {MAX_ORGS}")
    out = []
    for org_name, org_doc in orgs.items():
        org = _id(org_name, f"{source}: orgs")
        where = f"{source}: orgs.{org}"
        od = _mapping(org_doc, where, _ORG_KEYS)
        spec = OrgSpec(org)
        if od.get("time_zone") is not None:
            spec.time_zone = str(od["time_zone"])
        if od.get("expiry_policy") is not None:
            ep = str(od["expiry_policy"])
            if ep not in ("keep", "release"):
                raise SpecError(f"{where}.expiry_policy: must be keep or release")
            spec.expiry_policy = ep
        try:  # Provider mappings are for `budgetctl drift`; checked here too.
            parse_providers(org, od.get("providers"), f"{where}.providers")
        except MappingError as e:
            raise SpecError(str(e)) from None
        _limits(spec, Scope(org), od.get("limits"), f"{where}.limits")
        teams = od.get("teams") or {}
        if not isinstance(teams, dict):
            raise SpecError(f"{where}.teams: expected a mapping of team id to team")
        for team_name, team_doc in teams.items():
            team = _id(team_name, f"{where}.teams")
            twhere = f"{where}.teams.{team}"
            td = _mapping(team_doc, twhere, _TEAM_KEYS)
            _limits(spec, Scope(org, team), td.get("limits"), f"{twhere}.limits")
            feats = td.get("features") or {}
            if not isinstance(feats, dict):
                raise SpecError(f"{twhere}.features: expected a mapping of feature id to feature")
            for feat_name, feat_doc in feats.items():
                feat = _id(feat_name, f"{twhere}.features")
                fwhere = f"{twhere}.features.{feat}"
                fd = _mapping(feat_doc, fwhere, _FEATURE_KEYS)
                _limits(spec, Scope(org, team, feat), fd.get("limits"), f"{fwhere}.limits")
        if len(spec.rules) > MAX_RULES_PER_ORG:
            raise SpecError(f"{where}: {len(spec.rules)} rules, at most {MAX_RULES_PER_ORG}")
        out.append(spec)
    return out


def _limits(spec: OrgSpec, scope: Scope, v: Any, where: str) -> None:
    if v is None:
        return
    if not isinstance(v, list):
        raise SpecError(f"{where}: expected a list of limits")
    for i, item in enumerate(v):
        rule = parse_limit(scope, item, f"{where}[{i}]")
        k = key_of(rule)
        if k in spec.rules:
            raise SpecError(f"{where}[{i}]: a second {rule.window} {rule.unit} limit for "
                            f"{scope}")
        spec.rules[k] = rule


def parse_limit(scope: Scope, item: Any, where: str) -> Rule:
    d = _mapping(item, where, _LIMIT_KEYS)
    window = str(d.get("window", ""))
    if window not in WINDOWS:
        raise SpecError(f"{where}.window: must be day or month")
    unit = _UNIT_NAMES.get(str(d.get("unit", "")))
    if unit is None:
        raise SpecError(f"{where}.unit: must be tokens or cost (micro-USD)")
    if ("limit" in d) == ("limit_usd" in d):
        raise SpecError(f"{where}: give exactly one of limit, limit_usd")
    if "limit_usd" in d:
        if unit != "cost_micros":
            raise SpecError(f"{where}.limit_usd: only for unit cost")
        limit = usd_to_micros(d["limit_usd"], f"{where}.limit_usd")
    else:
        lim = d["limit"]
        if isinstance(lim, bool) or not isinstance(lim, int) or lim < 1:
            raise SpecError(f"{where}.limit: must be a positive integer "
                            f"({'micro-USD' if unit == 'cost_micros' else 'tokens'})")
        limit = lim
    mode = str(d.get("mode", "hard"))
    if mode not in MODES:
        raise SpecError(f"{where}.mode: must be hard, soft or shadow")
    th = d.get("thresholds", [])
    if not isinstance(th, list) or len(th) > MAX_THRESHOLDS:
        raise SpecError(f"{where}.thresholds: a list of at most {MAX_THRESHOLDS} percentages")
    for j, t in enumerate(th):
        if isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= MAX_THRESHOLD_PERCENT:
            raise SpecError(f"{where}.thresholds[{j}]: {t!r} is not a percentage in "
                            f"1..{MAX_THRESHOLD_PERCENT}")
    assert unit in UNITS
    return normalize(Rule(scope, window, unit, limit, mode, tuple(th)))


def usd_to_micros(v: Any, where: str) -> int:
    try:
        d = Decimal(str(v)) * 1_000_000
    except InvalidOperation as e:
        raise SpecError(f"{where}: {v!r} is not a decimal amount") from e
    if d != d.to_integral_value() or d < 1:
        raise SpecError(f"{where}: {v!r} must be positive, with at most 6 decimals")
    return int(d)


def plan(spec: OrgSpec, current: list[Rule], tz: str, expiry: str,
         prune: bool) -> list[Change]:
    changes: list[Change] = []
    if spec.time_zone is not None and spec.time_zone != tz:
        changes.append(Change("settings", spec.org, setting="time_zone", old_value=tz,
                              new_value=spec.time_zone))
    if spec.expiry_policy is not None and spec.expiry_policy != expiry:
        changes.append(Change("settings", spec.org, setting="expiry_policy", old_value=expiry,
                              new_value=spec.expiry_policy))
    have = {key_of(r): normalize(r) for r in current}
    for k in sorted(spec.rules):
        want = spec.rules[k]
        old = have.get(k)
        if old is None:
            changes.append(Change("add", spec.org, k, None, want))
        elif old != want:
            changes.append(Change("change", spec.org, k, old, want))
    for k in sorted(set(have) - set(spec.rules)):
        changes.append(Change("delete" if prune else "kept", spec.org, k, have[k], None))
    return changes
