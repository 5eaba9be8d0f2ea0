"""Where and how the release image is built: repository, source, Cloud Build machine and limits.

Defaults come from the environment so the same code runs on Google and on the sandbox:
`SHIPYARD_IMAGE_REPOSITORY` (else `<SHIPYARD_REGISTRY_URL host>/shipyard/page-service`),
`SHIPYARD_BASE_REPOSITORY` (else `<registry host>/base-images/cuda`, where the mirror records its
pin), `SHIPYARD_GIT_URL` (the repository Cloud Build fetches).

`backend` chooses where images are built: `cloud-build` (default) sends a Cloud Build request;
`docker` builds on the Docker daemon of the prefect-docker `DockerHost` block in `docker_host`
(BuildKit, the same Dockerfile, tiers and cache chain) and pushes with the prefect-docker
`DockerRegistryCredentials` in `docker_registry_credentials`. Before a Docker build the daemon's
data root must have `min_free_disk_gb` free (default 4 GB): local disks are where the field
reports' builds died ("No space left on device").

`disk_size_gb` defaults to 100: the seeds' builds died of full disks (14 GB runners, CUDA layers
of 3-4 GB unpacked twice); Cloud Build accepts up to 4000.
"""

from __future__ import annotations

import os
from typing import Literal

import httpx
from prefect.blocks.core import Block
from prefect_docker import DockerHost, DockerRegistryCredentials
from pydantic import Field

MACHINE_TYPES = (
    "E2_HIGHCPU_8",
    "E2_HIGHCPU_32",
    "N1_HIGHCPU_8",
    "N1_HIGHCPU_32",
    "E2_MEDIUM",
    "E2_STANDARD_2",
)


class BuildSettingsError(ValueError):
    """A setting is missing or wrong; the message names it and the fix."""


class BuildSettings(Block):
    _block_type_name = "Shipyard Build Settings"
    _block_type_slug = "shipyard-build-settings"
    _description = (
        "Image repository, git source, build backend (Cloud Build or a Docker daemon), "
        "Cloud Build machine type, disk, timeout."
    )

    image_repository: str | None = Field(
        default=None,
        description="Where release images go, e.g. europe-docker.pkg.dev/PROJECT/apps/page-service. "
        "Default: SHIPYARD_IMAGE_REPOSITORY, else <SHIPYARD_REGISTRY_URL host>/shipyard/page-service.",
    )
    base_repository: str | None = Field(
        default=None,
        description="The mirrored base image repository whose pin the build uses (FROM by digest).",
    )
    git_url: str | None = Field(
        default=None,
        description="Repository Cloud Build fetches (gitSource.url). Default: SHIPYARD_GIT_URL.",
    )
    source_dir: str = Field(
        default="examples/page-service", description="Build context inside the repository."
    )
    release_target: str = Field(default="runtime", description="Dockerfile stage released.")
    machine_type: str = Field(
        default="E2_HIGHCPU_8", description=f"One of {', '.join(MACHINE_TYPES)}."
    )
    disk_size_gb: int = Field(default=100, ge=10, le=4000)
    timeout_s: int = Field(default=3600, ge=60, le=86400)
    poll_s: float = Field(
        default=0.25, gt=0, description="First status poll interval (x1.5 backoff)."
    )
    pull_warn_mb: int = Field(
        default=300, ge=1, description="Warn when a deploy must pull more than this (MB)."
    )
    backend: Literal["cloud-build", "docker"] = Field(
        default="cloud-build",
        description="Where images are built: Cloud Build, or the Docker daemon of `docker_host`.",
    )
    docker_host: DockerHost | None = Field(
        default=None,
        description="backend=docker: the daemon that builds (prefect-docker DockerHost; "
        "default: DOCKER_HOST of the environment).",
    )
    docker_registry_credentials: DockerRegistryCredentials | None = Field(
        default=None,
        description="backend=docker: how the daemon logs in to push (prefect-docker "
        "DockerRegistryCredentials; none: the registry takes anonymous pushes).",
    )
    min_free_disk_gb: float = Field(
        default=4.0,
        ge=0,
        description="backend=docker: refuse to build when the daemon's data root has less free.",
    )
    docker_network: str | None = Field(
        default=None,
        description="backend=docker: network of the build's RUN steps (e.g. `host` when the "
        "daemon runs with --bridge=none).",
    )
    docker_builtin_frontend: bool = Field(
        default=False,
        description="backend=docker: ignore the Dockerfile's `# syntax=` line and parse it with "
        "the daemon's built-in frontend (for daemons that cannot pull docker/dockerfile).",
    )
    storage_bucket_block: str | None = Field(
        default=None,
        description="prefect-gcp GcsBucket block: upload the source there (storageSource) "
        "instead of letting Cloud Build fetch git.",
    )

    def _registry_host(self) -> str | None:
        url = os.environ.get("SHIPYARD_REGISTRY_URL")
        return httpx.URL(url).netloc.decode() if url else None

    def resolved_image_repository(self) -> str:
        repo = self.image_repository or os.environ.get("SHIPYARD_IMAGE_REPOSITORY")
        if not repo and self._registry_host():
            repo = f"{self._registry_host()}/shipyard/page-service"
        if not repo:
            raise BuildSettingsError(
                "BuildSettings.image_repository is not set: give the block a repository such as "
                "europe-docker.pkg.dev/PROJECT/apps/page-service, or set SHIPYARD_IMAGE_REPOSITORY"
            )
        return repo

    def resolved_base_repository(self) -> str:
        repo = self.base_repository or os.environ.get("SHIPYARD_BASE_REPOSITORY")
        if not repo and self._registry_host():
            repo = f"{self._registry_host()}/base-images/cuda"
        if not repo:
            raise BuildSettingsError(
                "BuildSettings.base_repository is not set: give the mirrored base repository "
                "(the `shipyard mirror` destination) or set SHIPYARD_BASE_REPOSITORY"
            )
        return repo

    def resolved_git_url(self) -> str:
        url = self.git_url or os.environ.get("SHIPYARD_GIT_URL")
        if not url:
            raise BuildSettingsError(
                "BuildSettings.git_url is not set: give the repository Cloud Build should fetch "
                "(https://github.com/ORG/REPO.git) or set SHIPYARD_GIT_URL"
            )
        return url

    def docker_client_host(self) -> DockerHost:
        return self.docker_host or DockerHost()

    def check(self) -> None:
        if self.machine_type not in MACHINE_TYPES:
            raise BuildSettingsError(
                f"BuildSettings.machine_type {self.machine_type!r} is not a Cloud Build machine "
                f"type; use one of {', '.join(MACHINE_TYPES)}"
            )
