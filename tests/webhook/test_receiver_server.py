"""The receiver as uvicorn serves it (`shipyard.deployments.webhook.receiver.serve`), over real
sockets: stalled senders are cut off and cannot silence it (slow-loris), a disconnect is one log
line."""

from __future__ import annotations

import json
import socket
import sys
import time

import pytest
from receiver_kit import REPOSITORY, SECRET, github_headers, tag_push

from sandbox.procs import free_port, spawn, stop_pid, wait_for_port

pytestmark = pytest.mark.slow  # a receiver process each: ~5 s to start

CAP = 6  # requests at once (503 beyond)
PER_CLIENT = 8  # connections still sending their headers, per client address
SERVE = """
import json, sys
from shipyard.deployments.webhook.receiver import WebhookSettings, serve
import logging
logging.basicConfig(level="INFO", format="%(name)s %(message)s")
settings = WebhookSettings(repositories={sys.argv[3]: "default"}, **json.loads(sys.argv[4]))
serve(settings, "127.0.0.1", int(sys.argv[1]), "info")
"""
LIMITS = {
    "journal": None,
    "header_timeout_s": 1.0,
    "body_timeout_s": 1.0,
    "max_connections": CAP,
    "max_pending_per_client": PER_CLIENT,
    "max_pending": 64,
}


@pytest.fixture(scope="module")
def server(prefect_server, tmp_path_factory):
    from prefect.settings import PREFECT_API_URL

    root = tmp_path_factory.mktemp("receiver")
    port = free_port()
    log = root / "receiver.log"
    proc = spawn(
        [
            sys.executable,
            "-c",
            SERVE,
            str(port),
            "-",
            REPOSITORY,
            json.dumps({**LIMITS, "journal": str(root / "journal.db")}),
        ],
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


def test_stalled_senders_cannot_silence_the_receiver(server):
    """50 connections send half a header and stall (slow-loris). Over the per-client cap the
    oldest are shed; the rest meet the header deadline; none counts toward the 503 limit (CAP):
    every complete delivery sent meanwhile gets its normal answer, and every stalled
    connection is closed without one."""
    port, log = server
    stalled = []
    for _ in range(50):
        sock = _connect(port)
        sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: receiver\r\nX-Slow: ")
        stalled.append(sock)
    answers = []
    for i in range(5):
        body = json.dumps(tag_push(f"v1.1.{i}")).encode()
        answers.append(_status(port, body, github_headers(body)))
    assert answers == [b"HTTP/1.1 202"] * 5
    for sock in stalled:
        assert _read_all(sock) == b""  # shed or timed out: closed, nothing answered
        sock.close()
    assert "shed" in log.read_text()  # over the per-client cap: the oldest made room


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
