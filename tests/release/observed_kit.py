"""Reading a release's events back from the Prefect API, as someone who was not there would
(the service as resource, polled until they arrived)."""

from __future__ import annotations

import datetime as dt
import time

from test_release_guards import _all_events


def service_events(service: str, since: dt.datetime, until_last: set[str], timeout: float = 30.0):
    """The service's events since `since`, oldest first, polled until each of `until_last`
    arrived (events reach the database asynchronously)."""
    from prefect.events.filters import EventFilter, EventOccurredFilter, EventResourceFilter

    event_filter = EventFilter(
        occurred=EventOccurredFilter(since=since),
        resource=EventResourceFilter(id=[f"shipyard.cloud-run.service.{service}"]),
    )
    deadline = time.monotonic() + timeout
    while True:
        events = _all_events(event_filter)
        names = {e.event for e in events}
        if until_last <= names or time.monotonic() > deadline:
            return sorted(events, key=lambda e: e.occurred)
        time.sleep(0.2)


def related(event, role: str) -> str | None:
    return next((r.id for r in event.related if r.role == role), None)


def of_run(events, run_id: str):
    return [e for e in events if related(e, "flow-run") == f"prefect.flow-run.{run_id}"]


def in_order(names: list[str], wanted: list[str]) -> bool:
    it = iter(names)
    return all(any(n == w for n in it) for w in wanted)
