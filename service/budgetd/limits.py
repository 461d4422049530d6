"""Explicit limits on every input, checked before Redis is touched.

Lua numbers are doubles: every amount that reaches a script, and every sum a
script forms from them, must stay below 2**53 to be exact.
"""

from __future__ import annotations

import re

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$")

MAX_SAFE_INT = 2**53
# Per request: tokens of one kind, total tokens, cost. 2**40 tokens is far
# beyond any model's context; 2**40 micro-USD is ~1.1M USD for one call.
MAX_REQUEST_TOKENS = 2**40
MAX_REQUEST_COST_MICROS = 2**40
# A limit; leaves room so used + reserved + asked stays exact in Lua.
MAX_LIMIT = 2**50

DEFAULT_TTL_S = 300
MAX_TTL_S = 86_400
MAX_FALLBACK_MODELS = 4
MAX_ALERT_THRESHOLDS = 8
MAX_THRESHOLD_PERCENT = 1000
DEFAULT_ALERT_THRESHOLDS = (50, 75, 90, 100)
MAX_RULES_PER_ORG = 10_000

# Request records are kept this long after they settle or expire, so a retry
# with the same request_id is recognised; a denial is remembered for a day.
RECORD_RETENTION_S = 7 * 86_400
DENIED_RETENTION_S = 86_400
# Window counters outlive their window, for reports.
DAY_RETENTION_S = 36 * 86_400
MONTH_RETENTION_S = 400 * 86_400

EXPIRE_BATCH = 200
# ReserveBatch: requests in one call (one pipeline).
MAX_RESERVE_BATCH = 500
