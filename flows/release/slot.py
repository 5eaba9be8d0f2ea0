"""One release per service (per environment) at a time: the global concurrency limit
`shipyard-release-{scope}` (1 slot), held through a lease that the holder's client renews while it
lives. The scope is `ReleaseTarget.scope`: the Cloud Run service name, or `{service}-{environment}`
for a target with an environment, so that a staging and a production target of one service (same
name, other project) never wait for each other; every function here takes that scope.

A holder that dies (SIGKILL, a lost machine) stops renewing: Prefect's repossessor frees its
slot when the lease runs out. The lease is `ReleaseTarget.slot_lease_s` (60 s, the least Prefect
accepts) instead of Prefect's default 300 s. Faster still, the holder writes who it is (flow run,
host, pid) into the Variable `shipyard-release-holder-{scope}`; a release that finds the slot
taken by a holder that is provably dead (its process is gone from this host, or its flow run is
already final) marks that run Crashed and frees the slot at once, and says so. The bound a dead
holder can block a service is therefore: none on the same host, `slot_lease_s` + the
repossessor's loop elsewhere.

Freeing means releasing the dead holder's own lease (recorded with it), never zeroing the slot
count: the release decrements the count and revokes the lease, so when that lease would have run
out later the repossessor finds nothing to free, and the slot the next (live) release took meanwhile
stays held. A holder recorded without its lease id is left to its lease running out.

A dead holder leaves more than its slot: its flow run and its subflow runs (the build) still
Running, and the tag's untested GPU revision with the `canary` tag. Freeing it (the next
release's slot check) therefore also marks that whole run tree Crashed and takes the dead run's
`canary` (where its revision has 0%) and `baseline` tags off. When nobody releases the service
again, `sweep(scope)` does the same and also cancels the dead run's Cloud Build (a re-run of
the same tag adopts a build still running, so the slot check leaves it): bench/faults.py runs it
after its "nobody re-runs" kill cases; an operator runs it the same way, from Python:
`from shipyard.flows.release.slot import sweep; sweep("SCOPE")` (the service name, or
`SERVICE-ENVIRONMENT`: `shipyard sweep TARGET` finds it from the target block).

A holder record that names the flow run now asking is that run's own: the slot is re-entered,
never waited for, and the run is never taken for a dead holder (which would mark the asking run
itself Crashed). Two cases. In the same process (a nested `release_slot`), the outer one holds
the slot: the inner one goes through. From another process, it is an earlier incarnation of the
same flow run: a release suspended at an approval gate (flows/rollout/gate.py) is run again from
the start in a new process when resumed, while the suspended process may still be unwinding (the
suspension sets the run's state before the process lets go of its slot; under load that took
longer than `lock_timeout_s`) or may have ended without letting go (a killed container, a lost
machine: its lease runs out only later). The new incarnation releases the earlier one's lease and
takes a lease of its own at once. The earlier process letting go later frees nothing: its lease
is already revoked (Prefect's decrement-with-lease of a revoked lease is a no-op), and it unsets
the holder record only while the record still names its own lease. Another release finding the
record of a run suspended at a gate whose process is gone frees that slot but leaves the run
waiting for its answer: never marked Crashed, its tags left alone.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any
from uuid import UUID

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
from prefect.concurrency.context import ConcurrencyContext
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.states import Crashed
from prefect.variables import Variable

from shipyard.blocks.names import sanitize_name
from shipyard.tasks.errors import PermanentError
from shipyard.tasks.processes import pid_alive, process_host


class ReleaseError(PermanentError):
    """The release stopped (configuration, build, or another release holds the service)."""


class SlotTaken(ReleaseError):
    """Another release of the service holds its slot."""


def slot_name(scope: str) -> str:
    """The release slot of a `ReleaseTarget.scope` (the service name without an environment)."""
    return sanitize_name(f"shipyard-release-{scope}", 255)


def holder_variable(scope: str) -> str:
    return sanitize_name(f"shipyard-release-holder-{scope}", 255)


def ensure_slot(name: str) -> None:
    """The global concurrency limit (1 slot) for a service; created once."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with suppress(ObjectAlreadyExists):  # another release created it meanwhile
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1)
                )


