"""`shipyard stack up|down|status`: the local distributed stack (PostgreSQL from Debian's
package, a Prefect server on it, workers), under $SHIPYARD_HOME/stack, stopped by PID.

`up` starts the parts (deployments/stack/local.py), writes what it started to
$SHIPYARD_HOME/stack/stack.json (PIDs with their start times, ports, logs; never the database
password) and returns, leaving them running; `down` stops them by PID from that file (a PID
re-used by another process since is left alone) and keeps the data; `status` says what runs.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from shipyard.deployments.cli.errors import fail

if TYPE_CHECKING:
    from shipyard.deployments.stack.local import Stack

STATE_FILE = "stack.json"
DEFAULT_SERVER_PORT = 4200  # Prefect's own default: PREFECT_API_URL=http://127.0.0.1:4200/api
HEALTH_TIMEOUT_S = 5.0

UP_HELP = (
    "Start PostgreSQL, a Prefect server on it and --workers workers; print the PREFECT_API_URL "
    "to export. They keep running after the command returns: `shipyard stack status` tells "
    "what runs, `shipyard stack down` stops them (the data stays for the next `up`)."
)
STATUS_HELP = (
    "Show what runs: each part's PID and address, and whether the Prefect API answers (exit 1 "
    "when no stack was started or a part of it is not running)."
)

console = Console(soft_wrap=True)  # paths and the export line stay whole, copy-pasteable

stack_app = typer.Typer(
    help=(
        "The local distributed stack: PostgreSQL (Debian's package) with its data under "
        "$SHIPYARD_HOME/stack, a Prefect server on it (migrated as a step of its own), and "
        "workers on a work pool. Everything runs as plain processes, stopped by PID with "
        "`shipyard stack down`. The demo keeps Prefect's embedded default; this is the setup to "
        "try a fleet on (several workers, many services)."
    ),
    no_args_is_help=True,
)


def stack_root() -> Path:
    """$SHIPYARD_HOME/stack (SHIPYARD_HOME defaults to ~/.shipyard)."""
    home = os.environ.get("SHIPYARD_HOME") or str(Path.home() / ".shipyard")
    return Path(home) / "stack"


@dataclass
class Part:
    """One process of the stack: enough to find it again (PID and start time) and say what."""

    name: str
    pid: int
    started: int | None
    log: str
    url: str = ""


@dataclass
class StackState:
    """What `stack up` wrote to $SHIPYARD_HOME/stack/stack.json."""

    database: str
    api_url: str
    pool: str
    worker_type: str
    parts: list[Part] = field(default_factory=list)
    database_url: str = ""  # password masked
    timings: dict[str, float] = field(default_factory=dict)
    started_at: str = ""

    def save(self, root: Path) -> Path:
        path = root / STATE_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, root: Path) -> StackState | None:
        try:
            data: dict[str, Any] = json.loads((root / STATE_FILE).read_text())
            parts = [Part(**p) for p in data.pop("parts", [])]
            return cls(**data, parts=parts)
        except (OSError, ValueError, TypeError):
            return None

    def running(self) -> dict[str, bool]:
        from shipyard.deployments.stack.processes import alive

        return {p.name: alive(p.pid, p.started) for p in self.parts}


@stack_app.command("up", help=UP_HELP)
def up(
    database: str = typer.Option(
        "postgres",
        "--database",
        "-d",
        help="postgres: PostgreSQL from Debian's package, data kept in $SHIPYARD_HOME/stack/"
        "postgres; sqlite: Prefect's embedded default (for comparisons).",
    ),
    workers: int = typer.Option(
        0, "--workers", "-w", help="How many `prefect worker start` processes on --pool."
    ),
    pool: str = typer.Option(
        "shipyard-process", "--pool", help="The work pool the workers poll (created if missing)."
    ),
    worker_type: str = typer.Option(
        "process",
        "--type",
        help="The workers' type: process (each run in a subprocess of its worker) or docker "
        "(each run in a container of Shipyard's worker image, built from "
        "deployments/worker/Dockerfile on DOCKER_HOST's daemon, which the pool is set to).",
    ),
    limit: int = typer.Option(
        None, "--limit", help="At most this many runs at once per worker (default: no limit)."
    ),
    port: int = typer.Option(
        None,
        "--port",
        help=f"The Prefect server's port (default {DEFAULT_SERVER_PORT} when free, else any "
        "free port; 0: any free port).",
    ),
    ui: bool = typer.Option(False, "--ui", help="Serve Prefect's UI too."),
    warm: bool = typer.Option(
        True,
        "--warm/--cold",
        help="Process workers: fork each flow run from a warm engine that has imported Prefect "
        "and the flows once (about 4 CPU seconds less per run, and a run is Running within a "
        "second of being taken), or --cold: a fresh `python -m prefect.engine` per run "
        "(Prefect's own way). A run falls back to cold by itself when the engine is gone.",
    ),
    messaging: str = typer.Option(
        "memory",
        "--messaging",
        help="memory: one `prefect server start` (API and background services in one process, "
        "Prefect's default); redis: the API and the background services in two processes with "
        "Redis (Debian's redis-server) between them, as Prefect's guide to scaling a "
        "self-hosted server does (needs --database postgres).",
    ),
) -> None:
    """Start the stack and print the PREFECT_API_URL to export (see UP_HELP)."""
    from shipyard.deployments.stack.local import DATABASES, MESSAGING, start_stack
    from shipyard.deployments.stack.processes import StackError, port_is_free
    from shipyard.deployments.stack.workers import WORKER_TYPES

    if database not in DATABASES:
        fail(f"--database {database!r}: use one of {', '.join(DATABASES)}")
    if messaging not in MESSAGING:
        fail(f"--messaging {messaging!r}: use one of {', '.join(MESSAGING)}")
    if worker_type not in WORKER_TYPES:
        fail(f"--type {worker_type!r}: use one of {', '.join(WORKER_TYPES)}")
    if workers < 0 or (limit is not None and limit < 1):
        fail(f"--workers {workers} --limit {limit}: workers 0 or more, a limit of 1 or more")
    root = stack_root()
    existing = StackState.read(root)
    if existing is not None and any(existing.running().values()):
        fail(
            f"a stack already runs (Prefect API {existing.api_url}; state in "
            f"{root / STATE_FILE}): `shipyard stack down` first"
        )
    note = ""
    if port is None:
        port = DEFAULT_SERVER_PORT if port_is_free(DEFAULT_SERVER_PORT) else 0
        if not port:
            note = f"port {DEFAULT_SERVER_PORT} is taken: the server listens on another"
    root.mkdir(parents=True, exist_ok=True)
    console.print(f"starting the stack under {root} ...")
    with ExitStack() as stops:
        try:
            stack = start_stack(
                root,
                stops,
                database,
                workers,
                pool,
                worker_type,
                limit=limit,
                server_port=port or None,
                ui=ui,
                warm=warm,
                messaging=messaging,
            )
        except StackError as exc:
            fail(str(exc))
        state = _state(stack, database, pool, worker_type)
        path = state.save(root)
        stops.pop_all()  # from here on they outlive this command: `stack down` stops them
    if note:
        console.print(f"[yellow]{note}[/]")
    figures = ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in stack.timings.items())
    console.print(f"stack up ({figures}); state in {path}")
    for part in state.parts:
        console.print(f"  {part.name:<10} pid {part.pid:<8} {part.url or ''}  log {part.log}")
    console.print("point Prefect and Shipyard at it:")
    console.print(f"  export PREFECT_API_URL={stack.api_url}")


def _state(stack: Stack, database: str, pool: str, worker_type: str) -> StackState:
    from shipyard.deployments.stack.processes import start_time
    from shipyard.deployments.stack.workers import worker_log

    parts: list[Part] = []
    if stack.postgres is not None:
        pg = stack.postgres
        parts.append(Part("postgres", pg.pid, pg.started, str(pg.log), f"127.0.0.1:{pg.port}"))
    if stack.redis is not None:
        redis = stack.redis
        parts.append(Part("redis", redis.pid, redis.started, str(redis.log), redis.url))
    server = stack.server
    parts.append(Part("server", server.pid, server.started, str(server.log), server.api_url))
    if stack.services is not None:
        services = stack.services
        parts.append(Part("services", services.pid, services.started, str(services.log)))
    if stack.warm_engine is not None:
        engine = stack.warm_engine
        parts.append(
            Part("warm", engine.pid, engine.started, str(engine.log), f"unix:{engine.socket}")
        )
    for i, pid in enumerate(stack.worker_pids, start=1):
        log = worker_log(pid, server.home)
        parts.append(Part(f"worker-{i}", pid, start_time(pid), str(log or ""), f"pool {pool}"))
    return StackState(
        database=database,
        api_url=stack.api_url,
        pool=pool,
        worker_type=worker_type,
        parts=parts,
        database_url=stack.postgres.safe_url if stack.postgres is not None else "sqlite",
        timings=stack.timings,
        started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


@stack_app.command("down")
def down() -> None:
    """Stop everything `stack up` started, by PID (workers, warm engine, services, server, Redis,
    PostgreSQL); keep the data."""
    from shipyard.deployments.stack.postgres import stop_postgres_pid
    from shipyard.deployments.stack.processes import alive, stop_pid
    from shipyard.deployments.stack.workers import stop_workers

    root = stack_root()
    state = StackState.read(root)
    if state is None:
        console.print(f"no stack was running (no {root / STATE_FILE})")
        return
    stopped = []
    workers = [p for p in state.parts if p.name.startswith("worker")]
    running = {p.name for p in workers if alive(p.pid, p.started)}
    stop_workers([p.pid for p in workers], started=[p.started for p in workers])
    stopped += [f"{p.name} ({p.pid})" for p in workers if p.name in running]
    for part in reversed(state.parts):  # then the warm engine, services, server, Redis, PostgreSQL
        if part.name == "postgres":
            ran = stop_postgres_pid(part.pid, part.started)
        elif part.name in ("server", "warm", "services", "redis"):
            ran = stop_pid(part.pid, part.started)
        else:
            continue
        if ran:
            stopped.append(f"{part.name} ({part.pid})")
    (root / STATE_FILE).unlink(missing_ok=True)
    console.print(
        ("stopped: " + ", ".join(stopped)) if stopped else "nothing of the stack was running"
    )


@stack_app.command("status", help=STATUS_HELP)
def status() -> None:
    """Show what runs (see STATUS_HELP)."""
    import httpx

    root = stack_root()
    state = StackState.read(root)
    if state is None:
        console.print("no stack (start one with `shipyard stack up`)")
        raise typer.Exit(1)
    running = state.running()
    for part in state.parts:
        yes = "running" if running[part.name] else "NOT RUNNING"
        console.print(f"  {part.name:<10} pid {part.pid:<8} {yes:<12} {part.url}  log {part.log}")
    try:
        answer = httpx.get(f"{state.api_url}/health", timeout=HEALTH_TIMEOUT_S).status_code
        health = "answers" if answer == 200 else f"answers {answer}"
    except httpx.TransportError as exc:
        health = f"does not answer ({type(exc).__name__})"
    console.print(f"Prefect API {state.api_url} {health}; database {state.database_url}")
    console.print(f"workers: pool {state.pool!r}, type {state.worker_type}")
    if not all(running.values()) or health != "answers":
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Adds `shipyard stack up|down|status`."""
    app.add_typer(stack_app, name="stack")
