"""The human gate: a release waits for a person's approval before a step, with Prefect's own
mechanism, and a timeout that decides when nobody does.

`ask(target, service=..., git_tag=..., percent=..., evidence_md=..., key=..., journal=...)`
returns a `GateDecision`. It must be called from the release flow's body (not from a task:
Prefect suspends flow runs only).

- A run of a deployment is *suspended* (`suspend_flow_run`): the process exits and the worker's
  infrastructure is released while the release waits (a paused Cloud Run job would be kept
  alive past its timeout). The Prefect UI's Resume form on the run page is the approval screen:
  it renders `ApprovalInput` with the evidence as its description. On resume Prefect runs the
  release again from the start; the release skips what its journal says is done and calls
  `ask` again with the same `key`: Prefect refuses a second suspension at a key that already
  fired and hands back the stored answer, so the re-run goes past the gate at once.
- A run without a deployment (the CLI's in-process release) or a subflow cannot be suspended
  (Prefect reschedules only deployment runs): it is *paused* (`pause_flow_run`), its process
  polling until the answer comes.

The timeout. Prefect's own pause expiry only fails the run ("The flow was paused and never
resumed."), undoing nothing: the new revision would keep its share. So the gate's timeout is
Shipyard's, and Prefect's expiry stays `GATE_MARGIN_S` behind it as a last resort:
- suspended: a run of the `abort` deployment is scheduled at now + gate_timeout_s with
  `expiry_of` / `gate_key`; when it runs and the release still waits at that key it resumes it
  with the target's `on_gate_timeout` as the answer (approver `timeout`), else it does nothing.
  A person deciding first: the resumed release deletes that scheduled run (its id is in the
  journal). No abort deployment: one WARNING (the gate then ends only by Prefect's expiry and
  the next release's sweep).
- paused: a timer in the waiting process resumes the run the same way.

Before waiting, the journal's state becomes `awaiting-approval` with the key and the expiry
run's id, and the event `shipyard.release.awaiting-approval` is sent (an automation can notify:
deployments/automations.py).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout, ObjectNotFound
from prefect.flow_runs import pause_flow_run, resume_flow_run, suspend_flow_run
from prefect.input import RunInput
from pydantic import Field

from shipyard.flows.observe.stage_events import ReleaseScope, emit_stage_event
from shipyard.flows.rollout import journal as journals

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

    from shipyard.blocks.release_target import ReleaseTarget

__all__ = [
    "ABORT_DEPLOYMENT",
    "GATE_MARGIN_S",
    "TIMEOUT_BY",
    "ApprovalInput",
    "GateDecision",
    "ask",
    "describe",
    "expire",
]

# The deployment whose scheduled run ends an unanswered suspended gate (prefect.yaml: `abort`,
# entrypoint shipyard.flows.rollout.control.abort).
ABORT_DEPLOYMENT = "abort/abort"
# Prefect's own pause expiry (which only fails the run) is set this long after the gate's
# timeout: room for the expiry run to be picked up by a worker that polls every few seconds.
GATE_MARGIN_S = 300.0
# The approver the timeout answers as.
TIMEOUT_BY = "timeout"
# How often a paused (not suspended) run asks the API whether it was resumed.
PAUSE_POLL_S = 2

_log = logging.getLogger("shipyard.rollout.gate")


class ApprovalInput(RunInput):
    """The Resume form of a release waiting at a gate (the Prefect UI draws it from this model)."""

    approve: bool = Field(
        default=False,
        title="Approve",
        description="Tick to go on to the next step; leave unticked to reject: the release "
        "rolls back to the stable revision",
    )
    comment: str = Field(
        default="",
        title="Comment",
        description="Why: it goes to the release's summary and the ledger",
    )
    approver: str = Field(
        default="",
        title="Approver",
        description="Your name (the ledger records who decided; the Prefect UI of an open "
        "server does not know who you are)",
    )


@dataclass(frozen=True)
class GateDecision:
    """What the gate decided, for the release's summary, the ledger and the journal."""

    approved: bool
    by: str
    comment: str
    timed_out: bool


