"""`prefect worker start` processes on one work pool, started and stopped by PID.

Each worker is its own process (`prefect worker start --pool P --name NAME [--type T]
[--limit N]`) with its log in `home/workers/NAME.log`. It polls every `query_seconds`
(PREFECT_WORKER_QUERY_SECONDS; Prefect's default is 10 s, ours 2 s: a run whose queue slot has
just freed is taken within about that) and looks only a little ahead
(PREFECT_WORKER_PREFETCH_SECONDS, 2 s by default here: a worker that takes a run scheduled far
ahead holds it, and a slot, early).

The pool is created through the client when it is missing, with the worker type's default base
job template (process or docker, from the installed worker class); an existing pool is left as
it is (the Docker pool's own template is deployments/stack/docker_pool.py's). The workers never
create a pool themselves (`--no-create-pool-if-not-found`: three workers starting at once would
race to) and never install packages (`--install-policy never`).

`start_workers` returns once every worker has announced itself to the server (its first
heartbeat lists it under the pool): a run created afterwards is picked up by the next poll.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import os
import signal
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from shipyard.deployments.demo.prefect_server import prefect_command
from shipyard.deployments.stack.prefect_server import prefect_env
from shipyard.deployments.stack.processes import StackError, spawn, stop_pids, wait_until
from shipyard.tasks.waiting import NotYet

__all__ = [
    "ensure_pool",
    "start_workers",
    "stop_workers",
    "worker_limits",
    "worker_log",
    "worker_names",
]

WORKER_TYPES = ("process", "docker")
PREFETCH_SECONDS = 2.0
START_TIMEOUT_S = 90.0
STOP_GRACE_S = 10.0
API_TIMEOUT_S = 10.0


def _api_url(env: dict[str, str] | None) -> str:
    """The Prefect API the workers talk to: `env`'s PREFECT_API_URL, else the configured one."""
    from prefect.settings import get_current_settings

    url = (env or {}).get("PREFECT_API_URL") or get_current_settings().api.url
    if not url:
        raise StackError(
            "no Prefect API for the workers: pass PREFECT_API_URL in env (the stack's server) "
            "or set it"
        )
    return str(url)


def ensure_pool(
    api_url: str, pool: str, worker_type: str | None, command: str | None = None
) -> str:
    """The pool's type; the pool is created (type `worker_type`, default process, with that
    worker's default base job template) when it is missing. `command`: a process pool's default
    flow-run command (the warm engine's client, deployments/stack/warm.py), set on the pool
    whether it is new or not."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.base import BaseWorker

    with SyncPrefectClient(api_url, httpx_settings={"timeout": API_TIMEOUT_S}) as client:
        try:
            existing = str(client.read_work_pool(pool).type)
        except ObjectNotFound:
            existing = ""
        if existing and worker_type and existing != worker_type:
            raise StackError(
                f"--pool {pool!r} is a {existing} work pool, not {worker_type}: pass --type "
                f"{existing}, or another --pool (created as {worker_type})"
            )
        if existing:
            if command and existing == "process":
                current = client.read_work_pool(pool).base_job_template
                if _with_command(current, command) != current:
                    client.update_work_pool(
                        pool, WorkPoolUpdate(base_job_template=_with_command(current, command))
                    )
            return existing
        kind = worker_type or "process"
        worker_class = BaseWorker.get_worker_class_from_type(kind)
        if worker_class is None:
            raise StackError(
                f"--type {kind!r}: no such worker type installed here: use one of "
                f"{', '.join(WORKER_TYPES)}"
            )
        template = worker_class.get_default_base_job_template()
        if command and kind == "process":
            template = _with_command(template, command)
        try:
            client.create_work_pool(
                WorkPoolCreate(name=pool, type=kind, base_job_template=template)
            )
        except ObjectAlreadyExists:  # created meanwhile by someone else: theirs stands
            return str(client.read_work_pool(pool).type)
        return kind


def _with_command(template: dict[str, Any], command: str) -> dict[str, Any]:
    """A process pool's base job template whose `command` variable defaults to `command`."""
    out = copy.deepcopy(template)
    props = out.setdefault("variables", {}).setdefault("properties", {})
    props.setdefault("command", {"type": "string", "title": "Command"})["default"] = command
    return out


def worker_limits(total: int, workers: int) -> list[int]:
    """Per-worker `--limit`s that sum to `total` (as even as possible, each at least 1): with
    them a pool's concurrency limit of `total` is a hard bound. The pool's own limit is not
    atomic across workers: two polling at the same instant can each take its last slot."""
    if workers < 1:
        return []
    base, extra = divmod(max(total, workers), workers)
    return [base + 1 if i < extra else base for i in range(workers)]


