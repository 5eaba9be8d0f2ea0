"""`shipyard webhook serve` (the git-tag receiver) and `shipyard serve` (deployments, no worker)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

webhook_app = typer.Typer(
    help="The git-tag webhook receiver: signed GitHub/GitLab tag pushes -> a Prefect event.",
    no_args_is_help=True,
)


@webhook_app.command("serve")
def webhook_serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8787, "--port", help="TCP port to listen on."),
    secret_block: str = typer.Option(
        None,
        "--secret-block",
        help="Prefect Secret block holding the webhook secret (default: env "
        "SHIPYARD_WEBHOOK_SECRET_BLOCK, else shipyard-webhook-secret). The env var "
        "SHIPYARD_WEBHOOK_SECRET, when set, wins.",
    ),
    tag_pattern: str = typer.Option(
        None,
        "--tag-pattern",
        help="Regex a release tag must match as a whole, ASCII digits only (default: env "
        "SHIPYARD_RELEASE_TAG_PATTERN, else shipyard.blocks.release_tag.RELEASE_TAG_PATTERN, vX.Y.Z).",
    ),
    repo: list[str] = typer.Option(
        None,
        "--repo",
        help="owner/name=target: a repository allowed to release, and the ReleaseTarget "
        "block it releases (repeatable; also SHIPYARD_WEBHOOK_REPOS=a/b=t,c/d=u). Other "
        "repositories are refused with 403.",
    ),
    repos_file: str = typer.Option(
        None,
        "--repos-file",
        help="YAML file `repositories: {owner/name: target}` (or SHIPYARD_WEBHOOK_REPOS_FILE).",
    ),
    journal: str = typer.Option(
        None,
        "--journal",
        help="The receiver's journal file (SQLite; default SHIPYARD_WEBHOOK_JOURNAL, else "
        "$SHIPYARD_HOME/webhook/journal.db). Receivers on one host may share it.",
    ),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
) -> None:
    """Receive GitHub `push`/`create` and GitLab tag-push webhooks; emit `shipyard.git.tag.pushed`."""
    import logging

    from shipyard.deployments.webhook.receiver import WebhookSettings, serve

    try:
        settings = WebhookSettings.from_env(
            repos=repo or None,
            repos_file=repos_file,
            secret_block=secret_block,
            tag_pattern=tag_pattern,
            journal=journal,
        )
        settings.compiled_pattern()
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per delivery is ours
    if not settings.repositories:
        typer.echo("warning: no repository is allowed to release (--repo owner/name=target)")
    typer.echo(f"shipyard webhook receiver on http://{host}:{port}/webhook")
    serve(settings, host, port, log_level)


def serve(
    prefect_file: Path = typer.Option(
        None, "--prefect-file", help="prefect.yaml to serve (default: the repository's)."
    ),
    name: list[str] = typer.Option(
        None, "--name", "-n", help="Serve only these deployments (repeatable)."
    ),
    limit: int = typer.Option(
        None, "--limit", help="At most this many runs at once in this process."
    ),
) -> None:
    """Serve every deployment of prefect.yaml from this process (schedules, triggers and
    concurrency limits included): for a machine without a worker."""
    from shipyard.deployments.serve import PREFECT_YAML, DeploymentSpecError, aserve_all

    try:
        asyncio.run(aserve_all(prefect_file or PREFECT_YAML, names=name or None, limit=limit))
    except DeploymentSpecError as exc:
        raise typer.BadParameter(str(exc)) from None


def register(app: typer.Typer) -> None:
    app.add_typer(webhook_app, name="webhook")
    app.command("serve")(serve)
