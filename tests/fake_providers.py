"""A small local HTTP server that speaks the Anthropic Messages API (JSON and
SSE) and OpenAI Chat Completions (JSON and SSE), answering with known usage.
The real SDKs are pointed at it with base_url. Each request takes the next
Plan (or the default one) and is recorded in `requests`."""

from __future__ import annotations

import collections
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Plan:
    status: int = 200
    # Anthropic field names; for OpenAI, prompt_tokens = input + cache_read,
    # cached_tokens = cache_read.
    input_tokens: int = 100
    output_tokens: int = 20
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    # Anthropic: of the cache writes, this many at the 1-hour TTL (the rest
    # 5-minute), sent as usage.cache_creation; None: no split sent.
    cache_creation_1h: int | None = None
    chunks: list[str] = field(default_factory=lambda: ["Hello", ", ", "world", "!"])
    # Streams: close the connection mid-body after this many text chunks.
    cut_after: int | None = None
    # Anthropic streams: message_delta repeats the cumulative input/cache counts.
    delta_repeats_input: bool = True


class FakeProviders:
    def __init__(self) -> None:
        self.plans: collections.deque[Plan] = collections.deque()
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake._lock:
                    fake.requests.append({"path": self.path, "body": body})
                    plan = fake.plans.popleft() if fake.plans else Plan()
                if self.path.endswith("/messages"):
                    fake._anthropic(self, body, plan)
                elif self.path.endswith("/chat/completions"):
                    fake._openai(self, body, plan)
                else:
                    self._json(404, {"error": "no route"})

            def _json(self, status: int, obj: Any) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._handler = Handler
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FakeProviders:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)

    # -- wire formats ------------------------------------------------------

    @staticmethod
    def _sse_start(h: Any) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

    @staticmethod
    def _chunk(h: Any, text: str) -> None:
        data = text.encode()
        h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        h.wfile.flush()

    @staticmethod
    def _cut(h: Any) -> None:
        # No terminating zero chunk: the client sees an incomplete body.
        h.wfile.flush()
        h.close_connection = True
        h.connection.shutdown(2)

    def _error(self, h: Any, plan: Plan, anthropic: bool) -> None:
        kind = "rate_limit_error" if plan.status == 429 else "api_error"
        if anthropic:
            h._json(plan.status, {"type": "error", "error": {"type": kind, "message": kind}})
        else:
            h._json(plan.status, {"error": {"message": kind, "type": kind, "code": None}})

    def _anthropic(self, h: Any, body: dict[str, Any], plan: Plan) -> None:
        if plan.status != 200:
            self._error(h, plan, True)
            return
        model = body["model"]
        usage: dict[str, Any] = {
            "input_tokens": plan.input_tokens, "output_tokens": plan.output_tokens,
            "cache_creation_input_tokens": plan.cache_creation_input_tokens,
            "cache_read_input_tokens": plan.cache_read_input_tokens}
        if plan.cache_creation_1h is not None:
            usage["cache_creation"] = {
                "ephemeral_5m_input_tokens": plan.cache_creation_input_tokens
                - plan.cache_creation_1h,
                "ephemeral_1h_input_tokens": plan.cache_creation_1h}
        msg_id = f"msg_{len(self.requests)}"
        if not body.get("stream"):
            h._json(200, {
                "id": msg_id, "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": "".join(plan.chunks)}],
                "stop_reason": "end_turn", "stop_sequence": None, "usage": usage})
            return
        self._sse_start(h)

        def event(name: str, data: dict[str, Any]) -> None:
            self._chunk(h, f"event: {name}\ndata: {json.dumps(data)}\n\n")

        event("message_start", {"type": "message_start", "message": {
            "id": msg_id, "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {**usage, "output_tokens": 1}}})
        event("content_block_start", {"type": "content_block_start", "index": 0,
                                      "content_block": {"type": "text", "text": ""}})
        event("ping", {"type": "ping"})
        for i, text in enumerate(plan.chunks):
            if plan.cut_after is not None and i >= plan.cut_after:
                self._cut(h)
                return
            event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                          "delta": {"type": "text_delta", "text": text}})
        event("content_block_stop", {"type": "content_block_stop", "index": 0})
        delta_usage: dict[str, Any] = {"output_tokens": plan.output_tokens}
        if plan.delta_repeats_input:
            delta_usage.update({k: v for k, v in usage.items() if k != "output_tokens"})
        event("message_delta", {"type": "message_delta",
                                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                "usage": delta_usage})
        event("message_stop", {"type": "message_stop"})
        self._chunk(h, "")  # the terminating zero-length chunk

    def _openai(self, h: Any, body: dict[str, Any], plan: Plan) -> None:
        if plan.status != 200:
            self._error(h, plan, False)
            return
        model = body["model"]
        prompt = plan.input_tokens + plan.cache_read_input_tokens
        usage = {"prompt_tokens": prompt, "completion_tokens": plan.output_tokens,
                 "total_tokens": prompt + plan.output_tokens,
                 "prompt_tokens_details": {"cached_tokens": plan.cache_read_input_tokens}}
        cid = f"chatcmpl-{len(self.requests)}"
        if not body.get("stream"):
            h._json(200, {
                "id": cid, "object": "chat.completion", "created": 1, "model": model,
                "choices": [{"index": 0, "finish_reason": "stop", "message": {
                    "role": "assistant", "content": "".join(plan.chunks)}}],
                "usage": usage})
            return
        self._sse_start(h)

        def chunk(choices: list[Any], u: Any = None) -> None:
            data = {"id": cid, "object": "chat.completion.chunk", "created": 1,
                    "model": model, "choices": choices, "usage": u}
            self._chunk(h, f"data: {json.dumps(data)}\n\n")

        for i, text in enumerate(plan.chunks):
            if plan.cut_after is not None and i >= plan.cut_after:
                self._cut(h)
                return
            chunk([{"index": 0, "delta": {"content": text}, "finish_reason": None}])
        chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}])
        if (body.get("stream_options") or {}).get("include_usage"):
            chunk([], usage)
        self._chunk(h, "data: [DONE]\n\n")
        self._chunk(h, "")
