"""Cloud Run's instance autoscaling for revisions that run as containers (sandbox/engine):
scale to zero after idle, a cold start on the next request, and no more requests at once than
the revision's instances may take. In-process revisions (no Docker daemon) are not affected.

Google's behaviour, and where it is written:
- Scale to zero: "When a revision does not receive any traffic, by default it is scaled in to
  zero container instances" and "Cloud Run doesn't immediately shut down instances once they
  have handled all requests ... might keep some instances idle for a maximum of 15 minutes"
  (cloud.google.com/run/docs/about-instance-autoscaling). How long here: the scenario's
  `serving.idle_instance_s`, the setting that also says how long an idle GPU instance holds
  the region's GPU quota (gpu_instances.py). "The Cloud Run autoscaler evaluates these every 5
  seconds" (same page): an instance that served a request since the last evaluation was in
  use, so it stays at least that long. A revision with a minimum (its own
  `scaling.minInstanceCount`, or its share of the service's: gpu_instances.min_instances) keeps
  its instance, and gets one started when it has none (warm_minimums).
- Shutting an instance down: SIGTERM, SIGKILL 10 s later (container contract, Instance
  shutdown). Google writes no line of its own for it (teams look for their own SIGTERM
  handler's line: argotorg/sourcify#1877), so neither does the sandbox.
- The next request starts an instance (a cold start: the startup probe, the container's
  stdout/stderr in Cloud Logging) and waits for it.
- Busy: a revision has at most `scaling.maxInstanceCount` instances (unset: "the server
  default value of 100", google/cloud/run/v2/vendor_settings.proto RevisionScaling) of
  `maxInstanceRequestConcurrency` requests each (unset or 0: 80 with >= 1 CPU, else 1,
  google/cloud/run/v2/revision_template.proto). Beyond that, "incoming requests are pending
  ... up to 10 seconds ... If no instance becomes available ... the request fails with a 429
  error code" (about-instance-autoscaling, Exceeding maximum instances); the request log says
  "The request was aborted because there was no available instance." (with that 429 in
  httpRequest.status: googleapis/repo-automation-bots#4039, hashicorp/terraform-provider-google
  #13193; the pointer to the troubleshooting page as production logs quote it).

On one container: the engine runs one container per revision whatever its maximum, and lets it
take as many requests at once as the revision's instances together would (max x concurrency),
never more. For the pipeline's revisions (max 1, concurrency 1) that is exactly Google's count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI

from sandbox.emulator.core import SandboxState
from sandbox.emulator.gpu_instances import gpu_revision, min_instances
from sandbox.emulator.run_resources import Revision, container_name, write_revision_log
from sandbox.emulator.run_templates import parse_cpu, startup_probe, template_limits
from sandbox.engine.containers import Instance, stop_instance
from sandbox.engine.daemon import docker
from sandbox.engine.revision_instances import (
    container_store,
    running_container_store,
    start_revision_container,
)

NO_INSTANCE_MESSAGE = (
    "The request was aborted because there was no available instance. Additional "
    "troubleshooting documentation can be found at: "
    "https://cloud.google.com/run/docs/troubleshooting#abort-request"
)
EVALUATION_PERIOD_S = 5.0  # "The Cloud Run autoscaler evaluates these every 5 seconds"
SHUTDOWN_GRACE_S = 10.0  # SIGTERM, then SIGKILL 10 s later
DEFAULT_MAX_INSTANCES = 100
_log = logging.getLogger(__name__)


@dataclass
class Load:
    """A revision's requests as the autoscaler sees them."""

    in_flight: int = 0
    last_used: float = field(default_factory=time.monotonic)  # the last request's end
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    # Held while the revision's container stops or starts: a request meanwhile waits for it.
    transition: asyncio.Lock = field(default_factory=asyncio.Lock)


class Autoscaler:
    """state.stores["autoscaling"]: the load of every revision that serves from a container."""

    def __init__(self) -> None:
        self.loads: dict[str, Load] = {}
        self.warming: set[asyncio.Task] = set()  # minimums starting (kept referenced)

    def load(self, revision: str) -> Load:
        return self.loads.setdefault(revision, Load())

    def reset(self) -> None:
        self.loads.clear()


