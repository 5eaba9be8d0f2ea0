"""The approval gate through the API: a real Prefect server, the stand-in release
(gate_standin.py) and the `promote` / `abort` flows served by a runner in its own process.

Two releases wait at a gate at once, each suspended (the runner's process for it exits) with
its Resume form's schema and description stored and an expiry run scheduled:
- one is approved by `promote` (called in this process, as the CLI does): the approver and
  comment come back to the release in its GateDecision, and its expiry run is deleted;
- one is not answered: its gate times out after 3 s, the scheduled `abort` run resumes it with
  the timeout's outcome (reject).
(A rejection by `abort` is the paused release's in test_gate_commands.py: the same resume with
approve=false, without two more flow-run processes here.)
Each resumed release runs again from the start and goes past its gate at once with the stored
answer (its body runs twice). The awaiting-approval automation fires on the suspensions.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from gate_standin import STANDIN_FLOW, decision_variable

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

HERE = Path(__file__).parent


def _target(service: str, timeout_s: float, block: str) -> None:
    from shipyard.blocks.release_target import ReleaseTarget
    from shipyard.blocks.rollout_policy import RolloutPolicy, RolloutStep

    ReleaseTarget(
        service=service,
        regions=["europe-west1"],
        project="gate-test",  # the gate calls no Google API: no cloud block needed
        rollout=RolloutPolicy(
            steps=[RolloutStep(percent=10), RolloutStep(percent=50, approval=True)],
            gate_timeout_s=timeout_s,
            on_gate_timeout="reject",
        ),
    ).save(block, overwrite=True)


def _until(what: str, probe: Any, timeout: float = 180, proc: Any = None, log: Path | None = None):
    """Poll `probe` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            raise TimeoutError(f"{what}: not within {timeout:.0f} s\n{tail}")
        time.sleep(0.3)


def _state(client: Any, run_id: Any) -> Any:
    return client.read_flow_run(run_id).state


def _waiting(client: Any, run_id: Any) -> Any:
    """The run's state once it waits at a gate; an error if it ended instead."""
    state = _state(client, run_id)
    if state is not None and state.is_final():
        raise AssertionError(f"run {run_id} ended {state.name}: {state.message}")
    return state if state is not None and state.is_paused() else None


@pytest.fixture(scope="module")
def served(tmp_path_factory, prefect_server):
    """The runner serving gate-standin/NAME, abort/abort and promote/promote."""
    from prefect.settings import PREFECT_API_URL

    from sandbox.procs import spawn

    name = f"gate-{uuid.uuid4().hex[:6]}"
    log = tmp_path_factory.mktemp("gate") / "serve.log"
    proc = spawn(
        [sys.executable, str(HERE / "gate_standin.py"), name],
        log,
        env={
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "PYTHONUNBUFFERED": "1",
        },
    )
    try:
        yield name, proc, log
    finally:
        _stop(proc)