def holder_status(scope: str) -> tuple[dict[str, Any] | None, str]:
    """(the recorded holder, 'alive' | 'dead: why' | 'unknown')."""
    holder = Variable.get(holder_variable(scope), default=None)
    if not isinstance(holder, dict):
        return None, "unknown"
    run_id = holder.get("flow_run_id")
    if run_id:
        with get_client(sync_client=True) as client:
            try:
                run = client.read_flow_run(run_id)
            except ObjectNotFound:
                return holder, "dead: its flow run no longer exists"
            if run.state is not None and run.state.is_final():
                return holder, f"dead: its flow run is {run.state.name}"
    if holder.get("host") == process_host() and not pid_alive(int(holder.get("pid", 0))):
        return holder, f"dead: process {holder.get('pid')} on this host is gone"
    return holder, "alive"


def free_dead_holder(scope: str, *, cancel_builds: bool = False) -> str | None:
    """Free the slot of a provably dead holder: mark its run and its subflow runs Crashed, take
    its tags off (and with `cancel_builds` cancel its Cloud Build), release its lease. The
    reason, or None (no dead holder, or one whose lease id is unknown: its lease runs out)."""
    holder, status = holder_status(scope)
    if holder is None or not status.startswith("dead") or not holder.get("lease_id"):
        return None
    run_id = holder.get("flow_run_id")
    crashed: list[str] = []
    parameters: dict[str, Any] = {}
    with get_client(sync_client=True) as client:
        run = None
        if run_id:
            with suppress(ObjectNotFound):
                run = client.read_flow_run(run_id)
        if run is not None and _suspended(run.state):
            # A release suspended at a gate holds no slot (its process lets go on the way out;
            # the gate keeps the service meanwhile): this lease is what its process, killed while
            # unwinding, left. Freed; the run is not dead: it waits for its answer, and Prefect
            # runs it again in a new process when resumed.
            client.release_concurrency_slots_with_lease(UUID(str(holder["lease_id"])))
            Variable.unset(holder_variable(scope))
            return (
                f"the slot flow run {run_id} left held ({status}) was freed; that run is "
                "suspended at a gate and keeps waiting for its answer"
            )
        if run_id:
            parameters = dict(run.parameters or {}) if run is not None else {}
            crashed = crash_run_tree(
                client, UUID(str(run_id)), f"release process died ({status}); slot freed"
            )
        # Its own lease: decremented once and revoked, so its expiry later frees nothing (a lease
        # already run out is a no-op here). Zeroing the count instead would let that expiry free
        # the slot of the release that takes it next.
        client.release_concurrency_slots_with_lease(UUID(str(holder["lease_id"])))
    Variable.unset(holder_variable(scope))
    cleaned = clean_after_dead_run(parameters, cancel_builds=cancel_builds)
    done = f"the slot of flow run {run_id} was freed: {status}"
    if crashed:
        done += f"; marked Crashed: {len(crashed)} flow run(s) ({', '.join(crashed)})"
    return "; ".join([done, *cleaned])


def _suspended(state: Any) -> bool:
    """A run suspended (Prefect's `Suspended`: Paused, rescheduled on resume), not paused in its
    process (`pause_flow_run`, which keeps its process and its slot)."""
    return bool(state is not None and state.is_paused() and state.state_details.pause_reschedule)


def sweep(scope: str) -> list[str]:
    """What a dead release of `scope` (a `ReleaseTarget.scope`: the service name, or
    `service-environment`) left when nobody releases it again: its slot, its run tree still
    Running, its Cloud Build, its `canary` / `baseline` tags (see the module docstring). What was
    done; empty when the holder is alive or nothing is held."""
    freed = free_dead_holder(scope, cancel_builds=True)
    return [freed] if freed else []


def crash_run_tree(client: Any, run_id: UUID, message: str) -> list[str]:
    """Mark the flow run and its subflow runs, depth first, Crashed where not final already
    (a SIGKILL ends them all at once: none reports its own end). The ids marked."""
    marked: list[str] = []
    try:
        run = client.read_flow_run(run_id)
    except ObjectNotFound:
        return marked
    children = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id])
        ),
        limit=200,
    )
    for child in children:
        if child.id != run_id:
            marked += crash_run_tree(client, child.id, message)
    if run.state is None or not run.state.is_final():
        client.set_flow_run_state(run_id, Crashed(message=message), force=True)
        marked.append(str(run_id))
    return marked


def clean_after_dead_run(parameters: dict[str, Any], *, cancel_builds: bool) -> list[str]:
    """The dead run's `canary` tag (where its revision has 0%) and `baseline` tag taken off, its
    Cloud Build cancelled with `cancel_builds`: what its on_crashed hook would have done, had a
    SIGKILL let it run (flows/release/hooks.py `cleanup`). Never raises: lines saying what was
    done."""
    from shipyard.flows.release import hooks

    git_tag = parameters.get("git_tag")
    target = hooks._target_of(parameters)
    if target is None or not git_tag or parameters.get("dry_run"):
        return []
    return hooks.cleanup(target, str(git_tag), cancel_builds=cancel_builds)


