"""One gRPC server interceptor around every call: authenticate and authorize
(before the servicer runs, so a refused call touches nothing), then count,
time and log it: one JSON line per call with method, code, duration_ms and
the request id. Metadata is never logged: it carries the bearer token."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from budgetd import metrics
from budgetd.auth import Authorizer, Principal, is_open
from budgetd.errors import BudgetdError
from budgetd.service import Undecodable, fail

log = logging.getLogger("budgetd.access")

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]
    MethodHandler = grpc.RpcMethodHandler[Any, Any]
    _Base = grpc.aio.ServerInterceptor[Any, Any]
else:  # the runtime classes are not generic
    Context = grpc.aio.ServicerContext
    MethodHandler = grpc.RpcMethodHandler
    _Base = grpc.aio.ServerInterceptor

MAX_REQUEST_ID_CHARS = 128


def _request_id(metadata: Any, request: Any) -> str:
    for k, val in metadata or ():
        if k.lower() == "x-request-id":
            s = val if isinstance(val, str) else val.decode("latin-1", "replace")
            return s[:MAX_REQUEST_ID_CHARS]
    for name in ("request_id", "reservation_id"):
        v = getattr(request, name, None)
        if isinstance(v, str) and v:
            return v[:MAX_REQUEST_ID_CHARS]
    return ""


class _Call:
    """Bookkeeping of one call: who, what, when it started."""

    def __init__(self, method: str, metadata: Any, request: Any) -> None:
        self.method = method
        self.label = metrics.method_label(method)
        self.request_id = _request_id(metadata, request)
        self.start = time.perf_counter()
        self.principal: Principal | None = None


class ServerInterceptor(_Base):
    def __init__(self, authorizer: Authorizer, teams: metrics.TeamLabels) -> None:
        self.authorizer = authorizer
        self.teams = teams
        # Wrapped handlers per method: building them per call costs more than
        # the bookkeeping they do. Bounded by the methods the server serves.
        self._wrapped: dict[tuple[str, Any], MethodHandler] = {}

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails],
                                     Awaitable[MethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> MethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        key = (details.method, handler)
        wrapped = self._wrapped.get(key)
        if wrapped is None:
            wrapped = self._wrap(details.method, handler)
            if len(self._wrapped) < 1024:
                self._wrapped[key] = wrapped
        return wrapped

    def _wrap(self, method: str, handler: MethodHandler) -> MethodHandler:
        if handler.unary_unary is not None:
            inner_uu: Any = handler.unary_unary

            async def unary_unary(request: Any, context: Context) -> Any:
                call = _Call(method, context.invocation_metadata(), request)
                code, decision = grpc.StatusCode.OK, ""
                try:
                    if not self._check(call, request, context):
                        code = _set_code(context)
                        return None
                    resp = inner_uu(request, context)
                    if inspect.isawaitable(resp):
                        resp = await resp
                    code = _set_code(context)
                    if code == grpc.StatusCode.OK:
                        decision = metrics.observe_response(call.label, resp, self.teams)
                    return resp
                except BaseException:
                    code = _code_of(context)
                    raise
                finally:
                    self._done(call, code, decision)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if handler.unary_stream is not None:
            inner_us: Any = handler.unary_stream

            async def unary_stream(request: Any,
                                   context: Context) -> AsyncIterator[Any]:
                call = _Call(method, context.invocation_metadata(), request)
                code = grpc.StatusCode.OK
                try:
                    if not self._check(call, request, context):
                        code = _set_code(context)
                        return
                    out = inner_us(request, context)
                    if inspect.isawaitable(out):
                        out = await out
                    if hasattr(out, "__aiter__"):
                        async for item in out:
                            yield item
                    elif out is not None:
                        for item in out:
                            yield item
                    code = _set_code(context)
                except BaseException:
                    code = _code_of(context)
                    raise
                finally:
                    self._done(call, code, "")

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        # Client-streaming / bidi (reflection): open, no request to inspect.
        if not is_open(method) and self.authorizer.enabled:
            return _refuse(handler)
        return handler

    def _check(self, call: _Call, request: Any, context: Context) -> bool:
        """Whether the call may proceed; if not, its status is set (and sent
        after _done has counted it, see service.fail)."""
        try:
            call.principal = self.authorizer.authenticate(call.method,
                                                          context.invocation_metadata())
            # Undecodable bytes name no org: the servicer rejects them, touching nothing.
            if not isinstance(request, Undecodable):
                self.authorizer.authorize(call.principal, call.method, request)
        except BudgetdError as e:
            fail(context, e.code, e.message)
            return False
        return True

    def _done(self, call: _Call, code: grpc.StatusCode, decision: str) -> None:
        elapsed_s = time.perf_counter() - call.start
        code_name = code.name
        metrics.REQUESTS.labels(call.label, code_name, decision).inc()
        metrics.REQUEST_LATENCY.labels(call.label, code_name, decision).observe(elapsed_s)
        extra: dict[str, Any] = {"method": call.method, "code": code_name,
                                 "duration_ms": round(elapsed_s * 1000, 3)}
        if call.request_id:
            extra["request_id"] = call.request_id
        if decision:
            extra["decision"] = decision
        if call.principal is not None:
            extra["principal"] = call.principal.name
        # Probes call health every few seconds: keep them out of INFO.
        level = logging.DEBUG if is_open(call.method) else logging.INFO
        log.log(level, "rpc", extra=extra)


def _set_code(context: Context) -> grpc.StatusCode:
    """The status a handler set before returning normally (OK if none)."""
    code = context.code()
    return grpc.StatusCode.OK if code is None else _code_of(context, code)


def _code_of(context: Context, code: Any = None) -> grpc.StatusCode:
    if code is None:  # raised: an OK or unset status would be wrong
        code = context.code()
        if code is None or code == grpc.StatusCode.OK or code == 0:
            return grpc.StatusCode.UNKNOWN
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        for c in grpc.StatusCode:
            if c.value[0] == code:
                return c
    return grpc.StatusCode.UNKNOWN


def _refuse(handler: MethodHandler) -> MethodHandler:
    async def deny(request: Any, context: Context) -> Any:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "streaming method not allowed")

    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            deny, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)
    return grpc.stream_stream_rpc_method_handler(
        deny, request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer)
