"""`shipyard status [TARGET] [--json]`: what serves the target's service now, read from Cloud Run.

The same figures as the `status-<service>` artifact (flows/observe/status.py): per region, each
revision with traffic or a tag, its share, tags, git tag, image, GPU or CPU, Ready, when it passed
its canary and which one is last good; a rollout in progress. It reads, it changes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from shipyard.flows.observe.status import ServiceStatus


def register(app: typer.Typer) -> None:
    app.command("status")(status_command)


def status_command(
    target: str = typer.Argument(
        "default", help="Release Target block name, its Cloud Run service, or SERVICE-ENVIRONMENT."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON (for scripts)."),
) -> None:
    """What serves the target's service now, per region: each revision with traffic or a tag,
    its share, tags, git tag, image, GPU or CPU, Ready, canary passed, last good; and a rollout
    in progress. Read from Cloud Run (or the sandbox); changes nothing."""
    from shipyard.blocks.release_target import ReleaseTarget
    from shipyard.deployments.cli.errors import (
        SANDBOX_FIX,
        UsageError,
        fail,
        one_line,
        require_prefect_api,
    )
    from shipyard.deployments.cli.rollback import find_target
    from shipyard.flows.observe.status import service_status

    require_prefect_api("status")
    try:
        name = find_target(target)
    except UsageError as exc:
        fail(str(exc))
    try:
        block = cast(ReleaseTarget, ReleaseTarget.load(name))  # Block.load is typed as Block
    except Exception as exc:  # noqa: BLE001 - a block that does not load: one line
        fail(f"Release Target block {name!r} does not load: {one_line(exc)}")
    try:
        status = service_status(block)
    except Exception as exc:  # noqa: BLE001 - Cloud Run unreadable: one line with the fix
        endpoint = block.google().resolved_endpoint() or "Google Cloud"
        fail(
            f"cannot read Cloud Run of {block.service} at {endpoint} ({one_line(exc)}): on the "
            f"sandbox, {SANDBOX_FIX}; on Google, check the `cloud` block's credentials"
        )
    if as_json:
        typer.echo(status.model_dump_json(indent=2))
        return
    show(status, Console())  # made now: it measures the terminal (or $COLUMNS) of this call


def show(status: ServiceStatus, console: Console) -> None:
    """The headline, then a table per region (the artifact's columns, the image under the
    revision's name, the reasons for "good" left to the artifact and --json)."""
    from shipyard.flows.observe.status_page import table_rows

    # The scope: the service, or SERVICE-ENVIRONMENT (staging and production apart).
    console.print(f"[bold]{escape(status.scope)}[/]: {escape(status.headline())}", soft_wrap=True)
    columns = ["traffic", "tags", "git tag", "GPU/CPU", "Ready", "canary passed"]
    for region in status.regions:
        title = region.region + (f"  {region.url}" if region.url else "")
        if region.error:
            console.print(f"{escape(title)}: not read ({escape(region.error)})", soft_wrap=True)
            continue
        table = Table(title=escape(title), title_justify="left")
        table.add_column("revision / image", no_wrap=True)
        for column in columns:
            table.add_column(column, overflow="fold")
        table.add_column("good")
        for row, shown in zip(region.revisions, table_rows(region), strict=True):
            style = "red" if shown["Ready"] != "Ready" else ("green" if row.percent else "")
            good = "last good" if row.last_good else ("good" if row.good_because else "untested")
            table.add_row(
                f"{escape(row.revision)}\n[dim]{escape(shown['image'])}[/]",
                *(escape(str(shown[c])) for c in columns),
                good,
                style=style,
            )
        console.print(table)
    if status.absent:
        console.print(f"not deployed in: {', '.join(status.absent)}")
