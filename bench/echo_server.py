"""The baseline: a bare grpc.aio server (uvloop) that answers Reserve with a
constant response, touching nothing. What one Python gRPC process can serve
is the ceiling budgetd is measured against."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from typing import Any

import grpc
import grpc.aio
from budgetd_client._proto.budget.v1 import budget_pb2 as pb
from budgetd_client._proto.budget.v1 import budget_pb2_grpc as pb_grpc

# As large as budgetd's answer to the bench's Reserve (3 rules reported).
ANSWER = pb.ReserveResponse(
    decision=pb.DECISION_ALLOWED, reservation_id="bench0:0123456789abcdef0123456789abcdef",
    model="bench-model", reserved=pb.Amount(tokens=100, cost_micros=10),
    remaining=[pb.Remaining(scope=pb.Scope(org="bench0", team="team", feature="feat"),
                            window=pb.WINDOW_DAY, unit=pb.UNIT_TOKENS, mode=pb.MODE_HARD,
                            limit=10**15, remaining=10**15 - 100) for _ in range(3)])
ANSWER.expires_at.FromMilliseconds(1_800_000_000_000)


class Echo(pb_grpc.BudgetServiceServicer):  # type: ignore[misc]
    async def Reserve(self, request: pb.ReserveRequest, context: Any) -> pb.ReserveResponse:
        return ANSWER


async def main(port: int) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_BudgetServiceServicer_to_server(Echo(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0.5)


if __name__ == "__main__":
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(main(int(sys.argv[1])))
