"""Redis from Debian's package, the message broker of a Prefect server split in two processes.

Prefect's own guide to scaling a self-hosted server ("How to scale self-hosted Prefect",
docs.prefect.io/v3/advanced/self-hosted) runs the API (`prefect server start --no-services`)
apart from the background services (`prefect server services start`: the event persister, the
task-run recorder, triggers and actions, the scheduler...), with Redis carrying the events and
the services' work between them (prefect-redis: PREFECT_MESSAGING_BROKER/CACHE
`prefect_redis.messaging`, PREFECT_SERVER_EVENTS_CAUSAL_ORDERING `prefect_redis.ordering`,
PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE `prefect_redis.lease_storage`, PREFECT_SERVER_DOCKET_URL).
With the in-memory broker of one `prefect server start`, everything shares one event loop: every
event a run sends is persisted and recorded by the process that must also answer the workers'
polls and the runs' state changes.

Started and stopped by PID like PostgreSQL (`redis-server` in the foreground, its log under
`root/redis.log`, nothing saved to disk: `--save ""`, no append-only file), listening on
127.0.0.1 only. It has no password: any local user can reach it, like the sandbox's registry; a
shared machine or a real deployment gives Redis a password (`requirepass`) and the URL carries it
(`redis://:PASSWORD@host:6379/0`, PREFECT_REDIS_MESSAGING_URL).
"""

from __future__ import annotations

import shutil
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

from shipyard.deployments.stack.processes import (
    StackError,
    choose_port,
    spawn,
    start_time,
    stop_pid,
    wait_until,
)
from shipyard.tasks.waiting import NotYet

__all__ = ["Redis", "prefect_redis_settings", "redis_binary", "start_redis", "stop_redis"]

LOG_FILE = "redis.log"
DATA_DIR = "redis"
STOP_GRACE_S = 10.0
PING_TIMEOUT_S = 2.0
MESSAGING_DB = 0
DOCKET_DB = 1


@dataclass(frozen=True)
class Redis:
    """A running redis-server: where it listens, its PID (and start time) and log."""

    port: int
    pid: int
    started: int | None
    log: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/{MESSAGING_DB}"

    @property
    def docket_url(self) -> str:
        """Docket's (the services' task queue) own database on the same Redis."""
        return f"redis://127.0.0.1:{self.port}/{DOCKET_DB}"


def redis_binary() -> str:
    """Debian's redis-server; a StackError naming the package when it is missing."""
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if found is None:
        raise StackError(
            "redis-server is not installed: `apt-get install redis-server` (Debian's package; "
            "`make setup` installs it), or start the stack without --messaging redis"
        )
    return found


def start_redis(root: Path, port: int | None = None, timeout: float = 30) -> Redis:
    """Start redis-server on 127.0.0.1:`port` (None: any free port) with its working directory
    `root/redis` and log `root/redis.log`; returns once it answers PING (at most `timeout` s).
    Raises StackError: not installed, the port taken, it exited or did not answer in time (with
    its log's tail)."""
    binary = redis_binary()
    chosen = choose_port(port, "Redis", "--redis-port")
    workdir = root / DATA_DIR
    workdir.mkdir(parents=True, exist_ok=True)
    log = root / LOG_FILE
    args = [
        binary,
        "--bind", "127.0.0.1",
        "--port", str(chosen),
        "--dir", str(workdir),
        "--save", "",
        "--appendonly", "no",
        "--daemonize", "no",
        "--loglevel", "notice",
    ]  # fmt: skip
    proc = spawn(args, log, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, cwd=workdir)
    try:
        wait_until(
            lambda: _pong(chosen),
            what=f"Redis on 127.0.0.1:{chosen} (log {log})",
            timeout=timeout,
            proc=proc,
            log=log,
        )
    except BaseException:
        stop_pid(proc.pid, signals=((signal.SIGTERM, STOP_GRACE_S),))
        raise
    return Redis(port=chosen, pid=proc.pid, started=start_time(proc.pid), log=log)


def stop_redis(redis: Redis, grace: float = STOP_GRACE_S) -> None:
    """Stop it by PID: SIGTERM (it exits without saving: nothing is configured to be saved),
    SIGKILL after `grace`."""
    stop_pid(redis.pid, redis.started, signals=((signal.SIGTERM, grace),))


def prefect_redis_settings(redis: Redis) -> dict[str, str]:
    """The settings that make a Prefect server's API and its services share events and work
    through `redis` (prefect-redis; the same ones Prefect's self-hosted scaling guide lists)."""
    return {
        "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
        "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
        "PREFECT_REDIS_MESSAGING_URL": redis.url,
        "PREFECT_SERVER_DOCKET_URL": redis.docket_url,
    }


def _pong(port: int) -> bool:
    """PING in Redis's protocol (RESP) over a plain socket: no client library needed here."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=PING_TIMEOUT_S) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            answer = sock.recv(64)
    except OSError as exc:
        raise NotYet(f"not answering ({type(exc).__name__})") from None
    if not answer.startswith(b"+PONG"):
        raise NotYet(f"answered {answer[:40]!r} to PING")
    return True
