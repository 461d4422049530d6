"""Each bench runs end to end with a tiny size (targets printed, not
enforced): they start their own Redis, budgetd and echo server, and print
their figures. The timed assertions live in bench/, not here."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parent.parent / "bench"
RESULT = re.compile(r"^RESULT (\w+) = (-?[0-9.]+) ", re.M)


@pytest.mark.parametrize("name", ["reserve_throughput.py", "low_load_latency.py",
                                  "reserve_batch.py", "wait_cost.py", "workers.py",
                                  "orgs_scale.py", "redis_cpu.py"])
def test_bench_runs_and_prints_its_figures(name: str) -> None:
    proc = subprocess.run([sys.executable, str(BENCH / name), "--smoke"], cwd=BENCH,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    figures = RESULT.findall(proc.stdout)
    assert figures, proc.stdout
    for metric, value in figures:
        assert float(value) > 0 or metric.endswith("_added_ms"), (metric, value)
