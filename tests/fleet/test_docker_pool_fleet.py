"""Releases on a Docker work pool on PostgreSQL: each flow run in a container from Shipyard's
worker image, taken by one of two `prefect worker start --type docker` workers
(tests/fleet/conftest.py `docker_pool_fleet`), through the per-target release deployments
(deployments/fleet.py: one work queue per target, concurrency limit 1).

Releases are real (in-process revisions in the session sandbox, the `image=` parameter: no
build); the containers reach the Prefect server, the emulator and the registry over loopback
(`network_mode: host`).

- the worker image: the wheel in site-packages, no checkout; a second build is all CACHED;
- two services release side by side (Running intervals from Prefect's state history overlap),
  two tags of one service never overlap and the second waited as plain Scheduled;
- a worker SIGKILLed with its flow run's container mid-release: Prefect's zombie-run automation
  (heartbeats, deployments/stack/docker_pool.py `ensure_crash_detection`) marks the run Crashed,
  and the next release of the service converges (released, one serving revision, slot free).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest
from docker_pool_kit import (
    CONTAINER_ID,
    CRASH_WINDOW_S,
    Run,
    containers_started,
    create_runs,
    deploy,
    kill_worker_and_container,
    save_targets,
    wait_runs,
)

# The set-up (image build, PostgreSQL stack, workers) counts in the first test's time.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _overlap(x: Run, y: Run) -> bool:
    return x.started < y.ended and y.started < x.ended


def test_the_worker_image_holds_the_wheel_not_a_checkout(docker_pool_fleet):
    from shipyard.tasks.processes import process_host

    fleet = docker_pool_fleet
    probe = (
        "import importlib.metadata as m, json, os, socket, sys; "
        "import shipyard.flows.release.flow as f; "
        "from shipyard.tasks.processes import process_host; "
        "d = m.distribution('shipyard'); "
        "print(json.dumps({'module': f.__file__, 'prefix': sys.prefix, "
        "'direct_url': d.read_text('direct_url.json'), 'work': os.path.exists('/work'), "
        "'pyproject': os.path.exists('/opt/shipyard/pyproject.toml'), 'user': os.getuid(), "
        "'prefect_docker': m.version('prefect-docker'), 'prefect': m.version('prefect'), "
        "'hostname': socket.gethostname(), 'host': process_host(), 'pid': os.getpid()}))"
    )
    # As the pool runs a flow run: the host's network.
    done = fleet.docker("run", "--rm", "--network", "host", fleet.image, "python", "-c", probe)
    assert done.returncode == 0, done.stderr
    inside = json.loads(done.stdout.strip().splitlines()[-1])
    assert inside["module"].startswith("/opt/shipyard/lib/python3.11/site-packages/shipyard/")
    assert inside["prefix"] == "/opt/shipyard"
    # Installed from a wheel (an editable or path install records a direct_url.json).
    assert inside["direct_url"] is None or "editable" not in inside["direct_url"], inside
    assert inside["work"] is False and inside["pyproject"] is False, inside
    assert inside["user"] != 0, inside  # not root
    # On the host's network a container has the host's name but its own process ids: the
    # release slot's holder record (flows/release/slot.py) tells them apart, so a release here
    # never probes a container's pid in its own process table (and takes a live holder for dead).
    assert inside["hostname"] == socket.gethostname(), inside
    assert inside["host"] != process_host(), inside
    # The versions the checkout's venv was tested with (requirements.txt pinned them).
    from importlib import metadata

    assert inside["prefect"] == metadata.version("prefect")
    assert inside["prefect_docker"] == metadata.version("prefect-docker")
    # The same context built again: every step found in the daemon's cache.
    assert fleet.image_cached.run_steps == 0 and fleet.image_cached.cached_steps >= 5
    print(
        f"\nworker image: first build {fleet.image_cold.seconds} s ({fleet.image_cold.run_steps} "
        f"steps run), again {fleet.image_cached.seconds} s;"
        f" set-up {fleet.timings}"
    )


def test_services_side_by_side_tags_of_one_service_serialised(
    docker_pool_fleet, stage, make_target
):
    from shipyard.flows.observe.ledger import read_ledger

    fleet = docker_pool_fleet
    # GPU quota for both services' revisions side by side in each region.
    stage(default_region={"gpu": 8, "gpu_no_zonal_redundancy": 8})
    a, b = save_targets(fleet, make_target, ["dp-side-a", "dp-side-b"])
    deployments = deploy(fleet, [a, b])
    since = time.time() - 1
    run_ids = create_runs(
        fleet,
        [
            (a, deployments[a], "v1.0.0"),
            (a, deployments[a], "v1.1.0"),
            (b, deployments[b], "v1.0.0"),
        ],
    )
    runs = wait_runs(fleet, run_ids)
    for run in runs:
        print(
            run.target,
            run.tag,
            [(s.name, round(s.timestamp.timestamp() - since, 1)) for s in run.states],
        )
    for run in runs:
        assert run.states[-1].type.value == "COMPLETED", (run.target, run.names, fleet.logs())
        # Taken once (no Scheduled after its first Pending: never given back), and until then
        # plain Scheduled (or Late, Prefect's name for a Scheduled run past its time). The one
        # exception is the race the deployment's limit guards (both workers polling the queue
        # at the same instant): the loser is turned back once, as AwaitingConcurrencySlot,
        # before any container started.
        kinds = [s.type.value for s in run.states]
        taken = kinds.index("PENDING")
        assert set(kinds[:taken]) == {"SCHEDULED"}, run.names
        assert set(run.names[:taken]) <= {"Scheduled", "Late", "AwaitingConcurrencySlot"}
        assert run.names.count("AwaitingConcurrencySlot") <= 1, run.names
        assert "SCHEDULED" not in kinds[taken:] and kinds[-2:] == ["RUNNING", "COMPLETED"]

    # Each run ran in a container of the worker image on the pool's daemon.
    started = containers_started(fleet, since)
    for run in runs:
        assert started.get(run.id) == fleet.image, (run.id, started)
        assert run.infrastructure_pid and CONTAINER_ID.search(run.infrastructure_pid), run

    a1, a2 = sorted((r for r in runs if r.target == a), key=lambda r: r.started)
    (b1,) = [r for r in runs if r.target == b]
    # One service: never at once; the second stayed Scheduled (no worker took it) until the
    # first had ended, then was taken.
    assert not _overlap(a1, a2), (a1.names, a2.names)
    assert a2.first("PENDING") >= a1.ended, (a1.ended, a2.names)
    # Two services: side by side.
    assert _overlap(b1, a1) or _overlap(b1, a2), [(r.target, r.started, r.ended) for r in runs]

    with fleet.api():
        for target, service in ((a, "dp-side-a"), (b, "dp-side-b")):
            rows = read_ledger(service)
            assert [r.outcome for r in rows] == ["released"] * (2 if target == a else 1), rows

    overhead = [r.started - r.first("PENDING") for r in runs]
    print(
        f"\ncontainer start (Pending -> Running): {', '.join(f'{s:.1f}' for s in overhead)} s; "
        f"waited after its predecessor ended: {a2.first('PENDING') - a1.ended:.1f} s"
    )


def test_a_killed_worker_crashes_its_run_and_the_next_release_converges(
    docker_pool_fleet, stage, make_target, sandbox_admin
):
    from prefect.client.orchestration import get_client
    from prefect.variables import Variable

    from sandbox.release_invariants import serving
    from shipyard.flows.observe.ledger import read_ledger
    from shipyard.flows.release.slot import holder_variable, slot_name
    from shipyard.tasks.waiting import Deadline, NotYet, await_for

    fleet = docker_pool_fleet
    # Each traffic or tag update takes 2 s: the release holds its slot long enough to be killed
    # in the middle.
    stage(
        default_region={"gpu": 8, "gpu_no_zonal_redundancy": 8},
        operations={"traffic_update_ms": 2000},
    )
    service = "dp-killed"
    (target,) = save_targets(fleet, make_target, [service])
    deployments = deploy(fleet, [target])
    first = create_runs(fleet, [(target, deployments[target], "v1.0.0")])
    (run_id,) = first

    async def holding():
        async with get_client() as client:
            run = await client.read_flow_run(run_id)
        holder = await Variable.aget(holder_variable(service), default=None)
        if run.state.type.value != "RUNNING" or not holder or not run.infrastructure_pid:
            raise NotYet(run.state.name)
        return run

    with fleet.api():
        run = asyncio.run(
            await_for(
                holding,
                what="the release to hold its slot",
                first_delay_s=0.1,
                max_delay_s=0.2,
                deadline=Deadline(300),
                heartbeat_s=None,
            )
        )
    worker = fleet.worker_of(run_id)
    assert worker is not None, fleet.logs()
    container = CONTAINER_ID.search(run.infrastructure_pid or "")
    assert container, run.infrastructure_pid
    kill_worker_and_container(fleet, worker, container.group(1))
    killed_at = time.time()
    fleet.worker_pids.remove(worker)

    # Nobody reports the crash: Prefect's zombie automation marks the run Crashed when its
    # heartbeats stop.
    (crashed,) = wait_runs(fleet, first, until="CRASHED", timeout=300)
    crashed_after = crashed.ended - killed_at
    assert "heartbeat" in crashed.states[-1].message, crashed.states[-1]

    # The next release of the service (the same tag again) converges on the remaining worker.
    second = create_runs(fleet, [(target, deployments[target], "v1.0.0")])
    (rerun,) = wait_runs(fleet, second)
    assert rerun.states[-1].type.value == "COMPLETED", (rerun.names, fleet.logs())
    with fleet.api():
        rows = read_ledger(service)
        holder = Variable.get(holder_variable(service), default=None)

        async def slot():
            async with get_client() as client:
                return await client.read_global_concurrency_limit_by_name(slot_name(service))

        limit = asyncio.run(slot())
    assert [r.outcome for r in rows] == ["released"], rows
    assert rows[-1].flow_run_id == rerun.id
    history = sandbox_admin.traffic_history(service)
    assert list(serving(history, rows[-1].region).values()) == [100], history[-1:]
    assert holder is None and limit.active_slots == 0, (holder, limit)
    print(
        f"\nkilled run Crashed {crashed_after:.0f} s after the kill (window "
        f"{CRASH_WINDOW_S:.0f} s); the re-run took {rerun.ended - rerun.first('PENDING'):.1f} s"
    )
    # The pool gets its second worker back for whatever runs next on this session's fleet.
    fleet.start_workers(1)
