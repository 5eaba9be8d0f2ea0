"""Cloud Logging, thinly: the first error lines of one Cloud Run revision, for a person to read.

`first_error_lines` runs the query a user would type in the Logs Explorer for a revision's
errors and returns it with the first distinct lines that name an error, oldest first:

    resource.type="cloud_run_revision" AND resource.labels.revision_name="R"
    AND resource.labels.location="L" AND timestamp>="..." AND timestamp<"..."
    AND (severity>=ERROR OR (logName:"run.googleapis.com%2Fstderr" AND severity=DEFAULT))
    AND NOT logName:"run.googleapis.com%2Frequests"

Why both severities: a structured log line carries its severity, but a line a service writes
to stderr as plain text (Python's tracebacks, Flask's and gunicorn's errors) has none: "Logs
written directly to stdout or stderr do not have an associated log level"
(cloud.google.com/functions/docs/monitoring/logging; on Cloud Run services "all logs default to
the default severity since it's being gathered from stderr", google/osv.dev#1305), and each of
its lines is an entry of its own. So of the stderr entries without severity only the lines
that name an error are cited (`ModuleNotFoundError: No module named 'onnxruntime'`), never the
traceback's framing (`Traceback (most recent call last):`, `  File "...", line 9`). The
platform's request log lines are left out: they only repeat the status the canary saw.

A multi-line entry (a traceback logged as one structured entry) is cited by its first line and
the exception that ends it: "Exception in ASGI application … UnicodeEncodeError: 'latin-1' …".
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from shipyard.tasks.cloud_logging import Logging, LoggingSource, quote, revision_filter
from shipyard.tasks.errors import retry_condition_fn

__all__ = ["ErrorLines", "error_line", "error_lines_in", "error_query", "first_error_lines"]

STDERR_LOG = "run.googleapis.com%2Fstderr"
REQUEST_LOG = "run.googleapis.com%2Frequests"
LINE_CHARS = 200
# A plain stderr line that names an error (Python's exception lines, "ERROR"/"FATAL" log
# prefixes, Go's panics, a killed process).
_ERRORISH = re.compile(
    r"\b\w*(?:Error|Exception|Exit)\b|\b(?:ERROR|CRITICAL|FATAL|fatal|panic|Killed)\b"
)
_FRAMING = re.compile(r"^(?:Traceback \(most recent call last\):|During handling of the above)")


@dataclass(frozen=True)
class ErrorLines:
    """The query that was run and the first distinct error lines it found (`found`: entries)."""

    query: str
    lines: list[str] = field(default_factory=list)
    found: int = 0
    where: str = ""  # the query without its time window: what a user types (with a time range)


ERRORS = (
    f'(severity>=ERROR OR (logName:"{STDERR_LOG}" AND severity=DEFAULT)) '
    f'AND NOT logName:"{REQUEST_LOG}"'
)


def error_query(
    *,
    service: str,
    revision: str,
    region: str | None,
    start: dt.datetime | None = None,
    end: dt.datetime | None = None,
) -> str:
    """The Logs Explorer query of a revision's error entries (in [start, end) when given)."""
    terms = [
        'resource.type="cloud_run_revision"',
        f"resource.labels.revision_name={quote(revision)}",
    ]
    if region:
        terms.append(f"resource.labels.location={quote(region)}")
    if start is not None:
        # revision_filter's time terms, as every Shipyard query writes them
        window = revision_filter(service=service, revision=None, start=start, end=end)
        terms += [t for t in window.split(" AND ") if t.startswith("timestamp")]
    return " AND ".join([*terms, ERRORS])


def _text(payload: Any) -> str:
    if isinstance(payload, str):
        return payload
    if isinstance(payload, Mapping):
        message = payload.get("message")
        return message if isinstance(message, str) else json.dumps(dict(payload), default=str)
    return "" if payload is None else str(payload)


def error_line(text: str, severity: str) -> str:
    """The line to cite for one entry ("" when it names no error): a single line as it is
    (a DEFAULT-severity one only when it names an error, never a traceback's framing), a
    multi-line entry by its first line and its last (a traceback ends with the exception)."""
    if not text.strip():
        return ""
    framing = text[:1].isspace() or bool(_FRAMING.match(text.strip()))
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) == 1:
        if framing or (severity in ("", "DEFAULT") and not _ERRORISH.search(lines[0])):
            return ""
        return lines[0][:LINE_CHARS]
    last = lines[-1][:LINE_CHARS]
    if _FRAMING.match(lines[0]):
        return last
    return f"{lines[0][:LINE_CHARS]} … {last}"


def error_lines_in(client: Any, query: str, scan: int) -> Iterator[str]:
    """The line to cite of each entry `query` finds that names an error (`error_line`), oldest
    first, of at most `scan` entries: what the canary and the deploy step both read."""
    for entry in client.list_entries(
        filter_=query, order_by="timestamp asc", page_size=min(scan, 1000), max_results=scan
    ):
        line = error_line(_text(entry.payload), str(entry.severity or "DEFAULT"))
        if line:
            yield line


@task(
    name="logging.canary_error_lines",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=0.5),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_condition_fn,
    cache_policy=NO_CACHE,
)
def first_error_lines(
    source: Logging,
    *,
    service: str,
    revision: str,
    region: str | None,
    start: dt.datetime,
    end: dt.datetime,
    limit: int = 3,
    scan: int = 200,
) -> ErrorLines:
    """The first `limit` distinct error lines of the revision (of at most `scan` entries);
    `found` counts the entries that named an error."""
    client = source.logging_client() if isinstance(source, LoggingSource) else source
    query = error_query(service=service, revision=revision, region=region, start=start, end=end)
    lines: list[str] = []
    found = 0
    for line in error_lines_in(client, query, scan):
        found += 1
        if line not in lines and len(lines) < limit:
            lines.append(line)
    where = error_query(service=service, revision=revision, region=region)
    return ErrorLines(query=query, lines=lines, found=found, where=where)
