"""One retry mechanism: the release's reads of Google are Prefect task runs, retried by Prefect.

The tag's revision is looked up in every region as one task run per region
(`find-release:<region>`, side by side), and the canary's Cloud Logging read is the Cloud Logging
task itself (`canary-logs`). A transient error on one region's read is retried by Prefect on that
region's task run (run_count 2, a Retrying state), not by a loop the UI cannot see. Read back
through the Prefect API.
"""

from __future__ import annotations

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from sandbox.release_invariants import invariant_violations, stale_canary_tags
from shipyard.flows.release.flow import release
from shipyard.tasks.waiting import Deadline, NotYet, wait_for

pytestmark = pytest.mark.slow

IMAGE = "registry.sandbox.local/pages/page-service"
EU, US = "europe-west1", "us-central1"


def test_region_reads_are_task_runs_and_prefect_retries_one_regions_error(
    stage, make_target, sandbox_admin
):
    # One 429 (rate limit) on the first Cloud Run call in us-central1 only, one 503 on the first
    # Cloud Logging read (entries:list; the pipeline's own log writes are not touched).
    stage(
        apis={
            "run": {"first_n": 1, "error_codes": [429], "only_path": f"/locations/{US}/"},
            "logging": {"first_n": 1, "error_codes": [503], "only_path": "entries:list"},
        }
    )
    target = make_target()
    result = release("v1.0.0", target, image=f"{IMAGE}:v1.0.0")
    assert result.outcome == "released", result.reasons
    assert sandbox_admin.calls().get("fault.run") == 1
    assert sandbox_admin.calls().get("fault.logging") == 1

    wanted = {f"find-release:{EU}", f"find-release:{US}", "canary-logs"}

    def recorded() -> list:
        # Task runs are written by the server's task-run recorder from events, after the flow
        # has ended: on a busy machine, a moment later.
        with get_client(sync_client=True) as client:
            found = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[result.flow_run_id]))
            )
        if not wanted <= {r.name for r in found}:
            raise NotYet(sorted(r.name for r in found))
        return found

    # Missing ones after the deadline: WaitExpired, naming the task runs that were recorded.
    runs = wait_for(
        recorded,
        what=f"the task runs {sorted(wanted)}",
        first_delay_s=0.2,
        max_delay_s=2.0,
        deadline=Deadline(60),
        heartbeat_s=None,
    )
    by_name = {r.name: r for r in runs}
    assert wanted <= set(by_name)
    with get_client(sync_client=True) as client:
        assert "find-release" not in by_name  # no one task hiding the regions
        assert by_name[f"find-release:{EU}"].run_count == 1
        assert by_name[f"find-release:{US}"].run_count == 2
        assert by_name["canary-logs"].run_count == 2
        for name in (f"find-release:{US}", "canary-logs"):
            states = [s.name for s in client.read_task_run_states(by_name[name].id)]
            assert "Retrying" in states and states[-1] == "Completed", (name, states)

    steps = {s.name: s for s in result.steps}
    assert steps["find-release"].attempts == 2
    assert steps["canary-logs"].attempts == 2
    history = sandbox_admin.traffic_history(target.service)
    assert invariant_violations(history, [result]) == []
    assert stale_canary_tags(history) == []
