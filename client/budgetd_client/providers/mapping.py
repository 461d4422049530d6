"""Provider identities -> budgetd scopes, read from the `providers` key of an
org in the file `budgetctl apply` reads (docs/drift.md):

  orgs:
    acme:
      providers:
        anthropic:
          workspaces: {wrkspc_01A: search, default: ops}  # default: the default workspace
          api_keys: {apikey_01B: search/rerank}            # wins over the workspace
          unmapped: ops                                    # optional: everything else
          model_prefixes: [my-claude-]                     # optional, see drift.py
        openai:
          projects: {proj_abc: search}
          api_keys: {key_xyz: search/rerank}

A scope is relative to the org: "" (the org), "team" or "team/feature".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

PROVIDERS = ("anthropic", "openai")
_GROUP_KEY = {"anthropic": "workspaces", "openai": "projects"}
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Provider ids are opaque strings: bounded, printable, no whitespace.
PROVIDER_ID_RE = re.compile(r"^[\x21-\x7e]{1,200}$")
MAX_ENTRIES = 10_000
DEFAULT_WORKSPACE = "default"


class MappingError(ValueError):
    """The providers section is invalid; the message names the place."""


@dataclass
class ProviderMap:
    provider: str
    org: str
    groups: dict[str, str] = field(default_factory=dict)  # workspace/project -> scope
    api_keys: dict[str, str] = field(default_factory=dict)
    unmapped: str | None = None
    model_prefixes: tuple[str, ...] = ()

    def scope_of(self, workspace: str | None, api_key: str | None) -> str | None:
        """The scope (relative to the org) of a usage row, or None: unmapped."""
        if api_key and api_key in self.api_keys:
            return self.api_keys[api_key]
        ws = workspace if workspace else DEFAULT_WORKSPACE
        if ws in self.groups:
            return self.groups[ws]
        return self.unmapped


def check_scope(v: Any, where: str) -> str:
    s = "" if v is None else str(v)
    parts = s.split("/") if s else []
    if len(parts) > 2 or not all(ID_RE.fullmatch(p) and p.isascii() for p in parts):
        raise MappingError(f"{where}: {s!r} is not a scope (\"\", team or team/feature, "
                           f"ids {ID_RE.pattern})")
    return s


def _table(v: Any, where: str) -> dict[str, str]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise MappingError(f"{where}: expected a mapping of provider id to scope")
    if len(v) > MAX_ENTRIES:
        raise MappingError(f"{where}: at most {MAX_ENTRIES} entries")
    out = {}
    for k, s in v.items():
        if not PROVIDER_ID_RE.fullmatch(str(k)):
            raise MappingError(f"{where}: {str(k)[:40]!r} is not a provider id")
        out[str(k)] = check_scope(s, f"{where}.{k}")
    return out


def parse_org(org: str, doc: Any, where: str) -> dict[str, ProviderMap]:
    """The `providers` value of one org."""
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise MappingError(f"{where}: expected a mapping of provider to its mapping")
    out = {}
    for name, body in doc.items():
        if name not in PROVIDERS:
            raise MappingError(f"{where}: unknown provider {name!r} (known: "
                               f"{', '.join(PROVIDERS)})")
        pw = f"{where}.{name}"
        allowed = {_GROUP_KEY[name], "api_keys", "unmapped", "model_prefixes"}
        body = body or {}
        if not isinstance(body, dict):
            raise MappingError(f"{pw}: expected a mapping")
        unknown = set(map(str, body)) - allowed
        if unknown:
            raise MappingError(f"{pw}: unknown key(s) {', '.join(sorted(unknown))} "
                               f"(allowed: {', '.join(sorted(allowed))})")
        prefixes = body.get("model_prefixes") or []
        if not isinstance(prefixes, list) or len(prefixes) > 100 or not all(
                isinstance(p, str) and 0 < len(p) <= 128 for p in prefixes):
            raise MappingError(f"{pw}.model_prefixes: a list of at most 100 strings")
        out[name] = ProviderMap(
            name, org, _table(body.get(_GROUP_KEY[name]), f"{pw}.{_GROUP_KEY[name]}"),
            _table(body.get("api_keys"), f"{pw}.api_keys"),
            check_scope(body["unmapped"], f"{pw}.unmapped") if "unmapped" in body else None,
            tuple(prefixes))
    return out


def load(doc: Any, provider: str, org: str | None, source: str = "file") -> ProviderMap:
    """The mapping of one provider from a whole budgets document; org may be
    omitted when exactly one org maps that provider."""
    orgs = doc.get("orgs") if isinstance(doc, dict) else None
    if not isinstance(orgs, dict):
        raise MappingError(f"{source}: orgs: expected a mapping")
    found = []
    for o, od in orgs.items():
        if org is not None and str(o) != org:
            continue
        pm = parse_org(str(o), (od or {}).get("providers") if isinstance(od, dict) else None,
                       f"{source}: orgs.{o}.providers")
        if provider in pm:
            found.append(pm[provider])
    if not found:
        raise MappingError(f"{source}: no org maps provider {provider}"
                           + (f" (org {org})" if org else "")
                           + f": add orgs.<org>.providers.{provider}")
    if len(found) > 1:
        raise MappingError(f"{source}: several orgs map provider {provider}: give --org")
    return found[0]
