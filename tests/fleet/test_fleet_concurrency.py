"""A fleet's per-target release deployments, each in its own work queue with a concurrency limit
of 1, and the pool's limit (deployments/fleet.py).

The slow test releases for real (in-process revisions, the `image=` parameter: no build) through
the per-target deployments on the session's PostgreSQL stack (tests/fleet/stack_kit.py: a fleet
runs on PostgreSQL; on the session's SQLite server two workers and two releases at once ran into
"database is locked" and 10 s read timeouts on a busy CI machine), picked up by two real
`prefect worker start` process workers: two
services overlap, two tags of one service never do, a run whose target is busy stays plain
Scheduled (no worker takes it) until its queue's slot frees, and none is bounced to
AwaitingConcurrencySlot but by the race guard (at most once, before any worker started it).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import stack_kit
from cli_kit import run_cli
from run_states import StateTimeline
from stack_kit import on_stack, save_canary_token

from shipyard.deployments.fleet import (
    TARGET_BLOCK_SLUG,
    FleetError,
    _known_targets,
    adeploy_fleet,
    full_name,
    gpu_global_limit,
    known_targets_text,
    queue_name,
    release_deployment_name,
)
from shipyard.deployments.serve import PREFECT_YAML, read_specs

IMAGE = "registry.sandbox.local/pages/page-service"
postgres_prefect = stack_kit.postgres_prefect  # the session's stack, as a fixture of this module


async def _new_pool() -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    name = f"fleet-{uuid.uuid4().hex[:8]}"
    async with get_client() as client:
        await client.create_work_pool(WorkPoolCreate(name=name, type="process"))
    return name


async def _delete_deployments(names: list[str]) -> None:
    """The per-target deployments go when the test ends: a later module on this xdist worker's
    server must not find its deliveries routed to them."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        for name in names:
            deployment = await client.read_deployment_by_name(name)
            await client.delete_deployment(deployment.id)


def _save_targets(make_target, services: list[str]) -> list[str]:
    blocks = []
    for service in services:
        block = f"{service}-{uuid.uuid4().hex[:4]}"
        make_target(service=service).save(block)
        blocks.append(block)
    return blocks


