"""`shipyard stack up --messaging redis`: the Prefect server split as Prefect's guide to scaling
a self-hosted server does (deployments/stack/redis.py): the API (`prefect server start
--no-services`) and the background services (`prefect server services start`) in two processes,
Redis (Debian's redis-server) between them, PostgreSQL under both.

What proves the split works and is not one process doing everything: the API process was started
with --no-services, so the task runs of a flow run (recorded from their state events) and the
run's own event reach the database only through Redis and the services process. A run through
the stack's worker completes, its two task runs and its event are read back; `down` stops every
part by PID. SQLite with Redis is refused before anything starts.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import stack_kit
from api_switch_kit import pointed_at

from shipyard.deployments.stack.processes import alive
from shipyard.tasks.waiting import Deadline, NotYet, await_for

pytestmark = pytest.mark.slow

FLEET_DIR = Path(__file__).resolve().parent
RUN_TIMEOUT_S = 240.0  # a loaded machine stretches a run's start
POLL: dict[str, Any] = {"first_delay_s": 0.2, "max_delay_s": 2.0, "heartbeat_s": None}


stack_home = stack_kit.stack_home


def _cli(home: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """`shipyard ARGS` with tests/fleet on the path (the worker's runs import split_flows)."""
    return stack_kit.shipyard_cli(home, *args, timeout=timeout, pythonpath=FLEET_DIR)


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().rstrip("\0").split("\0")


async def _release_through_the_worker(marker: str) -> tuple[Any, list[Any], list[Any]]:
    """Deploy split_flows.probe on the stack's pool, run it, and read back its end state, its
    task runs and its event (each waited for: the services write them after the API answered)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.events.filters import EventFilter, EventResourceFilter

    async with get_client() as client:
        flow_id = await client.create_flow_from_name("split-probe")
        deployment_id = await client.create_deployment(
            flow_id=flow_id,
            name=f"split-{uuid.uuid4().hex[:8]}",
            work_pool_name="shipyard-process",
            entrypoint="split_flows.py:probe",
            path=str(FLEET_DIR),
        )
        run = await client.create_flow_run_from_deployment(
            deployment_id, parameters={"marker": marker}
        )

        async def ended() -> Any:
            now = await client.read_flow_run(run.id)
            if now.state is None or not now.state.is_final():
                raise NotYet(f"the run is {now.state.name if now.state else 'without a state'}")
            return now

        final = await await_for(
            ended, what="the run to end", deadline=Deadline(RUN_TIMEOUT_S), **POLL
        )
        if not final.state.is_completed():
            return final, [], []

        async def task_runs() -> list[Any]:
            found = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
            )
            done = [t for t in found if t.state is not None and t.state.is_completed()]
            if len(done) < 2:
                raise NotYet(f"{len(done)} completed task runs recorded")
            return found

        async def events() -> list[Any]:
            page = await client.read_events(
                EventFilter(resource=EventResourceFilter(id=[marker])), 5
            )
            if not page.events:
                raise NotYet("the run's event is not persisted yet")
            return list(page.events)

        recorded = await await_for(
            task_runs, what="the run's task runs", deadline=Deadline(60), **POLL
        )
        persisted = await await_for(events, what="the run's event", deadline=Deadline(60), **POLL)
        return final, recorded, persisted


def test_sqlite_with_redis_is_refused_before_anything_starts(stack_home):
    refused = _cli(stack_home, "stack", "up", "--database", "sqlite", "--messaging", "redis")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "--messaging redis needs --database postgres" in refused.stderr
    assert not (stack_home / "stack" / "stack.json").exists()


def test_split_server_with_redis_records_a_workers_run(stack_home):
    up = _cli(
        stack_home,
        "stack", "up", "--database", "postgres", "--messaging", "redis",
        "--workers", "1", "--port", "0",
    )  # fmt: skip
    assert up.returncode == 0, up.stdout + up.stderr
    state = json.loads((stack_home / "stack" / "stack.json").read_text())
    parts = {p["name"]: p for p in state["parts"]}
    try:
        assert set(parts) == {"postgres", "redis", "server", "services", "warm", "worker-1"}
        assert all(alive(p["pid"], p["started"]) for p in parts.values())
        assert "--no-services" in _cmdline(parts["server"]["pid"])
        assert _cmdline(parts["services"]["pid"])[-3:] == ["server", "services", "start"]
        assert parts["redis"]["url"].startswith("redis://127.0.0.1:")

        marker = f"shipyard.test.split.{uuid.uuid4().hex}"
        with pointed_at(state["api_url"]):
            final, task_runs, events = asyncio.run(_release_through_the_worker(marker))
        assert final.state.is_completed(), (final.state, _tail(parts))
        assert sorted(t.name.split("-")[0] for t in task_runs) == ["split", "split"]
        assert [e.event for e in events] == ["shipyard.test.split"]
    finally:
        down = _cli(stack_home, "stack", "down", timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not any(alive(p["pid"], p["started"]) for p in parts.values())
    assert all(f"{name} (" in down.stdout for name in ("redis", "services", "server"))


def _tail(parts: dict[str, Any]) -> str:
    """The last lines of the services' and the worker's logs, for a failed assertion."""
    out = []
    for name in ("services", "worker-1"):
        log = Path(parts[name]["log"]) if parts.get(name, {}).get("log") else None
        if log is not None and log.exists():
            out.append(f"--- {name}\n" + log.read_text(errors="replace")[-2000:])
    return "\n".join(out)
