"""`shipyard promote TARGET` / `shipyard abort TARGET`: a person's word to a rollout in progress.

Both run the `promote` / `abort` flow (flows/rollout/control.py) in this process, after the same
check without a flow run, so a mistake (no rollout in progress, a dead run to promote, an
unknown target) is one line naming the fix and leaves no failed run behind.
"""

from __future__ import annotations

import getpass

import typer
from rich.console import Console

console = Console()

_TARGET_HELP = "Release Target block name, its Cloud Run service, or SERVICE-ENVIRONMENT."
_COMMENT_HELP = "Why (goes to the release's summary and the ledger)."
_BY_HELP = "Who decides (the ledger records it); default: your login name."


def register(app: typer.Typer) -> None:
    app.command("promote")(promote_command)
    app.command("abort")(abort_command)


def _who(by: str) -> str:
    if by.strip():
        return by.strip()
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in a bare container
        return ""


def _run(command: str, name: str, comment: str, by: str) -> None:
    from shipyard.deployments.cli.errors import UsageError, fail, one_line, require_prefect_api
    from shipyard.deployments.cli.rollback import find_target
    from shipyard.flows.rollout.control import RolloutRefused, abort, check, promote

    require_prefect_api(command)
    try:
        target = find_target(name)
        check(target, "promote" if command == "promote" else "abort")
    except (UsageError, RolloutRefused) as exc:
        fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - a block that does not load, an API down: one line
        fail(f"{command} {name}: {one_line(exc)}")
    chosen = promote if command == "promote" else abort
    try:
        what = chosen(target=target, comment=comment, by=_who(by))
    except RolloutRefused as exc:  # the rollout moved on between the check and the flow
        fail(str(exc))
    console.print(f"{command} {name}: {what}", soft_wrap=True)


def promote_command(
    name: str = typer.Argument(..., help=_TARGET_HELP),
    comment: str = typer.Option("", "--comment", "-m", help=_COMMENT_HELP),
    by: str = typer.Option("", "--by", help=_BY_HELP),
) -> None:
    """Take the rollout in progress on: approve the gate it waits at, or end its current bake
    and cut over to 100% now (the remaining steps skipped)."""
    _run("promote", name, comment, by)


def abort_command(
    name: str = typer.Argument(..., help=_TARGET_HELP),
    comment: str = typer.Option("", "--comment", "-m", help=_COMMENT_HELP),
    by: str = typer.Option("", "--by", help=_BY_HELP),
) -> None:
    """Send the rollout in progress back to the stable revision: reject the gate it waits at, or
    end its bake; a release run that died is rolled back by this command itself."""
    _run("abort", name, comment, by)
