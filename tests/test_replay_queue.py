"""The fail-open replay queue (budgetd_client.failopen.ReplayQueue) stays
bounded through a long outage: the oldest usage is dropped, counted and
logged, the newest kept in order; entries a flush could not send go back to
the front without breaking the bound."""

from __future__ import annotations

import logging
import threading

import pytest
from budgetd_client import Usage
from budgetd_client.failopen import MAX_MAX_ENTRIES, ReplayQueue


def test_a_full_queue_drops_the_oldest_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    q = ReplayQueue(max_entries=3)
    with caplog.at_level(logging.WARNING, logger="budgetd_client.failopen"):
        for i in range(5):
            q.push("acme/t", f"r{i}", "m", Usage(input_tokens=i))
    assert len(q) == 3 and q.dropped == 2
    assert [e.request_id for e in q.take(10)] == ["r2", "r3", "r4"]
    assert [r.getMessage() for r in caplog.records] == [
        "budgetd replay queue full (3): dropped usage of acme:r0",
        "budgetd replay queue full (3): dropped usage of acme:r1"]


def test_entries_put_back_keep_their_order_and_the_bound() -> None:
    q = ReplayQueue(max_entries=4)
    for i in range(4):
        q.push("acme/t", f"r{i}", "m", Usage(input_tokens=i))
    taken = q.take(3)
    q.push("acme/t", "new1", "m", Usage())
    q.push("acme/t", "new2", "m", Usage())
    q.put_back(taken)  # room for one: the first taken goes back, two are dropped
    assert q.dropped == 2
    assert [e.request_id for e in q.take(10)] == ["r0", "r3", "new1", "new2"]


def test_pushes_from_many_threads_never_pass_the_bound() -> None:
    q = ReplayQueue(max_entries=100)

    def push(t: int) -> None:
        for i in range(500):
            q.push("acme/t", f"t{t}-{i}", "m", Usage(output_tokens=1))

    threads = [threading.Thread(target=push, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(q) == 100 and q.dropped == 8 * 500 - 100


@pytest.mark.parametrize("bad", [0, -1, MAX_MAX_ENTRIES + 1])
def test_a_bound_out_of_range_is_refused(bad: int) -> None:
    with pytest.raises(ValueError, match="max_entries"):
        ReplayQueue(max_entries=bad)
