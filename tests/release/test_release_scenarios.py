"""The release flow on the sandbox, one story per test (issue 5's "Done when").

Each test stages a scenario, runs the real `release` flow (real Prefect server, official Google
clients over HTTP to the emulator, revisions answering real HTTP), and asserts the outcome AND
the invariants over the whole traffic history of the service(s).
"""

from __future__ import annotations

import pytest

from sandbox.release_invariants import (
    failed_revision_problems,
    invariant_violations,
    serving,
    stale_canary_tags,
)
from shipyard.flows.release.flow import ReleaseRolledBack, release, run_release
from shipyard.flows.release.outcome import release_result

pytestmark = pytest.mark.slow

IMAGE = "registry.sandbox.local/pages/page-service"
# For a test whose verdict hangs on the speed check (GPU >= 30% faster than the CPU baseline):
# CPU pages 1.5 s slower than GPU ones. A page's own work (decode, resize, encode, HTTP) takes
# up to some hundreds of ms on a loaded 2-core machine (a baseline page measured 647 ms for
# 300 ms of serving under load 10): the default 300 ms is within that noise, and the baseline
# is one page, so one slow page could flip the verdict. Here it takes a spike of ~700 ms.
FAR_APART = {"gpu_ms": 5, "cpu_ms": 1500}


def history_of(admin, target):
    return admin.traffic_history(target.service)


def assert_invariants(admin, target, *results, known_good=frozenset()):
    history = history_of(admin, target)
    assert history, "the release changed nothing in the sandbox"
    assert invariant_violations(history, results, known_good) == []
    assert stale_canary_tags(history) == []
    return history


def test_fallback_to_second_region(stage, make_target, sandbox_admin):
    from prefect.variables import Variable

    from shipyard.flows.deploy.traffic import serving_url_variable

    stage(regions={"europe-west1": {"gpu": 0, "gpu_no_zonal_redundancy": 0}}, serving=FAR_APART)
    target = make_target()

    result = run_release("v1.0.0", target, image=f"{IMAGE}:v1.0.0")

    assert result.outcome == "released"
    assert result.region == "us-central1"
    assert result.outside_primary is True
    assert result.revision == f"{target.service}-v1-0-0"
    assert result.regions_tried == {"us-central1": "deployed"}  # europe never attempted
    assert result.canary and result.canary.passed and result.canary.runs == 3
    assert result.canary.fallback_used is False
    assert Variable.get(serving_url_variable(target.service)) == result.url
    assert "us-central1" in result.url
    calls = sandbox_admin.calls()
    assert calls.get("quotas.create_preference", 0) == 0  # quota was there: nothing requested
    history = assert_invariants(sandbox_admin, target, result)
    assert serving(history, "us-central1") == {result.revision: 100}


def test_quota_granted_after_polling(stage, make_target, sandbox_admin):
    stage("default")  # europe-west1: 0 and denied; us-central1: 0, granted after two polls
    target = make_target()

    result = run_release("v2.0.0", target, image=f"{IMAGE}:v2.0.0")

    assert result.outcome == "released", result.reasons
    assert result.region == "us-central1"
    states = {p.region: p for p in result.preferences}
    assert states["europe-west1"].state == "denied"
    assert states["us-central1"].state == "granted"
    assert states["us-central1"].polls >= 2
    # Per project and region (quota is), never per service.
    assert states["us-central1"].preference_id == "shipyard-l4-nzr-us-central1"
    assert sandbox_admin.calls()["quotas.create_preference"] == 2
    assert_invariants(sandbox_admin, target, result)


def test_no_gpu_anywhere_keeps_cpu_baseline(stage, make_target, sandbox_admin):
    deny = {"gpu": 0, "gpu_no_zonal_redundancy": 0, "preference": {"decision": "deny"}}
    stage(default_region=deny, regions={"europe-west1": deny, "us-central1": deny})
    target = make_target()

    state = release("v3.0.0", target, image=f"{IMAGE}:v3.0.0", return_state=True)
    result = state.result()

    assert result.outcome == "cpu_fallback"
    # Serving on a Ready CPU revision: Completed-type, marked by its name and message.
    assert state.is_completed() and state.name == "CPUFallback"
    assert "fell back to CPU" in state.message
    assert result.region == "europe-west1"  # the primary
    assert result.revision == f"{target.service}-v3-0-0-cpu"
    assert result.canary is None
    history = assert_invariants(sandbox_admin, target, result)
    assert serving(history, "europe-west1") == {result.revision: 100}
    # No GPU revision was ever created: the quota said no, the preferences were denied.
    assert sandbox_admin.calls()["run.revision_created"] == 1


