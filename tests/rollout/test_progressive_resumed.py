"""A release suspended at a rollout gate (a deployment run: Prefect's suspend_flow_run) frees its
slot; another release of the service meanwhile is refused with one line naming the waiting run;
once approved, Prefect re-runs the release from the start: it skips the GPU hand-over and the
canary (their figures come from the rollout journal), replays the steps already judged and
continues to 100 %.
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

HERE = Path(__file__).parent
IMAGE = "registry.sandbox.local/pages/page-service"


def _until(what, probe, timeout=180.0, log=None):
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            raise TimeoutError(f"{what}: not within {timeout:.0f} s\n{tail}")
        time.sleep(0.3)


def _canary_runs(service: str) -> int:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    with get_client(sync_client=True) as client:
        page = client.request(
            "POST",
            "/events/filter",
            json={
                "filter": EventFilter(
                    event=EventNameFilter(name=["shipyard.canary.started"]),
                    resource=EventResourceFilter(id=[f"shipyard.cloud-run.service.{service}"]),
                ).model_dump(mode="json"),
                "limit": 50,
            },
        ).json()
    return len(page["events"])


def test_a_release_suspended_at_a_gate_is_resumed_where_it_stopped(
    stage, make_target, sandbox_admin, tmp_path
):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.flow_runs import resume_flow_run
    from prefect.settings import PREFECT_API_URL

    from sandbox.procs import spawn
    from sandbox.release_invariants import serving, stale_canary_tags, stale_tags
    from shipyard.blocks.rollout_policy import JudgePolicy, LoadGenerator, RolloutPolicy
    from shipyard.blocks.rollout_policy import RolloutStep as Step
    from shipyard.flows.observe.ledger import read_ledger
    from shipyard.flows.release.flow import run_release
    from shipyard.flows.rollout.journal import read

    stage(default_region={"gpu": 2, "gpu_no_zonal_redundancy": 2})
    rollout = RolloutPolicy(
        steps=[Step(percent=50, bake_s=5.0), Step(percent=100, approval=True)],
        judge=JudgePolicy(min_samples=15, analysis_interval_s=1.0, failure_limit=1),
        load=LoadGenerator(rate_per_s=40),
    )
    target = make_target(regions=["europe-west1"], rollout=rollout)
    block = f"h3-resume-{uuid.uuid4().hex[:6]}"
    target.save(block, overwrite=True)
    first = run_release("v1.0.0", block, image=f"{IMAGE}:v1.0.0")
    assert first.outcome == "released", first.reasons

    name = f"progressive-{uuid.uuid4().hex[:6]}"
    log = tmp_path / "serve.log"
    proc = spawn(
        [sys.executable, str(HERE / "progressive_served.py"), name],
        log,
        env={
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "PYTHONUNBUFFERED": "1",
        },
    )
    try:

        def registered():
            from prefect.exceptions import ObjectNotFound

            with get_client(sync_client=True) as client:
                try:
                    return client.read_deployment_by_name(f"release/{name}")
                except ObjectNotFound:
                    return None

        _until("the runner's deployment", registered, log=log)
        run = run_deployment(
            f"release/{name}",
            parameters={"git_tag": "v2.0.0", "target": block, "image": f"{IMAGE}:v2.0.0"},
            timeout=0,
        )
        with get_client(sync_client=True) as client:

            def paused():
                state = client.read_flow_run(run.id).state
                assert state is None or not state.is_final(), (state.name, state.message)
                return state is not None and state.is_paused()

            _until("the release suspended at its gate", paused, log=log)
            waiting = read(target.service)
            assert waiting is not None and waiting.state == "awaiting-approval"
            assert waiting.flow_run_id == str(run.id) and waiting.percent == 50
            assert [(s.percent, s.verdict) for s in waiting.steps] == [(50, "pass")]

            # Its slot is free while it waits, but the service is not: one clear line.
            with pytest.raises(Exception, match="promote it or abort it first") as refused:
                run_release("v3.0.0", block, image=f"{IMAGE}:v3.0.0")
            assert str(run.id) in str(refused.value) and "v2.0.0" in str(refused.value)

            resume_flow_run(
                run.id, run_input={"approve": True, "comment": "figures fine", "approver": "ana"}
            )

            def ended():
                state = client.read_flow_run(run.id).state
                return state if state is not None and state.is_final() else None

            final = _until("the resumed release's end", ended, log=log)
        assert final.is_completed(), (final.name, final.message)
    finally:
        from test_gate import _stop

        _stop(proc)

    entry = [e for e in read_ledger(target.service) if e.git_tag == "v2.0.0"][-1]
    assert entry.outcome == "released"
    assert entry.steps == "50:pass,100:approved by ana,100:pass"
    assert _canary_runs(target.service) == 2  # v1's and v2's: the re-run did not canary again
    history = sandbox_admin.traffic_history(target.service)
    assert serving(history, "europe-west1") == {f"{target.service}-v2-0-0": 100}
    assert stale_canary_tags(history) == [] and stale_tags(history, "stable") == []
    assert read(target.service) is None  # the journal ends with the rollout
