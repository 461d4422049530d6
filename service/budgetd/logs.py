"""Structured logs: one JSON object per line, with any `extra` fields."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

_STD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in vars(record).items():
            if k not in _STD and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class _WorkerFields(logging.Filter):
    """Marks every line of a `--workers` process with its index and pid:
    N processes share one stderr."""

    def __init__(self, worker: int) -> None:
        super().__init__()
        self.worker = worker
        self.pid = os.getpid()

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.worker
        record.pid = self.pid
        return True


def setup(level: str = "INFO", fmt: str = "json", worker: int | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif worker is not None:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s [worker %(worker)s pid %(pid)s] %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    if worker is not None:
        handler.addFilter(_WorkerFields(worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
