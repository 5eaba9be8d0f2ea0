"""Cloud Run's request logs (`run.googleapis.com/requests`) of some revisions, as a DataFrame.

Cloud Run writes one entry per request a revision answered to the log
`projects/P/logs/run.googleapis.com%2Frequests`, on the monitored resource
`cloud_run_revision` (labels service_name, revision_name, location), with an `httpRequest`
(google.logging.type.HttpRequest): `status` an int32, `latency` a google.protobuf.Duration,
which the REST API writes as a string of seconds with an "s" suffix ("0.123s", "1.000340012s";
the JSON mapping of Duration, protobuf's json format). `read_requests` runs the query a user
would type in the Logs Explorer:

    logName="projects/P/logs/run.googleapis.com%2Frequests"
    AND resource.type="cloud_run_revision" AND resource.labels.service_name="S"
    AND resource.labels.location="R"
    AND (resource.labels.revision_name="A" OR resource.labels.revision_name="B")
    AND timestamp>="..." AND timestamp<"..."

(the Logging query language: comparisons joined by AND / OR, parentheses grouping;
cloud.google.com/logging/docs/view/logging-query-language), through the official
google-cloud-logging client that the GoogleCloud block hands out (HTTP; the block's client
caps each request at tasks/deadlines.py's `logging_s`, the library having no per-call
timeout), and pages through every entry, 1000 a page (the API's largest page).

An entry without an `httpRequest.status` (a request the platform never answered) is left out:
it has no status to count and no latency to compare.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from shipyard.tasks.cloud_logging import Logging, LoggingSource, quote
from shipyard.tasks.errors import retry_condition_fn

__all__ = ["COLUMNS", "REQUEST_LOG", "latency_seconds", "read_requests", "request_query"]

REQUEST_LOG = "run.googleapis.com%2Frequests"
# flows/rollout/judge.py COLUMNS (tasks import no flows: the same names, checked by a test).
COLUMNS = ("revision", "status", "latency_s", "timestamp")
PAGE_SIZE = 1000


def _rfc3339(when: dt.datetime, name: str) -> str:
    if when.tzinfo is None:
        raise ValueError(
            f"{name}: {when.isoformat()!r} has no timezone; pass an aware datetime, e.g. "
            "datetime.now(timezone.utc)"
        )
    return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def request_query(
    project: str,
    service: str,
    region: str,
    revisions: Sequence[str],
    since: dt.datetime,
    until: dt.datetime | None = None,
) -> str:
    """The Logging query of the revisions' request log entries in [since, until)."""
    if not revisions:
        raise ValueError(
            "revisions: empty; pass the revision names to read, e.g. ['pages-v1-2-0', "
            "'pages-v1-1-0']"
        )
    names = " OR ".join(f"resource.labels.revision_name={quote(r)}" for r in revisions)
    terms = [
        f"logName={quote(f'projects/{project}/logs/{REQUEST_LOG}')}",
        'resource.type="cloud_run_revision"',
        f"resource.labels.service_name={quote(service)}",
        f"resource.labels.location={quote(region)}",
        f"({names})",
        f"timestamp>={quote(_rfc3339(since, 'since'))}",
    ]
    if until is not None:
        terms.append(f"timestamp<{quote(_rfc3339(until, 'until'))}")
    return " AND ".join(terms)


def latency_seconds(value: Any) -> float:
    """An HttpRequest latency in seconds: the Duration's JSON string ("0.123s"), or its
    {seconds, nanos} form; NaN when absent or unreadable."""
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("s"):
            try:
                return float(text[:-1])
            except ValueError:
                return math.nan
        return math.nan
    if isinstance(value, Mapping):
        return float(value.get("seconds", 0) or 0) + float(value.get("nanos", 0) or 0) / 1e9
    return math.nan


def _row(entry: Any) -> tuple[str, int, float, dt.datetime] | None:
    request = entry.http_request or {}
    status = request.get("status")
    if status is None:
        return None
    labels = getattr(entry.resource, "labels", None) or {}
    return (
        str(labels.get("revision_name", "")),
        int(status),
        latency_seconds(request.get("latency")),
        entry.timestamp,
    )


def empty_frame() -> pd.DataFrame:
    """A frame of no requests, with the columns and dtypes of a full one."""
    return pd.DataFrame(
        {
            "revision": pd.Series([], dtype="object"),
            "status": pd.Series([], dtype="int64"),
            "latency_s": pd.Series([], dtype="float64"),
            "timestamp": pd.Series([], dtype="datetime64[ns, UTC]"),
        }
    )


@task(
    name="logging.read_requests",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=0.5),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_condition_fn,
    cache_policy=NO_CACHE,
    persist_result=False,
)
def read_requests(
    cloud: Any,
    project: str,
    service: str,
    region: str,
    revisions: Sequence[str],
    since: dt.datetime,
    until: dt.datetime | None = None,
) -> pd.DataFrame:
    """The requests the revisions answered in [since, until): columns revision, status,
    latency_s, timestamp (flows/rollout/judge.py COLUMNS). `cloud`: the target's GoogleCloud
    (or a google-cloud-logging Client). Retried on transient errors (the whole read: a page
    token does not outlive its query)."""
    source: Logging = cloud
    client = source.logging_client() if isinstance(source, LoggingSource) else source
    query = request_query(project, service, region, revisions, since, until)
    rows = [
        row
        for entry in client.list_entries(
            resource_names=[f"projects/{project}"],
            filter_=query,
            order_by="timestamp asc",
            page_size=PAGE_SIZE,
        )
        if (row := _row(entry)) is not None
    ]
    if not rows:
        return empty_frame()
    frame = pd.DataFrame.from_records(rows, columns=list(COLUMNS))
    frame["status"] = frame["status"].astype("int64")
    frame["latency_s"] = frame["latency_s"].astype("float64")
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True).astype("datetime64[ns, UTC]")
    return frame
