"""The Docker work pool on PostgreSQL that tests/fleet/conftest.py's `docker_pool_fleet` starts.

One per session (xdist worker), built on first use by the tests that ask for it
(tests/fleet/test_docker_pool_fleet.py, test_docker_pool_promotion.py), and the helpers both
use to deploy targets on the pool, create their runs and wait for them (at the end):

- a Docker daemon of its own for the flow-run containers (sandbox/engine/daemon.py: the session's
  sandbox runs its revisions in-process, so this daemon runs nothing but flow runs), its data
  root kept at $SHIPYARD_WORKER_ENGINE_CACHE (~/.cache/shipyard/worker-engine) between sessions
  so that the image's dependency layers are built once per machine, not once per session;
- Shipyard's worker image built on it (deployments/stack/worker_image.py) from the Debian minbase
  stand-in without Python (sandbox/engine/rootfs.py, pushed to the session sandbox's registry by
  sandbox/seed.py), built twice from one context: the second build is all CACHED;
- on the session's PostgreSQL and Prefect server (tests/fleet/stack_kit.py), the Docker pool (deployments/stack/docker_pool.py: the image, host network, the
  sandbox's endpoints in the containers' environment), Prefect's zombie-run automation, and two
  `prefect worker start --type docker` workers (deployments/stack/workers.py).

The test session's own Prefect (tests/conftest.py's harness, SQLite) stays the process default:
talk to this stack inside `fleet.api()` (temporary settings). The sandbox is the session's.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from run_states import StateTimeline
from stack_kit import save_canary_token

os.environ.setdefault("SHIPYARD_ROOTFS_CACHE", str(Path.home() / ".cache" / "shipyard" / "rootfs"))

FLEET_POOL = "shipyard-docker"
WORKER_IMAGE = "shipyard-worker:fleet-test"
# A dead run is marked Crashed when its heartbeats (every 30 s, Prefect's least) stop this long:
# shorter than the production default (90 s) to keep the kill test short; every release of
# these tests ends well within one heartbeat, so no live run can be taken for dead.
CRASH_WINDOW_S = 45.0
# The flow-run daemon's data root, kept between sessions (see _engine_root).
ENGINE_CACHE_ENV = "SHIPYARD_WORKER_ENGINE_CACHE"
DEFAULT_ENGINE_CACHE = Path.home() / ".cache" / "shipyard" / "worker-engine"


@dataclass
class DockerPoolFleet:
    """What `docker_pool_fleet` started (the database URL, which holds its password, stays inside
    the stack)."""

    api_url: str
    pool: str
    engine_host: str
    engine_pid: int
    image: str
    base: str
    image_cold: Any  # worker_image.WorkerImage of the first build
    image_cached: Any  # the same build again: every step CACHED
    home: Path
    worker_pids: list[int] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def api(self) -> AbstractContextManager[Any]:
        """Prefect settings pointing this process at the stack's server."""
        from api_switch_kit import pointed_at

        return pointed_at(self.api_url)

    def docker(self, *args: str, timeout: float = 60) -> Any:
        return fleet_docker(self.engine_host, *args, timeout=timeout)

    def start_workers(self, count: int) -> list[int]:
        """More docker workers on the pool (e.g. to replace one a test killed)."""
        from shipyard.deployments.stack.workers import start_workers

        pids = start_workers(
            self.pool,
            count,
            home=self.home,
            env={"PREFECT_API_URL": self.api_url, "DOCKER_HOST": self.engine_host},
            worker_type="docker",
        )
        self.worker_pids += pids
        return pids

    def worker_of(self, flow_run_id: str) -> int | None:
        """The PID of the worker that submitted the flow run (from its log)."""
        from shipyard.deployments.stack.workers import worker_log

        for pid in self.worker_pids:
            log = worker_log(pid, self.home)
            if log is not None and log.exists() and flow_run_id in log.read_text(errors="replace"):
                return pid
        return None

    def logs(self, chars: int = 3000) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}"
            for p in sorted((self.home / "workers").glob("*.log"))
        )


def _engine_root(stack: ExitStack, root: Path) -> Path:
    """The daemon's root: the stable cache directory (so a session's image build finds the
    layers and build cache of the previous one, as the root filesystem's cache does) when no
    other session uses it (a lock held until the session ends), else one under `root`."""
    import fcntl

    cache = Path(os.environ.get(ENGINE_CACHE_ENV) or DEFAULT_ENGINE_CACHE)
    cache.mkdir(parents=True, exist_ok=True)
    lock = open(cache / ".lock", "w")  # noqa: SIM115 - held until the session's ExitStack ends
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return root / "engine"
    stack.callback(lock.close)
    return cache


