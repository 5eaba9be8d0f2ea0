"""Bench: a fleet on a distributed Prefect: releases/min, queue wait, one-at-a-time, webhook burst.

    .venv/bin/python bench/scale.py --json [--services 20] [--tags 3] [--deliveries 100]
        [--workers 3] [--database postgres|sqlite|both] [--cold]

What runs, for real, once per database (`both`, the default: PostgreSQL first, then Prefect's
embedded SQLite, same code): the local stack of deployments/stack (PostgreSQL 15 from Debian's
package and `prefect server start` on it, or the server on its embedded SQLite), --workers
`prefect worker start` process workers on one pool (poll every 2 s, their `--limit`s summing
to the pool's limit: a hard bound), their flow runs forked from the warm engine
(deployments/stack/warm_engine.py; `--cold`: a fresh Python per run, Prefect's way), the sandbox (registry +
Google API emulator, in-process revisions answering at once), one ReleaseTarget block and service
per --services, and the fleet of deployments/fleet.py: one `release-<target>` deployment per
target, each in its own work queue with concurrency limit 1, the pool's limit the global one
(`gpu_global_limit`: the region's GPU quota, staged to --gpu-quota). Each deployment's `image`
parameter is one prebuilt image (no build per release): a release is deploy + canary + cutover.

1. Releases: --tags tags of every service (v1.0.0 ...), all created at once with
   `run_deployment(..., timeout=0)` as a team's CI would, then waited for.
2. The webhook burst on the same stack: `shipyard webhook serve` (its own process, journal in the
   bench's directory), each service its repository (`acme/<service>` = its target), --deliveries
   signed tag pushes (v2.<n>.0, round robin over the repositories), 10 in flight
   (bench/webhook.py's `deliver`); the receiver labels each event with its target's deployment
   and that deployment's trigger starts the release. Waited for until every run ended.

Figures per database (JSON `postgres` / `sqlite`), the phase-1 ones at the top level of each:
- releases_per_min: completed releases x 60 / (last release's end - the moment they were created);
- p95_queue_wait_s: for each run, from the moment it was due and its slots were free (its
  service's: the end of that service's previous run; the pool's global one: the moment the slot
  it took was freed) to its Running (bench/scale_runs.py): the worker's poll, the process start
  and the flow's imports. p95_wait_incl_global_s also counts the wait for a global slot (with
  --gpu-quota below the services due at once, runs queue for the GPU quota, by design);
- max_concurrent_per_service: most runs of one service held at once, from the moment a worker
  took one (Pending) to its end (must be 1), the pairs in overlapping_runs; max_concurrent_all:
  all services (compare with global_limit);
- lost / twice: burst tags accepted by the receiver with no run / with more than one;
- webhook_p95_accept_ms: the receiver's answer time, p95 over the burst;
- median_due_to_pending_s / median_pending_to_running_s / median_running_to_end_s: where a
  run's seconds go (worker poll and global limit / process start and imports / the release);
  median_end_to_worker_done_s (release phase): from a run's final state to its worker's
  `executed-flow-run` event, when the worker's own limit frees (bench/scale_runs.py);
- sent_per_release (release phase): what one release sends the server, over the 5 completed
  runs that ended first: task runs, log lines, events, artifacts, the most frequent events;
- cpu: CPU seconds each part spent per release (run processes and workers, Prefect server,
  PostgreSQL, sandbox, receiver; bench/scale_cpu.py, from /proc: independent of other load) and
  cpu_bound_releases_per_min, the most this machine's cores could do at that cost;
- load average (os.getloadavg) at the start and the end, the wall seconds of each phase.
Goals (issue 25): releases_per_min >= 30, p95_queue_wait_s <= 5, max_concurrent_per_service 1,
lost 0, twice 0, webhook_p95_accept_ms <= 500. `within_goals` says whether they were met.

Exits 1 when what it measures did not happen: a run that did not complete (never ran, failed,
rolled back, crashed, or still going at --timeout), a tag lost or run twice, more than one run of
a service at once, a stack that did not start (`problems`). Exits 2 when everything happened but
a goal was missed (`within_goals: false`, the goals in `missed`).

Process workers, not the Docker pool (tests/fleet proves the Docker pool): a run here is a
process on this machine, its start and imports are what a container would add too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from bench.scale_burst import burst_phase
from bench.scale_cpu import CpuMeter
from bench.scale_goals import GOALS, missed_goals, problems
from bench.scale_runs import (
    end_to_worker_done,
    phase_figures,
    run_times,
    traffic_per_release,
    wait_until_ended,
)

__all__ = ["GOALS", "FleetSize", "fleet_round", "main", "missed_goals", "problems"]

NOTES = [
    "process workers (`prefect worker start --type process`), not the Docker pool: "
    "tests/fleet proves the Docker pool; here each run is a process on this machine",
    "in-process revisions (the emulator's page service, answering at once); one prebuilt image "
    "per release (the deployment's `image` parameter): no build",
]


@dataclass
class FleetSize:
    services: int = 20
    tags: int = 3
    deliveries: int = 100
    workers: int = 3
    gpu_quota: int = 10
    parallel: int = 10  # deliveries in flight
    timeout: float = 3600.0  # for each phase's runs to end
    stall: float = 180.0  # a phase stops waiting when nothing moved this long
    prefix: str = "scale"
    warm: bool = True  # runs forked from the warm engine (deployments/stack/warm_engine.py)
    # On PostgreSQL: "redis" splits the server (deployments/stack/redis.py).
    messaging: str = "memory"
    poll_s: float = 2.0  # the workers' PREFECT_WORKER_QUERY_SECONDS (the stack's default)


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def target_names(size: FleetSize) -> list[str]:
    return [f"{size.prefix}-s{i:02d}" for i in range(size.services)]


def save_targets(cloud: Any, names: list[str], gpu_quota: int) -> None:
    """Stage the sandbox (GPU quota `gpu_quota` per region, pages answered at once) and save one
    ReleaseTarget block per name, each its own service in europe-west1."""
    from shipyard.deployments.demo.run import sandbox_target, stage

    stage(
        cloud,
        "healthy",
        serving={"gpu_ms": 0, "cpu_ms": 0},
        default_region={"gpu": gpu_quota, "gpu_no_zonal_redundancy": gpu_quota},
    )
    canary = sandbox_target(token_block=cloud.token_block).canary.model_copy(
        update={"min_speedup": None}  # zero latency: GPU and CPU answer alike
    )
    for name in names:
        sandbox_target(
            service=name, regions=["europe-west1"], token_block=cloud.token_block, canary=canary
        ).save(name, overwrite=True)


async def fleet_deployments(client: Any, names: list[str], pool: str, image: str) -> dict[Any, str]:
    """deploy_fleet for the targets (the pool's limit from their GPU quota) with the prebuilt
    image as each deployment's default `image`; returns deployment id -> service."""
    from prefect.client.schemas.actions import DeploymentUpdate

    from shipyard.deployments.fleet import adeploy_fleet, agpu_global_limit

    limit = await agpu_global_limit(names)
    full_names = await adeploy_fleet(names, pool, global_limit=limit)
    service_of: dict[Any, str] = {}
    for name, full in zip(names, full_names, strict=True):
        found = await client.read_deployment_by_name(full)
        parameters = {**(found.parameters or {}), "image": image}
        await client.update_deployment(found.id, DeploymentUpdate(parameters=parameters))
        service_of[found.id] = name
    return service_of


async def release_phase(
    client: Any,
    service_of: dict[Any, str],
    size: FleetSize,
    image_repo: str,
    parts: dict[str, list[int]],
    global_limit: int | None = None,
) -> dict[str, Any]:
    """Every service's tags created at once through its deployment; waited for; figures."""
    import httpx
    from prefect.deployments import run_deployment

    from shipyard.deployments.fleet import release_deployment_name

    tags = [f"v1.0.{k}" for k in range(size.tags)]
    limit = asyncio.Semaphore(10)

    refused: list[str] = []

    async def create(service: str, tag: str) -> None:
        async with limit:
            try:
                await run_deployment(  # type: ignore[misc]  # typed sync-or-async; async here
                    f"release/{release_deployment_name(service)}",
                    client=client,
                    parameters={"git_tag": tag, "image": f"{image_repo}:{tag}"},
                    timeout=0,
                    as_subflow=False,
                )
            except httpx.HTTPError as exc:  # e.g. SQLite's 503 after the client's retries
                refused.append(f"{service} {tag}: {exc}"[:300])

    meter = CpuMeter(parts)
    meter.start()
    started = time.time()
    # Tag by tag: each service's v1.0.0 before its v1.0.1, as pushes come.
    for tag in tags:
        await asyncio.gather(*(create(s, tag) for s in service_of.values()))
    created_s = time.time() - started
    expect = len(tags) * len(service_of)
    runs = await wait_until_ended(
        client,
        list(service_of),
        set(tags),
        expect=expect - len(refused),  # a refused run never comes: do not wait for it
        timeout=size.timeout,
        stall=size.stall,
        label="releases",
    )
    times = await run_times(client, runs, service_of)
    figures = phase_figures(times, expect, started, global_limit)
    figures["cpu"] = meter.stop(figures["completed"], figures["wall_s"])
    figures["median_end_to_worker_done_s"] = await end_to_worker_done(client, runs)
    figures["sent_per_release"] = await traffic_per_release(client, runs)
    figures["create_s"] = round(created_s, 2)
    # Runs the server refused to create (counted in not_completed): the first reasons.
    figures["create_refused"] = len(refused)
    figures["create_refused_first"] = refused[:3]
    return figures


async def fleet_round(
    cloud: Any,
    api_url: str,
    size: FleetSize,
    workdir: Path,
    pool: str,
    parts: dict[str, list[int]] | None = None,
) -> dict[str, Any]:
    """The bench's whole code path on a Prefect API (the current settings) and a sandbox (the
    env pointing at it): targets, the fleet, --workers process workers (stopped by PID at the
    end, their logs under `workdir`), the release phase, the burst. `parts`: more processes whose
    CPU is counted (name -> root PIDs: the Prefect server, PostgreSQL). Used by main() per
    database and by the smoke test."""
    from prefect.client.orchestration import get_client

    from shipyard.deployments.demo.run import DEMO_IMAGE
    from shipyard.deployments.stack.prefect_server import prefect_env
    from shipyard.deployments.stack.warm import (
        ENV_SOCKET,
        start_warm_engine,
        stop_warm_engine,
        warm_command,
    )
    from shipyard.deployments.stack.workers import (
        ensure_pool,
        start_workers,
        stop_workers,
        worker_limits,
    )

    names = target_names(size)
    # Blocks saved and workers started off the event loop (sync APIs that detect a running loop).
    began = time.perf_counter()
    await asyncio.to_thread(save_targets, cloud, names, size.gpu_quota)
    saved_s = round(time.perf_counter() - began, 1)
    env = {**cloud.info.env(), "PREFECT_API_URL": api_url}
    engine = None
    if size.warm:  # started with the workers' environment, as `shipyard stack up` does
        began = time.perf_counter()
        engine = await asyncio.to_thread(start_warm_engine, workdir, prefect_env(workdir) | env)
        warm_s = round(time.perf_counter() - began, 1)
        env[ENV_SOCKET] = str(engine.socket)
    command = warm_command() if engine is not None else None
    # The pool (its command), then the fleet on it: its limit sizes the workers' own limits.
    await asyncio.to_thread(ensure_pool, api_url, pool, "process", command)
    async with get_client() as client:
        service_of = await fleet_deployments(client, names, pool, f"{DEMO_IMAGE}:prebuilt")
        pool_limit = (await client.read_work_pool(pool)).concurrency_limit
    # Two workers polling at once can each take the pool's last slot (its limit is not atomic
    # across workers); per-worker --limits that sum to it make the limit a hard bound.
    per_worker = worker_limits(pool_limit, size.workers) if pool_limit else None
    began = time.perf_counter()
    # Returns once every worker announced itself to the server.
    pids = await asyncio.to_thread(
        partial(
            start_workers,
            pool,
            size.workers,
            home=workdir,
            env=env,
            worker_type="process",
            command=command,
            limit=per_worker,
            query_seconds=size.poll_s,
        )
    )
    online_s = round(time.perf_counter() - began, 1)
    roots = {
        # A warm run is the engine's child, not its worker's: both trees count.
        "workers_and_runs": pids + ([engine.pid] if engine is not None else []),
        "sandbox": list(cloud.info.pids.values()),
        **(parts or {}),
    }
    try:
        async with get_client() as client:
            releases = await release_phase(client, service_of, size, DEMO_IMAGE, roots, pool_limit)
            burst = (
                await burst_phase(client, service_of, size, api_url, workdir, roots, pool_limit)
                if size.deliveries
                else None
            )
    finally:
        await asyncio.to_thread(stop_workers, pids)
        if engine is not None:
            await asyncio.to_thread(stop_warm_engine, engine)
    figures: dict[str, Any] = dict(releases)
    figures["warm_engine"] = {"start_s": warm_s} if engine is not None else None
    figures["global_limit"] = pool_limit
    figures["per_worker_limit"] = per_worker
    figures["workers_online_s"] = online_s
    figures["targets_saved_s"] = saved_s
    for key in ("lost", "twice", "webhook_p95_accept_ms"):
        figures[key] = burst[key] if burst else None
    figures["burst"] = burst
    return figures


def measure(database: str, size: FleetSize, root: Path) -> dict[str, Any]:
    """One database: the local stack, a fresh sandbox, fleet_round; the stack's start timed."""
    from shipyard.deployments.demo.run import local_cloud
    from shipyard.deployments.stack.api_switch import pointed_at
    from shipyard.deployments.stack.local import local_stack

    here = root / database
    here.mkdir(parents=True, exist_ok=True)
    load_start = _load()
    started = time.perf_counter()
    pool = f"{size.prefix}-{database}"
    messaging = size.messaging if database == "postgres" else "memory"
    with local_stack(
        here / "stack",
        database=database,
        workers=0,
        pool=pool,
        messaging=messaging,
    ) as stack:
        stack_s = time.perf_counter() - started
        with pointed_at(stack.api_url), local_cloud() as cloud:
            parts = {"prefect_server": [stack.server.pid]}
            if stack.services is not None:
                parts["prefect_services"] = [stack.services.pid]
            if stack.redis is not None:
                parts["redis"] = [stack.redis.pid]
            if stack.postgres is not None:
                parts["postgres"] = [stack.postgres.pid]
            figures = asyncio.run(fleet_round(cloud, stack.api_url, size, here, pool, parts))
    figures["messaging"] = messaging
    figures["stack_start_s"] = round(stack_s, 1)
    figures["wall_s_total"] = round(time.perf_counter() - started, 1)
    figures["load_avg_start"] = load_start
    figures["load_avg_end"] = _load()
    return figures


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n", 2)[-1] if doc else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--services", type=int, default=20, help="services (targets) in the fleet")
    parser.add_argument("--tags", type=int, default=3, help="tags released per service")
    parser.add_argument("--deliveries", type=int, default=100, help="webhook burst (0: none)")
    parser.add_argument("--workers", type=int, default=3, help="process workers on the pool")
    parser.add_argument(
        "--database",
        choices=["postgres", "sqlite", "both"],
        default="both",
        help="the Prefect server's database (both: PostgreSQL, then the embedded SQLite)",
    )
    parser.add_argument(
        "--gpu-quota",
        type=int,
        default=10,
        help="the sandbox region's L4 quota: the pool's global limit (gpu_global_limit)",
    )
    parser.add_argument("--timeout", type=float, default=3600, help="per phase, for runs to end")
    parser.add_argument("--keep", action="store_true", help="keep the bench's directory")
    parser.add_argument(
        "--cold",
        action="store_true",
        help="each run a fresh `python -m prefect.engine` (Prefect's own way) instead of a fork "
        "of the warm engine: for comparison",
    )
    parser.add_argument(
        "--messaging",
        choices=["memory", "redis"],
        default="memory",
        help="on PostgreSQL: one `prefect server start` (memory, Prefect's default) or its API "
        "and background services in two processes with Redis between them (redis)",
    )
    parser.add_argument(
        "--poll",
        type=float,
        default=2.0,
        help="seconds between a worker's polls (PREFECT_WORKER_QUERY_SECONDS; the stack's 2)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import logging
    import shutil

    from bench.figures import print_figures

    logging.getLogger("prefect").setLevel(logging.ERROR)
    size = FleetSize(
        services=args.services,
        tags=args.tags,
        deliveries=args.deliveries,
        workers=args.workers,
        gpu_quota=args.gpu_quota,
        timeout=args.timeout,
        warm=not args.cold,
        messaging=args.messaging,
        poll_s=args.poll,
    )
    root = Path(tempfile.mkdtemp(prefix="shipyard-bench-scale-"))
    databases = ["postgres", "sqlite"] if args.database == "both" else [args.database]
    started = time.perf_counter()
    out: dict[str, Any] = {
        "size": {
            "services": size.services,
            "tags": size.tags,
            "releases": size.services * size.tags,
            "deliveries": size.deliveries,
            "workers": size.workers,
            "gpu_quota": size.gpu_quota,
            "poll_s": size.poll_s,
            "runs": "forked from the warm engine" if size.warm else "fresh Python (--cold)",
        },
        "load_avg_start": _load(),
        "cpus": os.cpu_count(),
    }
    all_problems: list[str] = []
    for database in databases:
        try:
            figures = measure(database, size, root)
        except Exception as exc:  # noqa: BLE001 - a stack that did not start is the bench's answer
            figures = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        figures["problems"] = problems(figures, size)
        figures["missed"] = [] if figures.get("error") else missed_goals(figures)
        figures["within_goals"] = not figures["problems"] and not figures["missed"]
        all_problems += [f"{database}: {x}" for x in figures["problems"]]
        out[database] = figures
        # Each database's figures as soon as they exist: a long run stopped later keeps them.
        print(f"{database}: {json.dumps(figures)}", file=sys.stderr, flush=True)
    out["load_avg_end"] = _load()
    out["wall_s"] = round(time.perf_counter() - started, 1)
    out["goals"] = GOALS
    out["notes"] = NOTES
    out["problems"] = all_problems
    out["within_goals"] = all(out[d]["within_goals"] for d in databases)
    if args.keep or all_problems:
        out["logs"] = str(root)
    else:
        shutil.rmtree(root, ignore_errors=True)
    print_figures(out, args.json)
    if all_problems:
        return 1  # runs that did not run: the figures mean nothing
    return 0 if out["within_goals"] else 2


if __name__ == "__main__":
    raise SystemExit(main())
