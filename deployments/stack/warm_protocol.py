"""The few bytes between a warm-engine client (warm_run.py) and the warm engine (warm_engine.py).

Standard library only: the client is a process worker's flow-run command, started once per run,
and must cost nothing to import.

A request is one Unix stream connection:

    client -> engine   4-byte big-endian length, with the client's stdin, stdout and stderr as
                       SCM_RIGHTS descriptors; then that many bytes of JSON
                       {"v": 1, "argv": [...], "env": {...}, "cwd": "..."}
    engine -> client   one JSON line {"pid": N} once the run's process is forked, then one line
                       {"exit": CODE} or {"signal": SIGNUM} when it has ended, then EOF.
                       {"error": "..."} instead when the engine refuses the request.

The client keeps the connection open for the whole run: when it closes (the client was killed,
as a worker stopping kills its runs), the engine kills the run's process.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
from typing import Any

__all__ = [
    "ENV_SOCKET",
    "HEADER",
    "PROTOCOL",
    "read_reply",
    "recv_request",
    "send_reply",
    "send_request",
]

ENV_SOCKET = "SHIPYARD_WARM_ENGINE"  # the socket's path, in the workers' (and runs') environment
PROTOCOL = 1
HEADER = struct.Struct(">I")
MAX_REQUEST = 4 * 1024 * 1024  # an environment is KBs; anything this big is not a client of ours
STDIO = 3


def send_request(sock: socket.socket, argv: list[str], env: dict[str, str], cwd: str) -> None:
    body = json.dumps({"v": PROTOCOL, "argv": argv, "env": env, "cwd": cwd}).encode()
    socket.send_fds(sock, [HEADER.pack(len(body))], [0, 1, 2])
    sock.sendall(body)


def recv_request(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """The request and the client's three stdio descriptors (the caller owns and closes them).
    Raises ValueError for anything that is not a request of this protocol."""
    head, fds, _flags, _addr = socket.recv_fds(sock, HEADER.size, STDIO)
    try:
        if len(head) != HEADER.size or len(fds) != STDIO:
            raise ValueError(f"bad request header ({len(head)} bytes, {len(fds)} descriptors)")
        (size,) = HEADER.unpack(head)
        if size > MAX_REQUEST:
            raise ValueError(f"request of {size} bytes is over {MAX_REQUEST}")
        body = bytearray()
        while len(body) < size:
            chunk = sock.recv(size - len(body))
            if not chunk:
                raise ValueError("the client closed the connection mid-request")
            body += chunk
        request = json.loads(body)
        if not isinstance(request, dict) or request.get("v") != PROTOCOL:
            raise ValueError(f"not protocol {PROTOCOL}")
        if not isinstance(request.get("argv"), list) or not isinstance(request.get("env"), dict):
            raise ValueError("argv and env are required")
        return request, list(fds)
    except BaseException:
        for fd in fds:
            _close(fd)
        raise


def send_reply(sock: socket.socket, **reply: Any) -> None:
    sock.sendall(json.dumps(reply).encode() + b"\n")


def read_reply(stream: Any) -> dict[str, Any] | None:
    """The next reply line from a file object over the socket; None at EOF."""
    line = stream.readline()
    if not line:
        return None
    reply = json.loads(line)
    return reply if isinstance(reply, dict) else None


def _close(fd: int) -> None:
    import os

    with contextlib.suppress(OSError):
        os.close(fd)
