"""A Cloud Build v1 request that runs on Google unchanged.

`gitSource {url, revision, dir}` (or `storageSource`), step 0 creates a docker-container builder
(registry cache export needs it; the default docker driver refuses `--cache-to type=registry`),
step 1 `docker buildx build` with the cache chain, `--provenance=false` (one image manifest, not
an index with an attestation), `--push`; options machineType, diskSizeGb, logging
CLOUD_LOGGING_ONLY; a timeout; Cloud Build tags for finding builds later.
"""

from __future__ import annotations

import re
from typing import Any

from google.cloud.devtools import cloudbuild_v1

from shipyard.blocks.build_settings import BuildSettings

DOCKER_BUILDER = "gcr.io/cloud-builders/docker"
REVISION_LABEL = "org.opencontainers.image.revision"


def buildx_args(
    *,
    base_image: str,
    tags: list[str],
    cache_from: list[str],
    cache_to: str,
    target: str,
    labels: dict[str, str],
    dockerfile: str = "Dockerfile",
    context: str = ".",
) -> list[str]:
    args = ["buildx", "build", "--progress=plain", "--provenance=false", "--file", dockerfile]
    args += ["--target", target, "--build-arg", f"BASE_IMAGE={base_image}"]
    for ref in cache_from:
        args += ["--cache-from", f"type=registry,ref={ref}"]
    args += ["--cache-to", cache_to]
    for tag in tags:
        args += ["--tag", tag]
    for key, value in labels.items():
        args += ["--label", f"{key}={value}"]
    return [*args, "--push", context]


def build_request(
    settings: BuildSettings,
    *,
    source: dict[str, Any],
    args: list[str],
    build_tags: list[str],
) -> cloudbuild_v1.Build:
    settings.check()
    return cloudbuild_v1.Build(
        source=cloudbuild_v1.Source(**source),
        steps=[
            cloudbuild_v1.BuildStep(
                name=DOCKER_BUILDER,
                id="builder",
                args=[
                    "buildx",
                    "create",
                    "--name",
                    "shipyard",
                    "--driver",
                    "docker-container",
                    "--bootstrap",
                    "--use",
                ],
            ),
            cloudbuild_v1.BuildStep(name=DOCKER_BUILDER, id="build", args=args),
        ],
        options=cloudbuild_v1.BuildOptions(
            machine_type=getattr(cloudbuild_v1.BuildOptions.MachineType, settings.machine_type),
            disk_size_gb=settings.disk_size_gb,
            logging=cloudbuild_v1.BuildOptions.LoggingMode.CLOUD_LOGGING_ONLY,
        ),
        timeout={"seconds": settings.timeout_s},
        tags=[re.sub(r"[^a-zA-Z0-9_.-]", "_", t)[:128] for t in build_tags],
    )


def git_source(settings: BuildSettings, revision: str) -> dict[str, Any]:
    return {
        "git_source": cloudbuild_v1.GitSource(
            url=settings.resolved_git_url(), revision=revision, dir=settings.source_dir
        )
    }