def test_silent_cpu_fallback_rolls_back_to_last_good(stage, make_target, sandbox_admin):
    # v4's GPU must beat the CPU baseline it measures, v5's pages (on the CPU) must not beat the
    # baseline recorded by v4: both hold whatever the load with the speeds far apart.
    stage(
        revision_faults=[{"fault": "silent_cpu_fallback", "image_contains": ":v5"}],
        serving=FAR_APART,
    )
    target = make_target()
    good = release("v4.0.0", target, image=f"{IMAGE}:v4.0.0")
    assert good.outcome == "released"

    # A call of the flow raises for a rollback; the exception carries the result.
    with pytest.raises(ReleaseRolledBack, match="ROLLED BACK") as rolled_back:
        release("v5.0.0", target, image=f"{IMAGE}:v5.0.0")
    bad = rolled_back.value.result

    assert bad.outcome == "rolled_back"
    assert bad.revision == good.revision  # 100% stays on the last good GPU revision
    assert bad.canary is not None and not bad.canary.passed
    assert bad.canary.fallback_used is True
    assert bad.canary.baseline_source == "recorded"  # from the v4 release's record
    reasons = " | ".join(bad.reasons)
    assert "x-fallback-used: '1', expected '0'" in reasons
    assert "Failed to create CUDAExecutionProvider" in reasons
    assert "speed-up" in reasons
    history = assert_invariants(sandbox_admin, target, good, bad)
    failed = f"{target.service}-v5-0-0"
    assert failed_revision_problems(history, failed, {good.revision}) == []


def test_oom_in_canary_rolls_back(stage, make_target, sandbox_admin):
    stage(revision_faults=[{"fault": "oom"}])
    target = make_target()

    state = release("v6.0.0", target, image=f"{IMAGE}:v6.0.0", return_state=True)
    result = release_result(state)

    assert result.outcome == "rolled_back"
    # The run does not pass for a release: Failed-type (red in the UI), its own state name,
    # the reason and what serves.
    assert state.name == "RolledBack" and state.is_failed()
    assert state.result(raise_on_failure=False).result == result
    assert "ROLLED BACK" in state.message and "canary" in state.message
    assert f"{target.service}-v6-0-0-cpu serves 100%" in state.message
    assert result.revision == f"{target.service}-v6-0-0-cpu"  # nothing else ever served
    reasons = " | ".join(result.reasons)
    # Google's OOM: a 503 to the client, then the platform's lines in the revision's log.
    assert "status 503, expected 200" in reasons
    assert "Memory limit of 16384 MiB exceeded with" in reasons
    history = assert_invariants(sandbox_admin, target, result)
    assert failed_revision_problems(history, f"{target.service}-v6-0-0", {result.revision}) == []


def test_a_retry_never_gets_the_canary_past_an_oom(stage, make_target, sandbox_admin):
    """One OOM (the first page request): the retried request succeeds, every run answers
    200, and still the canary fails on Cloud Run's OOM line in the revision's log."""
    stage(revision_faults=[{"fault": "oom", "requests": 1}])
    target = make_target()

    result = run_release("v6.1.0", target, image=f"{IMAGE}:v6.1.0")

    assert result.outcome == "rolled_back", result.reasons
    assert result.canary is not None and result.canary.runs == 3 and not result.canary.passed
    first = next(s for s in result.steps if s.name == "canary-run-1")
    assert first.attempts == 2  # the OOM's 503, then a 200
    assert not any("expected 200" in r for r in result.reasons)
    reasons = " | ".join(result.reasons)
    assert "Memory limit of 16384 MiB exceeded with" in reasons
    assert sandbox_admin.calls()["run.oom_killed"] == 1


