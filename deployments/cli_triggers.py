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
        "SHIPYARD_RELEASE_TAG_PATTERN, else blocks.release_tag.RELEASE_TAG_PATTERN, vX.Y.Z).",
    ),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
) -> None:
    """Receive GitHub `push`/`create` and GitLab tag-push webhooks; emit `shipyard.git.tag.pushed`."""
    import logging

    import uvicorn

    from deployments.webhook import WebhookSettings, create_app

    try:
        settings = WebhookSettings.from_env(secret_block=secret_block, tag_pattern=tag_pattern)
        settings.compiled_pattern()
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per delivery is ours
    typer.echo(f"shipyard webhook receiver on http://{host}:{port}/webhook")
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level)


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
    from deployments.serve import PREFECT_YAML, DeploymentSpecError, aserve_all

    try:
        asyncio.run(aserve_all(prefect_file or PREFECT_YAML, names=name or None, limit=limit))
    except DeploymentSpecError as exc:
        raise typer.BadParameter(str(exc)) from None


def register(app: typer.Typer) -> None:
    app.add_typer(webhook_app, name="webhook")
    app.command("serve")(serve)
