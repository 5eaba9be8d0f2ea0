"""Cloud Run's request log read into the judge's frame: real requests to two revisions of a
sandbox service (and a bystander), then pages of entries written through Google's client."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import httpx
import pandas as pd
from google.cloud.logging_v2.resource import Resource

from shipyard.flows.rollout.judge import COLUMNS as JUDGE_COLUMNS
from shipyard.tasks.request_logs import (
    COLUMNS,
    latency_seconds,
    read_requests,
    request_query,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sandbox"))
from run_testkit import FAST, REGION, create, short, target, template  # on the path just above


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def test_requests_of_two_revisions_in_a_window(sandbox_admin, cloud):
    sandbox_admin.reset(scenario_data={"serving": {"gpu_ms": 5, "cpu_ms": 5}})
    services = cloud.services_client()
    svc = create(cloud, "judged", template())
    stable = short(svc.latest_ready_revision)
    current = services.get_service(name=svc.name)
    current.template = template("registry.local/pages:2", revision="judged-v2")
    current.traffic = [target(stable, 90, "stable"), target("judged-v2", 10, "canary")]
    updated = services.update_service(service=current).result(polling=FAST)
    uri = {s.tag: s.uri for s in updated.traffic_statuses}
    bystander = create(cloud, "bystander", template())
    project = cloud.resolved_project()

    since = _now()
    with httpx.Client(timeout=20) as http:
        for _ in range(6):
            assert http.get(uri["stable"] + "/health").status_code == 200
        for _ in range(4):
            assert http.get(uri["canary"] + "/health").status_code == 200
        missing = http.get(uri["canary"] + "/no-such-page").status_code
        assert http.get(bystander.uri + "/health").status_code == 200  # another service
        until = _now()
        assert http.get(uri["canary"] + "/health").status_code == 200  # after the window

    frame = read_requests(cloud, project, "judged", REGION, [stable, "judged-v2"], since, until)
    assert tuple(frame.columns) == COLUMNS == JUDGE_COLUMNS
    assert frame["revision"].value_counts().to_dict() == {stable: 6, "judged-v2": 5}
    canary = frame[frame["revision"] == "judged-v2"]
    assert sorted(canary["status"]) == sorted([200] * 4 + [missing])
    assert str(frame["status"].dtype) == "int64" and str(frame["latency_s"].dtype) == "float64"
    assert (frame["latency_s"] > 0).all() and (frame["latency_s"] < 20).all()
    assert str(frame["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert frame["timestamp"].between(pd.Timestamp(since), pd.Timestamp(until)).all()
    assert frame["timestamp"].is_monotonic_increasing  # "timestamp asc"

    # Without `until`: the later request too. Only one revision asked: only its rows.
    later = read_requests(cloud, project, "judged", REGION, ["judged-v2"], since)
    assert set(later["revision"]) == {"judged-v2"} and len(later) == 6
    # Another region (the location term) holds none: an empty frame with the columns.
    empty = read_requests(
        cloud, project, "judged", "us-central1", [stable, "judged-v2"], since, until
    )
    assert empty.empty and tuple(empty.columns) == COLUMNS
    assert str(empty["timestamp"].dtype) == "datetime64[ns, UTC]"


def test_every_page_is_read_and_durations_parsed(sandbox_admin, cloud):
    """1,050 entries (two pages of 1000) written as Cloud Run writes them, through Google's
    client: `httpRequest.latency` goes over the wire as a Duration string."""
    project = cloud.resolved_project()
    t0 = dt.datetime(2026, 1, 5, 10, 0, tzinfo=dt.UTC)
    logger = cloud.logging_client().logger("run.googleapis.com%2Frequests")
    resource = Resource(
        type="cloud_run_revision",
        labels={
            "project_id": project,
            "service_name": "paged",
            "revision_name": "paged-v2",
            "location": REGION,
            "configuration_name": "paged",
        },
    )
    with logger.batch() as batch:
        for i in range(1050):
            batch.log_text(
                f"POST {503 if i % 10 == 0 else 200} /page",
                resource=resource,
                timestamp=t0 + dt.timedelta(milliseconds=i),
                http_request={"status": 503 if i % 10 == 0 else 200, "latency": f"{i / 1000}s"},
            )
        # An entry without a status (never answered) and one of the stdout log: left out.
        batch.log_text("no answer", resource=resource, timestamp=t0, http_request={})
    logger_out = cloud.logging_client().logger("run.googleapis.com%2Fstdout")
    logger_out.log_text("GET 200 /health", resource=resource, timestamp=t0)

    since, until = t0, t0 + dt.timedelta(seconds=2)
    frame = read_requests(cloud, project, "paged", REGION, ["paged-v2", "paged-v1"], since, until)
    assert len(frame) == 1050
    assert sandbox_admin.calls()["logging.list_entries"] >= 2  # two pages
    assert frame["status"].value_counts().to_dict() == {200: 945, 503: 105}
    assert frame["latency_s"].iloc[-1] == 1.049 and frame["latency_s"].iloc[1] == 0.001


def test_query_and_duration_forms():
    since = dt.datetime(2026, 1, 5, 10, 0, tzinfo=dt.UTC)
    query = request_query("p", "pages", "us-central1", ["pages-v1", "pages-v2"], since)
    assert query == (
        'logName="projects/p/logs/run.googleapis.com%2Frequests" AND '
        'resource.type="cloud_run_revision" AND resource.labels.service_name="pages" AND '
        'resource.labels.location="us-central1" AND (resource.labels.revision_name="pages-v1" '
        'OR resource.labels.revision_name="pages-v2") AND timestamp>="2026-01-05T10:00:00Z"'
    )
    assert latency_seconds("1.000340012s") == 1.000340012 and latency_seconds("0s") == 0.0
    assert latency_seconds({"seconds": "2", "nanos": 500_000_000}) == 2.5
    assert pd.isna(latency_seconds(None)) and pd.isna(latency_seconds("fast"))
    for bad, match in (([], "revisions: empty"), (["a"], "since: .* has no timezone")):
        try:
            request_query("p", "s", "r", bad, since.replace(tzinfo=None))
        except ValueError as exc:
            assert match.split(":")[0] in str(exc)
        else:
            raise AssertionError(f"{bad!r}: no ValueError")
