"""`shipyard mirror SRC DST`: mirror a CUDA base image, pinned by digest, cuDNN major verified."""

from __future__ import annotations

import asyncio
import json

import typer


def register(app: typer.Typer) -> None:
    app.command("mirror")(mirror)


def mirror(
    src: str = typer.Argument(
        ..., help="Source image, e.g. nvidia/cuda:12.1.1-cudnn8-runtime-ubuntu22.04"
    ),
    dst: str = typer.Argument(
        ..., help="Destination repository, e.g. ghcr.io/acme/base-images/cuda"
    ),
    expect_cudnn: int = typer.Option(
        8, "--expect-cudnn", help="Required cuDNN major (0: no check)."
    ),
    platform: list[str] = typer.Option(
        None, "--platform", help="Platform(s) to copy (default: all)."
    ),
    accept_drift: bool = typer.Option(False, "--accept-drift", help="Pin the new upstream digest."),
    src_credentials: str = typer.Option(
        None, help="DockerRegistryCredentials block for the source."
    ),
    dst_credentials: str = typer.Option(
        None, help="DockerRegistryCredentials block for the destination."
    ),
    dst_gcp_credentials: str = typer.Option(None, help="GcpCredentials block (Artifact Registry)."),
    retry_budget: float = typer.Option(
        300.0,
        "--retry-budget",
        help="Seconds each registry operation may retry a busy registry (honouring Retry-After).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Copy registry to registry (no Docker daemon, no local disk) and record the pin."""
    from shipyard.flows.mirror.flow import mirror_base_image
    from shipyard.tasks.errors import PermanentError
    from shipyard.tasks.registry import RegistryError

    try:
        result = asyncio.run(
            mirror_base_image(
                src,
                dst,
                expect_cudnn=expect_cudnn,
                platforms=platform or None,
                accept_drift=accept_drift,
                source_credentials=src_credentials,
                destination_credentials=dst_credentials,
                destination_gcp_credentials=dst_gcp_credentials,
                retry_budget_seconds=retry_budget,
            )
        )
    except (PermanentError, RegistryError) as exc:
        typer.secho(f"mirror failed: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    if result.get("message"):
        typer.secho(result["message"], fg=typer.colors.YELLOW)
    typer.echo(f"{result['status']}: {result['destination']}@{result['digest']}")
    if result["status"] == "mirrored":
        typer.echo(
            f"tags {', '.join(result['tags'])}; cuDNN {result['cudnn']}, CUDA {result['cuda']}; "
            f"{result['blobs_copied']} copied / {result['blobs_skipped']} skipped / "
            f"{result['blobs_mounted']} mounted, {result['bytes_copied'] / 1e6:.1f} MB in {result['seconds']:.1f}s"
        )
