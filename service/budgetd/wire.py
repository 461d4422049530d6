"""The common Reserve answer (granted, no alert, no SOFT/SHADOW rule crossed)
encoded straight from the script's flat answer to a ReserveResponse's
protobuf wire bytes, which the Reserve handler returns as they are (see
interceptors.passthrough). Every Reserve pays for its answer: built as
messages (a ReserveResponse, a Remaining and a Scope per rule, then
serialized) it cost the server ~13 µs more CPU per call under the
throughput bench's load than these bytes (~5 % of a call; docs/scaling.md),
though both take ~7 µs in a warm loop: the messages' allocations are what a
loaded server pays for.

The bytes are those SerializeToString gives for the same answer
(tests/test_reserve_answer.py): fields in number order, zero scalars
left out. Each rule set's fixed parts are encoded once and cached, keyed
by the rules with the org left out, so orgs whose rules have the same
shape share them."""

from __future__ import annotations

from budgetd.codec import MODE_TO_PB, UNIT_TO_PB, WINDOW_TO_PB
from budgetd.ledger import reservation_id

# Rule sets kept; past it the oldest goes. ~0.5 KB each with 3 rules.
MAX_TEMPLATES = 8_192
# Varints of 0..SMALL-1 built once: lengths and small amounts, on every call;
# larger numbers are encoded 14 bits at a time. The two tables hold ~1.4 MB.
SMALL = 1 << 14


def varint(n: int) -> bytes:
    """An int64 as protobuf encodes it (a negative one in ten bytes)."""
    if 0 <= n < SMALL:
        return _SMALL_VARINTS[n]
    assert -(1 << 63) <= n < (1 << 63), n
    if n < 0:
        n += 1 << 64
    # 14 bits at a time, each two bytes with their continuation bits set.
    parts = []
    while n >= SMALL:
        parts.append(_PAIRS[n & 0x3FFF])
        n >>= 14
    parts.append(_SMALL_VARINTS[n])
    return b"".join(parts)


def _encode(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL_VARINTS = [_encode(n) for n in range(SMALL)]
_PAIRS = [bytes((n & 0x7F | 0x80, n >> 7 | 0x80)) for n in range(SMALL)]


def _field(tag: bytes, body: bytes) -> bytes:
    """A length-delimited field: tag, length, body."""
    return tag + varint(len(body)) + body


def _number(tag: bytes, n: int) -> bytes:
    """A varint field, left out when zero (proto3)."""
    return tag + varint(n) if n else b""


# Per rule: its limit, whether it counts tokens, whether it is HARD, its
# scope's fields after the org (team, feature), and its Remaining's fields
# after the scope and before the amount left (window, unit, mode, limit).
_Rule = tuple[int, bool, bool, bytes, bytes]
_templates: dict[tuple[str, ...], tuple[_Rule, ...]] = {}


def _rules(org: str, p: list[str]) -> tuple[_Rule, ...]:
    out = []
    for k in range(5, len(p), 4):
        path, win, unit = p[k].split("|")
        limit_s, mode, _ = p[k + 1].split("|")
        limit = int(limit_s)
        parts = path[len(org):].split("/")  # '', then team and feature if any
        tail = b"".join(_field(tag, name.encode()) for tag, name in
                        zip((b"\x12", b"\x1a"), parts[1:], strict=False) if name)
        fixed = (b"\x10" + varint(WINDOW_TO_PB[win]) + b"\x18" + varint(UNIT_TO_PB[unit])
                 + b"\x20" + varint(MODE_TO_PB[mode]) + _number(b"\x28", limit))
        out.append((limit, unit == "t", mode == "h", tail, fixed))
    return tuple(out)


def allowed_answer(org: str, request_id: str, flat: str) -> bytes | None:
    """The ReserveResponse of a granted flat answer with no alert and no
    SOFT/SHADOW rule crossed, serialized; None for any other answer (the
    general way, service.reserve_response, builds those)."""
    if not flat.startswith("a ") or "\n" in flat:
        return None
    p = flat.split(" ")
    # Every rule's path starts with the org: the key leaves it out.
    n = len(org)
    key = (*[f[n:] for f in p[5::4]], *p[6::4])
    rules = _templates.get(key)
    if rules is None:
        rules = _rules(org, p)
        if len(_templates) >= MAX_TEMPLATES:
            del _templates[next(iter(_templates))]
        _templates[key] = rules
    tokens, cost = int(p[2]), int(p[3])
    v = _SMALL_VARINTS
    org_b = org.encode()
    org_field = b"\x0a" + v[len(org_b)] + org_b
    rid = reservation_id(org, request_id).encode()
    model = p[1].encode()
    amount = _number(b"\x08", tokens) + _number(b"\x10", cost)
    # Spelled out, one list of parts joined once: a call per field cost more
    # than the encoding itself.
    out = [b"\x08\x01\x12", v[len(rid)], rid,  # decision ALLOWED, reservation_id
           b"\x1a", v[len(model)], model, b"\x22", v[len(amount)], amount]
    k = 7  # the first rule's used counter
    for limit, is_tokens, hard, tail, fixed in rules:
        left = limit - int(p[k]) - int(p[k + 1]) - (tokens if is_tokens else cost)
        k += 4
        if left < 0 and not hard:
            return None  # a crossing: the general way reports it
        left_b = _number(b"\x30", left)
        scope_n = len(org_field) + len(tail)
        out += (b"\x2a", v[2 + scope_n + len(fixed) + len(left_b)],  # a Remaining
                b"\x0a", v[scope_n], org_field, tail, fixed, left_b)
    seconds, ms = divmod(int(p[4]), 1000)
    expires = _number(b"\x08", seconds) + _number(b"\x10", ms * 1_000_000)
    out += (b"\x3a", v[len(expires)], expires)
    return b"".join(out)