def _autoscaler(state: SandboxState) -> Autoscaler:
    store = state.stores.get("autoscaling")
    if store is None:
        store = state.stores["autoscaling"] = Autoscaler()
    return store


def capacity(rev: Revision) -> int:
    """How many requests the revision's instances take at once (max instances x concurrency)."""
    template = rev.template
    instances = int(template.get("scaling", {}).get("maxInstanceCount", 0) or 0)
    concurrency = int(template.get("maxInstanceRequestConcurrency", 0) or 0)
    if not concurrency:
        concurrency = 80 if parse_cpu(template_limits(template).get("cpu")) >= 1 else 1
    return (instances or DEFAULT_MAX_INSTANCES) * concurrency


async def admit(state: SandboxState, rev: Revision) -> str | None:
    """None when the request may go to the revision's instance (then `done` must follow), else
    Google's 429 text: every instance was busy for the whole pending window."""
    if container_store(state) is None:
        return None
    load = _autoscaler(state).load(rev.name)
    limit = capacity(rev)
    async with load.changed:
        try:
            async with asyncio.timeout(state.scenario.serving.request_pending_s):
                await load.changed.wait_for(lambda: load.in_flight < limit)
        except TimeoutError:
            state.calls["run.no_available_instance"] += 1
            return NO_INSTANCE_MESSAGE
        load.in_flight += 1
    return None


async def done(state: SandboxState, rev: Revision) -> None:
    """The request `admit` let in has ended: its slot is free, the idle clock starts."""
    if container_store(state) is None:
        return
    load = _autoscaler(state).load(rev.name)
    async with load.changed:
        load.in_flight = max(0, load.in_flight - 1)
        load.last_used = time.monotonic()
        load.changed.notify()


async def running_instance(
    state: SandboxState, rev: Revision, why: str = "cold_start"
) -> Instance | None:
    """The revision's container, started now if it was scaled to zero or killed (a cold start,
    which the request waits for); None when it failed to start.

    A container the kernel killed (an OOM; its "Memory limit of … exceeded" and "Container
    terminated on signal 9." lines are in the revision's log already) is removed and the request
    starts a new one, as Cloud Run does: "Cloud Run instances that exceed their allowed memory
    limit are terminated" (cloud.google.com/run/docs/configuring/services/memory-limits), "the
    requests that instance was handling fail with a 500 or 503 while a new one starts"
    (encore.dev/articles/cloud-run-memory-limit-exceeded); the revision keeps serving."""
    containers = running_container_store(state)
    instance = containers.instances.get(rev.name)
    if instance is not None and not instance.stopping and instance.alive:
        return instance
    async with _autoscaler(state).load(rev.name).transition:
        instance = containers.instances.get(rev.name)
        if instance is not None and not instance.stopping and not instance.alive:
            await _remove_killed(state, rev, instance)
            instance = None
        if instance is None or instance.stopping:  # nobody started it while this one waited
            state.calls[f"run.{why}"] += 1  # cold_start, or min_instance_start (warm_minimums)
            # The start runs in a thread; the instance is registered back on the loop.
            started = await start_revision_container(
                state, rev, lambda: state.stores["run"].revisions.get(rev.name) is rev
            )
            if not started:
                text = startup_probe(rev.template).failure_text(container_name(rev.template))
                write_revision_log(state, rev, "ERROR", text, stream="varlog%2Fsystem")
                return None
            instance = containers.instances.get(rev.name)
    return instance if instance is not None and instance.alive else None


async def _remove_killed(state: SandboxState, rev: Revision, instance: Instance) -> None:
    """Take a killed container out before its replacement starts (under the revision's
    transition lock): removed first, so the new container can take its name."""
    containers = running_container_store(state)
    del containers.instances[rev.name]
    instance.stopping = True
    client = state.stores["run"].instances.pop(rev.name, None)  # its connection, to a dead port
    if client is not None:
        await client.aclose()
    await asyncio.to_thread(stop_instance, containers.engine, instance)
    state.calls["run.instance_replaced"] += 1


