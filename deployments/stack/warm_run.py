"""A process worker's flow-run command when a warm engine is up: `python -m
shipyard.deployments.stack.warm_run [FLOW_RUN_ID]`, in place of `python -m prefect.engine`.

It asks the warm engine (warm_engine.py, socket in $SHIPYARD_WARM_ENGINE) to fork the run's
process from its pre-imported interpreter, hands it this process's stdin/stdout/stderr (so the
run's output goes where the worker reads it), forwards the signals the worker sends (a
cancellation's SIGTERM) to that process, and ends with its exit status (the same code, or killed
by the same signal), so the worker sees what it would have seen of `python -m prefect.engine`.
When no warm engine answers, it becomes `python -m prefect.engine` itself (exec): a run is never
lost for want of the warm engine, it only starts slower.

Standard library only (plus warm_protocol.py): this process starts once per run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from typing import NoReturn

from shipyard.deployments.stack.warm_protocol import ENV_SOCKET, read_reply, send_request

__all__ = ["main"]

CONNECT_TIMEOUT_S = 5.0
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1)


def main(args: list[str] | None = None) -> NoReturn:
    args = sys.argv[1:] if args is None else args
    path = os.environ.get(ENV_SOCKET, "")
    sock = _connect(path) if path else None
    if sock is None:
        _cold(args)
    child: list[int] = []
    pending: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if child:
            _kill(child[0], signum)
        else:
            pending.append(signum)

    for signum in FORWARDED:
        signal.signal(signum, forward)
    try:
        send_request(sock, ["-m", "prefect.engine", *args], dict(os.environ), os.getcwd())
    except OSError as exc:
        _note(f"the warm engine at {path} did not take the run ({type(exc).__name__}: {exc})")
        sock.close()
        _cold(args)
    sock.settimeout(None)
    replies = sock.makefile("rb")
    while True:
        try:
            reply = read_reply(replies)
        except (OSError, ValueError) as exc:  # reset, or not our protocol: as if it closed
            _note(f"the warm engine at {path} answered {type(exc).__name__}: {exc}")
            reply = None
        if reply is None and not child:  # no process was forked for the run: run it here
            _note(f"the warm engine at {path} closed before it started the run")
            sock.close()
            _cold(args)
        if reply is None:
            _note(f"the warm engine at {path} went away during the run; its process went with it")
            sys.exit(1)
        if "error" in reply:
            _note(f"the warm engine refused the run: {reply['error']}")
            sock.close()
            _cold(args)
        if "pid" in reply:
            child.append(int(reply["pid"]))
            for queued in pending:
                _kill(child[0], queued)
        elif "exit" in reply:
            sys.exit(int(reply["exit"]))
        elif "signal" in reply:
            _die_by(int(reply["signal"]))


def _connect(path: str) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT_S)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        _note(f"no warm engine at {path} ({type(exc).__name__}): the run starts a fresh Python")
        return None
    return sock


def _cold(args: list[str]) -> NoReturn:
    """Become what a process worker runs without us."""
    os.execv(sys.executable, [sys.executable, "-m", "prefect.engine", *args])  # noqa: S606 (our own interpreter, fixed argv)


def _kill(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _die_by(signum: int) -> NoReturn:
    """End the way the run's process ended: killed by the same signal."""
    for forwarded in FORWARDED:
        signal.signal(forwarded, signal.SIG_DFL)
    sys.stdout.flush()
    os.kill(os.getpid(), signum)
    sys.exit(128 + signum)  # a signal whose default is not to terminate


def _note(message: str) -> None:
    print(f"shipyard warm_run: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
