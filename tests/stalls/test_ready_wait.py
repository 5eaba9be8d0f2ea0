"""The Ready wait owns its deadline (issue 24): a transient error while reading the revision is
read again inside the same wait, never raised to the step (whose retry started a whole new
`ready_timeout`: a 10-minute wait could run 4 x 10 minutes), and a wait whose reads keep failing
ends with its verdict within its own deadline. On the sandbox, with Google's 503 UNAVAILABLE
injected on the revision reads only (the service's create and its operation are answered)."""

from __future__ import annotations

import time

import pytest
from google.cloud import run_v2

from shipyard.tasks import cloud_run as cr
from shipyard.tasks.errors import is_transient

REGION = "europe-west1"
WAIT_S = 2.0


def _faulted(sandbox_admin, **faults) -> None:
    from sandbox.scenario import Scenario

    scenario = Scenario().model_dump()
    scenario["apis"]["run"] = {"error_codes": [503], "only_path": "/revisions/", **faults}
    sandbox_admin.reset(scenario_data=scenario)


def _service(cloud, service_id: str) -> str:
    """A new service (its CPU revision); returns that revision's name."""
    template = run_v2.RevisionTemplate(
        revision=f"{service_id}-cpu",
        containers=[
            run_v2.Container(
                image="registry.sandbox.local/pages:1",
                resources=run_v2.ResourceRequirements(limits={"cpu": "1", "memory": "512Mi"}),
            )
        ],
    )
    project = cloud.resolved_project()
    cr.create_service(
        cloud.services_client(),
        project,
        REGION,
        run_v2.Service(template=template),
        service_id,
        timeout=30,
    )
    return cr.revision_path(project, REGION, service_id, f"{service_id}-cpu")


def test_a_transient_error_inside_the_ready_wait_is_read_again(cloud, sandbox_admin):
    _faulted(sandbox_admin, first_n=2)  # the first two reads of a revision: 503
    name = _service(cloud, "ready-retried")
    revision = cr.wait_revision_ready(cloud.revisions_client(), name, timeout=30, poll_s=0.05)
    assert cr.ready_state(revision)[0] == "succeeded"
    assert sandbox_admin.calls()["fault.run"] == 2  # both faults met inside the one wait


def test_reads_that_keep_failing_end_with_the_waits_verdict_within_its_deadline(
    cloud, sandbox_admin
):
    _faulted(sandbox_admin, error_rate=1.0)  # every read of a revision: 503
    name = _service(cloud, "ready-unreadable")
    started = time.monotonic()
    with pytest.raises(cr.ReadyTimeout) as verdict:
        cr.wait_revision_ready(cloud.revisions_client(), name, timeout=WAIT_S, poll_s=0.05)
    assert time.monotonic() - started < WAIT_S * 3 + 5
    assert not is_transient(verdict.value)  # a verdict: the step does not start it again
    assert "ServiceUnavailable" in str(verdict.value)  # what the wait saw last
