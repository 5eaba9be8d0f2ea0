"""The Docker work pool on PostgreSQL that tests/fleet/conftest.py's `docker_pool_fleet` starts.

One per session (xdist worker), built on first use by the tests that ask for it
(tests/fleet/test_docker_pool_fleet.py; a promotion on the pool can use it too):

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

import os
import re
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("SHIPYARD_ROOTFS_CACHE", str(Path.home() / ".cache" / "shipyard" / "rootfs"))

FLEET_POOL = "shipyard-docker"
WORKER_IMAGE = "shipyard-worker:fleet-test"
# A dead run is marked Crashed when its heartbeats (every 30 s, Prefect's least) stop this long:
# shorter than the production default (90 s) to keep the kill test short; every release of
# these tests ends well within one heartbeat, so no live run can be taken for dead.
CRASH_WINDOW_S = 45.0
TOKEN_BLOCK = "shipyard-test-internal-token"
# The flow-run daemon's data root, kept between sessions (see _engine_root).
ENGINE_CACHE_ENV = "SHIPYARD_WORKER_ENGINE_CACHE"
DEFAULT_ENGINE_CACHE = (
    Path.home() / ".cache" / "shipyard" / "worker-engine"
)  # tests/conftest.py: the canary's token block


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
        from prefect.settings import PREFECT_API_URL, temporary_settings

        return temporary_settings(updates={PREFECT_API_URL: self.api_url})

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
    from prefect.blocks.system import Secret

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
        Secret(value=internal_token).save(TOKEN_BLOCK, overwrite=True)
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
