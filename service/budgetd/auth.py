"""Bearer-token auth: tokens configured as SHA-256 hashes, caller tokens
scoped to orgs, admin tokens for the admin service; and the protected mode
that keeps an unauthenticated server on loopback.

Tokens file (YAML or JSON), a list or {"tokens": [...]}:
  - name: search-backend         # shown in logs, never the token
    sha256: <64 hex>             # `budgetd hash-token` prints it
    role: caller                 # caller | admin
    orgs: [acme, globex]         # or "*"
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import pathlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from budgetd.errors import PermissionDenied, Unauthenticated
from budgetd.limits import ID_RE

MAX_TOKENS = 10_000
MAX_TOKENS_FILE_BYTES = 4 << 20
MAX_TOKEN_BYTES = 4096
MAX_ORGS_PER_TOKEN = 10_000
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:/-]{0,127}$")
ROLES = ("caller", "admin")

CALLER_SERVICE = "/budget.v1.BudgetService/"
ADMIN_SERVICE = "/budget.v1.BudgetAdminService/"
# Kubernetes probes and grpcurl need these without a token.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                 "/grpc.reflection.v1.ServerReflection/")
# Admin calls that change or read every org at once: need orgs "*".
GLOBAL_ADMIN_METHODS = frozenset({"SetPricing"})


class ConfigError(Exception):
    """Bad server configuration: the server refuses to start."""


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: str  # 'caller' | 'admin'
    orgs: frozenset[str] | None  # None: every org

    def holds(self, org: str) -> bool:
        return self.orgs is None or org in self.orgs


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _load_raw(path: str) -> Any:
    p = pathlib.Path(path)
    try:
        if p.stat().st_size > MAX_TOKENS_FILE_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_TOKENS_FILE_BYTES} bytes")
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read tokens file: {e.strerror}") from e
    if p.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: invalid JSON: {e}") from e
    import yaml  # lazily: only servers with a tokens file need it

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e


def load_tokens(path: str) -> dict[str, Principal]:
    """sha256 hex -> Principal. Raises ConfigError naming the bad entry."""
    raw = _load_raw(path)
    if isinstance(raw, dict):
        raw = raw.get("tokens")
    if not isinstance(raw, list):
        raise ConfigError(f"{path}: expected a list of tokens (or a 'tokens:' list)")
    if len(raw) > MAX_TOKENS:
        raise ConfigError(f"{path}: {len(raw)} tokens, at most {MAX_TOKENS}")
    out: dict[str, Principal] = {}
    names: set[str] = set()
    for i, e in enumerate(raw):
        where = f"{path}: tokens[{i}]"
        if not isinstance(e, dict):
            raise ConfigError(f"{where}: expected a mapping with name, sha256, role, orgs")
        unknown = set(e) - {"name", "sha256", "role", "orgs"}
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}")
        name = e.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ConfigError(f"{where}.name: required, {_NAME_RE.pattern}")
        if name in names:
            raise ConfigError(f"{where}.name: {name!r} appears twice")
        digest = e.get("sha256")
        if not isinstance(digest, str) or not _SHA256_RE.match(digest.lower()):
            raise ConfigError(f"{where}.sha256: required, 64 hex digits "
                              "(`budgetd hash-token` prints it; never the token itself)")
        digest = digest.lower()
        if digest in out:
            raise ConfigError(f"{where}.sha256: same hash as {out[digest].name!r}")
        role = e.get("role")
        if role not in ROLES:
            raise ConfigError(f"{where}.role: must be one of {', '.join(ROLES)}")
        out[digest] = Principal(name, role, _orgs(where, e.get("orgs")))
        names.add(name)
    return out


def _orgs(where: str, v: Any) -> frozenset[str] | None:
    if v == "*" or v == ["*"]:
        return None
    if not isinstance(v, list) or not v:
        raise ConfigError(f"{where}.orgs: required, a list of org ids or \"*\"")
    if len(v) > MAX_ORGS_PER_TOKEN:
        raise ConfigError(f"{where}.orgs: at most {MAX_ORGS_PER_TOKEN}")
    for j, org in enumerate(v):
        if not isinstance(org, str) or not ID_RE.fullmatch(org) or not org.isascii():
            raise ConfigError(f"{where}.orgs[{j}]: {org!r} is not a valid org id")
    return frozenset(v)


def bearer_token(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    """The token of 'authorization: Bearer <token>'; '' if malformed, None if absent."""
    for k, val in metadata or ():
        if k.lower() == "authorization":
            s = val.decode("latin-1") if isinstance(val, bytes) else str(val)
            scheme, _, tok = s.strip().partition(" ")
            if scheme.lower() == "bearer" and tok.strip():
                return tok.strip()
            return ""
    return None


def request_orgs(method: str, request: Any) -> list[str]:
    """The orgs a request touches. '' where the request names none; the
    servicer's validation rejects such a request before Redis is touched."""
    name = method.rsplit("/", 1)[-1]
    if name in ("Reconcile", "Release"):
        rid = str(getattr(request, "reservation_id", ""))
        return [rid.split(":", 1)[0] if ":" in rid else ""]
    if name == "ReserveBatch":
        return [r.scope.org for r in request.requests]
    if name == "SetBudget":
        return [request.rule.scope.org]
    if name in ("SetOrgSettings",):
        return [request.settings.org]
    scope = getattr(request, "scope", None)
    if scope is not None and hasattr(scope, "org"):
        return [scope.org]
    org = getattr(request, "org", None)
    return [org] if isinstance(org, str) else []


