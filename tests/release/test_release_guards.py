"""Guards of the release: secrets never leak, one release per service, configuration errors stop
cleanly, consumers are told where the GPU serves. Real Prefect server, real sandbox."""

from __future__ import annotations

import time
import uuid

import pytest

from sandbox.release_invariants import invariant_violations, serving, stale_canary_tags
from shipyard.blocks.names import revision_name
from shipyard.flows.release.flow import ReleaseError, ensure_slot, release, slot_name
from shipyard.tasks.deploy_errors import ConfigurationError

pytestmark = pytest.mark.slow

IMAGE = "registry.sandbox.local/pages/page-service"


def _all_events(event_filter) -> list:
    """Every event matching the filter (the API pages by 50)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        page = client.read_events(event_filter, limit=50)
        events = list(page.events)
        while page.next_page:
            page = client.read_events_page(page.next_page)
            events += page.events
    return events


def _events(resource_prefix: str, since, want: str, timeout: float = 30.0) -> list:
    """Events whose resource id starts with `resource_prefix`, polled until `want` arrives
    (events reach the database asynchronously)."""
    from prefect.events.filters import EventFilter, EventOccurredFilter, EventResourceFilter

    deadline = time.monotonic() + timeout
    while True:
        events = _all_events(
            EventFilter(
                occurred=EventOccurredFilter(since=since),
                resource=EventResourceFilter(id_prefix=[resource_prefix]),
            )
        )
        if any(e.event == want for e in events) or time.monotonic() > deadline:
            return events
        time.sleep(0.5)


def test_serving_url_event_and_no_secret_anywhere(
    stage, make_target, sandbox_admin, internal_token, info_logs
):
    import datetime as dt

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.events.filters import EventFilter, EventOccurredFilter
    from prefect.logging.handlers import APILogHandler

    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    stage(
        regions={"europe-west1": {"gpu": 0, "gpu_no_zonal_redundancy": 0}},
        revision_faults=[{"fault": "http_503", "requests": 1}],  # a retry, logged with its error
    )
    target = make_target()

    result = release("v1.0.0", target, image=f"{IMAGE}:v1.0.0")

    # The canary passed, so the token was sent (the page service answers 401 without it).
    assert result.outcome == "released" and result.canary.passed
    assert result.outside_primary
    events = _events(
        f"shipyard.cloud-run.service.{target.service}",
        since,
        "shipyard.release.serving-url.changed",
    )
    url_events = [e for e in events if e.event == "shipyard.release.serving-url.changed"]
    assert url_events and url_events[0].payload["url"] == result.url
    assert url_events[0].payload["region"] == "us-central1"

    flow_run_id = uuid.UUID(result.flow_run_id)
    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200
        )
        artifacts = client.read_artifacts(
            flow_run_filter=None,
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])),
        )
    all_events = _all_events(EventFilter(occurred=EventOccurredFilter(since=since)))
    assert logs and artifacts and all_events  # there is something to search
    assert any("TransientAnswer" in log.message for log in logs)  # the retried 503
    assert {a.key for a in artifacts} >= {
        f"release-{target.service}",
        f"canary-{target.service}",
    }
    haystacks = [log.message for log in logs]
    haystacks += [str(a.data) + str(a.description) for a in artifacts]
    haystacks += [e.model_dump_json() for e in all_events]
    haystacks.append(result.model_dump_json())
    assert not [h for h in haystacks if internal_token in h]


def test_one_release_per_service(stage, make_target, sandbox_admin):
    from prefect.concurrency.sync import concurrency

    stage()
    target = make_target(lock_timeout_s=0.5)
    name = slot_name(target.service)
    ensure_slot(name)

    with (
        concurrency(name, occupy=1, strict=True),  # another release holds the service
        pytest.raises(ReleaseError, match="one release per service"),
    ):
        release("v1.0.0", target, image=f"{IMAGE}:v1.0.0")

    assert sandbox_admin.calls().get("run.get_service", 0) == 0  # it did not even look
    assert sandbox_admin.traffic_history(target.service) == []


def test_configuration_error_stops_without_stale_canary(stage, make_target, sandbox_admin):
    stage()
    target = make_target()
    target.canary.token_secret = "no-such-secret-block"

    with pytest.raises(ConfigurationError, match="token_secret='no-such-secret-block'"):
        release("v2.0.0", target, image=f"{IMAGE}:v2.0.0")

    history = sandbox_admin.traffic_history(target.service)
    assert invariant_violations(history, []) == []  # the GPU revision never got traffic
    assert stale_canary_tags(history) == []
    assert serving(history, "europe-west1") == {f"{target.service}-v2-0-0-cpu": 100}


def test_revision_names_are_deterministic_and_valid():
    assert revision_name("manga-translator-compute", "v1.2.3") == "manga-translator-compute-v1-2-3"
    assert revision_name("svc", "release/2026.02.12_hotfix4") == "svc-release-2026-02-12-hotfix4"
    long_a = revision_name("manga-translator-compute", "v1.2.3-" + "a" * 80)
    long_b = revision_name("manga-translator-compute", "v1.2.3-" + "a" * 79 + "b")
    assert len(long_a) <= 63 and len(long_b) <= 63 and long_a != long_b
    assert long_a == revision_name("manga-translator-compute", "v1.2.3-" + "a" * 80)
    with pytest.raises(ValueError, match="git_tag"):
        revision_name("svc", "...")
