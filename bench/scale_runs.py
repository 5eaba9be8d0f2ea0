"""bench/scale.py's reading of the runs: each run's moments from its state history, and the
figures made of them (releases per minute, queue wait, runs at once per service).

A run's moments: `expected` (Prefect's expected start: when it was due; for a run created with
`run_deployment(..., timeout=0)` or by a trigger, its creation), `pending` (a worker took it:
Scheduled -> Pending), `running` (its process started the flow: Pending -> Running, Prefect's
`start_time`), `end` (its final state, `end_time`).

Queue wait, precisely (the issue's "from Scheduled to Running when a slot is free"): for each
run, the time from the moment it was due and both of its slots were free to its `running`:

    due = max(expected,
              end of the run of the same service that ran just before it,   # its service's slot
              the moment the global slot it took was freed)                 # the pool's limit

It holds the worker's poll (a free slot is offered at the next poll), the process start and the
flow's imports; not the time the run spent behind its own service's previous release (the
one-at-a-time rule), nor behind the GPU quota's global limit (runs at once, by design). The
global slot a run took: the pool's limit gives `limit` slots; runs take them in the order
workers took them (Pending), each the slot freed earliest (the end of an earlier run, or free
from the start), as the server's limit hands them out. `p95_wait_incl_global_s` keeps the global
limit's wait in (the figure before this definition).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from bench.webhook import max_overlap, p


@dataclass
class RunTimes:
    """One run's moments (epoch seconds; None: it never got there)."""

    service: str
    tag: str
    state: str
    completed: bool
    expected: float
    pending: float | None
    running: float | None
    end: float | None
    message: str = ""
    submitting: float | None = None  # the worker has built the job and starts the process
    due: float | None = None  # set by queue_waits


def _ts(value: dt.datetime | None) -> float | None:
    return None if value is None else value.timestamp()


async def read_runs(client: Any, deployment_ids: list[UUID], tags: set[str]) -> list[Any]:
    """Every run of those deployments whose git_tag is one of `tags` (paged)."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    out: list[Any] = []
    offset = 0
    while True:
        page = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=deployment_ids)),
            limit=200,
            offset=offset,
        )
        out += [r for r in page if r.parameters.get("git_tag") in tags]
        if len(page) < 200:
            return out
        offset += 200


async def wait_until_ended(
    client: Any,
    deployment_ids: list[UUID],
    tags: set[str],
    *,
    expect: int,
    timeout: float,
    stall: float,
    label: str,
) -> list[Any]:
    """Poll until `expect` runs of `tags` exist and all ended; or nothing moved for `stall`
    seconds, or `timeout`: then the runs as they are (the caller counts what did not happen)."""
    started = deadline = time.monotonic()
    deadline += timeout
    seen: tuple[int, int] | None = None
    moved = time.monotonic()
    said = 0.0
    while True:
        runs = await read_runs(client, deployment_ids, tags)
        ended = sum(1 for r in runs if r.state is not None and r.state.is_final())
        now = time.monotonic()
        if (len(runs), ended) != seen:
            seen, moved = (len(runs), ended), now
        if now - said > 15:
            said = now
            print(
                f"  {label}: {len(runs)} runs, {ended} ended, {now - started:.0f} s",
                file=sys.stderr,
            )
        if (len(runs) >= expect and ended == len(runs)) or now - moved > stall or now > deadline:
            return runs
        await asyncio.sleep(2.0)


async def run_times(client: Any, runs: list[Any], service_of: dict[UUID, str]) -> list[RunTimes]:
    """The moments of each run, Pending's from its state history."""
    limit = asyncio.Semaphore(10)

    async def one(run: Any) -> RunTimes:
        async with limit:
            states = await client.read_flow_run_states(run.id)
        pending = [s.timestamp for s in states if s.type.value == "PENDING"]
        submitting = [s.timestamp for s in states if s.name == "Submitting"]
        state = run.state
        return RunTimes(
            service=service_of[run.deployment_id],
            tag=str(run.parameters.get("git_tag")),
            state=state.name if state else "-",
            completed=bool(state and state.is_completed()),
            expected=(run.expected_start_time or run.created).timestamp(),
            pending=_ts(min(pending)) if pending else None,
            running=_ts(run.start_time),
            end=_ts(run.end_time) if state is not None and state.is_final() else None,
            message=(state.message or "")[:300] if state else "",
            submitting=_ts(min(submitting)) if submitting else None,
        )

    return list(await asyncio.gather(*(one(r) for r in runs)))


