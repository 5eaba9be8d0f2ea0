"""The abort of a rollout: back to the stable revision, warmed first; and the journal's end.

Used by the release when a step fails (flows/rollout/stage.py), and by whoever finds a rollout
whose run is over without having ended it (the release's undo hook on a timeout, cancel or
crash, the sweep of a dead run, `abort` on a dead run: `undo_rollout`).
"""

from __future__ import annotations

import logging

from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound

from shipyard.blocks.release_target import ReleaseTarget
from shipyard.flows.observe.status import publish_status
from shipyard.flows.release.context import RunContext
from shipyard.flows.release.steps import StepLog
from shipyard.flows.rollout import journal as journals
from shipyard.flows.rollout.journal import RolloutJournal
from shipyard.flows.rollout.traffic import (
    StepTraffic,
    abort_traffic_step,
    restore_scaling_step,
    warm_stable_step,
)

_log = logging.getLogger("shipyard.rollout")


def back_to_stable(
    ctx: RunContext, steps: StepLog, journal: RolloutJournal, why: str
) -> tuple[StepTraffic, list[str]]:
    """Warm the stable revision, give it 100 %, clear the rollout's tags, restore the service's
    scaling, clear the journal. (the traffic after, what happened besides)."""
    region, new, stable = journal.region, journal.new, journal.stable
    notes: list[str] = []
    journal.state = "ending"
    journals.write(journal)
    wait_s = ctx.revision_wait(stable)["timeout"]
    try:
        before = steps.run("rollout-warm-stable", warm_stable_step, ctx, region, stable, wait_s)
        journal.scaling_before = journal.scaling_before or before
        journals.write(journal)
    except Exception as exc:  # noqa: BLE001 - a cold stable beats users on a failing revision
        notes.append(
            f"the stable revision {stable} could not be warmed first ({type(exc).__name__}: "
            f"{exc}); traffic moved back anyway"
        )
    moved = steps.run("rollout-abort", abort_traffic_step, ctx, region, new, stable)
    publish_status(ctx.target, f"rollout aborted: {stable} serves 100% ({why})"[:300])
    if journal.scaling_before:
        try:
            steps.run(
                "rollout-restore-scaling",
                restore_scaling_step,
                ctx,
                region,
                journal.scaling_before,
            )
        except Exception as exc:  # noqa: BLE001 - traffic is back; the scaling is said
            notes.append(
                f"the service's scaling (min instances raised to warm {stable}) could not be "
                f"restored: {type(exc).__name__}: {exc}; set it back by hand"
            )
    journals.clear(journal.scope)
    return moved, notes


def run_is_over(flow_run_id: str | None) -> bool:
    """The journal's run will not end its rollout itself: gone, or in a final state."""
    if not flow_run_id:
        return True
    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(flow_run_id)  # type: ignore[arg-type] # a UUID string works
        except ObjectNotFound:
            return True
    return run.state is None or run.state.is_final()


def undo_rollout(
    target: ReleaseTarget, git_tag: str | None = None, *, ended_run: str | None = None
) -> list[str]:
    """A rollout whose run is over (`ended_run` names it, or its Prefect state says so) is
    undone: traffic back to stable, warmed first; the journal cleared. What was done (nothing
    when no such rollout: none in progress, another tag's, or its run still alive or waiting at
    a gate)."""
    found = journals.read(target.scope)
    if found is None or (git_tag is not None and found.git_tag != git_tag):
        return []
    if not (ended_run is not None and ended_run == found.flow_run_id) and not run_is_over(
        found.flow_run_id
    ):
        return []
    ctx = RunContext(target, found.git_tag, None)
    steps = StepLog(target.retries, target.retry_delays())
    why = f"its run {found.flow_run_id} ended at {found.percent}%"
    try:
        moved, notes = back_to_stable(ctx, steps, found, why)
    except Exception as exc:  # noqa: BLE001 - a cleanup reports, never raises
        return [
            f"{found.region}: could not move the rollout's traffic back to {found.stable}: {exc}"
        ]
    return [
        f"the rollout of {found.git_tag} ({why}) was aborted: {found.stable} serves 100% in "
        f"{moved.region}",
        *notes,
    ]