def fleet_docker(host: str, *args: str, timeout: float = 60) -> Any:
    from sandbox.engine.daemon import Engine, docker

    return docker(Engine(host), *args, timeout=timeout)


def _seed_base(registry_url: str) -> str:
    """The Debian minbase stand-in (no Python), by digest, in the session sandbox's registry."""
    from sandbox.engine.rootfs import ensure_rootfs
    from sandbox.seed import seed_cuda_image

    seeded = seed_cuda_image(
        registry_url, "fleet/debian-minbase", "bookworm", rootfs=ensure_rootfs()
    )
    return f"{seeded.repository}@{seeded.digest}"


def start_docker_pool_fleet(
    stack: ExitStack,
    root: Path,
    prefect_api: Callable[[], str],
    sandbox: Any,
    internal_token: str,
) -> DockerPoolFleet:
    """Start the daemon, the image, the pool and its workers (module docstring) under `root`, on
    the Prefect server whose API URL `prefect_api()` gives once it is up (tests/fleet/stack_kit.py's
    session stack: started in a thread meanwhile the image builds); each stop goes onto `stack`
    as soon as its part runs."""

    from sandbox.engine.daemon import (
        release_mounts,
        remove_containers,
        start_engine,
        unavailable_reason,
    )
    from sandbox.procs import stop_pid
    from shipyard.deployments.stack.docker_pool import ensure_crash_detection, ensure_docker_pool
    from shipyard.deployments.stack.worker_image import build_context, build_worker_image_details
    from shipyard.deployments.stack.workers import stop_workers

    reason = unavailable_reason()
    assert reason is None, f"no Docker daemon for the flow-run containers: {reason}"
    timings: dict[str, float] = {}
    began = time.perf_counter()
    pool = ThreadPoolExecutor(1, thread_name_prefix="fleet-stack")
    stack.callback(pool.shutdown)
    api_url = pool.submit(prefect_api)
    engine_root = _engine_root(stack, root)
    release_mounts(engine_root)  # what a daemon killed in an earlier session left mounted
    engine = start_engine(engine_root)

    def stop_engine() -> None:
        remove_containers(engine)
        # Dangling images of earlier builds go; the tagged image and the build cache stay.
        fleet_docker(engine.host, "image", "prune", "--force", timeout=120)
        stop_pid(engine.pid, timeout=30.0)
        release_mounts(engine_root)

    stack.callback(stop_engine)
    timings["engine_s"] = round(time.perf_counter() - began, 1)
    began = time.perf_counter()
    base = _seed_base(sandbox.registry_url)
    timings["base_s"] = round(time.perf_counter() - began, 1)
    # One context for both builds: the checkout is shared with people editing it, and a wheel
    # of other code would (rightly) not be CACHED.
    context = build_context(root / "image")
    cold = build_worker_image_details(engine.host, WORKER_IMAGE, base=base, context=context)
    cached = build_worker_image_details(engine.host, WORKER_IMAGE, base=base, context=context)
    timings["image_cold_s"], timings["image_cached_s"] = cold.seconds, cached.seconds
    waited = time.perf_counter()
    prefect_api_url = api_url.result(timeout=600)
    timings["stack_waited_s"] = round(time.perf_counter() - waited, 1)  # after the image builds

    fleet = DockerPoolFleet(
        api_url=prefect_api_url,
        pool=FLEET_POOL,
        engine_host=engine.host,
        engine_pid=engine.pid,
        image=WORKER_IMAGE,
        base=base,
        image_cold=cold,
        image_cached=cached,
        home=root / "workers",
        timings=timings,
    )
    with fleet.api():
        ensure_docker_pool(FLEET_POOL, WORKER_IMAGE, env=sandbox.env())
        ensure_crash_detection(within_s=CRASH_WINDOW_S)
        save_canary_token(internal_token)
    began = time.perf_counter()
    fleet.start_workers(2)
    stack.callback(lambda: stop_workers(list(fleet.worker_pids)))
    timings["workers_s"] = round(time.perf_counter() - began, 1)
    print(f"docker_pool_fleet set-up: {timings}", file=sys.stderr)
    return fleet


