"""A released and a rolled-back release, seen from outside: their stage events in order with
the right resources, their log lines in Cloud Logging (sandbox) with labels, their ledger."""

from __future__ import annotations

import datetime as dt

import pytest
from observed_kit import in_order, of_run, related, service_events
from progress_bars import progress_bars
from test_release_guards import _events as _events_of

from shipyard.flows.observe.ledger import read_ledger
from shipyard.flows.release.flow import run_release

pytestmark = pytest.mark.slow

IMAGE = "registry.sandbox.local/pages/page-service"


def test_released_and_rolled_back_leave_events_logs_and_ledger(
    stage, make_target, sandbox_admin, cloud, info_logs
):
    stage(revision_faults=[{"fault": "silent_cpu_fallback", "image_contains": ":v2"}])
    target = make_target()
    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)

    good = run_release("v1.0.0", target, image=f"{IMAGE}:v1.0.0")
    bad = run_release("v2.0.0", target, image=f"{IMAGE}:v2.0.0")
    assert (good.outcome, bad.outcome) == ("released", "rolled_back")

    events = service_events(
        target.service, since, {"shipyard.release.released", "shipyard.release.rolled-back"}
    )
    first = [e.event for e in of_run(events, good.flow_run_id)]
    second = [e.event for e in of_run(events, bad.flow_run_id)]
    assert in_order(
        first,
        [
            "shipyard.release.started",
            "shipyard.quota.started",
            "shipyard.quota.succeeded",
            "shipyard.deploy.started",
            "shipyard.deploy.succeeded",
            "shipyard.canary.started",
            "shipyard.canary.succeeded",
            "shipyard.cutover.started",
            "shipyard.cutover.succeeded",
            "shipyard.release.released",
        ],
    ), first
    assert in_order(
        second,
        [
            "shipyard.release.started",
            "shipyard.deploy.started",
            "shipyard.deploy.succeeded",
            "shipyard.canary.started",
            "shipyard.canary.failed",
            "shipyard.rollback.started",
            "shipyard.rollback.succeeded",
            "shipyard.release.rolled-back",
        ],
    ), second
    assert not any(n.endswith(".failed") for n in first)
    assert "shipyard.cutover.started" not in second

    # Prefect's own event for the run's final state: named RolledBack, of the FAILED type
    # (what an automation on failed flow runs matches with `prefect.state-type`).
    run_events = _events_of(
        f"prefect.flow-run.{bad.flow_run_id}", since, "prefect.flow-run.RolledBack"
    )
    final = next(e for e in run_events if e.event == "prefect.flow-run.RolledBack")
    assert final.resource["prefect.state-type"] == "FAILED"
    assert "ROLLED BACK" in final.resource["prefect.state-message"]
    flows = [r for r in final.related if r.id.startswith("prefect.flow.")]
    assert [r.get("prefect.resource.name") for r in flows] == ["release"]

    # Resources: the service is primary; tag, region, revision, digest-less image, run related.
    deploy = next(
        e for e in of_run(events, bad.flow_run_id) if e.event == "shipyard.deploy.started"
    )
    assert deploy.resource.id == f"shipyard.cloud-run.service.{target.service}"
    assert related(deploy, "git-tag") == "shipyard.git-tag.v2.0.0"
    assert related(deploy, "region") == "shipyard.gcp.region.europe-west1"
    assert related(deploy, "revision") == f"shipyard.cloud-run.revision.{target.service}-v2-0-0"
    canary_failed = next(e for e in events if e.event == "shipyard.canary.failed")
    assert "x-fallback-used" in canary_failed.payload["cause"]
    rollback = next(e for e in events if e.event == "shipyard.rollback.started")
    assert related(rollback, "revision") == f"shipyard.cloud-run.revision.{target.service}-v2-0-0"

    # Cloud Logging (sandbox): the pipeline's lines with labels, found by filter.
    client = cloud.logging_client()
    query = (
        'logName="projects/shipyard-sandbox/logs/shipyard" '
        f'AND labels.service="{target.service}" AND labels.git_tag="v2.0.0"'
    )
    entries = list(client.list_entries(filter_=query, page_size=1000))
    assert entries, "no pipeline log line reached Cloud Logging"
    assert {e.labels["flow_run_id"] for e in entries} == {bad.flow_run_id}
    stages = {e.labels.get("stage") for e in entries}
    assert {"deploy", "canary"} <= stages, stages
    deploy_lines = [e for e in entries if e.labels.get("stage") == "deploy"]
    assert all(e.labels["region"] == "europe-west1" for e in deploy_lines)

    # The ledger: both releases, in order, with their figures.
    ledger = read_ledger(target.service)
    assert [(e.git_tag, e.outcome) for e in ledger] == [
        ("v1.0.0", "released"),
        ("v2.0.0", "rolled_back"),
    ]
    assert ledger[0].canary_p95_ms and ledger[0].stage_seconds["deploy"] > 0
    assert ledger[0].canary_first_ms and ledger[0].canary_first_ms > 0
    assert "x-fallback-used" in ledger[1].rollback_reason
    # No git source to read the tags' dates from: the lead time starts at the release, noted.
    assert ledger[0].tagged_at == ledger[0].started_at
    assert ledger[0].tagged_at_source == "release-start"
    assert "no git source" in ledger[0].tagged_at_note

    # Progress: the canary's bar reached 100 % in each release's run.
    canary_bars = progress_bars(good.flow_run_id, "canary")
    assert canary_bars and all(float(a.data) == 100.0 for a in canary_bars), canary_bars
