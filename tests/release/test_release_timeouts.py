"""A release that runs past its `timeout_seconds` ends `TimedOut` and leaves the service as the
last good release left it: its Cloud Build cancelled, no `canary` tag, 100% on a Ready
revision, the release slot free (Prefect 3.8.8 runs `on_failure` for a timeout, not
`on_cancellation` / `on_crashed`: flows/observe/undo_hooks.py).

Each case holds one step far longer than the test may last (a build queued for an hour; a
canary of 50 runs of 2 s pages), so the step cannot end by itself before the timeout. The
timeout must fire once the step started: when this run's timeout came first (a loaded machine),
the case runs again with more time, on a service of its own; no timing is asserted. The run is
in-process (`release.with_options(timeout_seconds=...)`), where Prefect's timer raises in the
flow's thread between two Python instructions, so the 2 s pages bound how late it lands.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from google.cloud.devtools import cloudbuild_v1

from bench.fault_matrix import slot_held
from sandbox.release_invariants import invariant_violations, serving, stale_canary_tags
from shipyard.blocks.cloud import GoogleCloud
from shipyard.flows.observe.undo_hooks import TIMED_OUT
from shipyard.flows.release.flow import release

pytestmark = pytest.mark.slow

IMAGE = "registry.sandbox.local/pages/page-service"
EU = "europe-west1"
HOLD_MS = 3_600_000  # longer than a test may last
# Shortest first; a later one only when the run timed out before the held step started.
TIMEOUTS_S = (8, 25, 60)


def _builds(git_tag: str) -> list[cloudbuild_v1.Build]:
    cloud = GoogleCloud()
    return list(
        cloud.builds_client().list_builds(
            project_id=cloud.resolved_project(), filter=f'tags="{git_tag}"'
        )
    )


def _ever_tagged(history: list[dict], tag: str) -> bool:
    return any(t.get("tag") == tag for entry in history for t in entry["traffic"])


def _timed_out_holding(
    make: Callable[[int], Any],
    git_tag: Callable[[int], str],
    held: Callable[[Any, int], bool],
    image: str = "",
) -> tuple[Any, Any, int]:
    """(the final state, the target, the attempt) of the first release timed out while `held`."""
    for attempt, timeout in enumerate(TIMEOUTS_S):
        target = make(attempt)
        target.save(target.service, overwrite=True)
        state = release.with_options(timeout_seconds=timeout)(
            git_tag(attempt), target=target.service, image=image, return_state=True
        )
        assert state.name == TIMED_OUT, (state.type, state.name, state.message)
        if held(target, attempt):
            return state, target, attempt
    raise AssertionError(f"the held step did not start within {TIMEOUTS_S[-1]} s")


def test_a_release_timed_out_while_building_cancels_its_cloud_build(
    stage, make_target, sandbox_admin, app_build, pinned_base
):
    stage(builds={"queue_ms": HOLD_MS})
    settings_block, repo = app_build
    for attempt in range(len(TIMEOUTS_S)):
        repo.tag(f"v1.0.{attempt}")

    def make(attempt: int) -> Any:
        return make_target(
            service=f"pg-timed-out-build-{attempt}",
            base_image=pinned_base,
            build_settings_block=settings_block,
        )

    _, target, attempt = _timed_out_holding(
        make, lambda a: f"v1.0.{a}", lambda _t, a: bool(_builds(f"v1.0.{a}"))
    )
    # The queued build was cancelled; nothing was deployed, so nothing is tagged.
    assert [b.status for b in _builds(f"v1.0.{attempt}")] == [cloudbuild_v1.Build.Status.CANCELLED]
    assert sandbox_admin.traffic_history(target.service) == []
    assert not slot_held(target.service)


def test_a_release_timed_out_in_its_canary_leaves_no_canary_tag(stage, make_target, sandbox_admin):
    """Here the release's own handler (flows/release/deploy_stages.py: the canary could not be
    judged) takes the tag off before the run ends; the undo hook finds nothing left to do. A
    guard of the outcome after a timeout, whichever of the two cleans up."""
    stage(serving={"gpu_ms": 2_000})
    # The session's canary policy, with 50 runs of each sample: far longer than any timeout.
    policy = make_target(service="pg-timed-out-canary").canary.model_copy(update={"runs": 50})

    def make(attempt: int) -> Any:
        return make_target(service=f"pg-timed-out-canary-{attempt}", regions=[EU], canary=policy)

    def held(target: Any, attempt: int) -> bool:
        return _ever_tagged(sandbox_admin.traffic_history(target.service), "canary")

    _, target, _ = _timed_out_holding(make, lambda a: "v2.0.0", held, f"{IMAGE}:v2.0.0")
    history = sandbox_admin.traffic_history(target.service)
    assert stale_canary_tags(history) == []
    assert invariant_violations(history, []) == []
    # Nothing served before: the last good revision is the CPU baseline the deploy created.
    assert serving(history, EU) == {f"{target.service}-v2-0-0-cpu": 100}
    assert not slot_held(target.service)