def is_open(method: str) -> bool:
    return method.startswith(OPEN_PREFIXES)


class Authorizer:
    """Decides who may call what. With no tokens configured, everyone may."""

    def __init__(self, tokens: dict[str, Principal]) -> None:
        self.tokens = tokens

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)

    def authenticate(self, method: str, metadata: Any) -> Principal | None:
        """The caller, or None when auth is off or the method is open."""
        if not self.enabled or is_open(method):
            return None
        tok = bearer_token(metadata)
        if tok is None:
            raise Unauthenticated("missing bearer token: send metadata "
                                  "'authorization: Bearer <token>'")
        if not tok or len(tok) > MAX_TOKEN_BYTES:
            raise Unauthenticated("invalid bearer token")
        # Looked up by its hash: the secret itself is never compared or kept.
        p = self.tokens.get(hash_token(tok))
        if p is None:
            raise Unauthenticated("invalid bearer token")
        if method.startswith(ADMIN_SERVICE) and p.role != "admin":
            raise PermissionDenied(f"token {p.name!r} (role {p.role}) may not call the admin "
                                   "service")
        if not method.startswith((CALLER_SERVICE, ADMIN_SERVICE)):
            raise PermissionDenied(f"unknown method {method}")
        return p

    def authorize(self, p: Principal | None, method: str, request: Any) -> None:
        """Raises PermissionDenied when the request touches an org p does not hold."""
        if p is None or p.orgs is None:
            return
        name = method.rsplit("/", 1)[-1]
        if name in GLOBAL_ADMIN_METHODS:
            raise PermissionDenied(f"token {p.name!r}: {name} changes every org; "
                                   "needs an admin token with orgs \"*\"")
        for org in request_orgs(method, request):
            if org and not p.holds(org):
                raise PermissionDenied(f"token {p.name!r} does not hold org {org!r}")


def is_loopback(listen: str) -> bool:
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        # '', '0.0.0.0'-like wildcards are handled above; a hostname may
        # resolve anywhere, so it is not loopback.
        return False


def check_protected_mode(listen: str, auth_enabled: bool, insecure_no_auth: bool) -> bool:
    """Like Redis's protected mode. Returns True when serving without auth
    (the caller logs a warning); raises ConfigError when refusing to start."""
    if auth_enabled:
        return False
    if is_loopback(listen) or insecure_no_auth:
        return True
    raise ConfigError(
        f"refusing to serve on {listen} without auth tokens: anyone who can reach it could "
        "spend or change any budget. Set --auth-tokens-file (BUDGETD_AUTH_TOKENS_FILE), "
        "listen on a loopback address (127.0.0.1), or pass --insecure-no-auth "
        "(BUDGETD_INSECURE_NO_AUTH=1) if the network is trusted.")
