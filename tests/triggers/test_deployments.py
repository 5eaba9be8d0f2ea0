"""prefect.yaml as Prefect sees it after `prefect deploy`: entrypoints, typed parameters,
schedules, the trigger, concurrency; the prewarm's next runs; one release at a time;
`shipyard serve` builds the same deployments from the same file."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import re

import pytest
from prefect.client.orchestration import get_client
from prefect.states import Completed, Pending, Running
from trigger_hooks import REPO_ROOT, WORK_POOL, runs_of, split_specs

from shipyard.deployments.serve import build_deployments, read_specs

pytestmark = pytest.mark.slow  # with the webhook tests: ~40 s beyond the session server


def test_every_deployment_has_its_flow_module():
    present, missing = split_specs()
    assert {s.name for s in present} | {s.name for s in missing} == {
        "release",
        "prewarm-cache",
        "mirror-base",
        "rollback",
        "promote",
        "abort",
        "promote-release",
    }
    assert not missing, "prefect.yaml points at flow modules that do not exist yet: " + ", ".join(
        f"{s.name} -> {s.entrypoint}" for s in missing
    )


def test_release_deployment(deployed):
    release = deployed["release"]
    assert release.entrypoint == "shipyard.flows.release.flow.release"
    assert release.work_pool_name == WORK_POOL
    assert release.pull_steps == []  # code comes from the installed package, nothing local
    assert release.parameters == {"target": "default", "dry_run": False}
    properties = release.parameter_openapi_schema["properties"]
    assert {"git_tag", "target", "dry_run", "commit"} <= set(properties)
    assert release.parameter_openapi_schema["required"] == ["git_tag"]
    assert properties["git_tag"]["type"] == "string"
    assert properties["dry_run"]["type"] == "boolean"
    assert release.global_concurrency_limit.limit == 1
    assert release.concurrency_options.collision_strategy.value == "ENQUEUE"
    assert release.schedules == []


def test_release_trigger_is_registered(deployed):
    release = deployed["release"]

    async def automations():
        async with get_client() as client:
            return await client.read_resource_related_automations(
                f"prefect.deployment.{release.id}"
            )

    found = asyncio.run(automations())
    assert len(found) == 1, found
    automation = found[0]
    trigger = automation.trigger
    assert automation.enabled
    assert trigger.expect == {"shipyard.git.tag.pushed"}
    assert trigger.match.model_dump()["prefect.resource.id"] == "shipyard.repo.*"
    assert trigger.posture.value == "Reactive" and trigger.threshold == 1
    (action,) = automation.actions
    assert action.type == "run-deployment"
    assert action.deployment_id == release.id
    assert action.parameters == {
        "git_tag": "{{ event.payload.tag }}",
        "commit": "{{ event.payload.commit }}",
        "tagged_at": "{{ event.payload.tagged_at }}",
        "target": "{{ event.payload.target }}",
    }


def test_prewarm_next_runs_fall_on_mondays_0200_utc(deployed):
    prewarm = deployed.get("prewarm-cache")
    if prewarm is None:
        pytest.fail(
            "flows/build/prewarm.py is missing: the prewarm-cache deployment was not deployed"
        )
    (schedule,) = prewarm.schedules
    assert schedule.schedule.cron == "0 2 * * 1"
    assert schedule.schedule.timezone == "UTC"
    assert schedule.active
    assert prewarm.parameters == {"force": False, "target": "default"}  # setup's target
    assert "force" in prewarm.parameter_openapi_schema["properties"]

    async def scheduled():
        async with get_client() as client:
            # What the scheduler service does on a full server, asked for directly (the
            # test server runs without that loop): materialise the next runs.
            await client.request(
                "POST",
                "/deployments/{id}/schedule",
                path_params={"id": prewarm.id},
                json={"min_runs": 4, "max_runs": 4},
            )
            return await runs_of(client, prewarm.id)

    runs = sorted(asyncio.run(scheduled()), key=lambda r: r.expected_start_time)
    assert len(runs) >= 4
    now = dt.datetime.now(dt.UTC)
    times = [r.expected_start_time.astimezone(dt.UTC) for r in runs]
    for when in times:
        assert when > now
        assert (when.weekday(), when.hour, when.minute, when.second) == (0, 2, 0, 0), when
    assert all(b - a == dt.timedelta(days=7) for a, b in itertools.pairwise(times))
    assert times[0] - now <= dt.timedelta(days=7)


def test_mirror_deployment(deployed):
    mirror = deployed["mirror-base"]
    assert mirror.entrypoint == "shipyard.flows.mirror.flow.mirror_base_image"
    # No registry host:port is frozen in any deployment: the mirror reads its destination (the
    # Variable) when each run starts, so a sandbox restart on other ports changes nothing here.
    assert "destination" not in mirror.parameters
    for spec in deployed.values():
        assert not re.search(r"(127\.0\.0\.1|localhost):\d+", json.dumps(spec.parameters))
    assert mirror.parameters["source"].startswith("docker.io/nvidia/cuda:12.1.1-cudnn8")
    (schedule,) = mirror.schedules
    assert schedule.schedule.cron == "0 1 * * 1" and schedule.schedule.timezone == "UTC"
    assert schedule.parameters == {"accept_drift": False}


def test_rollback_promote_and_abort_deployments(deployed):
    """Day two from the UI: each is a run form with the CLI's parameters and a description a
    person understands; promote / abort once their flows exist (flows/rollout/control.py)."""
    rollback = deployed["rollback"]
    assert rollback.entrypoint == "shipyard.flows.deploy.rollback.rollback"
    assert rollback.parameters == {"target": "default", "to": ""}
    properties = rollback.parameter_openapi_schema["properties"]
    assert {"target", "to", "comment", "by"} <= set(properties)
    assert "release tag" in properties["to"]["description"].lower()
    assert not rollback.parameter_openapi_schema.get("required")  # runnable as the form opens
    assert "last good revision" in rollback.description
    assert rollback.global_concurrency_limit.limit == 1 and rollback.schedules == []
    for name in ("promote", "abort"):
        if name not in deployed:
            continue  # test_every_deployment_has_its_flow_module names it
        command = deployed[name]
        assert command.entrypoint == f"shipyard.flows.rollout.control.{name}"
        assert command.parameters == {"target": "default", "comment": "", "by": ""}
        assert {"target", "comment", "by"} <= set(command.parameter_openapi_schema["properties"])


def test_a_second_release_waits_for_the_first(deployed):
    """The server's deployment concurrency rule: the second run is put back to Scheduled
    (AwaitingConcurrencySlot), not cancelled; it gets its turn once the first ends."""
    release = deployed["release"]

    async def scenario():
        async with get_client() as client:
            first = await client.create_flow_run_from_deployment(
                release.id, parameters={"git_tag": "v0.0.1"}
            )
            second = await client.create_flow_run_from_deployment(
                release.id, parameters={"git_tag": "v0.0.2"}
            )
            got_first = await client.set_flow_run_state(first.id, Pending())
            got_second = await client.set_flow_run_state(second.id, Pending())
            await client.set_flow_run_state(first.id, Running())
            await client.set_flow_run_state(first.id, Completed())
            second_later = await client.set_flow_run_state(second.id, Pending())
            await client.set_flow_run_state(second.id, Running())
            await client.set_flow_run_state(second.id, Completed())
            return got_first, got_second, second_later

    got_first, got_second, second_later = asyncio.run(scenario())
    assert got_first.status.value == "ACCEPT"
    assert got_second.status.value == "REJECT"
    assert got_second.state.type.value == "SCHEDULED"
    assert got_second.state.name == "AwaitingConcurrencySlot"
    assert second_later.status.value == "ACCEPT", second_later


def test_serve_builds_the_same_deployments(deployed):
    """`shipyard serve` reads prefect.yaml too: same parameters, schedules, trigger, limit."""
    present, _ = split_specs()
    served = {
        d.name: d
        for d in asyncio.run(
            build_deployments(REPO_ROOT / "prefect.yaml", [s.name for s in present])
        )
    }
    assert set(served) == {s.name for s in present}
    for name, runner in served.items():
        applied = deployed[name]
        assert runner.entrypoint == applied.entrypoint
        assert runner.parameters == applied.parameters
        assert [(s.schedule.cron, s.schedule.timezone, s.parameters) for s in runner.schedules] == [
            (s.schedule.cron, s.schedule.timezone, s.parameters) for s in applied.schedules
        ]
        applied_limit = applied.global_concurrency_limit
        assert runner.concurrency_limit == (applied_limit.limit if applied_limit else None)
    release = served["release"]
    (trigger,) = release.triggers
    assert trigger.expect == {"shipyard.git.tag.pushed"}
    assert trigger.parameters == {
        "git_tag": "{{ event.payload.tag }}",
        "commit": "{{ event.payload.commit }}",
        "tagged_at": "{{ event.payload.tagged_at }}",
        "target": "{{ event.payload.target }}",
    }
    assert release.concurrency_options.collision_strategy.value == "ENQUEUE"


def test_specs_read_in_file_order():
    assert [s.name for s in read_specs(REPO_ROOT / "prefect.yaml")] == [
        "release",
        "prewarm-cache",
        "mirror-base",
        "rollback",
        "promote",
        "abort",
        "promote-release",
    ]