def test_fleet_deploy_queues_limits_idempotence_and_refusals(
    stage, make_target, monkeypatch, capsys
):
    from prefect.client.orchestration import get_client

    # Cloud Quotas: europe-west1 holds 2 L4 GPUs (no zonal redundancy), us-central1 3.
    stage(
        regions={
            "europe-west1": {"gpu_no_zonal_redundancy": 2},
            "us-central1": {"gpu_no_zonal_redundancy": 3},
        }
    )
    a, b = _save_targets(make_target, ["fleet-a", "fleet-b"])
    c = f"fleet-c-{uuid.uuid4().hex[:4]}"
    make_target(service="fleet-c", regions=["us-central1"]).save(c)
    pool = asyncio.run(_new_pool())
    (release,) = [s for s in read_specs(PREFECT_YAML) if s.name == "release"]

    # The global limit from the GPU quota: a and b share europe-west1 (counted once), c adds
    # us-central1.
    assert gpu_global_limit([a, b]) == 2
    assert gpu_global_limit([a, b, c]) == 5

    async def deploy_twice():
        first = await adeploy_fleet([a, b], pool)  # limit from the quota: 2
        async with get_client() as client:
            pool_after_first = (await client.read_work_pool(pool)).concurrency_limit
            ids_first = [(await client.read_deployment_by_name(n)).id for n in first]
        second = await adeploy_fleet([a, b], pool, global_limit=3)
        async with get_client() as client:
            deployments = [await client.read_deployment_by_name(n) for n in second]
            queues = [
                await client.read_work_queue_by_name(queue_name(t), work_pool_name=pool)
                for t in (a, b)
            ]
            automations = [
                await client.read_resource_related_automations(f"prefect.deployment.{d.id}")
                for d in deployments
            ]
            pool_limit = (await client.read_work_pool(pool)).concurrency_limit
        return first, pool_after_first, ids_first, deployments, queues, automations, pool_limit

    first, pool_after_first, ids_first, deployments, queues, automations, pool_limit = asyncio.run(
        deploy_twice()
    )
    try:
        assert (
            first
            == [full_name(a), full_name(b)]
            == [f"release/release-{a}", f"release/release-{b}"]
        )
        assert pool_after_first == 2
        # Idempotent: the same deployments, updated in place; the limit moved.
        assert [d.id for d in deployments] == ids_first
        assert pool_limit == 3
        for target, deployment, queue, related in zip(
            (a, b), deployments, queues, automations, strict=True
        ):
            assert deployment.name == release_deployment_name(target) == f"release-{target}"
            assert deployment.entrypoint == release.entrypoint
            assert deployment.parameters == {**release.parameters, "target": target}
            assert set(deployment.tags) == set(release.tags)
            assert deployment.description.startswith(release.description.strip()[:60])
            assert deployment.work_pool_name == pool
            assert deployment.work_queue_name == queue_name(target) == f"release-{target}"
            # The deployment's own limit of 1 is only the guard for two workers polling the same
            # queue at one instant (deployments/fleet.py); the queue's limit does the queueing.
            assert deployment.global_concurrency_limit is not None
            assert deployment.global_concurrency_limit.limit == 1
            assert queue.concurrency_limit == 1 and queue.work_pool_id is not None
            # One trigger (not two after the second deploy), matching only its own routing label,
            # with the target fixed.
            assert len(related) == 1, related
            match = related[0].trigger.match.model_dump()
            assert match["shipyard.deployment"] == f"release-{target}"
            assert match["prefect.resource.id"] == "shipyard.repo.*"
            (action,) = related[0].actions
            assert action.deployment_id == deployment.id
            assert action.parameters["target"] == target
            assert action.parameters["git_tag"] == "{{ event.payload.tag }}"

        # Refusals name the field, the value and the fix, and change nothing.
        with pytest.raises(FleetError, match=r"no ReleaseTarget block named 'nope-x'.*known: .*"):
            asyncio.run(adeploy_fleet([a, "nope-x"], pool, global_limit=1))
        with pytest.raises(FleetError, match=r"pool: no work pool named 'no-such-pool'.*create"):
            asyncio.run(adeploy_fleet([a], "no-such-pool", global_limit=1))
        with pytest.raises(FleetError, match=r"'.+' is given twice"):
            asyncio.run(adeploy_fleet([a, a], pool, global_limit=1))
        # Another block of fleet-a's service with no environment: one scope, refused with both
        # names and the fix.
        twin = f"fleet-a-twin-{uuid.uuid4().hex[:4]}"
        make_target(service="fleet-a", regions=["us-central1"]).save(twin)
        scope = rf"'{a}' and '{twin}' both release service 'fleet-a' with no environment.*scope"
        with pytest.raises(FleetError, match=scope):
            asyncio.run(adeploy_fleet([a, twin], pool, global_limit=1))
        code, out = run_cli(monkeypatch, capsys, "fleet", "deploy", "nope-y", "--pool", pool)
        assert code == 2 and "nope-y" in out and "ReleaseTarget" in out, out
        # Through the CLI (idempotent): each deployment and queue, and how to make the pool's
        # limit a hard bound (3 slots, 3 workers: --limit 1 each, summing to 3).
        code, out = run_cli(
            monkeypatch, capsys, "fleet", "deploy", a, b, "--pool", pool, "--global-limit", "3"
        )
        assert code == 0, out
        assert f"release/release-{a}  queue release-{a} (limit 1)" in out, out
        assert "global limit 3" in out and "3 workers: --limit 1, 1, 1" in out, out

        # The known targets are read page by page: pages of 2 find every named block once, the
        # same as the one-shot read (Prefect 3.8's by-type endpoint answers all of them).
        async def known_paged_and_all():
            async with get_client() as client:
                everything = await client.read_block_documents_by_type(
                    TARGET_BLOCK_SLUG, include_secrets=False
                )
                paged = await _known_targets(client, page_size=2)
            return paged, sorted(d.name for d in everything if d.name and not d.is_anonymous)

        paged, everything = asyncio.run(known_paged_and_all())
        assert paged == everything and {a, b, c} <= set(paged), (paged, everything)
        assert len(everything) > 2  # more than one page was read

        # `shipyard fleet show`: each target's deployment, queue and limit, the pool's limit.
        code, out = run_cli(monkeypatch, capsys, "fleet", "show")
        assert code == 0, out
        for target in (a, b):
            line = next(line for line in out.splitlines() if f"release-{target} " in line)
            assert f"target {target}  pool {pool}  queue release-{target} (limit 1)" in line, line
            assert "deployment limit 1  waiting 0  running 0" in line, line
        assert f"pool {pool}: concurrency limit 3 (global)" in out, out
    finally:
        asyncio.run(_delete_deployments([full_name(a), full_name(b)]))


