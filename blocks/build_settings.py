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
from typing import Literal, cast
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
from prefect.blocks.core import Block
from prefect_docker import DockerHost, DockerRegistryCredentials
from pydantic import ConfigDict, Field, field_validator

from shipyard.blocks.schema_cache import CachedSchema

MACHINE_TYPES = (
    "E2_HIGHCPU_8",
    "E2_HIGHCPU_32",
    "N1_HIGHCPU_8",
    "N1_HIGHCPU_32",
    "E2_MEDIUM",
    "E2_STANDARD_2",
)


CREDENTIALS_IN_URL = (
    "{field} carries credentials (user:token@ in the URL): a URL is stored and shown in plain "
    "text (block, events, logs). Give the URL without them and put the token in a Prefect "
    "Secret block named in BuildSettings.git_credentials_secret: "
    "SHIPYARD_GIT_TOKEN=... shipyard setup --git-url https://HOST/ORG/REPO.git "
    "--git-token-secret NAME"
)
DEFAULT_GIT_USER = "x-access-token"


class BuildSettingsError(ValueError):
    """A setting is missing or wrong; the message names it and the fix."""


def url_has_credentials(url: str) -> bool:
    """True when a URL holds a secret in its userinfo: any userinfo of an http(s) URL (a bare
    token is one), a password in any other scheme's. `ssh://git@host/…` and `git@host:…` hold
    none."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return False
    if "@" not in parts.netloc:
        return False
    userinfo = parts.netloc.rsplit("@", 1)[0]
    return parts.scheme.lower() in ("http", "https") or ":" in userinfo


def with_credentials(url: str, token: str, secret_name: str) -> str:
    """`url` (https) with `token` (`TOKEN` or `USER:TOKEN`) as its userinfo."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise BuildSettingsError(
            f"BuildSettings.git_credentials_secret {secret_name!r} is set but git_url is not an "
            "https URL: a token goes only into https://; use https://HOST/ORG/REPO.git, or clear "
            "the field (ssh keys come from the build's own environment)"
        )
    token = token.strip()
    user, _, password = token.rpartition(":") if ":" in token else (DEFAULT_GIT_USER, "", token)
    if not password:
        raise BuildSettingsError(
            f"the Secret block {secret_name!r} (BuildSettings.git_credentials_secret) is empty: "
            "put the git token in it"
        )
    userinfo = f"{quote(user, safe='')}:{quote(password, safe='')}"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{parts.netloc}"))