def worker_names(pool: str, count: int) -> list[str]:
    """Names unique on the server (two stacks' workers on one pool never share a name)."""
    tag = uuid.uuid4().hex[:6]
    return [f"{pool}-{tag}-{i}" for i in range(1, count + 1)]


def start_workers(
    pool: str,
    count: int,
    *,
    home: Path,
    env: dict[str, str] | None = None,
    worker_type: str | None = None,
    limit: int | list[int] | None = None,
    query_seconds: float = 2.0,
    prefetch_seconds: float = PREFETCH_SECONDS,
    timeout: float = START_TIMEOUT_S,
    command: str | None = None,
) -> list[int]:
    """Start `count` workers polling `pool` (created if missing, see `ensure_pool`) on the
    Prefect API in `env["PREFECT_API_URL"]` (else the configured one); returns their PIDs once
    all of them are known to the server (at most `timeout` s).

    `env`: more environment for the workers and the flow runs they start (a process worker's
    runs inherit it: SHIPYARD_* settings, PREFECT_LOGGING_*). `limit`: at most that many runs at
    once per worker (`--limit`); a list gives each worker its own (`worker_limits`). `command`:
    the process pool's flow-run command (see `ensure_pool`). Raises StackError with the log's
    tail when a worker exits or does not show up in time (the workers started are stopped
    first).
    """
    if count < 0:
        raise StackError(f"--workers {count}: a count of workers is 0 or more")
    limits = limit if isinstance(limit, list) else [limit] * count
    if len(limits) != count:
        raise StackError(f"limit: {len(limits)} limits for {count} workers: give one per worker")
    for one in limits:
        if one is not None and one < 1:
            raise StackError(f"--limit {one}: at least 1 run per worker (or no limit)")
    if count == 0:
        return []
    url = _api_url(env)
    ensure_pool(url, pool, worker_type, command)
    logs = home / "workers"
    settings = {
        "PREFECT_API_URL": url,
        "PREFECT_WORKER_QUERY_SECONDS": f"{query_seconds:g}",
        "PREFECT_WORKER_PREFETCH_SECONDS": f"{prefetch_seconds:g}",
    }
    base = prefect_env(home, **settings) | (env or {}) | {"PREFECT_API_URL": url}
    base.pop("PREFECT_SERVER_DATABASE_CONNECTION_URL", None)  # a worker needs no database
    names = worker_names(pool, count)
    procs = []
    try:
        for name, one in zip(names, limits, strict=True):
            args = [prefect_command(), "worker", "start", "--pool", pool, "--name", name]
            args += ["--install-policy", "never", "--no-create-pool-if-not-found"]
            if worker_type:
                args += ["--type", worker_type]
            if one is not None:
                args += ["--limit", str(one)]
            procs.append(spawn(args, logs / f"{name}.log", base))
        for proc, name in zip(procs, names, strict=True):
            wait_until(
                partial(_registered, url, pool, name),
                what=f"worker {name} on pool {pool!r} (log {logs / f'{name}.log'})",
                timeout=timeout,
                proc=proc,
                log=logs / f"{name}.log",
            )
    except BaseException:
        stop_workers([p.pid for p in procs])
        raise
    return [p.pid for p in procs]


def _registered(api_url: str, pool: str, name: str) -> bool:
    from prefect.client.orchestration import SyncPrefectClient

    try:
        with SyncPrefectClient(api_url, httpx_settings={"timeout": API_TIMEOUT_S}) as client:
            known = {w.name for w in client.read_workers_for_work_pool(pool)}
    except httpx.TransportError as exc:  # a busy server: ask again until the deadline
        raise NotYet(f"the Prefect API did not answer ({type(exc).__name__})") from None
    if name not in known:
        raise NotYet(f"{name} has not sent its first heartbeat")
    return True


def worker_log(pid: int, home: Path) -> Path | None:
    """The log of the worker with this PID (its `--name`, read from /proc/PID/cmdline)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    for flag, value in itertools.pairwise(args):
        if flag == b"--name":
            return home / "workers" / f"{value.decode()}.log"
    return None


def stop_workers(
    pids: list[int], grace: float = STOP_GRACE_S, started: list[int | None] | None = None
) -> None:
    """Stop the workers by PID: SIGTERM (a worker stops polling and exits), SIGKILL after
    `grace`. With `started` (each one's start time), a PID re-used by another process is left
    alone. Their flow runs' own processes are in the worker's process group: stopped with it."""
    times = started if started is not None else [None] * len(pids)
    ran = stop_pids(list(zip(pids, times, strict=True)), signals=((signal.SIGTERM, grace),))
    for pid in ran:
        _stop_group(pid)


def _stop_group(pid: int) -> None:
    """What the worker left in its own session (it is its group's leader: `spawn` starts a new
    session): a process worker's flow-run subprocesses."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
