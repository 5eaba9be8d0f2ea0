"""`promote` and `abort`: a person's word to a rollout in progress, as Prefect flows (deployments
runnable from the UI's form, and `shipyard promote|abort TARGET`).

Each finds the rollout in progress in its journal (flows/rollout/journal.py) and acts on the
release run the journal names, by that run's Prefect state:
- Paused / Suspended (waiting at an approval gate): resumed with the answer — approve for
  promote, reject for abort — and the comment and approver, exactly as the Resume form would;
- running (baking: the judge reading): the command is filed (flows/rollout/commands.py) and the
  release's bake loop takes it at its next analysis tick;
- final, or still Running but its process provably gone (a SIGKILL reports nothing: the
  service's release-slot holder record names the run and its process is gone, flows/release/
  slot.py; that run is swept first, its run tree marked Crashed and its slot freed): the
  release run is dead (crashed, killed, expired at its gate), and abort moves traffic
  back to the stable revision itself (a Ready check first, under the service's release slot),
  takes the canary tag off the new revision and ends the journal; promote is refused (the
  judge's evidence died with the run: release the tag again);
- no rollout: refused in one line naming the last release.

The release moves traffic itself when it is alive: abort never does while a release run lives.
The release writes the ledger row (approver, decision and comment come back to it through the
gate's answer or the command); each of these flows writes a summary artifact and a
`shipyard.rollout.promote` / `shipyard.rollout.abort` event.

`abort(..., expiry_of=RUN, gate_key=KEY)` is also the gate's timeout: the run flows/rollout/
gate.py schedules at the gate's deadline; it answers the gate with the target's
`on_gate_timeout` if the release still waits at that key, else it says so and does nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.exceptions import NotPausedError, ObjectNotFound
from prefect.flow_runs import resume_flow_run

from shipyard.blocks.names import sanitize_name
from shipyard.flows.observe.stage_events import ReleaseScope, emit_stage_event
from shipyard.flows.release.params import OptionalText, TargetParam, resolve_annotations
from shipyard.flows.rollout import commands, gate
from shipyard.flows.rollout import journal as journals
from shipyard.tasks.errors import PermanentError

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

    from shipyard.blocks.release_target import ReleaseTarget

__all__ = ["RolloutRefused", "Situation", "abort", "check", "promote"]

Command = Literal["promote", "abort"]
Action = Literal["resume", "request", "restore"]
_log = logging.getLogger("shipyard.rollout")


class RolloutRefused(PermanentError):
    """Nothing was done: no rollout in progress, or nothing this command can do to it."""


@dataclass(frozen=True)
class Situation:
    """The rollout a command acts on, and what it will do."""

    target: ReleaseTarget
    journal: journals.RolloutJournal
    run_name: str
    run_state: str  # the release run's Prefect state name (Running, Suspended, Crashed...)
    action: Action

    @property
    def run_id(self) -> str:
        return str(self.journal.flow_run_id)


def _last_release(scope: str) -> str:
    from shipyard.flows.canary.stage import recorded_release

    record = recorded_release(scope)
    if not record:
        return "no release of it is recorded"
    serving = f"{record.get('revision') or '?'} serves in {record.get('region') or '?'}"
    ended = record.get("outcome") or "?"
    return f"the last release, {record.get('git_tag') or '?'}, ended {ended} ({serving})"


def _release_run(run_id: str) -> FlowRun | None:
    with get_client(sync_client=True) as client:
        try:
            return client.read_flow_run(UUID(run_id))
        except (ObjectNotFound, ValueError):
            return None


def _process_gone(current: journals.RolloutJournal) -> bool:
    """The journal's run still says Running but its process is provably gone (SIGKILL, a lost
    machine: nothing reported its end): the release slot's holder record names that run and
    flows/release/slot.py `holder_status` finds it dead. A command filed for it would never be
    taken."""
    from shipyard.flows.release.slot import holder_status

    holder, status = holder_status(current.scope)
    return (
        holder is not None
        and holder.get("flow_run_id") == current.flow_run_id
        and status.startswith("dead")
    )


def check(target: TargetParam, command: Command) -> Situation:
    """What `command` would do to the target's rollout, found without changing anything (the
    CLI refuses a mistake in one line and leaves no failed run behind); RolloutRefused."""
    from shipyard.flows.release.flow import resolve_target

    resolved = resolve_target(target)
    service = resolved.scope  # the service, or service-environment: what the journal is keyed by
    current = journals.read(service)
    if current is None or not current.flow_run_id:
        raise RolloutRefused(
            f"no rollout of {service} is in progress; {_last_release(service)}. Nothing to "
            f"{command}: start one with `shipyard release TAG`"
        )
    run = _release_run(current.flow_run_id)
    state = run.state if run is not None else None
    state_name = (state.name or state.type.value) if state is not None else "gone"
    run_name = run.name if run is not None else current.flow_run_id
    gone = False
    if state is not None and state.is_paused():
        action: Action = "resume"
    elif state is not None and not state.is_final() and not (gone := _process_gone(current)):
        action = "request"
    elif command == "abort":
        action = "restore"
    else:
        ended = (
            f"died (its process is gone; it still says {state_name})"
            if gone
            else f"ended {state_name}"
        )
        raise RolloutRefused(
            f"the release run {run_name} of {current.git_tag} ({service}) {ended} at "
            f"{current.percent}% without finishing its rollout: nothing can promote it; "
            f"`shipyard abort {resolved.scope}` returns traffic to {current.stable}, or "
            f"`shipyard release {current.git_tag}` runs it again"
        )
    return Situation(resolved, current, run_name, state_name, action)


def _restore(situation: Situation) -> str:
    """The release run is dead: the rollout is undone as the sweep undoes it (flows/rollout/
    abort.py `undo_rollout`: the stable revision warmed, then 100 % to it, the rollout's tags
    cleared, the service's scaling restored, the journal ended, the status published)."""
    from shipyard.flows.release.slot import sweep
    from shipyard.flows.rollout.abort import undo_rollout

    journal = situation.journal
    # A run killed outright still says Running and holds the service's slot: freed first (its
    # run tree marked Crashed, its build cancelled, its rollout undone: flows/release/slot.py).
    killed = _process_gone(journal)
    freed = sweep(journal.scope) if killed else []
    done = freed + undo_rollout(situation.target, journal.git_tag, ended_run=journal.flow_run_id)
    if not done:
        raise RolloutRefused(
            f"the rollout of {journal.git_tag} ({journal.service}) ended meanwhile: nothing to "
            "abort"
        )
    failed = [line for line in done if "could not move" in line]
    if failed:
        raise PermanentError(f"abort of {journal.git_tag}: {failed[0]}")
    ended = (
        f"the release run {situation.run_name} still said {situation.run_state} but its "
        "process is gone"
        if killed
        else f"the release run {situation.run_name} had ended {situation.run_state}"
    )
    return f"{ended}; " + "; ".join(done)


def _act(target: TargetParam, command: Command, comment: str, by: str) -> str:
    from shipyard.flows.release.flow import resolve_target

    logger = get_run_logger()
    who = by.strip() or "anonymous (no name given)"
    resolved = resolve_target(target)
    service, scope = resolved.service, resolved.scope
    try:
        situation = check(target, command)
    except RolloutRefused as exc:
        _record(service, None, command, who, comment, "refused", str(exc), scope=scope)
        raise
    journal = situation.journal
    if situation.action == "resume":
        try:
            resume_flow_run(
                UUID(situation.run_id),
                run_input={"approve": command == "promote", "comment": comment, "approver": who},
            )
        except NotPausedError:
            refused = (
                f"the gate of release run {situation.run_name} ({journal.git_tag}) was answered "
                f"meanwhile: nothing to {command}"
            )
            _record(service, situation, command, who, comment, "refused", refused, scope=scope)
            raise RolloutRefused(refused) from None
        answer = "approved" if command == "promote" else "rejected"
        what = (
            f"{answer} the gate of release run {situation.run_name} ({journal.git_tag}, waiting "
            f"at {journal.percent}%); the release goes on "
            + (f"past {journal.percent}%" if command == "promote" else f"back to {journal.stable}")
        )
    elif situation.action == "request":
        commands.request(journal.scope, command, who, comment)
        what = (
            f"asked release run {situation.run_name} ({journal.git_tag}, at {journal.percent}%, "
            f"{situation.run_state}) to {command}: it acts at its next analysis tick"
        )
    else:
        what = _restore(situation)
    logger.info("%s: %s", command, what)
    _record(service, situation, command, who, comment, situation.action, what, scope=scope)
    return what


def _record(
    service: str,
    situation: Situation | None,
    command: Command,
    by: str,
    comment: str,
    action: str,
    what: str,
    *,
    scope: str = "",
) -> None:
    """The run's summary artifact (keyed by `scope`, ReleaseTarget.scope; empty: the service)
    and the `shipyard.rollout.<command>` event."""
    journal = situation.journal if situation is not None else None
    lines = [
        f"# {command} {journal.git_tag if journal else ''}".rstrip(),
        "",
        f"**{what}**",
        "",
        "| | |",
        "| --- | --- |",
        f"| service | {service or '-'} |",
        f"| action | {action} |",
        f"| by | {by} |",
        f"| comment | {comment.replace('|', '/') or '-'} |",
    ]
    if situation is not None and journal is not None:
        lines += [
            f"| release run | {situation.run_name} ({situation.run_state}) |",
            f"| new revision | {journal.new} ({journal.percent}%) |",
            f"| stable revision | {journal.stable} |",
        ]
    create_markdown_artifact(
        markdown="\n".join(lines) + "\n",
        key=sanitize_name(f"rollout-{command}-{scope or service or 'none'}", 60),
        description=f"{command}: {what}"[:500],
    )
    context = FlowRunContext.get()
    own = str(context.flow_run.id) if context is not None and context.flow_run else None
    emit_stage_event(
        "rollout",
        command,
        {
            "action": action,
            "by": by,
            "comment": comment,
            "message": what,
            "release_flow_run_id": journal.flow_run_id if journal else None,
            "percent": journal.percent if journal else None,
        },
        scope=ReleaseScope(
            service=service or None,
            git_tag=journal.git_tag if journal else None,
            flow_run_id=own,
            region=(journal.region or None) if journal else None,
            revision=(journal.new or None) if journal else None,
        ),
    )


@flow(name="promote", flow_run_name="promote-{target}", log_prints=False, timeout_seconds=600)
def promote(target: TargetParam = "default", comment: str = "", by: str = "") -> str:
    """Take the rollout in progress on: approve the gate it waits at (the release goes on past
    that gate), or end its bake and cut over to 100 % now, skipping the remaining steps.

    Args:
        target: Name of the Shipyard Release Target block whose rollout to promote.
        comment: Why (goes to the release's summary and the ledger).
        by: Your name (the ledger records who decided).
    """
    return _act(target, "promote", comment, by)


@flow(name="abort", flow_run_name="abort-{target}", log_prints=False, timeout_seconds=1800)
def abort(
    target: TargetParam = "default",
    comment: str = "",
    by: str = "",
    expiry_of: OptionalText = "",
    gate_key: OptionalText = "",
) -> str:
    """Send the rollout in progress back to the stable revision: reject the gate it waits at, or
    end its bake; a release run that died is rolled back here.

    Args:
        target: Name of the Shipyard Release Target block whose rollout to abort.
        comment: Why (goes to the release's summary and the ledger).
        by: Your name (the ledger records who decided).
        expiry_of: Set by an approval gate only: the release run whose unanswered gate this run
            ends at its timeout (leave empty).
        gate_key: Set by an approval gate only: the gate's key (leave empty).
    """
    if not expiry_of:
        return _act(target, "abort", comment, by)
    from shipyard.flows.release.flow import resolve_target

    resolved = resolve_target(target)
    policy = resolved.rollout
    what = gate.expire(
        expiry_of, gate_key, policy.on_gate_timeout == "approve", float(policy.gate_timeout_s)
    )
    get_run_logger().warning("approval gate timeout: %s", what)
    journal = journals.read(resolved.scope)
    situation = None
    if journal is not None and journal.flow_run_id == expiry_of:
        situation = Situation(resolved, journal, expiry_of, journal.state, "resume")
    _record(
        resolved.service,
        situation,
        "abort",
        gate.TIMEOUT_BY,
        "",
        "gate-timeout",
        what,
        scope=resolved.scope,
    )
    return what


resolve_annotations(promote)
resolve_annotations(abort)
