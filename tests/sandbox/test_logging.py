"""Cloud Logging v2 in the sandbox, through google-cloud-logging and tasks/cloud_logging.py."""

from __future__ import annotations

import datetime as dt

import pytest
from google.api_core import exceptions as gexc
from google.cloud.logging_v2 import DESCENDING
from google.cloud.logging_v2.resource import Resource

from shipyard.tasks.cloud_logging import (
    find_revision_entries,
    revision_filter,
    write_structured_entry,
)

T0 = dt.datetime(2026, 1, 5, 10, 0, tzinfo=dt.UTC)
TS = T0.isoformat().replace("+00:00", "Z")
OOM = "Memory limit of 4096 MiB exceeded with 4200 MiB used"
FALLBACK = "Failed to create CUDAExecutionProvider. Falling back to CPU"


@pytest.fixture(scope="module", autouse=True)
def _library_diagnostic_written(sandbox):
    """google-cloud-logging prepends a diagnostic entry to the first write of a process: do
    that write now (it is wiped by the per-test reset) so tests count only their own entries."""
    from shipyard.blocks.cloud import GoogleCloud

    GoogleCloud().logging_client().logger("warm-up").log_text("warm-up")


def _revision(service: str, revision: str, region: str = "us-central1") -> Resource:
    return Resource(
        type="cloud_run_revision",
        labels={
            "project_id": "shipyard-sandbox",
            "service_name": service,
            "revision_name": revision,
            "location": region,
            "configuration_name": service,
        },
    )


def _write_revision_lines(client) -> None:
    """What revisions write (state.write_log's shape), sent as one batch through the client."""
    stdout = client.logger("run.googleapis.com%2Fstdout")
    stderr = client.logger("run.googleapis.com%2Fstderr")
    with stdout.batch() as out, stderr.batch() as err:
        canary = _revision("pages", "pages-00002-gpu")
        out.log_text("Listening on :8080", severity="INFO", resource=canary, timestamp=T0)
        err.log_text(
            FALLBACK, severity="WARNING", resource=canary, timestamp=T0 + dt.timedelta(seconds=5)
        )
        err.log_text(OOM, severity="ERROR", resource=canary, timestamp=T0 + dt.timedelta(seconds=9))
        err.log_struct(
            {"message": "worker crashed", "detail": {"why": "Memory limit of 4096 MiB exceeded"}},
            severity="CRITICAL",
            resource=canary,
            timestamp=T0 + dt.timedelta(seconds=10),
        )
        old = _revision("pages", "pages-00001-cpu")
        err.log_text(OOM, severity="ERROR", resource=old, timestamp=T0 + dt.timedelta(seconds=7))
        other = _revision("pages", "pages-00002-gpu", region="europe-west1")
        err.log_text(OOM, severity="ERROR", resource=other, timestamp=T0)
        late = _revision("pages", "pages-00002-gpu")
        err.log_text(OOM, severity="ERROR", resource=late, timestamp=T0 + dt.timedelta(hours=2))


def _texts(entries) -> list[str]:
    return [e.payload if isinstance(e.payload, str) else e.payload["message"] for e in entries]


def test_written_entries_are_found_with_each_filter_form(sandbox_admin, cloud):
    client = cloud.logging_client()
    _write_revision_lines(client)
    stored = sandbox_admin.logs()
    assert len(stored) == 7 and all(e["insertId"] and e["receiveTimestamp"] for e in stored)
    logs = sorted(e["logName"].rsplit("/", 1)[1] for e in stored)
    assert logs == ["run.googleapis.com%2Fstderr"] * 6 + ["run.googleapis.com%2Fstdout"]
    assert {e["resource"]["labels"]["revision_name"] for e in stored} == {
        "pages-00001-cpu",
        "pages-00002-gpu",
    }

    # Without "timestamp" in a filter the client adds `timestamp>="<24 h ago>"`; these entries
    # are stamped T0 (in the past), so every query names its window.
    window = f'timestamp>="{TS}" timestamp<"{(T0 + dt.timedelta(hours=1)).isoformat()}"'

    def find(query: str) -> list[str]:
        return _texts(client.list_entries(filter_=f"{query} {window}"))

    canary = 'resource.labels.revision_name="pages-00002-gpu"'
    assert len(find('resource.type="cloud_run_revision"')) == 6  # one is 2 h later
    assert len(find('resource.labels.service_name="pages"')) == 6
    assert len(find(f'{canary} AND resource.labels.location="us-central1"')) == 4
    assert find(f"{canary} severity>=ERROR") == [OOM, OOM, "worker crashed"]
    assert find(f'{canary} resource.labels.location="us-central1" severity>=ERROR') == [
        OOM,
        "worker crashed",
    ]
    assert find(f"{canary} severity>=WARNING NOT severity>=ERROR") == [FALLBACK]
    assert find(f'{canary} -resource.labels.location="europe-west1" -textPayload:"memory"') == [
        "Listening on :8080",
        FALLBACK,
        "worker crashed",  # no textPayload at all: NOT textPayload:... holds
    ]
    assert find(f'{canary} "memory limit of 4096 MIB" labels.none:*') == []
    assert find('resource.labels.location="us-central1" "memory limit of 4096 MIB"') == [
        OOM,
        OOM,
        "worker crashed",
    ]
    assert find(f'{canary} textPayload:"CUDAExecutionProvider"') == [FALLBACK]
    stderr = 'logName="projects/shipyard-sandbox/logs/run.googleapis.com%2Fstderr"'
    assert len(find(stderr)) == 5
    assert find(
        f'{canary} resource.labels.location="us-central1" (severity=INFO OR severity=CRITICAL)'
    ) == [
        "Listening on :8080",
        "worker crashed",
    ]
    assert len(find('resource.labels.location=("europe-west1" OR "asia-east1")')) == 1
    late = list(client.list_entries(filter_=f'{canary} timestamp>"{TS}"', order_by=DESCENDING))
    assert _texts(late)[0] == OOM and late[0].timestamp == T0 + dt.timedelta(hours=2)
    assert _texts(late)[-1] == FALLBACK
    # The client's default window ("+0000" offset, parsed fine) excludes entries stamped T0.
    assert list(client.list_entries(filter_=canary)) == []


