"""A test that points this process at another Prefect API (the fleet's stack, a stall server, a
dead port) must not take the process's events with it: after the block, a flow run's events
reach the session's server again (tests/api_switch_kit.py says why they did not).

Without the kit's drains this fails as CI did: the events worker started inside the block keeps
its client there, and the run's events are dropped ("Service 'EventsWorker' failed to process
item")."""

from __future__ import annotations

import uuid

from api_switch_kit import pointed_at
from prefect import flow
from prefect.events import emit_event

from sandbox.procs import free_port
from shipyard.tasks.waiting import Deadline, NotYet, wait_for


def _persisted(resource_id: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventResourceFilter

    with get_client(sync_client=True) as client:
        page = client.read_events(EventFilter(resource=EventResourceFilter(id=[resource_id])), 5)
    if not page.events:
        raise NotYet("not persisted yet")
    return list(page.events)


@flow(name="emits-one-event")
def _emits(resource_id: str) -> None:
    emit_event("shipyard.test.here", resource={"prefect.resource.id": resource_id})


def test_a_flow_runs_events_reach_the_session_server_after_another_api():
    elsewhere = f"shipyard.test.elsewhere.{uuid.uuid4().hex}"
    with pointed_at(f"http://127.0.0.1:{free_port()}/api"):
        emit_event("shipyard.test.elsewhere", resource={"prefect.resource.id": elsewhere})
    here = f"shipyard.test.here.{uuid.uuid4().hex}"
    _emits(here)
    events = wait_for(
        lambda: _persisted(here),
        what="the flow run's event on the session's server",
        first_delay_s=0.2,
        max_delay_s=2.0,
        deadline=Deadline(60),
        heartbeat_s=None,
    )
    assert [e.event for e in events] == ["shipyard.test.here"]
    # The run's context was attached (the worker's own client reached the session's server).
    assert any(r.id.startswith("prefect.flow-run.") for r in events[0].related), events[0]