def test_rollback_applies_the_cpu_baseline_when_the_policy_asks(stage, make_target, sandbox_admin):
    stage(revision_faults=[{"fault": "oom", "image_contains": ":v13.1"}])
    target = make_target(rollback_to_cpu=True)
    good = run_release("v13.0.0", target, image=f"{IMAGE}:v13.0.0")
    assert good.outcome == "released"

    bad = run_release("v13.1.0", target, image=f"{IMAGE}:v13.1.0")

    baseline = f"{target.service}-v13-1-0-cpu"  # the CPU template, with this release's image
    assert bad.outcome == "rolled_back" and bad.revision == baseline
    history = assert_invariants(sandbox_admin, target, good, bad)
    assert serving(history, "europe-west1") == {baseline: 100}
    # It was created at 0% beside the serving revision, and got traffic once Ready.
    first_seen = next(h for h in history if baseline in h["revisions"])
    assert {t["revision"]: t["percent"] for t in first_seen["traffic"]}.get(baseline, 0) == 0
    assert failed_revision_problems(history, f"{target.service}-v13-1-0", {baseline}) == []


def test_rolled_back_tag_released_again_converges(stage, make_target, sandbox_admin):
    stage(revision_faults=[{"fault": "oom"}])
    target = make_target()
    first = run_release("v6.1.0", target, image=f"{IMAGE}:v6.1.0")
    assert first.outcome == "rolled_back"
    created = sandbox_admin.calls()["run.revision_created"]

    again = run_release("v6.1.0", target, image=f"{IMAGE}:v6.1.0")

    # The same revision is canaried again (and fails again): nothing new is created.
    assert again.outcome == "rolled_back"
    assert again.regions_tried == {"europe-west1": "deployed (reused)"}
    assert {s.name: s.state for s in again.steps}.get("quota") is None  # no quota round
    assert sandbox_admin.calls()["run.revision_created"] == created
    history = assert_invariants(sandbox_admin, target, first, again)
    failed = f"{target.service}-v6-1-0"
    assert failed_revision_problems(history, failed, {f"{failed}-cpu"}) == []


def test_existing_service_on_latest_keeps_its_traffic_until_the_canary_passed(
    stage, make_target, sandbox_admin, cloud
):
    """A service deployed outside Shipyard (traffic: LATEST 100%) in the primary region: the
    GPU revision must not inherit LATEST's traffic when it is created."""
    from google.cloud import run_v2

    from shipyard.tasks import cloud_run as cr

    stage()
    target = make_target()
    project = cloud.resolved_project()
    legacy = f"{target.service}-00001-old"
    body = run_v2.Service(
        template=run_v2.RevisionTemplate(
            revision=legacy,
            containers=[
                run_v2.Container(
                    image=f"{IMAGE}:legacy",
                    resources=run_v2.ResourceRequirements(limits={"cpu": "4", "memory": "8Gi"}),
                )
            ],
        ),
        traffic=[cr.Traffic(None, 100, latest=True).to_proto()],
    )
    cr.create_service(
        cloud.services_client(), project, "europe-west1", body, target.service, poll_s=0.02
    )

    result = run_release("v12.0.0", target, image=f"{IMAGE}:v12.0.0")

    assert result.outcome == "released" and result.region == "europe-west1"
    assert not result.outside_primary
    history = assert_invariants(sandbox_admin, target, result, known_good={legacy})
    final = history[-1]["traffic"]
    assert {(t["revision"], t["percent"], t["tag"]) for t in final} == {
        (result.revision, 100, ""),
        (legacy, 0, "prior"),
    }


def test_transient_canary_503_is_retried_and_passes(stage, make_target, sandbox_admin):
    stage(revision_faults=[{"fault": "http_503", "requests": 2}])
    target = make_target()

    result = run_release("v7.0.0", target, image=f"{IMAGE}:v7.0.0")

    assert result.outcome == "released", result.reasons
    first = next(s for s in result.steps if s.name == "canary-run-1")
    assert first.attempts == 3  # 503, 503, 200
    assert all(s.attempts == 1 for s in result.steps if s.name in ("canary-run-2", "canary-run-3"))
    assert_invariants(sandbox_admin, target, result)


