"""`shipyard init`: make your service's repository releasable, from inside it.

Run in the service's git repository (or give its folder). It reads what the build context has
(requirements.txt / pyproject.toml, package.json, a Dockerfile: deployments/cli/repo_scan.py),
proposes the cache tiers that fit (no `node` tier without package.json), writes a tiered
Dockerfile when there is none (or checks the one there: `ARG BASE_IMAGE`, a `runtime` stage, the
tiers' stages, and says exactly what is missing), names the Cloud Run service and the image
repository after the repository, turns one example request (`--sample FILE --path /predict
--form image`) into the canary policy, and makes the blocks: everything `shipyard setup` makes on
the sandbox, with this repository's build settings, cache tiers and service in them. It prints
each file it wrote and each block it made; a second run changes nothing.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from shipyard.deployments.demo.sandbox_setup import ServicePlan

console = Console()


def register(app: typer.Typer) -> None:
    app.command("init")(init_command)


def init_command(
    directory: Path = typer.Argument(
        Path("."),
        help="The build context: the repository's root or the folder of the service inside it.",
        file_okay=False,
        exists=True,
    ),
    service: str = typer.Option(
        None, "--service", help="Cloud Run service name (default: the folder's name)."
    ),
    image_repository: str = typer.Option(
        None,
        "--image-repository",
        help="Image repository path in the registry (default: shipyard/SERVICE).",
    ),
    git_url: str = typer.Option(
        None,
        "--git-url",
        help="The URL builds fetch (default: this repository, file://ROOT: what the sandbox's "
        "Cloud Build reads). Never with user:token@: use --git-token-secret.",
    ),
    git_token_secret: str = typer.Option(
        None,
        "--git-token-secret",
        help="Prefect Secret block holding the git token (with SHIPYARD_GIT_TOKEN set, it is "
        "stored there).",
    ),
    sample: Path = typer.Option(
        None,
        "--sample",
        help="One example request body (an image, a JSON file...): the canary sends it to the "
        "new revision before it gets traffic.",
        dir_okay=False,
        exists=True,
    ),
    path: str = typer.Option(
        None, "--path", help="Where the canary sends --sample, e.g. /predict (with --sample)."
    ),
    form: str = typer.Option(
        None,
        "--form",
        help="Send --sample as this multipart form field (e.g. image) instead of the raw body.",
    ),
    expect_status: int = typer.Option(
        200, "--expect-status", help="The status the canary's answer must have."
    ),
    expect_content_type: str = typer.Option(
        None,
        "--expect-content-type",
        help="The media type the canary's answer must have, e.g. application/json.",
    ),
    expect_json: list[str] = typer.Option(
        None,
        "--expect-json",
        help="A JSON field the canary's answer must hold, FIELD=VALUE (VALUE read as JSON, "
        "else a string), e.g. digit=7; repeatable.",
    ),
    health_path: str = typer.Option(
        None,
        "--health-path",
        help="GET this path before the sample, e.g. /healthz (default: none).",
    ),
    cmd: str = typer.Option(
        None,
        "--cmd",
        help="How the service starts, the written Dockerfile's CMD (default: uvicorn main:app "
        "when requirements name fastapi/uvicorn, else python3 main.py).",
    ),
) -> None:
    """Make this repository releasable: detect its files, propose cache tiers, write or check
    its Dockerfile (a `runtime` stage and `ARG BASE_IMAGE`), name the service and image after
    it, set the canary from --sample, and make the blocks (ReleaseTarget `default`, build
    settings and cache tiers `sandbox`: `shipyard prewarm` and the UI's release use them).
    Writes only a missing Dockerfile; commit it, since builds fetch git."""
    from shipyard.deployments.cli.canary_sample import canary_fields
    from shipyard.deployments.cli.errors import UsageError, fail
    from shipyard.deployments.cli.sandbox import require_sandbox

    require_sandbox("init")
    from shipyard.blocks.build_settings import url_has_credentials
    from shipyard.deployments.demo.sandbox_setup import GIT_URL_CREDENTIALS

    if git_url and url_has_credentials(git_url):  # before anything is written or printed
        fail(GIT_URL_CREDENTIALS.replace("shipyard setup", "shipyard init"))
    try:
        canary = (
            canary_fields(
                sample, path, form, expect_status, expect_content_type, expect_json, health_path
            )
            if sample or path or form or expect_json or health_path
            else {}
        )
        plan, git_url, written = prepare(
            directory.resolve(), service, image_repository, git_url, canary, cmd
        )
    except UsageError as exc:
        fail(str(exc))
    _run_setup(plan, git_url, git_token_secret)
    if written:
        console.print(
            f"[yellow]next[/]: builds fetch git: commit what init wrote "
            f"(`git add {' '.join(escape(str(p)) for p in written)} && git commit`), then "
            "`shipyard prewarm`",
            soft_wrap=True,
        )
    else:
        console.print("next: `shipyard prewarm`, then release a tag (`shipyard release v1.0.0`)")


def _run_setup(plan: ServicePlan, git_url: str, git_token_secret: str | None) -> None:
    import logging

    import prefect.main  # noqa: F401 - configures Prefect's logging now: the level below sticks

    from shipyard.deployments.cli.errors import UsageError, fail
    from shipyard.deployments.demo.sandbox_setup import run_setup, summary

    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).setLevel(logging.ERROR)
    colours = {"created": "green", "updated": "yellow", "already there": "dim"}
    try:
        done = run_setup(
            git_url,
            plan=plan,
            git_token_secret=git_token_secret,
            say=lambda d: console.print(
                f"[{colours[d.action]}]{escape(d.line())}[/]", soft_wrap=True
            ),
        )
    except UsageError as exc:
        fail(str(exc))
    console.print(summary(done))


def git_root(directory: Path) -> Path:
    from shipyard.deployments.cli.errors import UsageError

    try:
        out = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"],
            cwd=directory,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        raise UsageError(
            f"{directory} is not in a git repository: builds fetch the service from git; run "
            "`git init && git add -A && git commit -m init` there first"
        ) from None
    return Path(out).resolve()


def prepare(
    directory: Path,
    service: str | None,
    image_repository: str | None,
    git_url: str | None,
    canary: dict[str, Any],
    cmd: str | None,
) -> tuple[ServicePlan, str, list[Path]]:
    """Scan, write or check the Dockerfile, and plan the blocks: (plan, git URL, files written).
    Prints what it found and wrote; raises UsageError on a Dockerfile Shipyard cannot build."""
    from shipyard.deployments.cli.canary_sample import describe
    from shipyard.deployments.cli.errors import UsageError
    from shipyard.deployments.cli.repo_scan import (
        RELEASE_STAGE,
        check_dockerfile,
        dockerfile_text,
        propose_tiers,
        scan,
        service_name,
    )
    from shipyard.deployments.demo.sandbox_setup import ServicePlan

    root = git_root(directory)
    source_dir = directory.relative_to(root).as_posix() or "."
    url = git_url or f"file://{root}"
    found = scan(directory)
    tiers = propose_tiers(found)
    console.print(
        f"found      {', '.join(found.found()) or 'no dependency file'} in {directory}: "
        f"tiers {', '.join(t.name for t in tiers)}",
        soft_wrap=True,
    )
    written: list[Path] = []
    if found.dockerfile is None:
        dockerfile = directory / "Dockerfile"
        dockerfile.write_text(dockerfile_text(found, tiers, cmd))
        written.append(dockerfile.relative_to(root))
        console.print(
            f"[green]wrote[/]      {escape(str(dockerfile))} (stages "
            f"{', '.join(t.target for t in tiers)}, {RELEASE_STAGE}; ARG BASE_IMAGE)",
            soft_wrap=True,
        )
    else:
        check = check_dockerfile(found.dockerfile, tiers, RELEASE_STAGE)
        for note in check.notes:
            console.print(f"[yellow]note[/]       {escape(note)}", soft_wrap=True)
        if check.problems:
            raise UsageError(
                f"{directory / 'Dockerfile'} cannot be released by Shipyard: "
                + "; ".join(check.problems)
            )
        tiers = check.tiers
        if not tiers:
            raise UsageError(
                f"{directory / 'Dockerfile'}: no cache tier fits (no `base` stage): name the "
                "bottom stage `FROM ${BASE_IMAGE} AS base`"
            )
        console.print(
            f"checked    {escape(str(directory / 'Dockerfile'))}: ARG BASE_IMAGE, stage "
            f"{RELEASE_STAGE}, tiers {', '.join(t.name for t in tiers)}",
            soft_wrap=True,
        )
    if canary:
        console.print(f"canary     {escape(describe(canary))}", soft_wrap=True)
    plan = ServicePlan(
        service=service or service_name(url, source_dir),
        source_dir=source_dir,
        tiers=tiers,
        image_path=image_repository or "",
        canary=canary,
        found=found.found(),
    )
    console.print(
        f"service    {plan.service}, image repository <registry>/{plan.image_repository}",
        soft_wrap=True,
    )
    return plan, url, written
