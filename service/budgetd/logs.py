"""Structured logs: one JSON object per line, with any `extra` fields."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

_STD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
# One encoder for every line: json.dumps with `default` builds a new one per call.
_ENCODER = json.JSONEncoder(default=str)


class JsonFormatter(logging.Formatter):
    """At INFO every call writes one line (the access log), so this costs a
    Reserve: the second's timestamp is formatted once per second."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._second_ts = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._second_ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        out = {
            "ts": f"{self._second_ts}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in vars(record).items():
            if k not in _STD and k[0] != "_":
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return _ENCODER.encode(out)


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
    # No line prints the caller's file and line, thread or process (the
    # worker filter adds the pid itself): skip collecting them for every
    # record, as the logging HOWTO's "Optimization" section suggests.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
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
