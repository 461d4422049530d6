"""Decoding Redis replies: the client returns bytes (no decode_responses, so
binary-safe values stay bytes where they must); the one-letter codes stored
for a rule's window, unit and mode, as their proto enums."""

from __future__ import annotations

from typing import Any

from budgetd_client._proto.budget.v1 import budget_pb2 as pb

WINDOW_TO_PB: dict[str, Any] = {"d": pb.WINDOW_DAY, "m": pb.WINDOW_MONTH}
UNIT_TO_PB: dict[str, Any] = {"t": pb.UNIT_TOKENS, "c": pb.UNIT_COST_MICROS}
MODE_TO_PB: dict[str, Any] = {"h": pb.MODE_HARD, "s": pb.MODE_SOFT, "w": pb.MODE_SHADOW}


def text(v: Any) -> str:
    """A reply value as str."""
    return v.decode() if isinstance(v, bytes) else str(v)
