"""A local TCP proxy that a test controls, to cut the network between budgetd
and Redis. Modes: 'pass' forwards bytes; 'drop' swallows them in both
directions (a black hole: connections stay open, nothing arrives, new ones
are accepted but never reach Redis); 'delay' forwards each chunk after
`delay_s`. Threads, one pair per connection; bounded by MAX_CONNECTIONS."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

MAX_CONNECTIONS = 512
CHUNK_BYTES = 65_536


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode = "pass"
        self.delay_s = 0.0
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = int(self._listener.getsockname()[1])
        self._closed = False
        self.accepted = 0
        threading.Thread(target=self._accept_loop, daemon=True, name="proxy-accept").start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def set_mode(self, mode: str, delay_s: float = 0.0) -> None:
        assert mode in ("pass", "drop", "delay"), mode
        self.delay_s = delay_s
        self.mode = mode

    def _track(self, s: socket.socket) -> None:
        with self._lock:
            self._socks.add(s)

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                too_many = len(self._socks) >= 2 * MAX_CONNECTIONS
            if too_many:
                client.close()
                continue
            self.accepted += 1
            self._track(client)
            threading.Thread(target=self._open, args=(client,), daemon=True).start()

    def _open(self, client: socket.socket) -> None:
        # In 'drop' mode a new connection waits here: connected for the
        # client, never for Redis.
        while self.mode == "drop" and not self._closed:
            time.sleep(0.02)
        try:
            upstream = socket.create_connection(self.upstream, timeout=5)
            upstream.settimeout(None)
        except OSError:
            self._close(client)
            return
        self._track(upstream)
        threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(CHUNK_BYTES)
                if not data:
                    break
                mode = self.mode
                if mode == "drop":
                    continue
                if mode == "delay":
                    time.sleep(self.delay_s)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._close(src)
            self._close(dst)

    def _close(self, s: socket.socket) -> None:
        with self._lock:
            self._socks.discard(s)
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            s.close()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            self._close(s)
