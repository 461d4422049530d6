"""Runs every bench and prints one table of figures and targets.

    .venv/bin/python bench/run_all.py [--seconds 5] [--smoke]

Exit status: non-zero if any target was missed."""

from __future__ import annotations

import argparse
import datetime as dt
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
BENCHES = ["reserve_throughput.py", "low_load_latency.py", "reserve_batch.py", "wait_cost.py",
           "workers.py", "orgs_scale.py", "redis_cpu.py"]
TIMEOUT_S = 600


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    extra = ["--smoke"] if args.smoke else ["--seconds", str(args.seconds)]
    results: list[str] = []
    failed = []
    for name in BENCHES:
        print(f"== {name}", flush=True)
        proc = subprocess.run([sys.executable, str(HERE / name), *extra], cwd=HERE,
                              capture_output=True, text=True, timeout=TIMEOUT_S)
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr[-2000:] if proc.returncode else "")
        results += [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
        if proc.returncode:
            failed.append(name)
    print(f"\n== summary ({dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC)")
    for line in results:
        print(line)
    if failed:
        print("targets missed in: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
