"""`shipyard prewarm [--force]` and `shipyard build TAG`: the cache tiers and the release image."""

from __future__ import annotations

import json

import typer


def register(app: typer.Typer) -> None:
    app.command("prewarm")(prewarm)
    app.command("build")(build)


DEFAULT_TARGET = "default"  # the ReleaseTarget block `shipyard setup` makes


def _block_exists(name: str) -> bool:
    from shipyard.blocks.release_target import ReleaseTarget

    try:
        ReleaseTarget.load(name)
    except ValueError:
        return False
    return True


def _fail(exc: Exception) -> None:
    typer.secho(f"failed: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def prewarm(
    force: bool = typer.Option(False, "--force", help="Rebuild every tier, fingerprint or not."),
    revision: str = typer.Option("HEAD", help="Git revision whose Dockerfile and files to use."),
    base_image: str = typer.Option(
        None, help="REPOSITORY@sha256:… (default: the mirror's recorded pin)."
    ),
    target: str = typer.Option(
        None,
        "--target",
        help="ReleaseTarget block whose build settings, cache tiers and cloud to use (default: "
        f"`{DEFAULT_TARGET}`, the one `shipyard setup` / `shipyard init` make, when it exists; "
        "else the environment's defaults).",
    ),
    settings_block: str = typer.Option(
        None, "--settings-block", help="BuildSettings block (default: the target's)."
    ),
    tiers_block: str = typer.Option(
        None, "--tiers-block", help="CacheTiers block (default: the target's)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Build the cache tiers whose inputs changed (the target's CacheTiers block: those
    `shipyard init` found in the repository, e.g. cache-base, cache-python)."""
    from shipyard.flows.build.prewarm import prewarm_cache_tiers
    from shipyard.tasks.errors import PermanentError

    if target is None and _block_exists(DEFAULT_TARGET):
        target = DEFAULT_TARGET
    try:
        result = prewarm_cache_tiers(
            force=force,
            revision=revision,
            base_image=base_image,
            settings_block=settings_block,
            tiers_block=tiers_block,
            target=target,
        )
    except (PermanentError, ValueError) as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(result.model_dump(), indent=2))
        return
    for tier in result.tiers:
        typer.echo(
            f"{tier.tier:8} {tier.action:8} {tier.image}@{tier.digest[:19]}  "
            f"{tier.size / 1e6:.1f} MB  {tier.seconds:.1f}s  ({tier.quarter_tag})"
        )
    if result.deleted_tags:
        typer.echo(f"deleted quarterly tags: {', '.join(result.deleted_tags)}")


def build(
    tag: str = typer.Argument(..., help="Git tag to release, e.g. v1.4.2."),
    commit: str = typer.Option(None, help="Commit sha (default: what TAG points to)."),
    base_image: str = typer.Option(None, help="REPOSITORY@sha256:… (default: the mirror's pin)."),
    previous_image: str = typer.Option(None, help="Image deploy hosts already have."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Build (or reuse) the release image of TAG on Cloud Build with the cache-tier chain."""
    from shipyard.flows.build.flow import build_release_image
    from shipyard.tasks.errors import PermanentError

    try:
        result = build_release_image(
            git_tag=tag,
            commit=commit or tag,
            base_image=base_image,
            previous_image=previous_image,
        )
    except (PermanentError, ValueError) as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(result.model_dump(), indent=2))
        return
    if result.reused:
        typer.echo(f"reused {result.image} (commit {result.commit[:12]} was already built)")
        return
    typer.echo(
        f"built {result.image} in {result.seconds:.1f}s: CACHED {result.cached_steps}, RUN "
        f"{result.run_steps} (hit rate {100 * result.hit_rate:.0f}%), deploy pull "
        f"{result.pull_bytes / 1e6:.1f} MB"
    )
    if result.pull_warning:
        typer.secho(result.pull_warning, fg=typer.colors.YELLOW)
