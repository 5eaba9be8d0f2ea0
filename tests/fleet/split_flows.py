"""The flow tests/fleet/test_redis_stack.py deploys on a stack whose Prefect server is split in
two processes (API, background services) with Redis between them: two tasks (their runs are
recorded by the services' task-run recorder from the state events the API put on Redis) and one
event of its own (persisted by the services' event persister)."""

from __future__ import annotations

from prefect import flow, task
from prefect.events import emit_event


@task(name="split-step")
def step(n: int) -> int:
    return n * 2


@flow(name="split-probe")
def probe(marker: str) -> int:
    emit_event("shipyard.test.split", resource={"prefect.resource.id": marker})
    return step(1) + step(2)
