"""An image that cannot start is the image's fault, the same in every region: the release
rolls back at the first region with Google's message, tries no other region and deploys no CPU
baseline with the same image; traffic stays on the last good revision."""

from __future__ import annotations

import pytest

from sandbox.release_invariants import (
    failed_revision_problems,
    invariant_violations,
    serving,
    stale_canary_tags,
)
from shipyard.flows.release.flow import release, run_release
from shipyard.flows.release.outcome import release_result

pytestmark = pytest.mark.slow

IMAGE = "registry.sandbox.local/pages/page-service"
# Cloud Run's text for a container that exits or never listens (sandbox/emulator/run_revisions.py)
NOT_READY = "The user-provided container failed to start and listen on the port"


def test_an_image_that_never_starts_rolls_back_in_the_first_region(
    stage, make_target, sandbox_admin
):
    # The broken image fails on any machine: GPU and CPU revisions alike.
    stage(revision_faults=[{"fault": "never_ready", "accelerator": "any", "image_contains": ":v2"}])
    target = make_target()  # two GPU regions, both with quota
    good = release("v1.0.0", target, image=f"{IMAGE}:v1.0.0")
    assert good.outcome == "released" and good.region == "europe-west1"
    created = sandbox_admin.calls()["run.revision_created"]

    state = release("v2.0.0", target, image=f"{IMAGE}:v2.0.0", return_state=True)
    bad = release_result(state)

    assert bad.outcome == "rolled_back", bad.reasons
    assert state.name == "RolledBack" and state.is_failed()
    assert NOT_READY in " | ".join(bad.reasons)
    assert bad.regions_tried.keys() == {"europe-west1"}  # us-central1 was never tried
    assert bad.revision == good.revision  # 100% stays on the last good GPU revision
    # One revision created: the GPU canary in europe-west1; no CPU baseline of the broken image.
    assert sandbox_admin.calls()["run.revision_created"] == created + 1
    assert not any(s.name == "cpu-path" for s in bad.steps)
    history = sandbox_admin.traffic_history(target.service)
    assert invariant_violations(history, [good, bad]) == []
    assert stale_canary_tags(history) == []
    assert serving(history, "europe-west1") == {good.revision: 100}
    assert serving(history, "us-central1") == {}
    failed = f"{target.service}-v2-0-0"
    assert failed_revision_problems(history, failed, {good.revision}) == []

    # The same tag again (a redelivered webhook, a retry by hand): the verdict stands. No
    # other region, no CPU baseline with the broken image; rolled back with Google's message.
    again = release_result(release("v2.0.0", target, image=f"{IMAGE}:v2.0.0", return_state=True))
    assert again.outcome == "rolled_back", again.reasons
    assert NOT_READY in " | ".join(again.reasons)
    assert "us-central1" not in again.regions_tried
    assert sandbox_admin.calls()["run.revision_created"] == created + 1
    assert again.revision == good.revision
    history = sandbox_admin.traffic_history(target.service)
    assert invariant_violations(history, [good, bad, again]) == []
    assert stale_canary_tags(history) == []
    assert serving(history, "europe-west1") == {good.revision: 100}
    assert serving(history, "us-central1") == {}


def test_a_first_release_of_an_image_that_never_starts_leaves_nothing_behind(
    stage, make_target, sandbox_admin
):
    """No service yet: the region's CPU baseline (the same image) cannot start either. The
    release rolls back there, tries no other region, deploys no second CPU revision, and
    deletes the service it created for nothing."""
    stage(revision_faults=[{"fault": "never_ready", "accelerator": "any"}])
    target = make_target()

    result = run_release("v1.0.0", target, image=f"{IMAGE}:v1.0.0")

    assert result.outcome == "rolled_back", result.reasons
    assert NOT_READY in " | ".join(result.reasons)
    assert list(result.regions_tried) == ["europe-west1"]
    assert "deleted" in result.regions_tried["europe-west1"]
    assert sandbox_admin.calls()["run.revision_created"] == 1  # the first CPU baseline only
    assert {s.name: s.state for s in result.steps}["clear:europe-west1"] == "completed"
    history = sandbox_admin.traffic_history(target.service)
    # (Invariant 1's checker flags the failed create itself: Google's failed create serves 0%.)
    assert [t for h in history for t in h["traffic"] if t["percent"]] == []  # nothing, ever
    assert stale_canary_tags(history) == []
    assert serving(history, "europe-west1") == {} and serving(history, "us-central1") == {}