def kill_worker_and_container(fleet: DockerPoolFleet, worker_pid: int, container_id: str) -> None:
    """SIGKILL the worker process and `docker kill` its flow run's container: a lost machine."""
    os.kill(worker_pid, signal.SIGKILL)
    killed = fleet.docker("kill", container_id, timeout=30)
    assert killed.returncode == 0, killed.stderr


CONTAINER_ID = re.compile(r"([0-9a-f]{64})$")


# ---------------------------------------------------------------- runs on the pool
# Shared by test_docker_pool_fleet.py and test_docker_pool_promotion.py.

# The page service the fleet tests release by tag (`image=` parameter: no build).
IMAGE = "registry.sandbox.local/pages/page-service"
FLOW_RUN_LABEL = (
    "io.prefect.flow-run-id"  # prefect-docker's container label (prefect.io/… made Docker-style)
)


@dataclass
class Run(StateTimeline):
    id: str
    target: str
    tag: str
    states: list[Any]  # Prefect states, oldest first
    infrastructure_pid: str | None


def save_targets(fleet: DockerPoolFleet, make_target, services: list[str]) -> list[str]:
    blocks = []
    with fleet.api():
        for service in services:
            block = f"{service}-{uuid.uuid4().hex[:4]}"
            make_target(service=service).save(block)
            blocks.append(block)
    return blocks


def deploy(fleet: DockerPoolFleet, targets: list[str]) -> dict[str, str]:
    """target -> deployment id of its `release-<target>` deployment on the Docker pool."""
    from prefect.client.orchestration import get_client

    from shipyard.deployments.fleet import adeploy_fleet

    async def go() -> dict[str, str]:
        names = await adeploy_fleet(targets, fleet.pool, global_limit=2)
        async with get_client() as client:
            return {
                t: str((await client.read_deployment_by_name(n)).id)
                for t, n in zip(targets, names, strict=True)
            }

    with fleet.api():
        return asyncio.run(go())


def create_runs(
    fleet: DockerPoolFleet, wanted: list[tuple[str, str, str]], image: str = IMAGE
) -> dict[str, tuple]:
    """(target, deployment id, tag) -> flow runs created from the deployments, in that order,
    each releasing `image:tag`."""
    from prefect.client.orchestration import get_client

    async def go() -> dict[str, tuple]:
        out = {}
        async with get_client() as client:
            for target, deployment_id, tag in wanted:
                run = await client.create_flow_run_from_deployment(
                    deployment_id, parameters={"git_tag": tag, "image": f"{image}:{tag}"}
                )
                out[str(run.id)] = (target, tag)
        return out

    with fleet.api():
        return asyncio.run(go())


def wait_runs(
    fleet: DockerPoolFleet, run_ids: dict[str, tuple], until: str = "final", timeout: float = 600
) -> list[Run]:
    """The runs once each is final (or of type `until`), with their state histories."""
    from prefect.client.orchestration import get_client

    from shipyard.tasks.waiting import Deadline, NotYet, await_for

    async def go() -> list[Run]:
        async with get_client() as client:

            async def reached():
                runs = [await client.read_flow_run(i) for i in run_ids]
                if until == "final":
                    waiting = [r.name for r in runs if not r.state or not r.state.is_final()]
                else:
                    waiting = [r.name for r in runs if not r.state or r.state.type.value != until]
                if waiting:
                    raise NotYet(waiting)
                return runs

            runs = await await_for(
                reached,
                what=f"the runs to be {until}",
                first_delay_s=0.2,
                max_delay_s=1.0,
                deadline=Deadline(timeout),
                heartbeat_s=None,
            )
            out = []
            for run in runs:
                states = sorted(
                    await client.read_flow_run_states(run.id), key=lambda s: s.timestamp
                )
                target, tag = run_ids[str(run.id)]
                out.append(Run(str(run.id), target, tag, states, run.infrastructure_pid))
            return out

    with fleet.api():
        return asyncio.run(go())


def containers_started(fleet: DockerPoolFleet, since: float) -> dict[str, str]:
    """flow run id -> image of each container the daemon started since `since` (its events)."""
    out = fleet.docker(
        "events",
        "--since",
        f"{since:.0f}",
        "--until",
        f"{time.time():.0f}",
        "--filter",
        "type=container",
        "--filter",
        "event=start",
        "--format",
        "{{json .Actor.Attributes}}",
    )
    assert out.returncode == 0, out.stderr
    started = {}
    for line in out.stdout.splitlines():
        attributes = json.loads(line)
        if FLOW_RUN_LABEL in attributes:
            started[attributes[FLOW_RUN_LABEL]] = attributes.get("image", "")
    return started
