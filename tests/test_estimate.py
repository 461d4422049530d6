"""Token estimates with tiktoken, offline: our encoding equals tiktoken's own
cl100k_base on fixed texts, the shipped file is the one tiktoken publishes,
and nothing touches the network (non-loopback connects fail here)."""

from __future__ import annotations

import hashlib
import pathlib
import shutil
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from budgetd_client import estimate as est

TEXTS = [
    "hello world",
    "Hello, world! 12345 ünïcödé 日本語 🙂",
    "def f(x):\n    return x * 2  # doubles\n\n",
    "  leading and trailing spaces   ",
    "<|endoftext|> is only text here",
]
# cl100k_base counts of TEXTS, as tiktoken computes them (pinned so a drift in
# either encoding shows).
COUNTS = [2, 19, 14, 6, 11]


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> Iterator[None]:
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else str(address)
        if not (host.startswith("127.") or host in ("::1", "localhost")):
            raise OSError(f"network unreachable in this test: {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    # An empty tiktoken cache: only the shipped file can serve.
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    est._load.cache_clear()
    yield
    est._load.cache_clear()


def test_network_is_really_blocked() -> None:
    with pytest.raises(OSError, match="unreachable"):
        socket.create_connection(("93.184.216.34", 443), timeout=1)


def test_shipped_cl100k_matches_tiktokens_published_hash() -> None:
    path = est.shipped_path("cl100k_base")
    assert path is not None
    digest = hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()
    import inspect

    import tiktoken_ext.openai_public as pub  # type: ignore[import-untyped]
    # tiktoken's own constructor names the same hash for the same file.
    assert f'expected_hash="{digest}"' in inspect.getsource(pub.cl100k_base)
    assert digest == est.SHA256["cl100k_base"]


def tiktokens_own(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """tiktoken's own cl100k_base, fed the shipped file through its cache."""
    import tiktoken
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    src = est.shipped_path("cl100k_base")
    assert src is not None
    shutil.copy(src, est.tiktoken_cache_path("cl100k_base"))
    return tiktoken.get_encoding("cl100k_base")


def test_counts_equal_tiktokens_own(tmp_path: pathlib.Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    ours = [est.count_tokens(t, "claude-sonnet-4-5") for t in TEXTS]
    assert ours == COUNTS
    enc = tiktokens_own(tmp_path, monkeypatch)
    assert [len(enc.encode(t, disallowed_special=())) for t in TEXTS] == COUNTS


def test_openai_model_without_its_file_falls_back_to_cl100k() -> None:
    assert est.encoding_name("gpt-4o") == "cl100k_base"
    assert est.count_tokens(TEXTS[1], "gpt-4o") == COUNTS[1]


def test_estimate_counts_messages_system_tools_and_margin() -> None:
    messages = [{"role": "user", "content": TEXTS[0]},
                {"role": "assistant", "content": [{"type": "text", "text": TEXTS[1]}]},
                {"role": "user", "content": [{"type": "image", "source": {}}]}]
    role = {r: est.count_tokens(r) for r in ("user", "assistant")}
    raw = (COUNTS[0] + COUNTS[1] + est.IMAGE_TOKENS + 2 * role["user"] + role["assistant"]
           + 3 * est.PER_MESSAGE_TOKENS + est.REPLY_PRIMING_TOKENS)
    assert est.raw_input_tokens(messages, model="claude-x") == raw
    with_system = raw + COUNTS[2] + est.PER_MESSAGE_TOKENS
    assert est.raw_input_tokens(messages, system=TEXTS[2], model="claude-x") == with_system
    assert est.estimate_input_tokens(messages, system=TEXTS[2], model="claude-x") == \
        -(-with_system * 115 // 100)
    assert est.estimate_input_tokens(messages, model="claude-x", margin=0) == raw
    tool = {"name": "get_weather", "description": "Weather for a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
    with_tool = est.raw_input_tokens(messages, tools=[tool], model="claude-x")
    assert with_tool > raw + est.CLAUDE_TOOLS_SYSTEM_TOKENS + est.PER_TOOL_TOKENS


def test_margin_is_exact_integer_arithmetic() -> None:
    assert est.with_margin(100, 0.15) == 115
    assert est.with_margin(101, 0.15) == 117  # 116.15 rounded up
    with pytest.raises(ValueError):
        est.with_margin(1, -0.1)


def test_no_encoding_on_disk_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(est, "shipped_path", lambda name: None)
    with pytest.raises(est.EncodingUnavailable, match="never downloads"):
        est.count_tokens("hello")


def test_a_tampered_file_is_not_used(tmp_path: pathlib.Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "cl100k_base.tiktoken"
    bad.write_bytes(b"aGVsbG8= 0\n")
    monkeypatch.setattr(est, "shipped_path", lambda name: str(bad))
    with pytest.raises(est.EncodingUnavailable):
        est.count_tokens("hello")
