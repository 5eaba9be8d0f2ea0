"""Cloud Logging, for one question: what did a Cloud Run revision say when it did not start?

`first_error_lines` reads the revision's own error entries with the query a user would type in
the Logs Explorer (tasks/canary_logs.py `error_query`, without a time window: a revision that
never started has only its start to tell) and returns the first distinct lines that name an
error, oldest first, picked as the canary picks them (`error_line`: a plain stderr line has no
severity on Cloud Run, so a traceback's `ModuleNotFoundError: No module named 'onnxruntime'` is
found by the stderr log name, its framing lines are left out).

It is a plain function, called inside the deploy step whose error it explains: transient
errors are retried within a deadline (the waiter), and a read that still fails returns no lines
with the error in `note`: a deploy's verdict stands without its log lines, never fails for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shipyard.tasks.canary_logs import error_lines_in, error_query
from shipyard.tasks.cloud_logging import Logging, LoggingSource
from shipyard.tasks.errors import is_transient
from shipyard.tasks.waiting import Deadline, wait_for

__all__ = ["RevisionLogLines", "first_error_lines"]


@dataclass(frozen=True)
class RevisionLogLines:
    """The first error lines of a revision, the query that shows them all, and why there are
    none when the read failed."""

    lines: list[str] = field(default_factory=list)
    query: str = ""
    note: str = ""

    def cited(self) -> str:
        """'its log says: A | B', or '' when it said nothing."""
        return f"its log says: {' | '.join(self.lines)}" if self.lines else ""

    def where(self) -> str:
        """'all its error lines: Cloud Logging <query>', or '' when it said nothing."""
        return f"all its error lines: Cloud Logging {self.query}" if self.lines else ""


def first_error_lines(
    source: Logging,
    *,
    service: str,
    region: str,
    revision: str,
    limit: int = 3,
    besides: str = "",
    scan: int = 200,
    timeout_s: float = 20.0,
) -> RevisionLogLines:
    """The first `limit` distinct error lines of the revision (of at most `scan` entries),
    oldest first, but those `besides` (the message the caller already has: Cloud Run's Ready
    condition) contains. Each call is bounded by the client's own HTTP timeout
    (google-cloud-core's connection, 60 s); retries end at `timeout_s`."""
    query = error_query(service=service, revision=revision, region=region)

    def read() -> list[str]:
        client = source.logging_client() if isinstance(source, LoggingSource) else source
        lines: list[str] = []
        for line in error_lines_in(client, query, scan):
            if line not in lines and line not in besides:
                lines.append(line)
            if len(lines) >= limit:
                break
        return lines

    try:
        lines = wait_for(
            read,
            what=f"the log of revision {revision}",
            first_delay_s=0.2,
            max_delay_s=2.0,
            deadline=Deadline(timeout_s),
            retry_on=is_transient,
        )
    except Exception as exc:  # noqa: BLE001 - a verdict never fails for want of its log lines
        return RevisionLogLines(query=query, note=f"could not read the revision's log: {exc}")
    return RevisionLogLines(lines=lines, query=query)
