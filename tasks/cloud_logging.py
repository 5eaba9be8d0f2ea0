"""Cloud Logging v2, thinly: write a structured entry, find a revision's entries by signature.

Typed wrappers over google-cloud-logging's Client (HTTP, `_use_grpc=False`). They know nothing
of releases: callers pass a logging Client (or what makes one: the GoogleCloud block, or any
`LoggingSource`), names, a time window and the signatures to look for.

`write_structured_entry` is a plain function (it is called from inside other steps; a task run
per log line would only clutter the UI): it retries transient errors itself (tasks/waiting.py),
with a fixed insertId and timestamp so that Logging drops a duplicate if a retried write had
landed. Values under secret-looking keys (token, password, secret, authorization, api key) are
redacted before anything leaves the process.
`find_revision_entries` is a Prefect task (read-only, retried on transient errors).
Deadlines: the library has no per-call timeout (it sends 60 s on every request); the GoogleCloud
block's client caps each request at tasks/deadlines.py's `logging_s` (`capped_session`).
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from shipyard.tasks.errors import is_transient, retry_condition_fn
from shipyard.tasks.waiting import wait_for

__all__ = [
    "LogMatch",
    "LoggingClient",
    "LoggingSource",
    "find_revision_entries",
    "quote",
    "revision_filter",
    "write_structured_entry",
]

_SECRET_KEY = re.compile(r"token|passw|secret|authorization|api[-_]?key|credential", re.I)
REDACTED = "[redacted]"


@dataclass(frozen=True)
class LogMatch:
    """A log entry that matched one of the signatures."""

    timestamp: str
    severity: str
    text: str
    signature: str
    log_name: str
    insert_id: str


class LoggingClient(Protocol):
    """What tasks use of google-cloud-logging's `Client` (that library has no type hints)."""

    @property
    def project(self) -> str: ...

    def logger(
        self, name: str, *, labels: dict[str, str] | None = None, resource: Any = None
    ) -> Any: ...

    def list_entries(
        self,
        *,
        resource_names: list[str] | None = None,
        filter_: str | None = None,
        order_by: str | None = None,
        max_results: int | None = None,
        page_size: int | None = None,
    ) -> Iterable[Any]: ...


@runtime_checkable
class LoggingSource(Protocol):
    """What makes a logging client (the GoogleCloud block does; tasks do not import blocks)."""

    def logging_client(self) -> LoggingClient: ...


Logging = LoggingClient | LoggingSource


def _client(source: Logging) -> LoggingClient:
    return source.logging_client() if isinstance(source, LoggingSource) else source


def quote(value: str) -> str:
    """A Logging query string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _rfc3339(when: dt.datetime) -> str:
    if when.tzinfo is None:
        raise ValueError(f"time {when.isoformat()!r} has no timezone; pass an aware datetime (UTC)")
    return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _redact(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if _SECRET_KEY.search(str(k)) else _redact(v)) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact(v) for v in value]
    return value


def write_structured_entry(
    source: Logging,
    payload: Mapping[str, Any],
    *,
    log_id: str = "shipyard",
    severity: str = "INFO",
    labels: Mapping[str, str] | None = None,
    resource: Mapping[str, Any] | None = None,
    attempts: int = 3,
) -> str:
    """Write one jsonPayload entry to `log_id`; return its insertId.

    Default resource: {"type": "global", "labels": {"project_id": PROJECT}}.
    """
    from google.cloud.logging_v2.resource import Resource

    client = _client(source)
    logger = client.logger(log_id, labels=dict(labels) if labels else None)
    insert_id = uuid.uuid4().hex
    when = dt.datetime.now(dt.UTC)
    res: dict[str, Any] = dict(resource) if resource else {"type": "global", "labels": {}}
    res.setdefault("labels", {}).setdefault("project_id", client.project)

    def write() -> str:
        logger.log_struct(
            _redact(dict(payload)),
            severity=severity.upper(),
            insert_id=insert_id,
            timestamp=when,
            resource=Resource(type=res["type"], labels=res["labels"]),
        )
        return insert_id

    return wait_for(
        write,
        what=f"log entry to {log_id}",
        first_delay_s=0.2,
        max_delay_s=5.0,
        attempts=attempts,
        retry_on=is_transient,
    )


def revision_filter(
    *,
    service: str,
    revision: str | None,
    start: dt.datetime,
    end: dt.datetime | None = None,
    signatures: Sequence[str] = (),
    region: str | None = None,
    min_severity: str | None = None,
) -> str:
    """The Logging query for a revision's entries in [start, end) containing any signature."""
    terms = ['resource.type="cloud_run_revision"', f"resource.labels.service_name={quote(service)}"]
    if revision:
        terms.append(f"resource.labels.revision_name={quote(revision)}")
    if region:
        terms.append(f"resource.labels.location={quote(region)}")
    if min_severity:
        terms.append(f"severity>={min_severity.upper()}")
    terms.append(f"timestamp>={quote(_rfc3339(start))}")
    if end is not None:
        terms.append(f"timestamp<{quote(_rfc3339(end))}")
    if signatures:
        terms.append("(" + " OR ".join(quote(s) for s in signatures) + ")")
    return " AND ".join(terms)


def _text(entry: Any) -> str:
    payload = entry.payload
    if isinstance(payload, str):
        return payload
    if isinstance(payload, Mapping):
        message = payload.get("message")
        return message if isinstance(message, str) else str(dict(payload))
    return "" if payload is None else str(payload)


def _strings(value: Any) -> list[str]:
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


@task(
    name="logging.find_revision_entries",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=0.5),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_condition_fn,
    cache_policy=NO_CACHE,
)
def find_revision_entries(
    source: Logging,
    *,
    service: str,
    revision: str | None,
    signatures: Sequence[str],
    start: dt.datetime,
    end: dt.datetime | None = None,
    region: str | None = None,
    min_severity: str | None = None,
    limit: int = 100,
) -> list[LogMatch]:
    """Entries of a Cloud Run revision in [start, end) that contain any of `signatures`.

    Oldest first, at most `limit`. Each match names the (first) signature it contains.
    """
    if not signatures:
        raise ValueError("signatures: empty; pass the texts to look for, e.g. ['Memory limit']")
    client = _client(source)
    query = revision_filter(
        service=service,
        revision=revision,
        start=start,
        end=end,
        signatures=signatures,
        region=region,
        min_severity=min_severity,
    )
    matches: list[LogMatch] = []
    for entry in client.list_entries(
        filter_=query, order_by="timestamp asc", page_size=min(limit, 1000), max_results=limit
    ):
        texts = [t.lower() for t in _strings(entry.payload)]
        signature = next((s for s in signatures if any(s.lower() in t for t in texts)), "")
        matches.append(
            LogMatch(
                timestamp=_rfc3339(entry.timestamp) if entry.timestamp else "",
                severity=str(entry.severity or "DEFAULT"),
                text=_text(entry),
                signature=signature,
                log_name=entry.log_name or "",
                insert_id=entry.insert_id or "",
            )
        )
    return matches
