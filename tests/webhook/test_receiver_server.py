"""The receiver as uvicorn serves it (`shipyard.deployments.webhook.receiver.serve`), over real sockets: stalled
senders are cut off, connections are capped, a disconnect is one log line."""

from __future__ import annotations

import json
import socket
import sys
import time

import pytest
from receiver_kit import REPOSITORY, SECRET, github_headers, tag_push

from sandbox.procs import free_port, spawn, stop_pid, wait_for_port

pytestmark = pytest.mark.slow  # a receiver process each: ~5 s to start

CAP = 6
SERVE = """
import sys
from shipyard.deployments.webhook.receiver import WebhookSettings, serve
import logging
logging.basicConfig(level="INFO", format="%(name)s %(message)s")
settings = WebhookSettings(
    repositories={sys.argv[3]: "default"}, journal=sys.argv[2], header_timeout_s=1.0,
    body_timeout_s=1.0, max_connections=int(sys.argv[4]),
)
serve(settings, "127.0.0.1", int(sys.argv[1]), "info")
"""


@pytest.fixture(scope="module")
def server(prefect_server, tmp_path_factory):
    from prefect.settings import PREFECT_API_URL

    root = tmp_path_factory.mktemp("receiver")
    port = free_port()
    log = root / "receiver.log"
    proc = spawn(
        [sys.executable, "-c", SERVE, str(port), str(root / "journal.db"), REPOSITORY, str(CAP)],
        log,
        env={"PREFECT_API_URL": PREFECT_API_URL.value(), "SHIPYARD_WEBHOOK_SECRET": SECRET},
    )
    try:
        wait_for_port("127.0.0.1", port, 90, proc=proc)
        yield port, log
    finally:
        stop_pid(proc.pid)


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (or the socket's 15 s bound passes)."""
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return out


def _request(body: bytes, headers: dict[str, str], length: int | None = None) -> bytes:
    lines = [
        "POST /webhook HTTP/1.1",
        "Host: receiver",
        f"Content-Length: {len(body) if length is None else length}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_stalled_headers_and_body_are_cut_off(server):
    port, _ = server
    partial = _connect(port)
    partial.sendall(b"POST /webhook HTTP/1.1\r\nHost: receiver\r\n")  # and never the rest
    body = json.dumps(tag_push("v1.0.0")).encode()
    stalled = _connect(port)
    stalled.sendall(_request(body, github_headers(body)) + body[:10])  # 10 bytes of the body
    assert _read_all(partial) == b""  # closed by the receiver, no answer
    answer = _read_all(stalled)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]


def _status(port: int, body: bytes, headers: dict[str, str]) -> bytes:
    sock = _connect(port)
    try:
        sock.sendall(_request(body, headers) + body)
        return sock.recv(64)[:12]
    finally:
        sock.close()


def test_connections_are_capped_then_freed(server):
    port, _ = server
    idle = [_connect(port) for _ in range(CAP)]  # connected, silent
    unsigned = json.dumps(tag_push("v1.0.1")).encode()
    # Once the server has registered the silent ones, one more request is turned away (an
    # unsigned probe, answered 401 until then, so nothing is journaled while waiting).
    deadline = time.monotonic() + 10
    while (answer := _status(port, unsigned, {"Content-Type": "application/json"})) != (
        b"HTTP/1.1 503"
    ) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert answer == b"HTTP/1.1 503"
    for sock in idle:  # the header deadline closes every silent one
        assert _read_all(sock) == b""
    body = json.dumps(tag_push("v1.0.3")).encode()
    assert _status(port, body, github_headers(body)) == b"HTTP/1.1 202"


def test_disconnect_mid_body_is_one_line_without_traceback(server):
    port, log = server
    body = json.dumps(tag_push("v1.0.2")).encode()
    sock = _connect(port)
    sock.sendall(_request(body, github_headers(body)) + body[:20])
    sock.close()
    deadline = time.monotonic() + 15
    while "disconnected" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    text = log.read_text()
    assert text.count("sender disconnected") == 1
    assert "Traceback" not in text
