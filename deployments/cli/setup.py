"""`shipyard setup`: the blocks, secrets, images and variables a UI release needs on the sandbox."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

console = Console()


def register(app: typer.Typer) -> None:
    app.command("setup")(setup_command)


def setup_command(
    git_url: str = typer.Option(
        None,
        "--git-url",
        help="Repository the sandbox Cloud Build fetches (default: SHIPYARD_GIT_URL, else this "
        "checkout).",
    ),
    source_dir: str = typer.Option(
        None,
        "--source-dir",
        help="Build context inside that repository, '.' for its root (default: the sample "
        "service, examples/page-service). Its files decide the cache tiers (no node tier "
        "without package.json) and its folder names the service.",
    ),
    git_token_secret: str = typer.Option(
        None,
        "--git-token-secret",
        help="Prefect Secret block holding the git token of a private repository (a URL with "
        "user:token@ is refused). With SHIPYARD_GIT_TOKEN set, setup stores the token there.",
    ),
    service: str = typer.Option(
        None,
        "--service",
        help="Cloud Run service name (default: after the repository: the build context's "
        "folder, or the repository's name when it is the root).",
    ),
) -> None:
    """Prepare the running sandbox for releases from the Prefect UI: register the block types;
    create the `default` release target (its service named after the repository), the `sandbox`
    cloud, build settings and cache tiers blocks (the tiers the repository's files call for), the
    `shipyard-internal-token` Secret (and its sandbox Secret Manager entry); seed and mirror the
    upstream CUDA image; create the work pool and variables. Idempotent: says what it did. In
    your own service's repository, `shipyard init` does this and checks (or writes) its
    Dockerfile."""
    import logging

    import prefect.main  # noqa: F401 - configures Prefect's logging now: the level below sticks

    from shipyard.deployments.cli.errors import UsageError, fail
    from shipyard.deployments.cli.sandbox import require_sandbox

    require_sandbox("setup")
    from shipyard.deployments.demo.sandbox_setup import run_setup, summary

    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).setLevel(logging.ERROR)  # the mirror flow's own lines
    colours = {"created": "green", "updated": "yellow", "already there": "dim"}
    try:
        done = run_setup(
            git_url,
            source_dir=source_dir,
            git_token_secret=git_token_secret,
            service=service,
            say=lambda d: console.print(
                f"[{colours[d.action]}]{escape(d.line())}[/]", soft_wrap=True
            ),
        )
    except UsageError as exc:
        fail(str(exc))
    console.print(summary(done))
