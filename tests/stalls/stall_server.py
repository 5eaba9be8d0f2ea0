"""A server that accepts TCP connections and never answers: the stalled peer of tests/stalls.

What a client meets when a server (or a proxy, or a half-dead load balancer) accepts the
connection and then says nothing: without a deadline, the call blocks forever. Each accepted
connection is read (so a request body never fills the socket buffer) and kept open until the
server stops; stopping closes them all, which also frees any call still blocked on one.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from typing import Any


class StallServer:
    """`url` (http://127.0.0.1:PORT) accepts and never answers; `accepted` counts connections."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.accepted = 0
        self.first_request = threading.Event()  # some bytes of a request arrived
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="stall-server", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                self._connections.append(conn)
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn: socket.socket) -> None:
        """Read and drop what the client sends; never write a byte."""
        try:
            while not self._stopping.is_set():
                data = conn.recv(65536)
                if not data:
                    return
                self.first_request.set()
        except OSError:
            return

    def stop(self) -> None:
        self._stopping.set()
        self._listener.close()
        with self._lock:
            for conn in self._connections:
                with contextlib.suppress(OSError):  # the client may have gone already
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._connections.clear()
        self._thread.join(timeout=5)


def bound(deadline_s: float) -> float:
    """The outcome bound of a stalled call with deadline `deadline_s`: generous (a loaded CI
    machine), yet far below "blocked until the flow's timeout"."""
    return deadline_s * 3 + 5


def ended(call: Callable[[], Any], within_s: float) -> tuple[BaseException | None, float]:
    """Run `call` in a thread; (what it raised, or None; its seconds). Fails the test when it is
    still running after `within_s` (it stays blocked on the stall server until it stops)."""
    import pytest

    outcome: dict[str, Any] = {}

    def run() -> None:
        started = time.monotonic()
        try:
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc
        outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run, name="stalled-call", daemon=True)
    thread.start()
    thread.join(within_s)
    if thread.is_alive():
        pytest.fail(
            f"the call is still blocked after {within_s:g} s on a server that never answers"
        )
    return outcome.get("error"), outcome["seconds"]