class BuildSettings(CachedSchema, Block):
    _block_type_name = "Shipyard Build Settings"
    _block_type_slug = "shipyard-build-settings"
    _description = (
        "Image repository, git source (its token in a Secret block), build backend (Cloud Build "
        "or a Docker daemon), Cloud Build machine type, disk, timeout."
    )
    # A refused value (a git URL with its token) must not be echoed by the validation error.
    model_config = ConfigDict(hide_input_in_errors=True)

    image_repository: str | None = Field(
        default=None,
        title="Image repository",
        description="Where release images go, e.g. europe-docker.pkg.dev/PROJECT/apps/SERVICE. "
        "Default: SHIPYARD_IMAGE_REPOSITORY, else <SHIPYARD_REGISTRY_URL host>/shipyard/page-service.",
    )
    base_repository: str | None = Field(
        default=None,
        title="Base image repository",
        description="The mirrored base image repository whose pin the build uses (FROM by digest). "
        "Default: SHIPYARD_BASE_REPOSITORY, else <SHIPYARD_REGISTRY_URL host>/base-images/cuda.",
    )
    git_url: str | None = Field(
        default=None,
        title="Git URL",
        description="Repository the builds fetch (Cloud Build gitSource.url), without credentials: "
        "https://host/ORG/REPO.git. A private repository's token goes in a Secret block named in "
        "`git_credentials_secret`. Default: SHIPYARD_GIT_URL.",
    )
    git_credentials_secret: str | None = Field(
        default=None,
        title="Git credentials secret",
        description="Name of a Prefect Secret block holding the git token (`TOKEN`, or "
        "`USER:TOKEN`; a bare token is sent as user x-access-token). It is put into the https URL "
        "only when git runs, never stored or shown with the URL.",
    )
    source_dir: str = Field(
        default="examples/page-service",
        title="Source directory",
        description="Build context inside the repository ('.' for its root).",
    )
    release_target: str = Field(
        default="runtime",
        title="Released stage",
        description="Dockerfile stage built as the release image (--target).",
    )
    machine_type: str = Field(
        default="E2_HIGHCPU_8",
        title="Cloud Build machine type",
        description=f"One of {', '.join(MACHINE_TYPES)}.",
    )
    disk_size_gb: int = Field(
        default=100,
        ge=10,
        le=4000,
        title="Cloud Build disk (GB)",
        description="Disk of the build machine: CUDA layers unpack to several GB, twice.",
    )
    timeout_s: int = Field(
        default=3600,
        ge=60,
        le=86400,
        title="Build timeout (s)",
        description="A build still running after this is cancelled and fails.",
    )
    poll_s: float = Field(
        default=0.25,
        gt=0,
        title="Status poll (s)",
        description="First status poll interval (x1.5 backoff).",
    )
    pull_warn_mb: int = Field(
        default=300,
        ge=1,
        title="Deploy pull warning (MB)",
        description="Warn when a deploy must pull more than this (MB).",
    )
    backend: Literal["cloud-build", "docker"] = Field(
        default="cloud-build",
        title="Build backend",
        description="Where images are built: Cloud Build, or the Docker daemon of `docker_host`.",
    )
    docker_host: DockerHost | None = Field(
        default=None,
        title="Docker host",
        description="backend=docker: the daemon that builds (prefect-docker DockerHost; "
        "default: DOCKER_HOST of the environment).",
    )
    docker_registry_credentials: DockerRegistryCredentials | None = Field(
        default=None,
        title="Docker registry credentials",
        description="backend=docker: how the daemon logs in to push (prefect-docker "
        "DockerRegistryCredentials; none: the registry takes anonymous pushes).",
    )
    min_free_disk_gb: float = Field(
        default=4.0,
        ge=0,
        title="Minimum free disk (GB)",
        description="backend=docker: refuse to build when the daemon's data root has less free.",
    )
    docker_network: str | None = Field(
        default=None,
        title="Docker build network",
        description="backend=docker: network of the build's RUN steps (e.g. `host` when the "
        "daemon runs with --bridge=none).",
    )
    docker_builtin_frontend: bool = Field(
        default=False,
        title="Docker built-in frontend",
        description="backend=docker: ignore the Dockerfile's `# syntax=` line and parse it with "
        "the daemon's built-in frontend (for daemons that cannot pull docker/dockerfile).",
    )
    storage_bucket_block: str | None = Field(
        default=None,
        title="Storage bucket block",
        description="prefect-gcp GcsBucket block: upload the source there (storageSource) "
        "instead of letting Cloud Build fetch git.",
    )

    @field_validator("git_url")
    @classmethod
    def _no_credentials_in_url(cls, value: str | None) -> str | None:
        if value and url_has_credentials(value):
            raise ValueError(CREDENTIALS_IN_URL.format(field="BuildSettings.git_url"))
        return value

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

    def public_git_url(self) -> str | None:
        """The repository URL as stored (no credentials): for logs, labels and messages."""
        return self.git_url or os.environ.get("SHIPYARD_GIT_URL") or None

    def resolved_git_url(self) -> str:
        """The URL git fetches: with the token of `git_credentials_secret` put in, read now.
        Hand it only to git or the build request, never to a log, a message or a parameter."""
        url = self.public_git_url()
        if not url:
            raise BuildSettingsError(
                "BuildSettings.git_url is not set: give the repository Cloud Build should fetch "
                "(https://github.com/ORG/REPO.git) or set SHIPYARD_GIT_URL"
            )
        if url_has_credentials(url):  # SHIPYARD_GIT_URL is not validated by the field
            raise BuildSettingsError(CREDENTIALS_IN_URL.format(field="SHIPYARD_GIT_URL"))
        if not self.git_credentials_secret:
            return url
        name = self.git_credentials_secret
        return with_credentials(url, self._git_token(name), name)

    def _git_token(self, name: str) -> str:
        from prefect.blocks.system import Secret

        try:
            secret = cast("Secret[str]", Secret.load(name))
        except ValueError:
            raise BuildSettingsError(
                f"BuildSettings.git_credentials_secret {name!r}: no Secret block of that name; "
                f"create it (`prefect block create secret`, or SHIPYARD_GIT_TOKEN=... shipyard "
                f"setup --git-token-secret {name}) or clear the field"
            ) from None
        return str(secret.get())

    def docker_client_host(self) -> DockerHost:
        return self.docker_host or DockerHost()

    def check(self) -> None:
        if self.machine_type not in MACHINE_TYPES:
            raise BuildSettingsError(
                f"BuildSettings.machine_type {self.machine_type!r} is not a Cloud Build machine "
                f"type; use one of {', '.join(MACHINE_TYPES)}"
            )