def test_refusal_names_twenty_known_targets_closest_first():
    known = sorted([f"target-{i:02d}" for i in range(50)] + ["digit-staging"])
    text = known_targets_text(known, ["digit-stagin"])
    shown, more = text.split(" and ")
    names = shown.split(", ")
    # At most 20 named: the closest to the missing name first, then the rest by name.
    assert names == ["digit-staging"] + [f"target-{i:02d}" for i in range(19)], names
    assert more.startswith("31 more"), more
    assert known_targets_text(known[:3], ["x"]) == "digit-staging, target-00, target-01"
    assert known_targets_text([], ["x"]) == "none"


# ---------------------------------------------------------------- releases through workers


@dataclass
class RunHistory(StateTimeline):
    name: str
    target: str
    states: list  # prefect State objects, oldest first


def _start_workers(pool: str, count: int, home: Path, api_url: str) -> list[int]:
    """`prefect worker start` processes on the pool (deployments/stack/workers.py), on the Prefect
    server at `api_url`, with this process's environment for the flow runs they start: the
    sandbox's endpoints and the SHIPYARD_* settings (start_workers keeps every non-PREFECT_
    variable), and this session's PREFECT_* settings (its PREFECT_HOME; start_workers would drop
    them), logging at INFO. Their logs in `home/workers/`. Polling every second, looking no
    further ahead than now (a worker that took a run scheduled later would hold its queue's slot
    early)."""
    from shipyard.deployments.stack.workers import start_workers

    session = {
        k: v
        for k, v in os.environ.items()
        if k.startswith("PREFECT_") and not k.startswith("PREFECT_WORKER_")
    }
    env = session | {
        "PREFECT_API_URL": api_url,
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    return start_workers(
        pool,
        count,
        home=home,
        env=env,
        worker_type="process",
        query_seconds=1,
        prefetch_seconds=0,
    )


async def _histories(run_ids: dict, timeout: float) -> list[RunHistory]:
    from prefect.client.orchestration import get_client

    from shipyard.tasks.waiting import Deadline, NotYet, await_for

    async with get_client() as client:

        async def all_final():
            runs = [await client.read_flow_run(i) for i in run_ids]
            pending = [r.name for r in runs if not r.state or not r.state.is_final()]
            if pending:
                raise NotYet(pending)
            return runs

        runs = await await_for(
            all_final,
            what="the fleet's releases to end",
            first_delay_s=0.5,
            max_delay_s=2.0,
            deadline=Deadline(timeout),
            heartbeat_s=None,
        )
        out = []
        for run in runs:
            states = sorted(await client.read_flow_run_states(run.id), key=lambda s: s.timestamp)
            out.append(RunHistory(run.name, run_ids[run.id], states))
        return out


def _overlaps(x: RunHistory, y: RunHistory) -> bool:
    return x.started < y.ended and y.started < x.ended


@pytest.mark.slow  # 4 real releases through 2 process workers (175 s at load average 17)
def test_two_services_side_by_side_one_service_serialised(
    postgres_prefect, internal_token, stage, make_target, tmp_path
):
    from prefect.client.orchestration import get_client

    from shipyard.deployments.stack.workers import stop_workers

    api_url = postgres_prefect.api_url
    # GPU quota for both services' revisions side by side in each region.
    stage(default_region={"gpu": 8, "gpu_no_zonal_redundancy": 8})

    async def create_runs(targets: list[str], names: list[str]) -> dict:
        run_ids = {}
        async with get_client() as client:
            for target, name in zip(targets, names, strict=True):
                deployment = await client.read_deployment_by_name(name)
                for tag in ("v1.0.0", "v1.1.0"):
                    run = await client.create_flow_run_from_deployment(
                        deployment.id, parameters={"git_tag": tag, "image": f"{IMAGE}:{tag}"}
                    )
                    run_ids[run.id] = target
        return run_ids

    with on_stack(api_url):
        save_canary_token(internal_token)
        targets = _save_targets(make_target, ["fleet-side-a", "fleet-side-b"])
        pool = asyncio.run(_new_pool())
        names = asyncio.run(adeploy_fleet(targets, pool, global_limit=2))
        run_ids = asyncio.run(create_runs(targets, names))  # all four Scheduled before any poll
        try:
            pids = _start_workers(pool, 2, tmp_path, api_url)
            try:
                histories = asyncio.run(_histories(run_ids, timeout=240))
            finally:
                stop_workers(pids)
        finally:
            asyncio.run(_delete_deployments(names))
    logs = "\n".join(
        p.read_text(errors="replace")[-3000:] for p in (tmp_path / "workers").glob("*.log")
    )

    for h in histories:
        if h.states[-1].type.value != "COMPLETED":
            # Said whole (an assertion's tuple is cut short by pytest: CI showed "Sl.....").
            pytest.fail(
                f"{h.name} ({h.target}) ended {h.names}: {(h.states[-1].message or '')[-1500:]}"
                f"\nother runs: {[(x.name, x.target, x.names) for x in histories]}"
                f"\nworkers' logs:\n{logs}",
                pytrace=False,
            )
        # Waited as plain Scheduled. The one exception is the race the deployment's limit
        # guards (two workers polling one queue at the same instant): then the loser is turned
        # back once, as AwaitingConcurrencySlot, before any worker started it.
        assert h.names.count("AwaitingConcurrencySlot") <= 1, (h.name, h.names)
        # Taken once: Scheduled, then Pending (Prefect 3.8 adds Submitting while the worker
        # starts the process), Running, Completed; never Scheduled again after a worker took it.
        kinds = [s.type.value for s in h.states]
        taken = kinds.index("PENDING")
        assert set(kinds[:taken]) == {"SCHEDULED"}, (h.name, h.names)
        assert "SCHEDULED" not in kinds[taken:], (h.name, h.names)
        assert kinds[-2:] == ["RUNNING", "COMPLETED"] and kinds.count("RUNNING") == 1, h.names

    by_target = {t: [h for h in histories if h.target == t] for t in targets}
    for target, (x, y) in by_target.items():
        first, second = sorted((x, y), key=lambda h: h.started)
        # One release per target at a time; the waiting one stayed Scheduled (no worker took
        # it: its Pending came only after the first had ended).
        assert not _overlaps(first, second), (target, first.names, second.names)
        assert second.first("PENDING") >= first.ended, (target, second.names)
    # Different services side by side: each first release overlapped the other's.
    pairs = itertools.product(by_target[targets[0]], by_target[targets[1]])
    assert any(_overlaps(x, y) for x, y in pairs), [
        (h.target, h.started, h.ended) for h in histories
    ]
    # The pool's limit (2) held: never more than two releases at once.
    edges = sorted([(h.started, 1) for h in histories] + [(h.ended, -1) for h in histories])
    running = [0]
    for _, step in edges:
        running.append(running[-1] + step)
    assert max(running) <= 2, [(h.target, h.started, h.ended) for h in histories]
