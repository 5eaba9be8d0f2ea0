"""`shipyard rollback` on the sandbox: release A, release B; no --to returns 100% to A (the
`prior` revision) through the cutover traffic task, with the record and the stage events;
--to B's tag returns to B; a revision that does not exist or is not Ready is one line, exit 2
and changes nothing."""

from __future__ import annotations

import time
import uuid

import pytest
from cli_kit import run_cli

from sandbox.release_invariants import invariant_violations, serving
from shipyard.flows.canary.stage import recorded_release
from shipyard.flows.release.flow import run_release

pytestmark = pytest.mark.slow

IMAGE = "registry.sandbox.local/pages/page-service"


def _rollback_events(service: str, want: int, timeout: float = 30.0) -> list[str]:
    """The service's `shipyard.rollback.*` events, polled until `want` succeeded ones arrived
    (events reach the database asynchronously)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    wanted = EventFilter(
        event=EventNameFilter(prefix=["shipyard.rollback."]),
        resource=EventResourceFilter(id=[f"shipyard.cloud-run.service.{service}"]),
    )
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            names = [e.event for e in client.read_events(wanted, limit=50).events]
            if names.count("shipyard.rollback.succeeded") >= want or time.monotonic() > deadline:
                return names
            time.sleep(0.2)


def test_rollback_to_prior_then_to_a_tag_and_refusals(
    stage, make_target, sandbox_admin, monkeypatch, capsys
):
    stage(revision_faults=[{"fault": "never_ready", "image_contains": ":v2.0.0"}])
    target = make_target()
    name = f"rb-{uuid.uuid4().hex[:6]}"
    target.save(name)
    a = run_release("v1.0.0", target, image=f"{IMAGE}:v1.0.0")
    b = run_release("v1.1.0", target, image=f"{IMAGE}:v1.1.0")
    assert (a.outcome, b.outcome) == ("released", "released")
    region = b.region

    code, output = run_cli(monkeypatch, capsys, "rollback", target.service)  # by service name
    assert code == 0, output
    assert f"100% to {a.revision}" in output and f"was {b.revision}" in output
    history = sandbox_admin.traffic_history(target.service)
    assert serving(history, region) == {a.revision: 100}
    assert invariant_violations(history, [a, b]) == []
    record = recorded_release(target.service)
    assert record["revision"] == a.revision and record["git_tag"] == "v1.0.0"
    assert record["image"] == f"{IMAGE}:v1.0.0"
    assert record["rolled_back_from"]["revision"] == b.revision
    assert record["rolled_back_from"]["git_tag"] == "v1.1.0"

    code, output = run_cli(monkeypatch, capsys, "rollback", name, "--to", "v1.1.0")
    assert code == 0, output
    assert serving(sandbox_admin.traffic_history(target.service), region) == {b.revision: 100}
    assert recorded_release(target.service)["git_tag"] == "v1.1.0"

    for bad in ("v9.9.9", f"{target.service}-nope"):
        code, output = run_cli(monkeypatch, capsys, "rollback", name, "--to", bad)
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        assert code == 2 and len(errors) == 1 and "Traceback" not in output, output
        assert f"--to {bad!r}" in errors[0]
    assert serving(sandbox_admin.traffic_history(target.service), region) == {b.revision: 100}

    # The two hand rollbacks, before the next release adds its own.
    events = _rollback_events(target.service, want=2)
    assert events.count("shipyard.rollback.succeeded") == 2, events
    assert events.count("shipyard.rollback.started") == 2, events

    # A revision that exists but is not Ready (v2.0.0's never became Ready: rolled back).
    failed = run_release("v2.0.0", target, image=f"{IMAGE}:v2.0.0")
    assert failed.outcome == "rolled_back" and failed.revision == b.revision
    code, output = run_cli(monkeypatch, capsys, "rollback", name, "--to", "v2.0.0")
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, output
    assert "is not Ready" in errors[0] and "choose a Ready revision" in errors[0]
    assert serving(sandbox_admin.traffic_history(target.service), region) == {b.revision: 100}
