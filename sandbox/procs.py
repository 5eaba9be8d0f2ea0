"""Small helpers to start and stop local processes on loopback, by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["free_port", "pid_alive", "spawn", "stop_pid", "wait_for_port"]


def pid_alive(pid: int) -> bool:
    """True while a process with this id exists on this host (signal 0 probes, sends nothing).

    A process owned by another user answers EPERM: it exists, so it counts as alive.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a free TCP port on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Nothing listens on host:port. Connections of a server that just stopped (TIME_WAIT) do
    not count: the servers started here (Go's net, uvicorn) bind with SO_REUSEADDR too."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def pick_port(preferred: int | None, what: str, host: str = "127.0.0.1") -> tuple[int, str]:
    """(port, note): `preferred` when it is free, else a free port and one line saying so
    (None or 0 preferred: any free port, no note)."""
    if not preferred:
        return free_port(host), ""
    if port_is_free(preferred, host):
        return preferred, ""
    port = free_port(host)
    return port, (
        f"port {preferred} for the {what} is taken: it listens on {port} instead (blocks made by "
        "`shipyard setup` for the old port: run `shipyard setup` again)"
    )


def wait_for_port(
    host: str, port: int, timeout: float, proc: subprocess.Popen | None = None
) -> None:
    """Block until something accepts TCP connections on host:port.

    Raises RuntimeError when the deadline passes or the process dies first.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"process {proc.args!r} exited with code {proc.returncode} before listening on {host}:{port}"
            )
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listened on {host}:{port} within {timeout:.0f} s")


def spawn(args: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a detached process (own session) whose output goes to log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 - the child owns it
    return subprocess.Popen(
        args,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )


def stop_pid(pid: int, timeout: float = 5.0) -> bool:
    """SIGTERM a process we started, then SIGKILL after timeout. Returns True if it was running."""
    if not pid_alive(pid):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                return True
        except ChildProcessError:
            pass
        if not pid_alive(pid):
            return True
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return True
