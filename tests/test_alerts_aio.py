"""The asyncio admin client: WatchAlerts as an async iterator, GetUsageReport."""

from __future__ import annotations

import asyncio

import pytest
from budgetd_client import Alert, AsyncAdminClient
from conftest import Budgetd
from helpers import TEST_MODEL, set_test_pricing


@pytest.fixture()
def b(budgetd: Budgetd) -> Budgetd:
    set_test_pricing(budgetd.admin)
    return budgetd


async def _watch_and_report(address: str) -> tuple[list[Alert], int]:
    admin = AsyncAdminClient(address)
    got: list[Alert] = []
    try:
        stream = admin.watch_alerts("acme", "0", timeout_s=10)
        while len(got) < 2:
            got.append(await stream.__anext__())
        await stream.aclose()
        report = await admin.get_usage_report("acme", "day", "team")
    finally:
        await admin.close()
    return got, report.row("t").requests


def test_async_client_watches_alerts_and_reads_reports(b: Budgetd) -> None:
    b.admin.set_budget("acme", "day", "tokens", 100, alert_thresholds_percent=[50, 90])
    res = b.client.reserve("acme/t", TEST_MODEL, tokens=95, cost_micros=1)
    got, requests = asyncio.run(_watch_and_report(b.address))
    assert [a.id for a in got] == [a.id for a in res.raw.alerts]
    assert requests == 1