@pytest.mark.parametrize("where", ["api", "operation", "revision"])
def test_quota_message_at_deploy_moves_to_next_region(where, stage, make_target, sandbox_admin):
    # QuotaInfo says 1 GPU in europe-west1, yet the deploy is refused with Google's message.
    stage(regions={"europe-west1": {"deploy_error": {"where": where}}})
    target = make_target()

    result = run_release("v8.0.0", target, image=f"{IMAGE}:v8.0.0")

    assert result.outcome == "released", result.reasons
    assert result.region == "us-central1"
    assert result.regions_tried["europe-west1"].startswith("quota: ")
    assert (
        "Quota exceeded for total allowable count of GPUs" in result.regions_tried["europe-west1"]
    )
    assert sandbox_admin.calls()[f"run.deploy_error.{where}"] >= 1
    deploy_eu = next(s for s in result.steps if s.name == "deploy:europe-west1")
    assert deploy_eu.attempts == 1  # a quota refusal is not retried as a 429
    history = assert_invariants(sandbox_admin, target, result)
    # europe-west1 refused: the service this release created there (CPU baseline at 100%,
    # the refused revision at 0% untagged) is deleted once the release serves elsewhere.
    europe = [h for h in history if "/locations/europe-west1/" in h["name"]]
    before_delete, deleted = europe[:-1], europe[-1]
    cpu = f"{target.service}-v8-0-0-cpu"
    assert failed_revision_problems(before_delete, result.revision, {cpu}) == []
    assert deleted["event"] == "delete" and not deleted["exists"]
    assert serving(history, "europe-west1") == {}
    assert sandbox_admin.calls()["run.delete_service"] == 1
    assert result.regions_tried["europe-west1"].endswith(
        "the service this release created here was deleted"
    )


def test_same_tag_twice_converges(stage, make_target, sandbox_admin, app_build, pinned_base):
    """Base-image pin -> real build -> deploy -> canary -> cutover; then the same tag again."""
    stage("default")
    settings_block, repo = app_build
    repo.tag("v9.0.0")
    target = make_target(base_image=pinned_base, build_settings_block=settings_block)
    first = run_release("v9.0.0", target)  # no image: the flow builds it
    assert first.outcome == "released", first.reasons
    assert first.image and "@sha256:" in first.image
    assert {s.name: s.state for s in first.steps}["build"] == "completed"
    before = sandbox_admin.calls()
    assert before["build.create"] == 1

    again = run_release("v9.0.0", target)

    after = sandbox_admin.calls()
    assert again.outcome == "released" and again.noop is True
    assert (again.region, again.revision, again.url) == (first.region, first.revision, first.url)
    assert after["run.revision_created"] == before["run.revision_created"]
    assert after["quotas.create_preference"] == before["quotas.create_preference"] == 2
    assert after["build.create"] == 1  # no second build
    assert after.get("run.update_service", 0) == before.get("run.update_service", 0)
    assert {s.name: s.state for s in again.steps}["build"] == "skipped"
    assert_invariants(sandbox_admin, target, first, again)


def test_build_failure_stops_before_any_deploy(
    stage, make_target, sandbox_admin, app_build, pinned_base
):
    from shipyard.flows.release.flow import ReleaseError

    stage(builds={"fail_step": "[builder", "message": "No space left on device"})
    settings_block, repo = app_build
    repo.tag("v9.1.0")
    target = make_target(base_image=pinned_base, build_settings_block=settings_block)

    with pytest.raises(ReleaseError, match=r"build of v9\.1\.0 failed.*No space left on device"):
        release("v9.1.0", target)

    calls = sandbox_admin.calls()
    assert calls["build.create"] == 1
    deploys = [k for k in calls if k.startswith(("run.create", "run.update", "run.revision"))]
    assert deploys == []  # Cloud Run was only read (is the tag already serving?)
    assert sandbox_admin.traffic_history(target.service) == []


