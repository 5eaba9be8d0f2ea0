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
from shipyard.tasks.errors import PermanentError

DOCKER_BUILDER = "gcr.io/cloud-builders/docker"
# Cloud Build refuses any other tag: 'invalid build: invalid build tag "ccm/v32.2.0": must match
# format "^[\w][\w.-]{0,127}$"' (INVALID_ARGUMENT; kubernetes/cloud-provider-gcp#810,
# googleforgames/global-multiplayer-demo#184). Go's \w is ASCII, hence re.ASCII.
BUILD_TAG_FORMAT = r"^[\w][\w.-]{0,127}$"
_BUILD_TAG = re.compile(BUILD_TAG_FORMAT, re.ASCII)
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
        tags=[build_tag(t) for t in build_tags],
    )


class BuildTagError(PermanentError, ValueError):
    """A build tag Cloud Build would refuse: named before the build is submitted."""


def build_tag(text: str) -> str:
    """`text` as a Cloud Build tag: characters Cloud Build refuses ('/', '+', ...) become '_'
    (a git tag `release/v1` is tagged `release_v1`), cut at 128. What still does not match
    Cloud Build's format (empty, or starting with '.' or '-') is refused here, before any call."""
    tag = re.sub(r"[^a-zA-Z0-9_.-]", "_", text)[:128]
    if not _BUILD_TAG.match(tag):
        raise BuildTagError(
            f"build_tags: {text!r} cannot be a Cloud Build tag: Cloud Build tags must match "
            f"{BUILD_TAG_FORMAT} (start with a letter, digit or '_'; then letters, digits, "
            "'_', '.' or '-'; at most 128). Fix: use a git tag (or tier name) that starts with "
            "a letter or digit, e.g. 'v1.2.3'"
        )
    return tag


def git_source(settings: BuildSettings, revision: str) -> dict[str, Any]:
    return {
        "git_source": cloudbuild_v1.GitSource(
            url=settings.resolved_git_url(), revision=revision, dir=settings.source_dir
        )
    }
