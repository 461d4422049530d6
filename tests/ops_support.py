"""Start a budgetd with auth / TLS / metrics settings for the ops tests."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

from budgetd.auth import hash_token
from budgetd.clock import ManualClock
from budgetd.config import Settings
from budgetd.server import ServerThread
from conftest import T0, ms


def write_tokens(path: pathlib.Path, tokens: dict[str, tuple[str, Any]]) -> str:
    """tokens: plaintext -> (role, orgs). Only the hashes are written."""
    entries = [{"name": f"t{i}", "sha256": hash_token(tok), "role": role, "orgs": orgs}
               for i, (tok, (role, orgs)) in enumerate(tokens.items())]
    path.write_text(json.dumps({"tokens": entries}))
    return str(path)


def start(redis_url: str, **overrides: Any) -> ServerThread:
    settings = dataclasses.replace(
        Settings(listen="127.0.0.1:0", redis_url=redis_url, expiry_interval_s=0.2,
                 redis_timeout_s=5.0), **overrides)
    return ServerThread(settings, ManualClock(ms(T0))).start()