def test_dry_run_changes_nothing(stage, make_target, sandbox_admin):
    stage("default")
    target = make_target()

    result = run_release("v10.0.0", target, dry_run=True, image=f"{IMAGE}:v10.0.0")

    assert result.outcome == "planned" and result.dry_run
    assert result.plan is not None
    assert result.plan.revision == f"{target.service}-v10-0-0"
    assert result.plan.candidates == []
    assert result.plan.quota_preferences == [
        "shipyard-l4-nzr-europe-west1",
        "shipyard-l4-nzr-us-central1",
    ]
    assert [q.region for q in result.plan.quotas] == ["europe-west1", "us-central1"]
    calls = sandbox_admin.calls()
    changing = [k for k in calls if k.split(".")[-1].startswith(("create", "update", "delete"))]
    assert changing == [], calls
    assert sandbox_admin.traffic_history(target.service) == []


def test_transient_cloud_run_errors_are_retried(stage, make_target, sandbox_admin):
    # Every 10th Cloud Run call fails (429 or 503): more than one step attempt makes, so a
    # retried step gets through; a permanent failure would not.
    stage(apis={"run": {"every_nth": 10, "error_codes": [429, 503]}})
    target = make_target()

    result = run_release("v11.0.0", target, image=f"{IMAGE}:v11.0.0")

    assert result.outcome == "released", result.reasons
    assert sandbox_admin.calls()["fault.run"] >= 1
    assert any(s.attempts > 1 for s in result.steps)
    assert_invariants(sandbox_admin, target, result)


def test_gpu_quota_refused_on_update_then_granted_releases_on_the_rerun(
    stage, make_target, sandbox_admin
):
    """Google accepts the GPU update and fails the revision for quota (the revision keeps its
    name); once the quota is there, a re-run deploys the tag again in that region under a new
    attempt name, not skipping the region forever."""
    deny = {"gpu": 0, "gpu_no_zonal_redundancy": 0, "preference": {"decision": "deny"}}
    stage(
        default_region=deny,
        regions={
            "europe-west1": {"deploy_error": {"where": "revision", "times": 1}},
            "us-central1": deny,
        },
    )
    target = make_target()

    first = run_release("v12.0.0", target, image=f"{IMAGE}:v12.0.0")
    assert first.outcome == "cpu_fallback", first.reasons
    assert "Quota exceeded for total allowable count of GPUs" in first.regions_tried["europe-west1"]

    second = run_release("v12.0.0", target, image=f"{IMAGE}:v12.0.0")
    assert second.outcome == "released", second.reasons
    assert second.region == "europe-west1"
    assert second.revision == f"{target.service}-v12-0-0-r2"
    history = assert_invariants(sandbox_admin, target, first, second)
    assert serving(history, "europe-west1") == {second.revision: 100}

    third = run_release("v12.0.0", target, image=f"{IMAGE}:v12.0.0")  # converged: nothing new
    assert third.noop and third.revision == second.revision


