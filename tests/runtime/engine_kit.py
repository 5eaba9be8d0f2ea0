"""Helpers of the container-engine tests: a Cloud Build request as flows send it, and waiting
for its result and log through the official clients."""

from __future__ import annotations

import time

from conftest import GitRepo
from google.cloud.devtools import cloudbuild_v1 as cb

PROJECT = "shipyard-sandbox"


def build_request(repo: GitRepo, base: str, tag: str) -> cb.Build:
    """The request flows/cloud_build_request.py sends (builder step, then buildx build)."""
    args = ["buildx", "build", "--progress=plain", "--provenance=false", "--file", "Dockerfile"]
    args += ["--build-arg", f"BASE_IMAGE={base}", "--tag", tag, "--push", "."]
    return cb.Build(
        source=cb.Source(git_source=cb.GitSource(url=repo.url, revision="HEAD")),
        steps=[
            cb.BuildStep(
                name="gcr.io/cloud-builders/docker",
                args=["buildx", "create", "--name", "shipyard", "--driver", "docker-container"]
                + ["--bootstrap", "--use"],
            ),
            cb.BuildStep(name="gcr.io/cloud-builders/docker", args=args),
        ],
        timeout={"seconds": 300},
    )


def cloud_build(cloud, repo: GitRepo, base: str, tag: str) -> tuple[cb.Build, str]:
    client = cloud.builds_client()
    operation = client.create_build(project_id=PROJECT, build=build_request(repo, base, tag))
    build_id = operation.metadata.build.id
    deadline = time.monotonic() + 300
    build = client.get_build(project_id=PROJECT, id=build_id)
    while build.status.name in ("QUEUED", "WORKING") and time.monotonic() < deadline:
        time.sleep(0.2)
        build = client.get_build(project_id=PROJECT, id=build_id)
    log = "\n".join(
        e.payload
        for e in cloud.logging_client().list_entries(
            resource_names=[f"projects/{PROJECT}"],
            filter_=f'resource.type="build" AND resource.labels.build_id="{build_id}"',
        )
        if isinstance(e.payload, str)
    )
    return build, log
