"""Processes of the local stack: spawned detached, found again by PID, stopped by PID.

The stack's processes outlive the command that started them (`shipyard stack up` returns; `stack
down` is another process), so a PID alone is not enough to find one again: the kernel re-uses
PIDs. Each process is recorded with its start time (`/proc/PID/stat`, field 22, in clock ticks
since boot), and a PID whose start time differs is another process: it is never signalled.

(deployments/ may not import the checkout-only sandbox at module level; sandbox/procs.py has the
same few helpers for the sandbox's own processes.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from shipyard.tasks.errors import WaitExpired
from shipyard.tasks.waiting import Deadline, NotYet, wait_for

T = TypeVar("T")
LOG_TAIL_LINES = 5


class StackError(RuntimeError):
    """A part of the local stack did not start or stop; the message names the part and the fix
    (and carries the tail of its log when it has one)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A free TCP port on loopback (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Nothing listens on host:port (TIME_WAIT connections of a stopped server do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def choose_port(port: int | None, what: str, option: str = "--port") -> int:
    """`port` when it is free, any free port for None; a taken port is a StackError."""
    if not port:
        return free_port()
    if not port_is_free(port):
        raise StackError(
            f"port {port} for the {what} is taken on 127.0.0.1: pass another {option} (or none: "
            "any free port)"
        )
    return port


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (`/proc/PID/stat` field 22); None when
    no such process (or it is a zombie: it has exited, only its parent has not reaped it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat[stat.rfind(")") + 2 :].split()
    if not fields or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def alive(pid: int, started: int | None = None) -> bool:
    """The process runs (and, given `started`, it is the one that started then)."""
    now = start_time(pid)
    return now is not None and (started is None or now == started)


def spawn(
    args: Sequence[str],
    log: Path,
    env: dict[str, str],
    *,
    user: int | None = None,
    group: int | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a detached process (its own session: a Ctrl-C in the terminal that started it does
    not reach it) with its output appended to `log`; `env` is its whole environment."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            user=user,
            group=group,
            extra_groups=[] if user is not None else None,
            start_new_session=True,
        )


def _reap(pid: int) -> None:
    """Collect the exit status when the process is our child (else it stays a zombie)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop_pid(
    pid: int,
    started: int | None = None,
    *,
    signals: Sequence[tuple[signal.Signals, float]] = ((signal.SIGTERM, 10.0),),
) -> bool:
    """Stop a process by PID: each (signal, grace) in turn until it has exited, then SIGKILL.

    True when it was running. A PID whose start time is not `started` belongs to another
    process by now: it is left alone (False).
    """
    return bool(stop_pids([(pid, started)], signals=signals))


def stop_pids(
    procs: Sequence[tuple[int, int | None]],
    *,
    signals: Sequence[tuple[signal.Signals, float]] = ((signal.SIGTERM, 10.0),),
) -> list[int]:
    """`stop_pid` for several (PID, start time) at once: each signal goes to all of those still
    running, then one grace for all (so N workers take one grace, not N). Returns the PIDs that
    were running."""
    running = [pid for pid, started in procs if alive(pid, started)]
    for pid, _ in procs:
        _reap(pid)
    left = list(running)
    for sig, grace in [*signals, (signal.SIGKILL, 5.0)]:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = Deadline(grace)
        left = [pid for pid in left if not _exited(pid, max(0.0, deadline.remaining()))]
        if not left:
            break
    return running


def _exited(pid: int, grace: float) -> bool:
    def gone() -> bool:
        _reap(pid)
        if start_time(pid) is not None:
            raise NotYet(f"PID {pid} still runs")
        return True

    try:
        return wait_for(
            gone,
            what=f"PID {pid} to exit",
            first_delay_s=0.02,
            max_delay_s=0.25,
            deadline=Deadline(grace),
            heartbeat_s=None,
        )
    except WaitExpired:  # still running after the grace
        return False


def tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log, joined on one line (for an error message)."""
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return f"(no log at {log})"
    return " | ".join(line.strip() for line in text[-lines:]) or f"(empty log {log})"


def wait_until(
    probe: Callable[[], T],
    *,
    what: str,
    timeout: float,
    proc: subprocess.Popen[bytes] | None,
    log: Path,
) -> T:
    """Poll `probe` (it raises NotYet until there is an outcome) with the one waiter, for at most
    `timeout` s. A process that exits first, or the deadline, is a StackError with the log's
    tail."""

    def call() -> T:
        if proc is not None and proc.poll() is not None:
            raise StackError(f"{what}: it exited with code {proc.returncode}: {tail(log)}")
        return probe()

    try:
        return wait_for(
            call,
            what=what,
            first_delay_s=0.05,
            max_delay_s=0.5,
            deadline=Deadline(timeout),
            heartbeat_s=None,
        )
    except WaitExpired as exc:
        last = exc.__cause__ if exc.__cause__ is not None else exc
        raise StackError(f"{what}: not within {timeout:g} s ({last}): {tail(log)}") from None