def test_gpu_quota_of_one_still_releases_over_a_warm_previous_gpu_revision(
    stage, make_target, sandbox_admin
):
    """Cloud Run counts running GPU instances against the region's quota: with quota 1 and the
    previous GPU revision warm (min instances 1, serving), the canary's requests would get
    Google's 503 "... exceeded its quota limit for run.googleapis.com/nvidia_l4_gpu_allocation_
    no_zonal_redundancy" for ever. The release hands the traffic to the CPU baseline during the
    canary, cuts over when it passes, and restores the previous split when it fails."""
    stage(
        default_region={"gpu": 1, "gpu_no_zonal_redundancy": 1},
        revision_faults=[{"fault": "silent_cpu_fallback", "image_contains": ":v17.1"}],
    )
    warm = make_target().gpu_template.model_copy(update={"min_instances": 1})
    target = make_target(regions=["europe-west1"], gpu_template=warm)
    first = run_release("v17.0.0", target, image=f"{IMAGE}:v17.0.0")
    assert first.outcome == "released", first.reasons

    bad = run_release("v17.1.0", target, image=f"{IMAGE}:v17.1.0")  # its canary fails

    assert bad.outcome == "rolled_back" and bad.revision == first.revision
    # The CPU revision got users only after it passed the canary's answer checks.
    cpu = f"{target.service}-v17-0-0-cpu"
    assert any(f"{cpu} passed the canary's answer checks" in r for r in bad.reasons), bad.reasons
    assert any("fallback" in r for r in bad.reasons)  # judged, not starved of a GPU
    assert not any("status 503" in r for r in bad.reasons), bad.reasons
    history = assert_invariants(sandbox_admin, target, first, bad)
    assert serving(history, "europe-west1") == {first.revision: 100}  # restored

    second = run_release("v17.2.0", target, image=f"{IMAGE}:v17.2.0")

    assert second.outcome == "released", second.reasons
    assert second.canary is not None and second.canary.passed
    assert all(s.attempts == 1 for s in second.steps if s.name.startswith("canary-run"))
    handed = f"GPU quota 1 in europe-west1 cannot run {first.revision}"
    assert any(handed in r for r in second.reasons), second.reasons
    # Checked once, recorded: the next hand-over trusts it without checking again.
    assert any(f"{cpu} (passed its answer check" in r for r in second.reasons), second.reasons
    assert not any(s.name.startswith("cpu-baseline-check") for s in second.steps)
    history = assert_invariants(sandbox_admin, target, first, bad, second)
    assert serving(history, "europe-west1") == {second.revision: 100}
    # During the canary a CPU revision served: never the untested one, never nothing.
    during = [h for h in history if any(t["tag"] == "canary" for t in h["traffic"])]
    assert any(
        {t["revision"]: t["percent"] for t in h["traffic"] if t["percent"]} == {cpu: 100}
        for h in during
    )
    assert sandbox_admin.calls().get("run.instance_quota_exceeded", 0) == 0


def test_only_a_service_holding_nothing_but_the_tags_revisions_counts_as_created(make_target):
    from shipyard.flows.deploy.region_deploy import created_for_tag
    from shipyard.flows.release.context import RunContext

    target = make_target(service="pg-created")
    ctx = RunContext(target, "v1.0.0", None)
    assert created_for_tag(ctx, ["pg-created-v1-0-0-cpu", "pg-created-v1-0-0"])
    assert created_for_tag(ctx, ["pg-created-v1-0-0-cpu", "pg-created-v1-0-0-r2"])
    # It served an earlier release (or someone else's revision): never deleted.
    assert not created_for_tag(ctx, ["pg-created-v0-9-0", "pg-created-v1-0-0-cpu"])
    assert not created_for_tag(ctx, ["pg-created-v1-0-00-cpu"])
    assert not created_for_tag(ctx, [])


@pytest.mark.parametrize("recorded_under", ["60 days ago", "another CPU template"])
def test_a_baseline_recorded_under_other_conditions_is_measured_again(
    recorded_under, stage, make_target, sandbox_admin
):
    """A recorded CPU baseline of 1 ms would fail every canary ("speed-up -..%"): when it is
    older than CanaryPolicy.baseline_max_age_days or was measured on another CPU template, the
    canary measures the baseline again and judges with the new figure, which is recorded."""
    import datetime as dt

    from prefect.variables import Variable

    from shipyard.blocks.release_target import cpu_template_fingerprint
    from shipyard.flows.canary.stage import recorded_release, release_variable

    stage()
    target = make_target()
    now = dt.datetime.now(dt.UTC)
    old = recorded_under == "60 days ago"
    Variable.set(
        release_variable(target.service),
        {
            "git_tag": "v0.1.0",
            "cpu_baseline_ms": 1.0,
            "cpu_baseline_at": (now - dt.timedelta(days=60 if old else 0)).isoformat(),
            "cpu_template": cpu_template_fingerprint(target) if old else "another-template",
        },
        overwrite=True,
    )

    result = release("v14.0.0", target, image=f"{IMAGE}:v14.0.0")

    assert result.outcome == "released", result.reasons
    assert result.canary is not None and result.canary.baseline_source == "measured"
    assert result.canary.baseline_ms is not None and result.canary.baseline_ms > 100
    record = recorded_release(target.service)
    assert record["cpu_baseline_ms"] == result.canary.baseline_ms
    assert record["cpu_template"] == cpu_template_fingerprint(target)
    assert dt.datetime.fromisoformat(record["cpu_baseline_at"]) >= now
    assert_invariants(sandbox_admin, target, result)
