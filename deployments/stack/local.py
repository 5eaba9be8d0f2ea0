"""The whole local stack in one context manager: PostgreSQL, the Prefect server on it, workers.

Layout under `root` (the CLI's is $SHIPYARD_HOME/stack):

    root/postgres/        PostgreSQL's data directory (kept: a later stack re-uses it)
    root/postgres.log     its log
    root/prefect/         the server's PREFECT_HOME: server.log, migrate.log, workers/NAME.log
                          (and prefect.db with database="sqlite")
    root/redis/, redis.log  with messaging="redis": Redis's directory (nothing saved) and log
    root/services/        with messaging="redis": the background services' PREFECT_HOME and
                          services.log

`database="sqlite"` starts Prefect's embedded default instead (no PostgreSQL), for comparisons.
Everything is stopped by PID on exit, last started first: workers, services, server, Redis,
PostgreSQL.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from shipyard.deployments.stack.postgres import Postgres, start_postgres, stop_postgres
from shipyard.deployments.stack.prefect_server import (
    StackServer,
    StackServices,
    migrate,
    prefect_env,
    start_server,
    start_services,
    stop_server,
    stop_services,
)
from shipyard.deployments.stack.processes import StackError
from shipyard.deployments.stack.redis import Redis, prefect_redis_settings, start_redis, stop_redis
from shipyard.deployments.stack.warm import (
    ENV_SOCKET,
    WarmEngine,
    start_warm_engine,
    stop_warm_engine,
    warm_command,
)
from shipyard.deployments.stack.workers import start_workers, stop_workers

__all__ = ["DATABASES", "MESSAGING", "Stack", "local_stack", "start_stack"]

DATABASES = ("postgres", "sqlite")
# "memory": one `prefect server start` (API and background services in one process, events
# through its in-memory broker: Prefect's default). "redis": the API and the services in two
# processes with Redis between them, as Prefect's guide to scaling a self-hosted server does
# (deployments/stack/redis.py; PostgreSQL only).
MESSAGING = ("memory", "redis")
WORKER_IMAGE_TAG = "shipyard-worker:local"  # `--type docker`: the image the pool's runs use


@dataclass
class Stack:
    """What `local_stack` started. `db_url` carries the database password (None on SQLite):
    never log it. `timings`: seconds of each step (postgres, migrate, server, workers)."""

    api_url: str
    db_url: str | None
    server: StackServer
    postgres: Postgres | None
    worker_pids: list[int] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    warm_engine: WarmEngine | None = None
    redis: Redis | None = None
    services: StackServices | None = None

    def __repr__(self) -> str:  # the dataclass's own would print db_url, password and all
        return (
            f"Stack(api_url={self.api_url!r}, server={self.server!r}, postgres={self.postgres!r}, "
            f"worker_pids={self.worker_pids!r})"
        )


def start_stack(
    root: Path,
    stack: ExitStack,
    database: str = "postgres",
    workers: int = 0,
    pool: str = "shipyard-process",
    worker_type: str | None = "process",
    env: dict[str, str] | None = None,
    *,
    durable: bool = True,
    limit: int | None = None,
    server_port: int | None = None,
    postgres_port: int | None = None,
    ui: bool = False,
    warm: bool = True,
    messaging: str = "memory",
) -> Stack:
    """Start the stack; each part's stop goes onto `stack` as soon as it runs (so a failure half
    way stops what started). `local_stack` and `shipyard stack up` (which pops the stops off
    `stack` once it has written its state file) share it. `warm`: process workers' runs are
    forked from a warm engine (deployments/stack/warm_engine.py) instead of a fresh Python each.
    `messaging="redis"`: the server's API and its background services in two processes with
    Redis between them (MESSAGING)."""
    if database not in DATABASES:
        raise StackError(f"--database {database!r}: use one of {', '.join(DATABASES)}")
    if messaging not in MESSAGING:
        raise StackError(f"--messaging {messaging!r}: use one of {', '.join(MESSAGING)}")
    if messaging == "redis" and database != "postgres":
        raise StackError(
            "--messaging redis needs --database postgres: Prefect's API and services in two "
            "processes share one database, and SQLite is for one process"
        )
    timings: dict[str, float] = {}
    pg: Postgres | None = None
    db_url: str | None = None
    if database == "postgres":
        began = time.perf_counter()
        pg = start_postgres(root, postgres_port, durable=durable)
        stack.callback(stop_postgres, pg)
        timings["postgres_s"] = round(time.perf_counter() - began, 2)
        db_url = pg.url
        timings["migrate_s"] = migrate(db_url, root / "prefect")
    redis: Redis | None = None
    services: StackServices | None = None
    broker: dict[str, str] = {}
    if messaging == "redis" and db_url is not None:
        began = time.perf_counter()
        redis = start_redis(root)
        stack.callback(stop_redis, redis)
        timings["redis_s"] = round(time.perf_counter() - began, 2)
        broker = prefect_redis_settings(redis)
    server = start_server(
        db_url, root / "prefect", server_port, ui=ui, env=broker, services=redis is None
    )
    stack.callback(stop_server, server)
    timings["server_s"] = server.started_s
    if redis is not None and db_url is not None:
        began = time.perf_counter()
        services = start_services(db_url, root / "services", broker)
        stack.callback(stop_services, services)
        timings["services_s"] = round(time.perf_counter() - began, 2)
    if worker_type == "docker" and workers:
        began = time.perf_counter()
        _docker_pool(pool, server.api_url, env)
        timings["worker_image_s"] = round(time.perf_counter() - began, 2)
    worker_env = {**(env or {}), "PREFECT_API_URL": server.api_url}
    engine: WarmEngine | None = None
    if warm and workers and (worker_type or "process") == "process":
        began = time.perf_counter()
        engine = start_warm_engine(root / "prefect", prefect_env(root / "prefect") | worker_env)
        stack.callback(stop_warm_engine, engine)  # after the workers (LIFO): their runs first
        timings["warm_engine_s"] = round(time.perf_counter() - began, 2)
        worker_env[ENV_SOCKET] = str(engine.socket)
    began = time.perf_counter()
    pids = start_workers(
        pool,
        workers,
        home=root / "prefect",
        env=worker_env,
        worker_type=worker_type,
        limit=limit,
        command=warm_command() if engine is not None else None,
    )
    stack.callback(stop_workers, pids)
    if workers:
        timings["workers_s"] = round(time.perf_counter() - began, 2)
    return Stack(server.api_url, db_url, server, pg, pids, timings, engine, redis, services)


@contextmanager
def local_stack(
    root: Path,
    database: str = "postgres",
    workers: int = 0,
    pool: str = "shipyard-process",
    worker_type: str = "process",
    env: dict[str, str] | None = None,
    *,
    durable: bool = True,
    limit: int | None = None,
    warm: bool = True,
    messaging: str = "memory",
) -> Iterator[Stack]:
    """PostgreSQL (or, with database="sqlite", none), a Prefect server on it and `workers`
    workers of `worker_type` on `pool` (created if missing), all under `root`; all stopped by
    PID on exit. `env` goes to the workers (and so to the runs a process worker starts).
    `durable=False`: PostgreSQL without fsync (throw-away databases only, see start_postgres).
    `warm=False`: each process-worker run a fresh Python (Prefect's own way), for comparisons.
    `messaging="redis"`: API and background services apart, Redis between them (MESSAGING).
    The caller's own Prefect settings are untouched: talk to `Stack.api_url` explicitly
    (deployments/stack/api_switch.py `pointed_at`, a subprocess's env)."""
    with ExitStack() as stack:
        yield start_stack(
            root,
            stack,
            database,
            workers,
            pool,
            worker_type,
            env,
            durable=durable,
            limit=limit,
            warm=warm,
            messaging=messaging,
        )


def _docker_pool(pool: str, api_url: str, env: dict[str, str] | None) -> None:
    """A Docker pool runs each flow in Shipyard's worker image: build it on the workers' daemon
    (DOCKER_HOST; cached layers make a second `up` take seconds) and point the pool at it, with
    Prefect's zombie-run automation (deployments/stack/docker_pool.py)."""
    import os

    from shipyard.deployments.stack.api_switch import pointed_at
    from shipyard.deployments.stack.docker_pool import ensure_crash_detection, ensure_docker_pool
    from shipyard.deployments.stack.worker_image import build_worker_image

    docker_host = (env or {}).get("DOCKER_HOST") or os.environ.get(
        "DOCKER_HOST", "unix:///var/run/docker.sock"
    )
    image = build_worker_image(docker_host, WORKER_IMAGE_TAG)
    with pointed_at(api_url):
        ensure_docker_pool(pool, image)
        ensure_crash_detection()
