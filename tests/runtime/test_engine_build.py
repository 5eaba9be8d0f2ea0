"""Cloud Build executes on the sandbox's Docker daemon: RUN runs, its output is logged, a failing
RUN fails the build with that output, and the pushed image is the built filesystem."""

from __future__ import annotations

import time
import uuid

import httpx
from conftest import GitRepo
from google.cloud.devtools import cloudbuild_v1 as cb

PROJECT = "shipyard-sandbox"


def _request(repo: GitRepo, base: str, tag: str) -> cb.Build:
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


def _build(cloud, repo: GitRepo, base: str, tag: str) -> tuple[cb.Build, str]:
    client = cloud.builds_client()
    operation = client.create_build(project_id=PROJECT, build=_request(repo, base, tag))
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


def test_a_run_step_runs_and_the_pushed_image_is_the_built_filesystem(
    engine_sandbox, engine_base, tmp_path
):
    from blocks.cloud import GoogleCloud

    marker = uuid.uuid4().hex
    repo = GitRepo(
        tmp_path / "repo",
        {
            "Dockerfile": "# syntax=docker/dockerfile:1\nARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n"
            f"RUN python3 -c \"print('ran-' + '{marker}')\" | tee /built.txt\n",
        },
    )
    tag = f"{engine_sandbox.registry_host}/runtime/ok:{marker[:8]}"
    build, log = _build(GoogleCloud(), repo, engine_base, tag)
    assert build.status == cb.Build.Status.SUCCESS, build.status_detail
    assert f"ran-{marker}" in log  # the RUN's own output, not a record of it
    digest = build.results.images[0].digest
    manifest = httpx.get(
        f"{engine_sandbox.registry_url}/v2/runtime/ok/manifests/{digest}",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    assert manifest.status_code == 200
    assert len(manifest.json()["layers"]) == 2  # the Debian base + the RUN's layer


def test_a_failing_run_fails_the_build_with_the_steps_real_output(
    engine_sandbox, engine_base, tmp_path
):
    from blocks.cloud import GoogleCloud

    marker = uuid.uuid4().hex
    repo = GitRepo(
        tmp_path / "repo",
        {
            "Dockerfile": "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n"
            f"RUN python3 -c \"import sys; print('broken-' + '{marker}'); sys.exit(3)\"\n",
        },
    )
    tag = f"{engine_sandbox.registry_host}/runtime/broken:{marker[:8]}"
    build, log = _build(GoogleCloud(), repo, engine_base, tag)
    assert build.status == cb.Build.Status.FAILURE
    assert "step exited with non-zero status" in build.status_detail
    assert f"broken-{marker}" in log
    assert "exit code: 3" in log  # BuildKit's own words for the failing RUN
