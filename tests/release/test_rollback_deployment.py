"""The `rollback` deployment of prefect.yaml, run as the UI's run form starts it (a flow run of
the deployment with the form's parameters), on the sandbox: release A then B; a `to` that names
no release is refused with the service's release TAGS and nothing moves; the default run returns
100% to A and leaves its summary artifact, a `rolled_back_by_hand` ledger row, its events and a
new version of the release summary that says B was rolled back by hand.

The run is executed in this process by Prefect's engine (`run_flow`, what a runner's process
does with a run it picked up): no runner process to start, the same deployment and run."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort
from prefect.flow_engine import run_flow
from prefect.flows import load_flow_from_entrypoint

from sandbox.release_invariants import invariant_violations, serving
from shipyard.deployments.serve import PREFECT_YAML, read_specs, to_runner_deployment
from shipyard.flows.observe.ledger import CHANGE_FAILURES, read_ledger
from shipyard.flows.release.flow import run_release
from shipyard.tasks.reports import artifact_key

pytestmark = pytest.mark.slow

IMAGE = "registry.sandbox.local/pages/page-service"


def _latest(key: str) -> str:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[artifact_key(key)])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    return str(found[0].data) if found else ""


def _events(run_id: str, timeout: float = 30.0) -> list[str]:
    """The run's `shipyard.rollback.*` events, polled until the succeeded one arrived."""
    from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter

    wanted = EventFilter(
        event=EventNameFilter(prefix=["shipyard.rollback."]),
        related=EventRelatedFilter(id=[f"prefect.flow-run.{run_id}"]),
    )
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            names = [e.event for e in client.read_events(wanted, limit=50).events]
            if "shipyard.rollback.succeeded" in names or time.monotonic() > deadline:
                return names
            time.sleep(0.2)


def test_rollback_from_the_deployment_form(stage, make_target, sandbox_admin):
    stage()
    target = make_target()
    block = f"rbd-{uuid.uuid4().hex[:6]}"
    target.save(block)
    a = run_release("v1.0.0", target, image=f"{IMAGE}:v1.0.0")
    b = run_release("v1.1.0", target, image=f"{IMAGE}:v1.1.0")
    assert (a.outcome, b.outcome) == ("released", "released")

    (spec,) = [s for s in read_specs(PREFECT_YAML) if s.name == "rollback"]
    flow = load_flow_from_entrypoint(spec.entrypoint, use_placeholder_flow=False)
    deployment_id = asyncio.run(to_runner_deployment(spec, flow)).apply()  # sync: a UUID

    def run(**form: str):
        with get_client(sync_client=True) as client:
            flow_run = client.create_flow_run_from_deployment(
                deployment_id, parameters={"target": block, **form}
            )
        assert flow_run.parameters["target"] == block and "to" in flow_run.parameters
        return flow_run, run_flow(
            flow, flow_run=flow_run, parameters=flow_run.parameters, return_type="state"
        )

    # A `to` that names no release: refused in one message that lists the release tags as git
    # names them (not the revision labels' v1-1-0), and nothing moved.
    _, refused = run(to="v9.9.9")
    assert refused.is_failed(), refused
    assert "release tags there: v1.1.0, v1.0.0" in refused.message, refused.message
    assert "v1-1-0" not in refused.message
    assert serving(sandbox_admin.traffic_history(target.service), b.region) == {b.revision: 100}

    # The form as it opens (to: empty: the last good revision), with a reason.
    flow_run, state = run(comment="p95 doubled after v1.1.0")
    assert state.is_completed(), state
    assert flow_run.deployment_id == deployment_id
    history = sandbox_admin.traffic_history(target.service)
    assert serving(history, b.region) == {a.revision: 100}
    assert invariant_violations(history, [a, b]) == []

    summary = _latest(f"rollback-{target.service}")
    for text in (a.revision, b.revision, "v1.0.0", "v1.1.0", "p95 doubled", "Prefect UI / API"):
        assert text in summary, (text, summary)
    release_page = _latest(f"release-{target.service}")
    assert release_page.startswith("# Release v1.1.0 of"), release_page[:200]
    assert "ROLLED BACK BY HAND" in release_page and "to `v1.0.0`" in release_page
    assert "Release v1.1.0 of" in release_page.split("---", 1)[1]  # the earlier page, kept

    row = read_ledger(target.service)[-1]
    assert (row.outcome, row.git_tag, row.revision) == ("rolled_back_by_hand", "v1.1.0", a.revision)
    assert row.by.startswith("Prefect UI") and "p95 doubled" in row.rollback_reason
    assert row.flow_run_id == str(flow_run.id) and row.outcome not in CHANGE_FAILURES

    names = _events(str(flow_run.id))
    assert {"shipyard.rollback.started", "shipyard.rollback.succeeded"} <= set(names), names
