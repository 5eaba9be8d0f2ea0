"""Point this process's Prefect client at another API for a block, without leaving Prefect's
process-wide senders behind on it.

Prefect's EventsWorker and APILogWorker are one instance each per process, started by the first
event or log sent and kept after that: the instance started inside `temporary_settings` keeps
the client it built there. Once that API is gone (a stopped stack, a dead port), every later
event and API log of this process fails to send ("Service 'EventsWorker' failed to process
item"), and the runs of the API it returns to lose their events and task runs (task runs are
recorded from their state events). Seen in the test suite (the fleet's stack) and in
bench/scale.py (PostgreSQL's stack, then SQLite's, in one process).

`pointed_at(url)` drains both senders on the way in (what was queued goes to the API it was
meant for) and on the way out (while `url` is still up): the next event after the block starts a
fresh sender on the API current then.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["drain_api_senders", "pointed_at"]

DRAIN_S = 30.0


def drain_api_senders() -> None:
    """Send what Prefect's event and API-log workers hold, then stop them (the next event or
    log starts new ones with the settings current then)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    EventsWorker.drain_all(timeout=DRAIN_S)
    APILogWorker.drain_all(timeout=DRAIN_S)


@contextmanager
def pointed_at(api_url: str, **more: Any) -> Iterator[None]:
    """Prefect's client talks to `api_url` inside the block (with any more settings given as
    `more`, by Setting name: `PREFECT_API_REQUEST_TIMEOUT=0.5`); the API before it after the
    block, events and API logs included."""
    import prefect.settings as settings

    updates = {settings.PREFECT_API_URL: api_url} | {
        getattr(settings, name): value for name, value in more.items()
    }
    drain_api_senders()
    with settings.temporary_settings(updates=updates):
        try:
            yield
        finally:
            drain_api_senders()