def warm_minimums(state: SandboxState, store: Any, revisions: list[Revision]) -> list[asyncio.Task]:
    """Start, in the background, the container of each Ready revision that has a minimum (its
    own, or its share of the service's: gpu_instances.min_instances) and no container running;
    returns the starts under way (none without a Docker daemon or outside the event loop).

    How an abort warms the stable revision before it shifts traffic back: raising the service's
    `scaling.minInstanceCount` starts an instance "without needing to deploy a new revision"
    (cloud.google.com/run/docs/configuring/min-instances), and Cloud Run waits for them before a
    traffic migration: revisionReason MIN_INSTANCES_WARMING, "A revision with
    min_instance_count > 0 was created and is waiting for enough instances to begin a traffic
    migration" (google/cloud/run/v2/condition.proto). The engine runs one container per
    revision: a minimum of N keeps that one container started. A GPU revision's minimum starts
    only when the region's GPU quota holds it (gpu_instances.refresh ran before)."""
    containers = container_store(state)
    if containers is None:
        return []
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return []
    scaler = _autoscaler(state)
    started = []
    for rev in revisions:
        if not rev.ready or min_instances(store, rev) < 1:
            continue
        if gpu_revision(rev) and not rev.instance:  # no GPU within the quota for it
            continue
        instance = containers.instances.get(rev.name)
        if instance is not None and instance.alive and not instance.stopping:
            continue
        task = loop.create_task(
            running_instance(state, rev, why="min_instance_start"), name=f"warm-{rev.short}"
        )
        scaler.warming.add(task)
        task.add_done_callback(scaler.warming.discard)
        started.append(task)
    return started


def _idle_instances(state: SandboxState, now: float) -> list[tuple[str, Instance]]:
    """The containers to stop: idle past the scenario's setting (and at least one evaluation
    period), below their revision's minimum, or of a revision that is gone."""
    containers = running_container_store(state)
    run = state.stores["run"]
    revisions = run.revisions
    scaler = _autoscaler(state)
    idle_s = max(state.scenario.serving.idle_instance_s, EVALUATION_PERIOD_S)
    out = []
    for name, instance in list(containers.instances.items()):
        if not instance.alive or instance.stopping:  # a killed one: the next request replaces it
            continue
        rev = revisions.get(name)
        load = scaler.load(name)  # first seen now: the idle clock starts
        if rev is not None and (min_instances(run, rev) >= 1 or load.in_flight):
            continue
        if rev is None or now - load.last_used >= idle_s:
            out.append((name, instance))
    return out


async def _scale_to_zero(state: SandboxState, name: str, instance: Instance) -> None:
    """Take the instance out of service at once, then shut it down (up to the grace period)
    while a request may already start a new one: renamed, so the new one can take its name."""
    containers = running_container_store(state)
    instance.stopping = True  # from now on a request waits for the transition, then starts one
    async with _autoscaler(state).load(name).transition:
        rename = ["rename", instance.container, f"stopping-{instance.container[:12]}"]
        await asyncio.to_thread(docker, containers.engine, *rename)
        if containers.instances.get(name) is instance:
            del containers.instances[name]
        client = state.stores["run"].instances.pop(name, None)  # its connection, to a dead port
        if client is not None:
            await client.aclose()
        state.calls["run.scaled_to_zero"] += 1
    await asyncio.to_thread(stop_instance, containers.engine, instance, SHUTDOWN_GRACE_S)


async def reap_forever(state: SandboxState, period_s: float = EVALUATION_PERIOD_S) -> None:
    """Every evaluation period, stop the containers nothing needs any more."""
    while True:
        await asyncio.sleep(period_s)
        try:
            idle = _idle_instances(state, time.monotonic())
            for _name, instance in idle:
                instance.stopping = True
            await asyncio.gather(*(_scale_to_zero(state, n, i) for n, i in idle))
        except Exception:  # noqa: BLE001 - one bad evaluation (docker or other) must not end scaling
            _log.exception("sandbox: the idle reaper's evaluation failed")


def install(app: FastAPI, state: SandboxState) -> None:
    """Run the idle reaper while the emulator serves (container engine only)."""
    if not state.docker_host:
        return
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app_: Any) -> AsyncIterator[Any]:
        reaper = asyncio.create_task(reap_forever(state), name="idle-reaper")
        try:
            async with inner(app_) as value:
                yield value
        finally:
            reaper.cancel()

    app.router.lifespan_context = lifespan