def _lease_ids() -> list[UUID]:
    """Leases this run holds (Prefect records each one on the run's ConcurrencyContext)."""
    ctx = ConcurrencyContext.get()
    return list(ctx.cleanup_lease_ids) if ctx is not None else []


def _current_run_id() -> str | None:
    run = FlowRunContext.get()
    return str(run.flow_run.id) if run and run.flow_run else None


def _own_holder(scope: str) -> tuple[dict[str, Any], bool] | None:
    """The holder record when it names the flow run now asking, with whether the slot is held
    in this very process (a nested `release_slot`: the record's process is this one and its
    lease is one this process holds); None when it names another run, or nobody."""
    run_id = _current_run_id()
    holder = Variable.get(holder_variable(scope), default=None)
    if run_id is None or not isinstance(holder, dict) or holder.get("flow_run_id") != run_id:
        return None
    here = (
        holder.get("host") == process_host()
        and holder.get("pid") == os.getpid()
        and str(holder.get("lease_id")) in {str(i) for i in _lease_ids()}
    )
    return holder, here


def _take_over(scope: str, holder: dict[str, Any]) -> str:
    """Release the lease of an earlier incarnation of this flow run (see the module docstring);
    what was done."""
    lease_id = holder.get("lease_id")
    where = f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}"
    if not lease_id:  # recorded without its lease: nothing to release, its lease runs out
        return f"an earlier incarnation of this flow run ({where}) held it; its lease id is unknown"
    with get_client(sync_client=True) as client:
        client.release_concurrency_slots_with_lease(UUID(str(lease_id)))
    Variable.unset(holder_variable(scope))
    return f"an earlier incarnation of this flow run ({where}) held it: its lease was released"


def _forget_holder(scope: str, lease_id: UUID | None) -> None:
    """Unset the holder record if it is still this holder's: an incarnation of the same run that
    took the slot over meanwhile has written its own, which stays."""
    holder = Variable.get(holder_variable(scope), default=None)
    if not isinstance(holder, dict) or holder.get("lease_id") == (
        str(lease_id) if lease_id else None
    ):
        Variable.unset(holder_variable(scope))


def _record_holder(scope: str, lease_id: UUID | None) -> None:
    run = FlowRunContext.get()
    Variable.set(
        holder_variable(scope),
        {
            "flow_run_id": str(run.flow_run.id) if run and run.flow_run else None,
            "host": process_host(),
            "pid": os.getpid(),
            "lease_id": str(lease_id) if lease_id else None,
            "since": dt.datetime.now(dt.UTC).isoformat(),
        },
        overwrite=True,
    )


@contextmanager
def release_slot(scope: str, timeout_s: float, lease_s: float = 60.0) -> Iterator[None]:
    """Hold the release slot of `scope` (`ReleaseTarget.scope`) while the block runs; SlotTaken
    after `timeout_s` when another release of the same scope holds it."""
    name = slot_name(scope)
    ensure_slot(name)
    own = _own_holder(scope)
    if own is not None and own[1]:
        yield  # nested in this process: the outer `release_slot` holds the slot and lets it go
        return
    if own is not None:
        get_run_logger().warning("release slot %s re-entered: %s", name, _take_over(scope, own[0]))
    else:
        freed = free_dead_holder(scope)
        if freed:
            get_run_logger().warning("release slot %s: %s", name, freed)
    acquired = False
    before = set(_lease_ids())
    try:
        with concurrency(
            name, occupy=1, timeout_seconds=timeout_s, strict=True, lease_duration=lease_s
        ):
            acquired = True
            lease_id = next((i for i in _lease_ids() if i not in before), None)
            _record_holder(scope, lease_id)
            try:
                yield
            finally:
                _forget_holder(scope, lease_id)
    except TimeoutError as exc:
        if acquired:
            raise
        holder, status = holder_status(scope)
        who = (
            f"flow run {holder.get('flow_run_id')} (pid {holder.get('pid')} on "
            f"{holder.get('host')}, since {holder.get('since')}), {status}"
            if holder
            else "a release whose holder is unknown"
        )
        raise SlotTaken(
            f"{scope!r}: the release slot {name!r} is held by {who}; waited "
            f"{timeout_s:.0f} s (ReleaseTarget.lock_timeout_s): one release per service and "
            f"environment at a time; retry when it ends; a dead holder's lease runs out within {lease_s:.0f} s"
        ) from exc
