"""64+ concurrent reservers race through gRPC on one HARD budget."""

from __future__ import annotations

import asyncio
import threading

import pytest
from budgetd_client import AsyncBudgetClient, BudgetClient, CallPolicy
from conftest import Budgetd
from helpers import TEST_MODEL, set_test_pricing

LIMIT = 300
WORKERS = 64


def test_threads_never_exceed_a_hard_limit_and_fill_it(budgetd: Budgetd) -> None:
    set_test_pricing(budgetd.admin)
    budgetd.admin.set_budget("race/t", "day", "tokens", LIMIT)
    # Total demand 3x the limit, in unit-sized requests.
    per_worker = 3 * LIMIT // WORKERS + 1
    granted: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(WORKERS)
    errors: list[BaseException] = []

    def worker() -> None:
        client = BudgetClient(budgetd.address, policy=CallPolicy(timeout_s=20, total_timeout_s=30,
                                                                 retries=0))
        try:
            barrier.wait()
            mine = 0
            for _ in range(per_worker):
                res = client.reserve("race/t/f", TEST_MODEL, tokens=1, cost_micros=1)
                mine += res.reserved_tokens if res.allowed else 0
            with lock:
                granted.append(mine)
        except BaseException as e:
            errors.append(e)
        finally:
            client.close()

    threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert len(granted) == WORKERS
    assert sum(granted) == LIMIT, f"granted {sum(granted)} of a {LIMIT} limit"
    st = budgetd.client.get_budget("race/t").get("day", "tokens")
    assert (st.reserved, st.remaining) == (LIMIT, 0)


@pytest.mark.parametrize("size", [7])
def test_async_tasks_with_uneven_sizes_never_exceed(budgetd: Budgetd, size: int) -> None:
    set_test_pricing(budgetd.admin)
    budgetd.admin.set_budget("race", "month", "cost_micros", 1000)

    async def run() -> list[int]:
        async with AsyncBudgetClient(budgetd.address,
                                     policy=CallPolicy(timeout_s=20, total_timeout_s=30,
                                                       retries=0)) as c:
            async def one(i: int) -> int:
                res = await c.reserve(f"race/t{i % 4}", TEST_MODEL, tokens=1,
                                      cost_micros=size + i % 5)
                return res.reserved_cost_micros if res.allowed else 0

            return list(await asyncio.gather(*(one(i) for i in range(3 * 1000 // size))))

    total = sum(asyncio.run(run()))
    assert total <= 1000
    st = budgetd.client.get_budget("race").get("month", "cost_micros")
    assert st.reserved == total
    # Smallest request is 7: the remaining room is smaller than any request.
    assert 1000 - total < size + 4
