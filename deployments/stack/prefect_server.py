"""A Prefect server on the stack's PostgreSQL (or on Prefect's embedded SQLite, for comparison).

On PostgreSQL the schema is brought up to date as a step of its own, `migrate` (`prefect server
database upgrade -y`, Alembic), before the server starts with
PREFECT_SERVER_DATABASE_MIGRATE_ON_START=false: several servers on one database (or one server
restarted while workers run) then never race to migrate, and a failed migration is an error of
its own, not a server that never answers. With `db_url=None` the server is the embedded default,
as a user starts it (SQLite under its home, migrated on start).

Each server has its own PREFECT_HOME, no analytics, no UI unless asked; it inherits no PREFECT_*
setting from the caller (a test session's PREFECT_API_URL, a configured database URL). It is
waited for on `GET /api/health` with a deadline and stopped by PID (SIGTERM: uvicorn shuts down
cleanly; SIGKILL after a grace).

The database URL carries the password: it goes to the children in their environment only; the
log tails put in error messages are scrubbed of it, and Prefect itself prints the URL masked
(SQLAlchemy's `repr(engine.url)`: `prefect:***@`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from shipyard.deployments.demo.prefect_server import prefect_command
from shipyard.deployments.stack.processes import (
    StackError,
    choose_port,
    spawn,
    start_time,
    stop_pid,
    tail,
    wait_until,
)
from shipyard.tasks.waiting import NotYet

__all__ = [
    "StackServer",
    "StackServices",
    "migrate",
    "prefect_env",
    "start_server",
    "start_services",
    "stop_server",
    "stop_services",
]

SERVER_LOG = "server.log"
SERVICES_LOG = "services.log"
SLOT_WAIT_S = 2  # PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS (see start_server)
MIGRATE_LOG = "migrate.log"
STOP_GRACE_S = 10.0
HEALTH_REQUEST_S = 2.0


@dataclass(frozen=True)
class StackServer:
    """A running `prefect server start`: its API URL, PID (and start time), PREFECT_HOME, log
    file, and how long it took from launch to a healthy API."""

    api_url: str
    pid: int
    home: Path
    log: Path
    started: int | None = None
    started_s: float = 0.0
    database: str = "sqlite"  # "postgresql" or "sqlite"


def prefect_env(home: Path, **settings: str) -> dict[str, str]:
    """The environment of a Prefect process of the stack: the caller's, minus every PREFECT_*
    setting (they would point it elsewhere), plus its own home, no analytics, and `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
    }
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # else every start recompiles all of Prefect
    return env | settings


def _scrub(text: str, db_url: str | None) -> str:
    """`text` without the database password."""
    password = urlsplit(db_url).password if db_url else None
    return text.replace(password, "***") if password else text


def migrate(db_url: str, home: Path, timeout: float = 300) -> float:
    """Bring the database's schema up to date (`prefect server database upgrade -y`); returns
    the seconds it took. Its output goes to `home/migrate.log`. Raises StackError (with the log's
    tail) when it fails or outlasts `timeout`."""
    home.mkdir(parents=True, exist_ok=True)
    log = home / MIGRATE_LOG
    env = prefect_env(home, PREFECT_SERVER_DATABASE_CONNECTION_URL=db_url)
    began = time.perf_counter()
    with open(log, "ab") as out:
        try:
            done = subprocess.run(
                [prefect_command(), "server", "database", "upgrade", "-y"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise StackError(
                f"the Prefect database migration did not finish within {timeout:g} s: "
                f"{_scrub(tail(log), db_url)}"
            ) from None
    if done.returncode != 0:
        raise StackError(
            f"the Prefect database migration failed (code {done.returncode}): "
            f"{_scrub(tail(log), db_url)}"
        )
    return round(time.perf_counter() - began, 2)


def start_server(
    db_url: str | None,
    home: Path,
    port: int | None = None,
    timeout: float = 120,
    *,
    ui: bool = False,
    env: dict[str, str] | None = None,
    services: bool = True,
) -> StackServer:
    """Start `prefect server start` on 127.0.0.1:`port` (None: any free port) with its home at
    `home`, on `db_url` (already migrated: see `migrate`) or, with None, on the embedded SQLite
    database `home/prefect.db` (migrated on start, as Prefect does by default). `env`: more
    server settings (PREFECT_SERVER_*). `services=False`: the API alone (`--no-services`), its
    background services in a process of their own (`start_services`, Redis between them). Waits
    for `GET /api/health` at most `timeout` s.

    Raises StackError: the port is taken, the server exited or did not answer in time (with its
    log's tail).
    """
    home.mkdir(parents=True, exist_ok=True)
    chosen = choose_port(port, "Prefect server")
    settings = (
        _database_settings(db_url, home)
        | {
            "PREFECT_SERVER_UI_ENABLED": str(ui).lower(),
            # A run turned away by a deployment's concurrency limit is due again after this
            # (Prefect's default 30 s). The fleet's per-target deployments keep a limit of 1 only
            # as the guard for two workers that poll the same queue at the same instant
            # (deployments/fleet.py): the loser is due again 2 s later, not in a 30 s wave.
            "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": str(SLOT_WAIT_S),
        }
        | (env or {})
    )
    log = home / SERVER_LOG
    url = f"http://127.0.0.1:{chosen}/api"
    launched = time.perf_counter()
    args = [prefect_command(), "server", "start", "--host", "127.0.0.1", "--port", str(chosen)]
    proc = spawn(args if services else [*args, "--no-services"], log, prefect_env(home, **settings))
    with httpx.Client(timeout=HEALTH_REQUEST_S) as client:
        _started_or_stopped(
            proc,
            lambda: _healthy(client, url),
            f"the Prefect server at {url}",
            log,
            timeout,
            db_url,
        )
    return StackServer(
        api_url=url,
        pid=proc.pid,
        home=home,
        log=log,
        started=start_time(proc.pid),
        started_s=round(time.perf_counter() - launched, 2),
        database="postgresql" if db_url else "sqlite",
    )


def _database_settings(db_url: str | None, home: Path) -> dict[str, str]:
    if db_url:
        return {
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": db_url,
            "PREFECT_SERVER_DATABASE_MIGRATE_ON_START": "false",
        }
    return {"PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}"}


@dataclass(frozen=True)
class StackServices:
    """A running `prefect server services start`: PID (and start time), PREFECT_HOME, log."""

    pid: int
    started: int | None
    home: Path
    log: Path


def start_services(
    db_url: str, home: Path, env: dict[str, str], timeout: float = 120
) -> StackServices:
    """Prefect's background services (`prefect server services start`: event persister, task-run
    recorder, triggers, actions, scheduler...) in a process of their own, on the API's database
    (`db_url`, migrated) and message broker (`env`: prefect_redis_settings). Their PREFECT_HOME
    is `home` (its own: the command keeps a PID file there); returns once they said they start
    (at most `timeout` s)."""
    home.mkdir(parents=True, exist_ok=True)
    log = home / SERVICES_LOG
    began = log.stat().st_size if log.exists() else 0
    proc = spawn(
        [prefect_command(), "server", "services", "start"],
        log,
        prefect_env(home, **(_database_settings(db_url, home) | env)),
    )

    def started() -> bool:
        with open(log, "rb") as text:
            text.seek(began)
            if b"Starting services" not in text.read():
                raise NotYet("they have not said they start")
        return True

    _started_or_stopped(proc, started, "Prefect's background services", log, timeout, db_url)
    return StackServices(pid=proc.pid, started=start_time(proc.pid), home=home, log=log)


def _started_or_stopped(
    proc: subprocess.Popen[bytes],
    probe: Callable[[], bool],
    what: str,
    log: Path,
    timeout: float,
    db_url: str | None,
) -> None:
    """Wait for `probe` (wait_until); a process that exits or outlasts `timeout` is stopped and
    the StackError raised carries its log's tail scrubbed of the database password."""
    try:
        wait_until(probe, what=f"{what} (log {log})", timeout=timeout, proc=proc, log=log)
    except StackError as exc:
        stop_pid(proc.pid, signals=((signal.SIGTERM, STOP_GRACE_S),))
        raise StackError(_scrub(str(exc), db_url)) from None
    except BaseException:
        stop_pid(proc.pid, signals=((signal.SIGTERM, STOP_GRACE_S),))
        raise


def stop_services(services: StackServices, grace: float = STOP_GRACE_S) -> None:
    """Stop them by PID: SIGTERM, SIGKILL after `grace`."""
    stop_pid(services.pid, services.started, signals=((signal.SIGTERM, grace),))


def _healthy(client: httpx.Client, url: str) -> bool:
    try:
        response = client.get(f"{url}/health")
    except httpx.TransportError as exc:
        raise NotYet(f"not answering ({type(exc).__name__})") from None
    if response.status_code != 200:
        raise NotYet(f"/health answered {response.status_code}")
    return True


def stop_server(server: StackServer, grace: float = STOP_GRACE_S) -> None:
    """Stop the server by PID: SIGTERM, SIGKILL after `grace`."""
    stop_pid(server.pid, server.started, signals=((signal.SIGTERM, grace),))
