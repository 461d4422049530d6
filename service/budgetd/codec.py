"""Decoding Redis replies: the client returns bytes (no decode_responses, so
binary-safe values stay bytes where they must)."""

from __future__ import annotations

from typing import Any


def text(v: Any) -> str:
    """A reply value as str."""
    return v.decode() if isinstance(v, bytes) else str(v)