def _timeout_text(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def describe(evidence_md: str, percent: int, stable: str, timeout_s: float, on_timeout: str) -> str:
    """The Markdown the Resume form shows above its fields."""
    until = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=timeout_s)
    rollback_to = f" ({stable})" if stable else ""
    return (
        f"{evidence_md.rstrip()}\n\n"
        f"**Approve to go on to {percent}%, reject to roll back** to the stable revision"
        f"{rollback_to}.\n\n"
        f"Unanswered within {_timeout_text(timeout_s)} (by {until:%Y-%m-%d %H:%M} UTC), the gate "
        f"decides **{on_timeout}**. Give your name as Approver.\n"
    )


def expire(flow_run_id: str | UUID, key: str, approve: bool, timeout_s: float) -> str:
    """Answer the gate at `key` of the release run with the timeout's outcome, if that run still
    waits there; what was done, in one line."""
    run_id = UUID(str(flow_run_id))
    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(run_id)
        except ObjectNotFound:
            return f"release run {run_id} no longer exists: no gate to end"
    state = run.state
    waiting_key = state.state_details.pause_key if state is not None else None
    if state is None or not state.is_paused() or waiting_key != key:
        where = state.name if state is not None else "no state"
        return (
            f"release run {run.name} ({run_id}) no longer waits at gate {key} ({where}): "
            "someone decided first; nothing to do"
        )
    try:
        resume_flow_run(
            run_id,
            run_input={
                "approve": approve,
                "comment": f"no decision within {_timeout_text(timeout_s)}",
                "approver": TIMEOUT_BY,
            },
        )
    except Exception as exc:  # noqa: BLE001 - a decision that raced us, or an expired pause
        return f"release run {run.name} ({run_id}): gate {key} not ended by the timeout: {exc}"
    outcome = "approved" if approve else "rejected"
    return (
        f"release run {run.name} ({run_id}): no decision at gate {key} within "
        f"{_timeout_text(timeout_s)}; {outcome} by the timeout"
    )


def _expiry_state(run_id: str | None) -> str | None:
    """The state type of the scheduled expiry run (None: none, or gone)."""
    if not run_id:
        return None
    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(UUID(run_id))
        except ObjectNotFound:
            return None
    return run.state.type.value if run.state is not None else None


def _drop_expiry(run_id: str | None) -> bool:
    """Delete the expiry run if it has not started (a person decided first). Whether the
    expiry ran (or runs): then the answer may be the timeout's."""
    state = _expiry_state(run_id)
    if state == "SCHEDULED" and run_id:
        with get_client(sync_client=True) as client, contextlib.suppress(ObjectNotFound):
            client.delete_flow_run(UUID(run_id))
        return False
    return state is not None


def _schedule_expiry(
    target_name: str, flow_run_id: UUID, key: str, timeout_s: float, logger: Any
) -> str | None:
    """A run of the abort deployment at now + timeout_s that ends this gate; its id."""
    from prefect.deployments import run_deployment

    if not target_name:
        logger.warning(
            "approval gate %s: the release was given an unsaved ReleaseTarget (no block name), "
            "so no expiry run can load it; the gate ends only by Prefect's pause expiry "
            "(%s after the timeout) and the next release's sweep",
            key,
            _timeout_text(GATE_MARGIN_S),
        )
        return None
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(ABORT_DEPLOYMENT)
        except ObjectNotFound:
            logger.warning(
                "approval gate %s: no %s deployment (prefect.yaml `abort`), so nothing ends the "
                "gate at its timeout; it ends only by Prefect's pause expiry (%s later, which "
                "fails the run and moves no traffic) and the next release's sweep",
                key,
                ABORT_DEPLOYMENT,
                _timeout_text(GATE_MARGIN_S),
            )
            return None
    # Called from sync code: the sync branch of Prefect's async_dispatch, a FlowRun.
    expiry: FlowRun = run_deployment(  # type: ignore[assignment] # sync call returns FlowRun
        ABORT_DEPLOYMENT,
        parameters={"target": target_name, "expiry_of": str(flow_run_id), "gate_key": key},
        scheduled_time=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=timeout_s),
        timeout=0,
        as_subflow=False,
        # A release that crashed between this call and its suspension asks again: same run.
        idempotency_key=f"gate-expiry-{flow_run_id}-{key}",
        tags=["shipyard", "gate-expiry"],
    )
    return str(expiry.id)


