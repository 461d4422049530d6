"""The asyncio clients (grpc.aio)."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

import grpc
import grpc.aio

from budgetd_client import _ops
from budgetd_client._channel import CHANNEL_OPTIONS, CallPolicy, credentials, metadata
from budgetd_client._proto.budget.v1 import admin_pb2_grpc as apb_grpc
from budgetd_client._proto.budget.v1 import budget_pb2_grpc as pb_grpc
from budgetd_client.errors import RETRYABLE, BudgetUnavailable, from_rpc_error
from budgetd_client.types import Alert

P = ParamSpec("P")
R = TypeVar("R")


def _runs(op: Callable[P, _ops.Op[R]]) -> Callable[Concatenate[AsyncClient, P], Awaitable[R]]:
    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self.run(op(*args, **kwargs))

    functools.update_wrapper(method, op)
    return method


class AsyncClient:
    """A grpc.aio channel to budgetd, with deadlines and retries that reuse
    the request (same request_id)."""

    def __init__(self, target: str = "127.0.0.1:50051", *, token: str | None = None,
                 policy: CallPolicy | None = None, tls: bool = False,
                 root_certificates: bytes | None = None, private_key: bytes | None = None,
                 certificate_chain: bytes | None = None,
                 channel: grpc.aio.Channel | None = None) -> None:
        self.target = target
        self.policy = policy or CallPolicy()
        self._metadata = metadata(token)
        if channel is not None:
            self.channel = channel
        elif tls or root_certificates:
            self.channel = grpc.aio.secure_channel(
                target, credentials(root_certificates, private_key, certificate_chain),
                options=CHANNEL_OPTIONS)
        else:
            self.channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stubs = {"budget": pb_grpc.BudgetServiceStub(self.channel),
                       "admin": apb_grpc.BudgetAdminServiceStub(self.channel)}

    async def run(self, op: _ops.Op[R], timeout_s: float | None = None) -> R:
        p = self.policy
        method = getattr(self._stubs[op.service], op.method)
        deadline = time.monotonic() + (timeout_s or p.total_timeout_s)
        attempt = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BudgetUnavailable(f"budgetd at {self.target}: deadline exceeded")
            try:
                resp = await method(op.request, timeout=min(p.timeout_s, left),
                                    metadata=self._metadata)
                return op.parse(resp)
            except grpc.aio.AioRpcError as e:
                if e.code() in RETRYABLE and attempt < p.retries:
                    attempt += 1
                    await asyncio.sleep(min(p.backoff_s * 2 ** (attempt - 1),
                                            max(0.0, deadline - time.monotonic())))
                    continue
                raise from_rpc_error(e) from None

    async def close(self) -> None:
        await self.channel.close(None)

    async def __aenter__(self: Any) -> Any:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncBudgetClient(AsyncClient):
    reserve = _runs(_ops.reserve)
    reserve_batch = _runs(_ops.reserve_batch)
    reconcile = _runs(_ops.reconcile)
    release = _runs(_ops.release)
    record = _runs(_ops.record)
    get_budget = _runs(_ops.get_budget)


class AsyncAdminClient(AsyncClient):
    set_budget = _runs(_ops.set_budget)
    delete_budget = _runs(_ops.delete_budget)
    list_budgets = _runs(_ops.list_budgets)
    set_org_settings = _runs(_ops.set_org_settings)
    get_org_settings = _runs(_ops.get_org_settings)
    set_pricing = _runs(_ops.set_pricing)
    get_pricing = _runs(_ops.get_pricing)
    get_usage_report = _runs(_ops.get_usage_report)

    async def watch_alerts(self, org: str, after_id: str = "",
                           timeout_s: float | None = None) -> AsyncIterator[Alert]:
        """As AdminClient.watch_alerts, as an async iterator."""
        call = self._stubs["admin"].WatchAlerts(
            _ops.watch_alerts_request(org, after_id), timeout=timeout_s,
            metadata=self._metadata)
        try:
            async for resp in call:
                yield Alert.from_pb(resp.alert)
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise from_rpc_error(e) from None
        finally:
            call.cancel()
