"""Start and stop the warm engine (warm_engine.py) for a stack's process workers, by PID.

`start_warm_engine` starts `python -m shipyard.deployments.stack.warm_engine` with the workers'
environment, waits until it has imported everything and listens, and returns where it listens.
The workers then get `SHIPYARD_WARM_ENGINE=<socket>` in their environment (their runs inherit it)
and the pool's command is `warm_command()`: each run is forked from the engine. Without the
engine (stopped, crashed) a run falls back to a fresh `python -m prefect.engine`.
"""

from __future__ import annotations

import shlex
import sys
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from shipyard.deployments.stack.processes import spawn, start_time, stop_pid, wait_until
from shipyard.deployments.stack.warm_protocol import ENV_SOCKET
from shipyard.tasks.waiting import NotYet

__all__ = ["ENV_SOCKET", "WarmEngine", "start_warm_engine", "stop_warm_engine", "warm_command"]

START_TIMEOUT_S = 180.0  # its imports take ~2.5 CPU s; a machine at load 20 stretches that
STOP_GRACE_S = 5.0
LOG = "warm-engine.log"
SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes with its NUL


@dataclass(frozen=True)
class WarmEngine:
    pid: int
    started: (
        int | None
    )  # start time in clock ticks (processes.start_time): never signal a reused PID
    socket: Path
    log: Path


def warm_command(python: str | None = None) -> str:
    """The process pool's command for runs forked from the warm engine (the worker's own Python
    by default: the same virtual environment as the engine)."""
    return shlex.join([python or sys.executable, "-m", "shipyard.deployments.stack.warm_run"])


def start_warm_engine(
    home: Path,
    env: dict[str, str],
    *,
    modules: list[str] | None = None,
    timeout: float = START_TIMEOUT_S,
) -> WarmEngine:
    """Start the engine with `env` as its whole environment (the workers'), its log in
    `home/warm-engine.log`; returns once it listens. `modules`: more modules to import first
    (a team's own flows). Raises StackError with the log's tail when it exits or is not ready
    within `timeout` s."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "warm-engine" / "engine.sock"
    if len(str(path)) > SOCKET_PATH_MAX:  # a Unix socket's path is short: use /tmp then
        path = Path(tempfile.mkdtemp(prefix="shipyard-warm-")) / "engine.sock"
    log = home / LOG
    start = log.stat().st_size if log.exists() else 0
    args = [sys.executable, "-m", "shipyard.deployments.stack.warm_engine", "--socket", str(path)]
    for module in modules or []:
        args += ["--module", module]
    proc = spawn(args, log, env)
    wait_until(
        partial(_ready, log, start, path),
        what=f"the warm engine (log {log})",
        timeout=timeout,
        proc=proc,
        log=log,
    )
    return WarmEngine(proc.pid, start_time(proc.pid), path, log)


def _ready(log: Path, start: int, path: Path) -> bool:
    with open(log, "rb") as handle:
        handle.seek(start)
        if f"ready on {path}".encode() not in handle.read():
            raise NotYet("still importing")
    return True


def stop_warm_engine(engine: WarmEngine) -> None:
    """SIGTERM (its runs' processes die with it: stop the workers first), SIGKILL after a grace."""
    stop_pid(engine.pid, engine.started)
    engine.socket.unlink(missing_ok=True)
