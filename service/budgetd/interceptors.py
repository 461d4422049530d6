"""Around every call: authenticate and authorize (before the servicer runs, so
a refused call touches nothing), then count, time and log it: one JSON line
per call with method, code, duration_ms and the request id. Metadata is never
logged: it carries the bearer token.

Each method's handler is wrapped once, when its service is added to the
server (ServiceRegistrar), rather than by a grpc.aio ServerInterceptor: an
interceptor runs a chain of coroutines on every call, which cost a Reserve
more CPU than the bookkeeping itself."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from budgetd import metrics
from budgetd.auth import Authorizer, Principal, is_open
from budgetd.errors import BudgetdError
from budgetd.service import Undecodable, fail, guard_decode

log = logging.getLogger("budgetd.access")

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]
    MethodHandler = grpc.RpcMethodHandler[Any, Any]
    GenericHandler = grpc.GenericRpcHandler[Any, Any]
else:  # the runtime classes are not generic
    Context = grpc.aio.ServicerContext
    MethodHandler = grpc.RpcMethodHandler
    GenericHandler = grpc.GenericRpcHandler

MAX_REQUEST_ID_CHARS = 128
# Wrapped handlers kept for methods found through generic handlers only.
# Bounded by the methods the server serves; this caps it whatever happens.
MAX_WRAPPED_METHODS = 1024

_OK = grpc.StatusCode.OK


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


class _Method:
    """Counts, times and logs the calls of one method. The metric children
    are looked up once per (code, decision): prometheus_client's labels()
    costs more than the count itself. At most 17 codes x 3 decisions."""

    __slots__ = ("_children", "label", "level", "method")

    def __init__(self, method: str) -> None:
        self.method = method
        self.label = metrics.method_label(method)
        # Probes call health every few seconds: keep them out of INFO.
        self.level = logging.DEBUG if is_open(method) else logging.INFO
        self._children: dict[tuple[grpc.StatusCode, str], tuple[Any, Any]] = {}

    def done(self, start_s: float, code: grpc.StatusCode, decision: str,
             principal: Principal | None, context: Context, request: Any) -> None:
        elapsed_s = time.perf_counter() - start_s
        key = (code, decision)
        children = self._children.get(key)
        if children is None:
            children = (metrics.REQUESTS.labels(self.label, code.name, decision),
                        metrics.REQUEST_LATENCY.labels(self.label, code.name, decision))
            self._children[key] = children
        children[0].inc()
        children[1].observe(elapsed_s)
        if not log.isEnabledFor(self.level):
            return  # the log line's fields cost as much as the metrics: skip them
        extra: dict[str, Any] = {"method": self.method, "code": code.name,
                                 "duration_ms": round(elapsed_s * 1000, 3)}
        request_id = _request_id(context.invocation_metadata(), request)
        if request_id:
            extra["request_id"] = request_id
        if decision:
            extra["decision"] = decision
        if principal is not None:
            extra["principal"] = principal.name
        log.log(self.level, "rpc", extra=extra)


class CallHooks:
    """Wraps method handlers with auth, metrics and the access log; the
    request deserializer of `guarded_services` with guard_decode."""

    def __init__(self, authorizer: Authorizer, teams: metrics.TeamLabels,
                 guarded_services: tuple[str, ...] = ()) -> None:
        self.authorizer = authorizer
        self.teams = teams
        self.guarded_prefixes = tuple(f"/{n}/" for n in guarded_services)

    def _check(self, method: str, request: Any, context: Context) -> tuple[bool,
                                                                         Principal | None]:
        """Whether the call may proceed, and who calls. If not, its status is
        set (and sent after the call is counted, see service.fail)."""
        principal = None
        try:
            principal = self.authorizer.authenticate(method, context.invocation_metadata())
            # Undecodable bytes name no org: the servicer rejects them, touching nothing.
            if not isinstance(request, Undecodable):
                self.authorizer.authorize(principal, method, request)
        except BudgetdError as e:
            fail(context, e.code, e.message)
            return False, principal
        return True, principal

    def wrap(self, method: str, handler: MethodHandler) -> MethodHandler:
        if self.guarded_prefixes and method.startswith(self.guarded_prefixes):
            handler = guard_decode(method, handler)
        m = _Method(method)
        authorizer = self.authorizer
        teams = self.teams
        check = self._check
        if handler.unary_unary is not None:
            inner_uu: Any = handler.unary_unary
            is_async = inspect.iscoroutinefunction(inner_uu)

            async def unary_unary(request: Any, context: Context) -> Any:
                start_s = time.perf_counter()
                code, decision = _OK, ""
                principal = None
                try:
                    # With auth off, authenticate and authorize do nothing.
                    if authorizer.enabled:
                        ok, principal = check(method, request, context)
                        if not ok:
                            code = _set_code(context)
                            return None
                    if is_async:
                        resp = await inner_uu(request, context)
                    else:
                        resp = inner_uu(request, context)
                        if inspect.isawaitable(resp):
                            resp = await resp
                    code = _set_code(context)
                    if code is _OK:
                        decision = metrics.observe_response(m.label, resp, teams)
                    return resp
                except BaseException:
                    code = _code_of(context)
                    raise
                finally:
                    m.done(start_s, code, decision, principal, context, request)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, request_deserializer=handler.request_deserializer,
                response_serializer=passthrough(handler.response_serializer))
        if handler.unary_stream is not None:
            inner_us: Any = handler.unary_stream

            async def unary_stream(request: Any,
                                   context: Context) -> AsyncIterator[Any]:
                start_s = time.perf_counter()
                code = _OK
                principal = None
                try:
                    ok, principal = check(method, request, context)
                    if not ok:
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
                    m.done(start_s, code, "", principal, context, request)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        # Client-streaming / bidi (reflection): open, no request to inspect.
        if not is_open(method) and self.authorizer.enabled:
            return _refuse(handler)
        return handler


class _Handlers(GenericHandler):
    """Every service's wrapped handlers, found by method name."""

    def __init__(self, hooks: CallHooks) -> None:
        self.hooks = hooks
        self.by_method: dict[str, MethodHandler] = {}
        # Services added without a method table: asked per call, wrapped once.
        self.generic: list[GenericHandler] = []

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> MethodHandler | None:
        method = handler_call_details.method
        found = self.by_method.get(method)
        if found is not None:
            return found
        for g in self.generic:
            inner = g.service(handler_call_details)
            if inner is not None:
                wrapped = self.hooks.wrap(method, inner)
                if len(self.by_method) < MAX_WRAPPED_METHODS:
                    self.by_method[method] = wrapped
                return wrapped
        return None