def _stop(proc: Any) -> None:
    """SIGTERM the runner's session (it and the flow-run processes it started), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def test_gate_approve_and_timeout_through_the_api(served):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.events.actions import PauseDeployment
    from prefect.exceptions import ObjectNotFound
    from prefect.variables import Variable

    from shipyard.deployments.automations import awaiting_approval_automation
    from shipyard.flows.rollout import control, journal

    name, proc, log = served
    tag = uuid.uuid4().hex[:6]
    cases = {"approve": 600.0, "timeout": 3.0}
    services = {case: f"gate-{case}-{tag}" for case in cases}
    for case, timeout_s in cases.items():
        _target(services[case], timeout_s, f"gate-{case}-{tag}")

    with get_client(sync_client=True) as client:
        # The automation on a release entering Suspended (here the stand-in's flow name): its
        # action pauses a dummy deployment, which the API shows.
        flow_id = client.create_flow_from_name(f"notify-{tag}")
        notify = client.create_deployment(flow_id=flow_id, name=f"on-approval-{tag}")
        automation = client.create_automation(
            awaiting_approval_automation([PauseDeployment(deployment_id=notify)], STANDIN_FLOW)
        )
        try:
            _until(
                "the served deployments",
                lambda: _deployments(client, name),
                proc=proc,
                log=log,
            )
            runs = {
                case: run_deployment(
                    f"{STANDIN_FLOW}/{name}",
                    parameters={"target": f"gate-{case}-{tag}"},
                    timeout=0,
                    as_subflow=False,
                ).id
                for case in cases
            }
            # Each release suspends at its gate: the journal says so, with the expiry run.
            for case, run_id in runs.items():
                state = _until(
                    f"{case}: suspended",
                    lambda run_id=run_id: _waiting(client, run_id),
                    proc=proc,
                    log=log,
                )
                assert state.name == "Suspended" and state.state_details.pause_key == "gate-50"
                waiting = journal.read(services[case])
                assert waiting is not None and waiting.state == "awaiting-approval"
                assert waiting.gate_key == "gate-50" and waiting.flow_run_id == str(run_id)
                expiry = client.read_flow_run(uuid.UUID(waiting.expiry_run_id))
                assert expiry.parameters["expiry_of"] == str(run_id)
                assert expiry.parameters["gate_key"] == "gate-50"
            # The Resume form: the RunInput's schema and the evidence with the decision line.
            description = client.read_flow_run_input(
                runs["approve"], "suspended-gate-50-description"
            )
            assert "Step 10% passed" in description
            assert "Approve to go on to 50%, reject to roll back" in description
            schema = client.read_flow_run_input(runs["approve"], "suspended-gate-50-schema")
            assert all(field in schema for field in ('"approve"', '"approver"', '"Approve"'))
            expiry_of_approve = journal.read(services["approve"]).expiry_run_id  # type: ignore[union-attr]
            assert client.read_flow_run(uuid.UUID(expiry_of_approve)).state.is_scheduled()

            # Approve as `shipyard promote` does (the abort deployment's own run is the timeout's).
            said = control.promote(
                target=f"gate-approve-{tag}", comment="p95 within band", by="alice"
            )
            assert "approved the gate" in said

            answers = {
                case: _until(
                    f"{case}: the release's decision",
                    lambda case=case: (
                        (v := Variable.get(decision_variable(services[case]))) and "by" in v and v
                    ),
                    proc=proc,
                    log=log,
                )
                for case in cases
            }
            for case, run_id in runs.items():
                _until(
                    f"{case}: completed",
                    lambda run_id=run_id: _state(client, run_id).is_completed(),
                    proc=proc,
                    log=log,
                )
            assert client.read_deployment(notify).paused is True  # the automation acted
        finally:
            client.delete_automation(automation)

    assert answers["approve"] == {
        "runs": 2,  # suspended, then run again from the start past the gate
        "approved": True,
        "by": "alice",
        "comment": "p95 within band",
        "timed_out": False,
    }
    assert answers["timeout"] == {
        "runs": 2,
        "approved": False,
        "by": "timeout",
        "comment": "no decision within 3 s",
        "timed_out": True,
    }
    with get_client(sync_client=True) as client:
        # A person decided first: the resumed release deleted its expiry run.
        with pytest.raises(ObjectNotFound):
            client.read_flow_run(uuid.UUID(expiry_of_approve))
        # The timeout's run is the abort deployment's, and it says what it did.
        from prefect.client.schemas.filters import (
            ArtifactFilter,
            ArtifactFilterKey,
            FlowRunFilter,
            FlowRunFilterTags,
        )

        expiries = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["gate-expiry"]))
        )
        ran = [r for r in expiries if r.parameters.get("expiry_of") == str(runs["timeout"])]
        assert len(ran) == 1 and ran[0].state.is_completed()
        said = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[f"rollout-abort-{services['timeout']}"])
            ),
            limit=1,
        )
        assert said and "rejected by the timeout" in str(said[0].description)


def _deployments(client: Any, name: str) -> bool:
    from prefect.exceptions import ObjectNotFound

    try:
        for full in (f"{STANDIN_FLOW}/{name}", "abort/abort", "promote/promote"):
            client.read_deployment_by_name(full)
    except ObjectNotFound:
        return False
    return True
