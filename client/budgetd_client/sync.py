"""The synchronous clients."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from typing import Any, Concatenate, ParamSpec, TypeVar

import grpc

from budgetd_client import _ops
from budgetd_client._channel import CHANNEL_OPTIONS, CallPolicy, credentials, metadata
from budgetd_client._proto.budget.v1 import admin_pb2_grpc as apb_grpc
from budgetd_client._proto.budget.v1 import budget_pb2_grpc as pb_grpc
from budgetd_client.errors import RETRYABLE, BudgetUnavailable, from_rpc_error
from budgetd_client.types import Alert

P = ParamSpec("P")
R = TypeVar("R")


def _runs(op: Callable[P, _ops.Op[R]]) -> Callable[Concatenate[Client, P], R]:
    """Turns an op builder into a client method that runs it."""

    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.run(op(*args, **kwargs))

    functools.update_wrapper(method, op)
    return method


class Client:
    """A channel to budgetd, with deadlines and retries that reuse the request
    (same request_id), so a retry never charges twice."""

    def __init__(self, target: str = "127.0.0.1:50051", *, token: str | None = None,
                 policy: CallPolicy | None = None, tls: bool = False,
                 root_certificates: bytes | None = None, private_key: bytes | None = None,
                 certificate_chain: bytes | None = None,
                 channel: grpc.Channel | None = None) -> None:
        self.target = target
        self.policy = policy or CallPolicy()
        self._metadata = metadata(token)
        if channel is not None:
            self.channel = channel
        elif tls or root_certificates:
            self.channel = grpc.secure_channel(
                target, credentials(root_certificates, private_key, certificate_chain),
                options=CHANNEL_OPTIONS)
        else:
            self.channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stubs = {"budget": pb_grpc.BudgetServiceStub(self.channel),
                       "admin": apb_grpc.BudgetAdminServiceStub(self.channel)}

    def run(self, op: _ops.Op[R], timeout_s: float | None = None) -> R:
        p = self.policy
        method = getattr(self._stubs[op.service], op.method)
        deadline = time.monotonic() + (timeout_s or p.total_timeout_s)
        attempt = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BudgetUnavailable(f"budgetd at {self.target}: deadline exceeded")
            try:
                resp = method(op.request, timeout=min(p.timeout_s, left),
                              metadata=self._metadata)
                return op.parse(resp)
            except grpc.RpcError as e:
                if e.code() in RETRYABLE and attempt < p.retries:
                    attempt += 1
                    time.sleep(min(p.backoff_s * 2 ** (attempt - 1),
                                   max(0.0, deadline - time.monotonic())))
                    continue
                raise from_rpc_error(e) from None

    def close(self) -> None:
        self.channel.close()

    def __enter__(self: Any) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BudgetClient(Client):
    """Reserve before a model call, reconcile after it (or release)."""

    reserve = _runs(_ops.reserve)
    reserve_batch = _runs(_ops.reserve_batch)
    reconcile = _runs(_ops.reconcile)
    release = _runs(_ops.release)
    record = _runs(_ops.record)
    get_budget = _runs(_ops.get_budget)


class AdminClient(Client):
    """Budgets, org settings and pricing."""

    set_budget = _runs(_ops.set_budget)
    delete_budget = _runs(_ops.delete_budget)
    list_budgets = _runs(_ops.list_budgets)
    set_org_settings = _runs(_ops.set_org_settings)
    get_org_settings = _runs(_ops.get_org_settings)
    set_pricing = _runs(_ops.set_pricing)
    get_pricing = _runs(_ops.get_pricing)
    get_usage_report = _runs(_ops.get_usage_report)

    def watch_alerts(self, org: str, after_id: str = "",
                     timeout_s: float | None = None) -> Iterator[Alert]:
        """Alerts of an org as they fire, after after_id (an Alert.id; empty:
        only new ones). Runs until timeout_s (None: no deadline), the server
        shuts down, or the caller stops iterating. To resume after a break,
        pass the last Alert.id seen. Not retried: a retry is a resume."""
        stream = self._stubs["admin"].WatchAlerts(
            _ops.watch_alerts_request(org, after_id), timeout=timeout_s,
            metadata=self._metadata)
        try:
            for resp in stream:
                yield Alert.from_pb(resp.alert)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise from_rpc_error(e) from None
        finally:
            stream.cancel()
