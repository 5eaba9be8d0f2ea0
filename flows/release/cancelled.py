"""A release cancelled by a person (the Prefect UI's Cancel, `prefect flow-run cancel`) recorded
as what it is: a `cancelled` ledger row (not a failure of the change), the release summary and
the run's state message saying what serves now, and the service's status.

It runs from the release's cancellation hook (flows/release/hooks.py `abort_cleanup`), after the
hook took the run's tags off: in the runner's process when a runner served the run (Prefect
3.8.8 kills the run's process, runs `on_cancellation` there, then proposes `Cancelled`).

The state message: the runner proposes `Cancelled` with its own message, "Flow run was cancelled
successfully." (prefect/runner/_cancellation_manager.py), after the hooks ran, with force. So the
hook starts a short watcher (a daemon thread) that waits for that state and then sets the run
`Cancelled` again with the message that says what serves. The run's history shows both states,
and the server emits `prefect.flow-run.Cancelled` for each: an automation that reacts to
cancellations should match the state message it wants, or the `shipyard.release.cancelled`
event this module emits once.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.events import emit_event
from prefect.states import Cancelled

from shipyard.flows.deploy.traffic_split import pinned_traffic
from shipyard.flows.observe.ledger import LedgerEntry, write_entry
from shipyard.flows.observe.status import publish_status
from shipyard.flows.release.context import RunContext
from shipyard.flows.release.record import remembered_attempt
from shipyard.tasks import cloud_run as cr
from shipyard.tasks.reports import publish_markdown
from shipyard.tasks.waiting import Deadline, NotYet, wait_for

__all__ = ["CANCELLED_STATE_WAIT_S", "record_cancelled", "serving_now"]

logger = logging.getLogger("shipyard.release")

# How long the watcher waits for the runner's Cancelled state (it follows the hooks at once).
CANCELLED_STATE_WAIT_S = 60.0


def serving_now(target: Any, git_tag: str) -> list[tuple[str, str, int]]:
    """(region, revision, percent) of every revision with traffic in the target's regions."""
    ctx = RunContext(target, git_tag, None)
    found: list[tuple[str, str, int]] = []
    for region in target.regions:
        service = cr.get_service(ctx.services, ctx.service_name(region))
        if service is None:
            continue
        found += [
            (region, t.revision, t.percent)
            for t in pinned_traffic(service)
            if t.percent and t.revision
        ]
    return found


def _serving_text(serving: list[tuple[str, str, int]]) -> str:
    if not serving:
        return "the service does not exist yet: nothing serves"
    return ", ".join(f"{rev} serves {pct}% in {region}" for region, rev, pct in serving)


def record_cancelled(target: Any, git_tag: str, flow_run: Any, cleanup: list[str]) -> str:
    """Ledger row, summary, status, event and state message of a cancelled release; returns
    the message. Never raises (a hook reports)."""
    now = dt.datetime.now(dt.UTC)
    try:
        serving = serving_now(target, git_tag)
        where = _serving_text(serving)
    except Exception as exc:  # noqa: BLE001 - Cloud Run unreachable: say so, record the rest
        serving, where = [], f"what serves is unknown (Cloud Run: {type(exc).__name__})"
    message = f"release {git_tag} CANCELLED by hand ({where}); nothing of {git_tag} serves"
    if any(rev == RunContext(target, git_tag, None).gpu_revision for _, rev, _ in serving):
        # Cancelled after its cutover: the tag's revision passed its canary and serves.
        message = f"release {git_tag} CANCELLED by hand after its cutover ({where})"
    run_id = str(flow_run.id)
    started = getattr(flow_run, "start_time", None) or getattr(flow_run, "created", None) or now
    attempt = remembered_attempt(target.scope) or {}
    primary = serving[0] if serving else (None, None, 0)
    steps = [f"- {line}" for line in cleanup] or ["- nothing to clean up"]
    actions: list[tuple[str, Any]] = [
        (
            "ledger row",
            lambda: write_entry(
                LedgerEntry(
                    service=target.service,
                    git_tag=git_tag,
                    outcome="cancelled",
                    region=primary[0],
                    revision=primary[1],
                    image=attempt.get("image") if attempt.get("git_tag") == git_tag else None,
                    started_at=started.isoformat(),
                    finished_at=now.isoformat(),
                    seconds=round((now - started).total_seconds(), 3),
                    rollback_reason=message[:500],
                    flow_run_id=run_id,
                    by="Prefect (cancel)",
                )
            ),
        ),
        (
            "summary",
            lambda: publish_markdown(
                "\n".join(
                    [
                        f"# Release {git_tag} of `{target.service}`: **CANCELLED**",
                        "",
                        f"- **serving now**: {where}",
                        "- cancelled by a person (Prefect UI / API); not a failure of the change",
                        "",
                        "## Cleanup",
                        *steps,
                    ]
                ),
                key=f"release-{target.scope}",
                description=f"Release {git_tag} of {target.service}: cancelled",
            ),
        ),
        (
            "event",
            lambda: emit_event(
                event="shipyard.release.cancelled",
                resource={
                    "prefect.resource.id": f"shipyard.cloud-run.service.{target.service}",
                    "prefect.resource.name": target.service,
                },
                related=[
                    {
                        "prefect.resource.id": f"prefect.flow-run.{run_id}",
                        "prefect.resource.role": "flow-run",
                    }
                ],
                payload={"git_tag": git_tag, "outcome": "cancelled", "serving": where},
            ),
        ),
    ]
    for what, action in actions:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - a hook must not raise; keep recording the rest
            logger.warning("release %s cancelled: %s not written: %s", git_tag, what, exc)
    publish_status(target, f"release {git_tag}: cancelled")
    threading.Thread(
        target=_restate, args=(flow_run.id, message), name=f"cancelled-{run_id}", daemon=True
    ).start()
    logger.warning("%s", message)
    return message


def _restate(flow_run_id: Any, message: str) -> None:
    """Once the run is Cancelled with Prefect's message, Cancelled again with `message`."""

    def cancelled() -> None:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run_id).state
            if state is None or state.type != StateType.CANCELLED:
                raise NotYet(state.name if state is not None else "no state")
            if state.message != message:
                client.set_flow_run_state(
                    flow_run_id, Cancelled(message=message[:1000]), force=True
                )

    try:
        wait_for(
            cancelled,
            what="the run's Cancelled state",
            first_delay_s=0.1,
            max_delay_s=1.0,
            deadline=Deadline(CANCELLED_STATE_WAIT_S),
        )
    except Exception as exc:  # noqa: BLE001 - the ledger and the summary already say it
        logger.warning("cancelled run %s: state message not set: %s", flow_run_id, exc)
