"""`shipyard sweep SERVICE-or-TARGET`: what a dead release of a service left, cleaned up.

A release process killed outright (SIGKILL, a lost machine) runs no hook: its flow run and its
build subflow stay Running, its slot stays held until its lease runs out, its untested GPU
revision keeps the `canary` tag, its Cloud Build may still run. The next release of the service
cleans that up; when nobody releases again, `shipyard sweep` does it now
(flows/release/slot.py `sweep`: the dead run tree marked Crashed, its slot freed, tags off, its
build cancelled), then publishes the service's status. A live holder is never touched.
"""

from __future__ import annotations

from typing import cast

import typer
from rich.console import Console

console = Console()


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep_command)


def sweep_command(
    name: str = typer.Argument(
        ..., help="Release Target block name, its Cloud Run service, or SERVICE-ENVIRONMENT."
    ),
) -> None:
    """Clean up after a dead release of the service: its runs Crashed, tags off, build cancelled."""
    from prefect.exceptions import ObjectNotFound

    from shipyard.blocks.release_target import ReleaseTarget
    from shipyard.deployments.cli.errors import UsageError, fail, one_line, require_prefect_api
    from shipyard.deployments.cli.rollback import find_target
    from shipyard.flows.observe.status import publish_status
    from shipyard.flows.release.slot import holder_status, sweep

    require_prefect_api("sweep")
    try:
        block = find_target(name)
        target = cast(ReleaseTarget, ReleaseTarget.load(block))  # Block.load: typed as Block
    except UsageError as exc:
        fail(str(exc))
    except (ValueError, ObjectNotFound) as exc:
        fail(f"{name!r}: the Release Target block does not load ({one_line(exc)})")
    done = sweep(target.scope)  # the service, or service-environment: what the slot is keyed by
    if not done:
        holder, status = holder_status(target.scope)
        why = (
            f"the release holding it (flow run {holder.get('flow_run_id')}) is {status}"
            if holder is not None
            else "no release holds it"
        )
        console.print(f"nothing to sweep: {target.scope}: {why}", soft_wrap=True)
        return
    for line in done:
        for part in line.split("; "):
            console.print(f"- {part}", soft_wrap=True, markup=False)
    publish_status(target, "sweep: a dead release was cleaned up")
    console.print(f"swept {target.scope}; `shipyard status {block}` shows what serves")