def queue_waits(
    times: list[RunTimes], global_limit: int | None = None, *, include_global: bool = False
) -> list[float]:
    """Each started run's queue wait (module docstring), in seconds; sets each run's `due`.
    `include_global`: leave the wait for the global limit in (due ignores the global slot)."""
    waits: list[float] = []
    freed = {} if include_global else global_slots_freed(times, global_limit)
    by_service: dict[str, list[RunTimes]] = {}
    for t in times:
        if t.running is not None:
            by_service.setdefault(t.service, []).append(t)
    for runs in by_service.values():
        runs.sort(key=lambda t: t.running or 0.0)
        previous_end: float | None = None
        for t in runs:
            due = t.expected if previous_end is None else max(t.expected, previous_end)
            due = max(due, freed.get(id(t), due))
            t.due = due
            waits.append(max(0.0, (t.running or 0.0) - due))
            previous_end = t.end if t.end is not None else time.time()
    return waits


def global_slots_freed(times: list[RunTimes], limit: int | None) -> dict[int, float]:
    """id(run) -> when the global slot it took had been freed (module docstring); a run that got
    in over the limit (a race of two workers' polls) is not in it."""
    if not limit:
        return {}
    held = sorted(((i, t) for t in times if (i := _interval(t)) is not None), key=lambda x: x[0][0])
    free = [float("-inf")] * limit  # a min-heap of the moments slots were freed
    out: dict[int, float] = {}
    for (start, end), t in held:
        if free and free[0] <= start:
            out[id(t)] = heapq.heappop(free)
        heapq.heappush(free, end)
    return out


def _interval(t: RunTimes) -> tuple[float, float] | None:
    """From the moment a worker took the run (its slot is held) to its end."""
    start = t.pending if t.pending is not None else t.running
    if start is None:
        return None
    return start, t.end if t.end is not None else time.time()


def max_concurrent_per_service(times: list[RunTimes]) -> int:
    """Most runs of one service held at once (Pending or Running), over all services."""
    by_service: dict[str, list[tuple[float, float]]] = {}
    for t in times:
        interval = _interval(t)
        if interval is not None:
            by_service.setdefault(t.service, []).append(interval)
    return max((max_overlap(v) for v in by_service.values()), default=0)


def overlapping(times: list[RunTimes]) -> list[str]:
    """`service: tag+tag` for each pair of runs of one service held at the same time."""
    out = []
    by_service: dict[str, list[RunTimes]] = {}
    for t in times:
        by_service.setdefault(t.service, []).append(t)
    for service, runs in sorted(by_service.items()):
        spans = [(t.tag, _interval(t)) for t in runs]
        held = sorted((i[0], i[1], tag) for tag, i in spans if i is not None)
        for k, (_start, end, tag) in enumerate(held):
            out += [f"{service}: {tag}+{o}" for s2, _, o in held[k + 1 :] if s2 < end]
    return out


def max_concurrent(times: list[RunTimes]) -> int:
    """Most runs held at once, all services."""
    return max_overlap([i for i in (_interval(t) for t in times) if i is not None])


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def phase_figures(
    times: list[RunTimes], expected: int, started_at: float, global_limit: int | None = None
) -> dict[str, Any]:
    """Figures of one batch of runs created at `started_at` (epoch seconds); `global_limit`: the
    pool's concurrency limit (queue waits do not count the wait for it)."""
    completed = [t for t in times if t.completed and t.end is not None]
    last_end = max((t.end for t in completed if t.end is not None), default=None)
    wall = (last_end - started_at) if last_end is not None else None
    with_global = queue_waits(times, include_global=True)
    waits = queue_waits(times, global_limit)
    states: dict[str, int] = {}
    for t in times:
        states[t.state] = states.get(t.state, 0) + 1
    failures = [t for t in times if not t.completed]
    tags_seen: dict[str, int] = {}
    for t in times:
        key = f"{t.service}:{t.tag}"
        tags_seen[key] = tags_seen.get(key, 0) + 1
    return {
        "expected": expected,
        "runs": len(times),
        "completed": len(completed),
        "not_completed": expected - len(completed),
        "run_states": states,
        "first_failure": (
            f"{failures[0].service} {failures[0].tag} {failures[0].state}: {failures[0].message}"
            if failures
            else None
        ),
        "wall_s": round(wall, 1) if wall is not None else None,
        "releases_per_min": round(60 * len(completed) / wall, 1) if wall else 0.0,
        "p95_queue_wait_s": p(waits, 0.95),
        "p50_queue_wait_s": p(waits, 0.50),
        "max_queue_wait_s": round(max(waits), 2) if waits else None,
        "p95_wait_incl_global_s": p(with_global, 0.95),
        "max_concurrent_per_service": max_concurrent_per_service(times),
        "overlapping_runs": overlapping(times)[:20],
        "max_concurrent_all": max_concurrent(times),
        "tags_run_twice": sorted(k for k, n in tags_seen.items() if n > 1),
        # Where a run's seconds go (medians): worker poll (Scheduled -> Pending, from when it was
        # due), process start + flow imports (Pending -> Running), the release (Running -> end).
        "median_due_to_pending_s": _median(
            [t.pending - t.due for t in times if t.pending is not None and t.due is not None]
        ),
        "median_pending_to_running_s": _median(
            [t.running - t.pending for t in times if t.running and t.pending]
        ),
        # ... of which the worker's part (the job built from the deployment, the run's labels:
        # Pending -> Submitting) and the run process's (its start and the engine's setup until
        # it proposes Running: Submitting -> Running).
        "median_pending_to_submitting_s": _median(
            [t.submitting - t.pending for t in times if t.submitting and t.pending]
        ),
        "median_submitting_to_running_s": _median(
            [t.running - t.submitting for t in times if t.running and t.submitting]
        ),
        "median_running_to_end_s": _median(
            [t.end - t.running for t in times if t.end and t.running]
        ),
    }


