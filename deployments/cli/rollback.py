"""`shipyard rollback SERVICE-or-TARGET [--to TAG|REVISION]`: 100% back to an earlier revision."""

from __future__ import annotations

import typer
from rich.console import Console

console = Console()


def register(app: typer.Typer) -> None:
    app.command("rollback")(rollback_command)


def find_target(name: str) -> str:
    """The ReleaseTarget block named `name`, else the one whose scope (ReleaseTarget.scope:
    `service-environment`, or the service without an environment) or service is `name`; its
    name."""
    from prefect.client.orchestration import get_client

    from shipyard.blocks.release_target import ReleaseTarget
    from shipyard.deployments.cli.errors import UsageError, one_line

    try:
        with get_client(sync_client=True) as client:
            documents = client.read_block_documents_by_type(
                ReleaseTarget.get_block_type_slug(), include_secrets=False
            )
    except Exception as exc:  # noqa: BLE001 - no server, no block type: say which
        raise UsageError(
            f"cannot read Release Target blocks from the Prefect API ({one_line(exc)}): start "
            "`prefect server start` and set PREFECT_API_URL (on the sandbox: `shipyard setup`)"
        ) from None
    named = {d.name: d for d in documents if d.name}
    if name in named:
        return name
    scoped = sorted(n for n, d in named.items() if _scope_of(d.data or {}) == name)
    if len(scoped) == 1:
        return scoped[0]
    serving = sorted(n for n, d in named.items() if (d.data or {}).get("service") == name)
    if len(serving) == 1:
        return serving[0]
    if serving:
        scopes = ", ".join(f"{n} ({_scope_of(named[n].data or {})})" for n in serving)
        raise UsageError(
            f"{name!r}: several Release Target blocks release that service ({scopes}); "
            "name the block (or its service-environment) instead"
        )
    raise UsageError(
        f"{name!r} is neither a Release Target block nor the service of one; blocks: "
        f"{', '.join(sorted(named)) or 'none (run `shipyard setup` on the sandbox)'}"
    )


def _scope_of(data: dict[str, object]) -> str:
    """ReleaseTarget.scope from a block document's fields (no block load: no secrets read)."""
    service, environment = data.get("service"), data.get("environment")
    return f"{service}-{environment}" if environment else str(service or "")


def rollback_command(
    name: str = typer.Argument(
        ..., help="Release Target block name, its Cloud Run service, or SERVICE-ENVIRONMENT."
    ),
    to: str = typer.Option(
        "",
        "--to",
        help="Release tag or revision name to return to (default: the last good revision, which "
        "served before the current release).",
    ),
    comment: str = typer.Option(
        "", "--comment", "-m", help="Why: written to the rollback's summary and the ledger."
    ),
) -> None:
    """Return 100% of a service's traffic to the last good revision (which served before the
    current release), or to a given release tag or revision (refused unless it is Ready)."""
    from shipyard.deployments.cli.errors import UsageError, fail
    from shipyard.flows.deploy.rollback import RollbackRefused, check_rollback, rollback

    try:
        target = find_target(name)
        check_rollback(target, to)
    except (UsageError, RollbackRefused) as exc:
        fail(str(exc))
    try:
        result = rollback(target, to, comment=comment)
    except RollbackRefused as exc:
        fail(str(exc))
    if result.noop:
        console.print(
            f"{result.revision} already serves 100% of {result.service} in {result.region}"
        )
        return
    console.print(
        f"rolled back {result.service} in {result.region}: 100% to {result.revision} "
        f"(tag {result.git_tag or '-'}, image {result.image or '-'}), was {result.previous or '-'}",
        soft_wrap=True,
    )