def test_labels_defaults_and_deduplicated_retries(sandbox_admin, cloud):
    client = cloud.logging_client()
    logger = client.logger("shipyard-events", labels={"release": "v1.2.3"})
    logger.log_text("step done", timestamp=T0, insert_id="fixed-1")
    logger.log_text("step done", timestamp=T0, insert_id="fixed-1")  # a retried write
    with logger.batch() as batch:  # the request carries the logger's labels as defaults
        batch.log_struct(
            {"message": "deploy", "region": "us-central1"}, labels={"step": "deploy"}, timestamp=T0
        )
    entries = list(client.list_entries(filter_=f'labels.release="v1.2.3" timestamp>="{TS}"'))
    assert len(entries) == 2  # the repeated (timestamp, insertId) was dropped, as Logging does
    (deploy,) = client.list_entries(filter_=f'labels.step="deploy" timestamp>="{TS}"')
    assert deploy.labels == {"release": "v1.2.3", "step": "deploy"}
    found = client.list_entries(filter_=f'jsonPayload.region="us-central1" timestamp>="{TS}"')
    assert _texts(found) == ["deploy"]


def test_pagination_ends_after_three_pages(sandbox_admin, cloud):
    client = cloud.logging_client()
    logger = client.logger("pages")
    with logger.batch() as batch:
        for i in range(25):
            batch.log_text(f"line {i:02d}", timestamp=T0 + dt.timedelta(seconds=i))
    before = sandbox_admin.calls().get("logging.list_entries", 0)
    entries = list(client.list_entries(filter_=f'timestamp>="{TS}"', page_size=10))
    assert _texts(entries) == [f"line {i:02d}" for i in range(25)]
    assert sandbox_admin.calls()["logging.list_entries"] - before == 3
    capped = list(client.list_entries(filter_=f'timestamp>="{TS}"', page_size=10, max_results=12))
    assert len(capped) == 12


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ('sample(insertId, 0.1) severity>=ERROR timestamp>="2026-01-01T00:00:00Z"', "sample()"),
        ('httpRequest.status=500 timestamp>="2026-01-01T00:00:00Z"', "httpRequest.status"),
        ('severity>=LOUD timestamp>="2026-01-01T00:00:00Z"', "LOUD"),
        ('(severity>=ERROR timestamp>="2026-01-01T00:00:00Z"', "expected ')'"),
        ('timestamp>="last tuesday"', "RFC 3339"),
    ],
)
def test_unsupported_filter_is_a_clear_400(sandbox_admin, cloud, query, named):
    with pytest.raises(gexc.BadRequest) as err:
        list(cloud.logging_client().list_entries(filter_=query))
    assert named in err.value.message and "filter" in err.value.message


def test_find_revision_entries_task(sandbox_admin, cloud):
    _write_revision_lines(cloud.logging_client())
    matches = find_revision_entries(
        cloud,
        service="pages",
        revision="pages-00002-gpu",
        region="us-central1",
        signatures=["Memory limit", "Failed to create CUDAExecutionProvider"],
        start=T0,
        end=T0 + dt.timedelta(hours=1),
    )
    assert [(m.severity, m.signature) for m in matches] == [
        ("WARNING", "Failed to create CUDAExecutionProvider"),
        ("ERROR", "Memory limit"),
        ("CRITICAL", "Memory limit"),
    ]
    assert matches[1].text == OOM and matches[2].text == "worker crashed"
    assert matches[0].log_name.endswith("run.googleapis.com%2Fstderr")
    errors_only = find_revision_entries(
        cloud,
        service="pages",
        revision="pages-00002-gpu",
        signatures=["Memory limit"],
        start=T0,
        min_severity="ERROR",
        limit=2,
    )
    assert len(errors_only) == 2 and all(m.signature == "Memory limit" for m in errors_only)
    assert 'resource.labels.revision_name="pages-00002-gpu"' in revision_filter(
        service="pages", revision="pages-00002-gpu", start=T0
    )


def test_structured_event_is_written_and_secrets_redacted(sandbox_admin, cloud):
    insert_id = write_structured_entry(
        cloud,
        {"event": "canary.passed", "region": "us-central1", "internal_token": "s3cr3t-value"},
        labels={"release": "v2"},
    )
    (entry,) = sandbox_admin.logs()
    assert entry["insertId"] == insert_id and entry["severity"] == "INFO"
    assert entry["logName"] == "projects/shipyard-sandbox/logs/shipyard"
    assert entry["jsonPayload"]["event"] == "canary.passed"
    assert entry["jsonPayload"]["internal_token"] == "[redacted]"
    assert "s3cr3t-value" not in str(entry)
    assert entry["resource"] == {"type": "global", "labels": {"project_id": "shipyard-sandbox"}}
    found = list(cloud.logging_client().list_entries(filter_='jsonPayload.event="canary.passed"'))
    assert [e.insert_id for e in found] == [insert_id]
