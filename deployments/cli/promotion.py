"""`shipyard promote-release TARGET`: release in TARGET the exact image digest that passed in
the stage before it (ReleaseTarget.promotes_from); no rebuild.

The check (flows/promotion/passed.py `passed_in`) runs first, without a flow run: a refusal (a
first stage, a tag that did not pass there, a skipped stage) is one line with the reason and the
fix, and leaves no failed run behind. Then the `promote-release` flow runs in this process: it
starts the release through the target's release deployment when one exists (the fleet's
`release/release-<target>`, else `release/release`; the release runs on a worker, `--wait`
waits for it), else runs the release here. `--here` runs the release in this process whatever
is deployed. `--auto-setup` creates the automation that promotes to TARGET each release that
passes in its previous stage (TARGET must have auto_promote on) and promotes nothing.
"""

from __future__ import annotations

import getpass
import sys

import typer
from rich.console import Console

console = Console()

RELEASE_WAIT_S = 3 * 3600 + 600  # the release's own timeout (3 h) and its queue


def register(app: typer.Typer) -> None:
    app.command("promote-release")(promote_release_command)


def _who(by: str) -> str:
    if by.strip():
        return by.strip()
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in a bare container
        return ""


def promote_release_command(
    target: str = typer.Argument(
        ..., help="ReleaseTarget block to promote to (e.g. digit-production)."
    ),
    tag: str = typer.Option(
        "", "--tag", help="Tag to promote, e.g. v1.4.0; default: the newest that passed before."
    ),
    by: str = typer.Option("", "--by", help="Who promotes (default: your login name)."),
    comment: str = typer.Option("", "--comment", "-m", help="Why (shown on the promotion page)."),
    wait: bool = typer.Option(
        False, "--wait", help="Wait for the release a deployment runs; exit 3 unless released."
    ),
    here: bool = typer.Option(
        False, "--here", help="Run the release in this process, not through its deployment."
    ),
    auto_setup: bool = typer.Option(
        False,
        "--auto-setup",
        help="Create the automation that promotes to TARGET what passes in its previous stage "
        "(TARGET needs auto_promote on); promotes nothing now.",
    ),
) -> None:
    """Release in TARGET the exact image digest that passed in the stage before it (its
    promotes_from); no rebuild. Refused, with the reason, when it did not pass there."""
    from shipyard.deployments.cli.errors import (
        fail,
        flow_output,
        one_line,
        require_prefect_api,
        verbose_requested,
    )
    from shipyard.flows.promotion.passed import PromotionRefused, load_target, passed_in

    require_prefect_api("promote-release")
    if auto_setup:
        _auto_setup(target)
        return
    try:
        passed = passed_in(load_target(target, "TARGET"), tag.strip() or None)
    except PromotionRefused as exc:
        fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - a block that does not load, an API down: one line
        fail(f"promote-release {target}: {one_line(exc)}")
    console.print(
        f"promoting {passed.git_tag} ({passed.image}) from {passed.source} to {target}",
        soft_wrap=True,
    )
    from shipyard.flows.promotion.flow import Promotion, promote, promote_release

    try:
        with flow_output(verbose_requested(), sys.stdout):
            if here:
                done: Promotion | str = promote(target, tag, comment, _who(by), where="here")
            else:
                done = promote_release(target=target, git_tag=tag, comment=comment, by=_who(by))
    except PromotionRefused as exc:  # the ledger moved on between the check and the flow
        fail(str(exc))
    except Exception as exc:  # whatever ended the run: one line (raised with -v)
        if verbose_requested():
            raise
        fail(f"promote-release {target}: {one_line(exc)}", code=1)
    run_id = done.flow_run_id if isinstance(done, Promotion) else done
    outcome = _outcome(run_id, wait)
    console.print(
        f"release run {run_id} of {passed.git_tag} in {target}: {outcome}", soft_wrap=True
    )
    if outcome not in ("released", "started"):
        raise typer.Exit(3)


def _outcome(run_id: str, wait: bool) -> str:
    """The release run's outcome: its result's when it ended, "started" when it has not and
    the command does not wait; with `wait`, waits for it to end."""
    from uuid import UUID

    from prefect.client.orchestration import get_client

    from shipyard.tasks.waiting import Deadline, NotYet, wait_for

    def ended() -> str:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(UUID(run_id))
        state = run.state
        if state is None or not state.is_final():
            raise NotYet(state.name if state else "no state")
        if state.is_completed():
            return "released" if state.name == "Completed" else str(state.name)
        return f"{state.name}: {(state.message or '')[:200]}"

    if not run_id:
        return "unknown (no release run id)"
    if not wait:
        try:
            return ended()
        except NotYet:
            return "started"
    return wait_for(
        ended,
        what=f"release run {run_id}",
        first_delay_s=1.0,
        max_delay_s=15.0,
        deadline=Deadline(RELEASE_WAIT_S),
    )


def _auto_setup(target: str) -> None:
    from shipyard.deployments.automations import create_auto_promotion_automation
    from shipyard.deployments.cli.errors import fail, one_line
    from shipyard.flows.promotion.passed import PromotionRefused, load_target

    try:
        block = load_target(target, "TARGET")
        if not block.auto_promote or not block.promotes_from:
            fail(
                f"{target}: auto_promote is off (or promotes_from is empty): turn auto_promote on "
                "in the ReleaseTarget block and name the previous stage in promotes_from"
            )
        created = create_auto_promotion_automation([target])
    except (PromotionRefused, ValueError) as exc:
        fail(one_line(exc))
    console.print(
        f"automation {created[target]}: each release that passes in {block.promotes_from} is "
        f"promoted to {target} (deployment promote-release/promote-release)",
        soft_wrap=True,
    )
