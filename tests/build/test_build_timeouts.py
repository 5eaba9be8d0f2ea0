"""A build or a prewarm that runs past its `timeout_seconds` ends `TimedOut` and cancels the
Cloud Build it left running (flows/observe/undo_hooks.py: Prefect 3.8.8 runs `on_failure` for a
timeout, there is no timeout hook).

The build waits in Cloud Build's queue for an hour (`builds.queue_ms`): it cannot end by itself
before the flow's timeout, whatever the machine's load. The timeout must fire once the build
was submitted: when this run's timeout came first (a loaded machine), the case runs again with
more time (`timed_out_holding`); no timing is asserted.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from google.cloud.devtools import cloudbuild_v1

from shipyard.blocks.cloud import GoogleCloud
from shipyard.flows.build.flow import build_release_image
from shipyard.flows.build.prewarm import prewarm_cache_tiers
from shipyard.flows.observe.undo_hooks import TIMED_OUT

HOLD_MS = 3_600_000  # longer than a test may last: the queued build cannot start by itself
# The timeouts tried, shortest first: each is far longer than the flow needs to submit its
# build on an idle machine; a later one is used only when the run timed out before that.
TIMEOUTS_S = (6, 20, 60)

pytestmark = pytest.mark.slow


def builds_tagged(tag: str) -> list[cloudbuild_v1.Build]:
    """The builds under a build tag, through the official client."""
    cloud = GoogleCloud()
    return list(
        cloud.builds_client().list_builds(
            project_id=cloud.resolved_project(), filter=f'tags="{tag}"'
        )
    )


def timed_out_holding(
    run: Callable[[float, int], Any], held: Callable[[int], bool], what: str
) -> tuple[Any, int]:
    """(the final state, the attempt) of the first `run(timeout, attempt)` whose timeout fired
    while `held(attempt)`: the step it must interrupt had started."""
    for attempt, timeout in enumerate(TIMEOUTS_S):
        state = run(timeout, attempt)
        assert state.name == TIMED_OUT, (state.type, state.name, state.message)
        if held(attempt):
            return state, attempt
    raise AssertionError(f"{what}: not started within {TIMEOUTS_S[-1]} s; nothing to undo")


def test_a_build_past_its_timeout_cancels_its_cloud_build(
    sandbox_admin, app_repo, settings_block, base_image
):
    sandbox_admin.reset(scenario_data={"builds": {"queue_ms": HOLD_MS}})
    prefix = f"v0.{uuid.uuid4().hex[:6]}"

    def run(timeout: float, attempt: int) -> Any:
        return build_release_image.with_options(timeout_seconds=timeout)(
            f"{prefix}.{attempt}",
            app_repo.head(),
            base_image=base_image,
            settings_block=settings_block,
            return_state=True,
        )

    _, attempt = timed_out_holding(
        run, lambda a: bool(builds_tagged(f"{prefix}.{a}")), "the build's submission"
    )
    builds = builds_tagged(f"{prefix}.{attempt}")
    assert [b.status for b in builds] == [cloudbuild_v1.Build.Status.CANCELLED]
    assert sandbox_admin.calls()["build.cancel"] >= 1


def test_a_prewarm_past_its_timeout_cancels_its_tier_build(
    sandbox_admin, settings_block, base_image
):
    sandbox_admin.reset(scenario_data={"builds": {"queue_ms": HOLD_MS}})
    before = {b.id for b in builds_tagged("shipyard-prewarm")}

    def run(timeout: float, attempt: int) -> Any:
        return prewarm_cache_tiers.with_options(timeout_seconds=timeout)(
            force=True, base_image=base_image, settings_block=settings_block, return_state=True
        )

    def submitted(attempt: int) -> bool:
        return bool({b.id for b in builds_tagged("shipyard-prewarm")} - before)

    timed_out_holding(run, submitted, "the first tier's build")
    ours = [b for b in builds_tagged("shipyard-prewarm") if b.id not in before]
    # One tier's build was submitted (the first tier waits in the queue: no second one), and
    # it was cancelled; none of the run's builds still runs.
    assert ours and {b.status for b in ours} == {cloudbuild_v1.Build.Status.CANCELLED}