class ServiceRegistrar:
    """Stands in for the grpc.aio server in the generated add_*_to_server
    functions: each method's handler is wrapped once, here, then served
    through one generic handler (a dict lookup per call).

    No method is registered with grpc as a "registered method": the server's
    accept loop waits on one pending future per registered method plus one,
    with asyncio.wait on every accepted call, and budgetd's ~20 methods made
    that wait cost more than a Reserve's own bookkeeping."""

    def __init__(self, server: grpc.aio.Server, hooks: CallHooks) -> None:
        self._handlers = _Handlers(hooks)
        self._hooks = hooks
        server.add_generic_rpc_handlers((self._handlers,))

    def add_registered_method_handlers(self, service_name: str,
                                       method_handlers: dict[str, MethodHandler]) -> None:
        for name, h in method_handlers.items():
            method = f"/{service_name}/{name}"
            self._handlers.by_method[method] = self._hooks.wrap(method, h)

    def add_generic_rpc_handlers(self, handlers: tuple[GenericHandler, ...]) -> None:
        # The generated code adds the same methods both ways: those already
        # known by name are found first; the rest are looked up per call.
        self._handlers.generic.extend(handlers)


def passthrough(serialize: Any) -> Any:
    """`serialize`, but a response a handler already serialized (bytes: the
    common Reserve answer, wire.py) is sent as it is."""
    if serialize is None:
        return None

    def serializer(resp: Any) -> bytes:
        return resp if resp.__class__ is bytes else serialize(resp)

    return serializer


def _set_code(context: Context) -> grpc.StatusCode:
    """The status a handler set before returning normally (OK if none)."""
    code = context.code()
    return _OK if code is None else _code_of(context, code)


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

