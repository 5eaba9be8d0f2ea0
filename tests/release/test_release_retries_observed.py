"""A release whose steps were retried and waited, seen from outside: the `retrying` stage events
(attempt, cause, resources) between `started` and `succeeded`, the fraction of canary requests
the service answered 503 (result, ledger, report), the quota decisions' progress bar, and the
tag's time read from the git source (where the lead time starts)."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from observed_kit import in_order, of_run, related, service_events
from progress_bars import progress_bars

from shipyard.deployments.report.figures import report_data
from shipyard.flows.observe.ledger import read_ledger
from shipyard.flows.release.flow import run_release

pytestmark = pytest.mark.slow

IMAGE = "registry.sandbox.local/pages/page-service"


def test_retried_canary_and_quota_wait_are_observable(stage, make_target, app_build):
    # europe-west1: no L4 quota, preference denied; us-central1: granted after two polls.
    # The GPU revision answers its first two page requests 503 (a transient answer: retried).
    # The first quota read is answered 503 too: the read task retries it.
    stage(
        "default",
        revision_faults=[{"fault": "http_503", "requests": 2}],
        apis={"quotas": {"first_n": 1, "error_codes": [503], "only_path": "quotaInfos"}},
    )
    settings_block, repo = app_build
    repo.tag("v1.0.0", at="2026-02-12T10:30:00+01:00")  # an annotated tag: its tagger date
    target = make_target(build_settings_block=settings_block)  # the image is given: no build
    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)

    result = run_release("v1.0.0", target, image=f"{IMAGE}:v1.0.0")

    assert result.outcome == "released", result.reasons
    assert result.region == "us-central1"
    revision = f"{target.service}-v1-0-0"

    # Retrying events: the quota read was answered 503 once; canary-run-1 503, 503, then 200.
    events = of_run(
        service_events(target.service, since, {"shipyard.release.released"}),
        str(result.flow_run_id),
    )
    names = [e.event for e in events]
    assert in_order(
        names,
        [
            "shipyard.quota.started",
            "shipyard.quota.retrying",
            "shipyard.quota.succeeded",
            "shipyard.canary.started",
            "shipyard.canary.retrying",
            "shipyard.canary.retrying",
            "shipyard.canary.succeeded",
            "shipyard.cutover.started",
        ],
    ), names
    retrying = [e for e in events if e.event == "shipyard.canary.retrying"]
    assert [e.payload["attempt"] for e in retrying] == [2, 3]
    assert [e.payload["step"] for e in retrying] == ["canary-run-1", "canary-run-1"]
    for event in retrying:
        assert re.search(r"TransientAnswer: https?://\S+: 503$", event.payload["cause"]), event
        assert event.resource.id == f"shipyard.cloud-run.service.{target.service}"
        assert related(event, "git-tag") == "shipyard.git-tag.v1.0.0"
        assert related(event, "region") == "shipyard.gcp.region.us-central1"
        assert related(event, "revision") == f"shipyard.cloud-run.revision.{revision}"
        assert related(event, "flow-run") == f"prefect.flow-run.{result.flow_run_id}"
    (quota,) = [e for e in events if e.event == "shipyard.quota.retrying"]
    assert (quota.payload["attempt"], quota.payload["step"]) == (2, "quota")
    assert re.search(r"503", quota.payload["cause"]), quota.payload
    assert related(quota, "flow-run") == f"prefect.flow-run.{result.flow_run_id}"
    others = [n for n in names if n.endswith(".retrying")]
    assert set(others) == {"shipyard.quota.retrying", "shipyard.canary.retrying"}, names

    # remote_503_rate: 3 canary runs sent 3 + 1 + 1 = 5 page requests, 2 answered 503.
    assert result.canary is not None and result.canary.requests == 5
    assert result.canary.remote_503_rate == 0.4
    (entry,) = read_ledger(target.service)
    assert entry.remote_503_rate == 0.4
    assert (entry.tagged_at, entry.tagged_at_source) == ("2026-02-12T10:30:00+01:00", "git-tag")
    figures = report_data([entry], 30.0)["services"][target.service]
    assert figures["remote_503_rate"] == 0.4

    # Quota polling progress: both decisions arrived (2 of 2), each with its state and polls.
    (bar,) = progress_bars(str(result.flow_run_id), "quota")
    assert float(bar.data) == 100.0
    assert re.fullmatch(
        r"europe-west1: denied after \d+ polls; us-central1: granted after [2-9] polls",
        bar.description,
    ), bar.description