def _decision(answer: ApprovalInput, timed_out: bool) -> GateDecision:
    return GateDecision(
        approved=bool(answer.approve),
        by=answer.approver.strip() or "anonymous (no name given)",
        comment=answer.comment.strip(),
        timed_out=timed_out,
    )


def ask(
    target: ReleaseTarget,
    *,
    service: str,
    git_tag: str,
    percent: int,
    evidence_md: str,
    key: str,
    journal: journals.RolloutJournal,
) -> GateDecision:
    """Wait for a person's decision before the step to `percent` % (see the module docstring).

    `key` names this gate within the release (e.g. `gate-50`); the same key on a re-run returns
    the decision already given. The caller records the decision in its journal step and ledger.
    """
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        raise RuntimeError("gate.ask: call it from the release flow's body (a flow run)")
    logger = get_run_logger()
    run = context.flow_run
    policy = target.rollout
    timeout_s = float(policy.gate_timeout_s)
    form = ApprovalInput.with_initial_data(
        description=describe(
            evidence_md, percent, journal.stable, timeout_s, policy.on_gate_timeout
        ),
        approve=False,
        comment="",
        approver="",
    )
    with get_client(sync_client=True) as client:
        fresh = client.read_flow_run(run.id)
    fired = key in (fresh.empirical_policy.pause_keys or set())
    suspendable = run.deployment_id is not None and run.parent_task_run_id is None
    prefect_timeout = math.ceil(timeout_s + GATE_MARGIN_S)

    if fired:
        # A re-run after the resume: Prefect hands back the answer stored at this key.
        answer = suspend_flow_run(wait_for_input=form, timeout=prefect_timeout, key=key)
        stored = journal.expiry_run_id or getattr(
            journals.read(journal.scope), "expiry_run_id", None
        )
        timed_out = _drop_expiry(stored) and answer.approver == TIMEOUT_BY
        return _decision(answer, timed_out)

    expiry_id = None
    if suspendable:
        target_name = journal.target or str(getattr(target, "_block_document_name", "") or "")
        expiry_id = _schedule_expiry(target_name, run.id, key, timeout_s, logger)
    journals.write(
        journal.model_copy(
            update={"state": "awaiting-approval", "gate_key": key, "expiry_run_id": expiry_id}
        )
    )
    emit_stage_event(
        "release",
        "awaiting-approval",
        {
            "percent": percent,
            "gate_key": key,
            "timeout_s": timeout_s,
            "on_timeout": policy.on_gate_timeout,
            "flow_run_id": str(run.id),
            "suspended": suspendable,
        },
        scope=ReleaseScope(
            service=service,
            git_tag=git_tag,
            flow_run_id=str(run.id),
            region=journal.region or None,
            revision=journal.new or None,
        ),
    )
    logger.warning(
        "release %s of %s awaits approval before %d%%: the run page's Resume form (or "
        "`shipyard promote` / `shipyard abort`); unanswered within %s it is %s",
        git_tag,
        service,
        percent,
        _timeout_text(timeout_s),
        "approved" if policy.on_gate_timeout == "approve" else "rejected",
    )
    if suspendable:
        # Exits the process (Prefect's Pause); the resumed run comes back through `fired`.
        answer = suspend_flow_run(wait_for_input=form, timeout=prefect_timeout, key=key)
        return _decision(answer, answer.approver == TIMEOUT_BY)

    approve_on_timeout = policy.on_gate_timeout == "approve"
    expired = threading.Event()

    def _on_timeout() -> None:
        expired.set()
        _log.warning("%s", expire(run.id, key, approve_on_timeout, timeout_s))

    timer = threading.Timer(timeout_s, _on_timeout)
    timer.daemon = True
    timer.start()
    try:
        answer = pause_flow_run(
            wait_for_input=form, timeout=prefect_timeout, poll_interval=PAUSE_POLL_S, key=key
        )
    except FlowPauseTimeout:
        # The timer could not resume the run (the API unreachable for the whole margin).
        logger.warning("approval gate %s: Prefect's pause expired; %s", key, policy.on_gate_timeout)
        return GateDecision(
            approved=approve_on_timeout,
            by=TIMEOUT_BY,
            comment=f"no decision within {_timeout_text(timeout_s)}",
            timed_out=True,
        )
    finally:
        timer.cancel()
    return _decision(answer, expired.is_set() and answer.approver == TIMEOUT_BY)