async def _events(client: Any, event_filter: Any) -> tuple[int, list[Any]]:
    """(total, every event) matching the filter, following the server's pages (50 at most)."""
    page = await client.read_events(filter=event_filter, limit=50)
    total, events = page.total, list(page.events)
    while page.next_page:
        page = await client.read_events_page(page.next_page)
        events += page.events
    return total, events


async def traffic_per_release(client: Any, runs: list[Any], sample: int = 5) -> dict[str, Any]:
    """What one release sends the Prefect server, the mean over the `sample` completed runs that
    ended first (the server records task runs and events a few seconds after they happen):
    its task runs, log lines, events (its own and those naming it) and artifacts, the most
    frequent events by name. It explains the server's CPU per release: every task run is three
    state events (Pending, Running, Completed), each kept as an event and as a task run state."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.events.filters import EventAnyResourceFilter, EventFilter, EventOccurredFilter

    completed = [r for r in runs if r.state is not None and r.state.is_completed() and r.end_time]
    done = sorted(completed, key=lambda r: r.end_time)[:sample]
    if not done:
        return {}
    totals = {"task_runs": 0, "logs": 0, "events": 0, "artifacts": 0}
    names: dict[str, int] = {}
    for run in done:
        # Counts have no wrapper in Prefect's client: its own httpx client asks for them.
        flow_runs = {"id": {"any_": [str(run.id)]}}
        counted = await client._client.post("/task_runs/count", json={"flow_runs": flow_runs})
        totals["task_runs"] += int(counted.json())
        counted = await client._client.post("/artifacts/count", json={"flow_runs": flow_runs})
        totals["artifacts"] += int(counted.json())
        log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id]))
        offset = 0
        while True:
            page = await client.read_logs(log_filter=log_filter, limit=200, offset=offset)
            totals["logs"] += len(page)
            if len(page) < 200:
                break
            offset += 200
        total, events = await _events(
            client,
            EventFilter(
                any_resource=EventAnyResourceFilter(id=[f"prefect.flow-run.{run.id}"]),
                occurred=EventOccurredFilter.model_validate({"since": run.created}),
            ),
        )
        totals["events"] += total
        for event in events:
            names[event.event] = names.get(event.event, 0) + 1
    top = sorted(names.items(), key=lambda kv: -kv[1])[:8]
    return {k: round(v / len(done), 1) for k, v in totals.items()} | {
        "sampled_runs": len(done),
        "top_events": {name: round(n / len(done), 1) for name, n in top},
    }


async def end_to_worker_done(client: Any, runs: list[Any]) -> float | None:
    """The median seconds from a run's final state to its worker's `executed-flow-run` event
    (the worker saw its process exit and may take another run: with each worker's `--limit` its
    share of the pool's, a slot a release frees is usable only then). It holds the end of the
    flow's engine (Prefect stops its heartbeat thread, which sleeps in 1 s steps), the process's
    exit (its last events and logs flushed) and the worker noticing."""
    from prefect.events.filters import (
        EventAnyResourceFilter,
        EventFilter,
        EventNameFilter,
        EventOccurredFilter,
    )

    ended = {f"prefect.flow-run.{r.id}": r for r in runs if r.end_time is not None}
    if not ended:
        return None
    _, events = await _events(
        client,
        EventFilter(
            event=EventNameFilter(name=["prefect.worker.executed-flow-run"]),
            any_resource=EventAnyResourceFilter(id=list(ended)),
            occurred=EventOccurredFilter.model_validate(
                {"since": min(r.created for r in ended.values())}
            ),
        ),
    )
    lags = []
    for event in events:
        ids = [event.resource.id, *(r.id for r in event.related)]
        run = next((ended[i] for i in ids if i in ended), None)
        if run is not None:
            lags.append(event.occurred.timestamp() - run.end_time.timestamp())
    return round(statistics.median(lags), 2) if lags else None
