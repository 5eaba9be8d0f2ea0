"""Cloud Build executes on the sandbox's Docker daemon: RUN runs, its output is logged, a failing
RUN fails the build with that output, and the pushed image is the built filesystem."""

from __future__ import annotations

import uuid

import httpx
from engine_kit import GitRepo, cloud_build
from google.cloud.devtools import cloudbuild_v1 as cb


def test_a_run_step_runs_and_the_pushed_image_is_the_built_filesystem(
    engine_sandbox, engine_cuda, tmp_path
):
    from shipyard.blocks.cloud import GoogleCloud

    marker = uuid.uuid4().hex
    repo = GitRepo(
        tmp_path / "repo",
        {
            "Dockerfile": "# syntax=docker/dockerfile:1\nARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n"
            f"RUN echo ran-$(echo {marker}) | tee /built.txt\n",
        },
    )
    tag = f"{engine_sandbox.registry_host}/runtime/ok:{marker[:8]}"
    build, log = cloud_build(GoogleCloud(), repo, engine_cuda, tag)
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
    engine_sandbox, engine_cuda, tmp_path
):
    from shipyard.blocks.cloud import GoogleCloud

    marker = uuid.uuid4().hex
    repo = GitRepo(
        tmp_path / "repo",
        {
            "Dockerfile": "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n"
            f"RUN echo broken-$(echo {marker}) && exit 3\n",
        },
    )
    tag = f"{engine_sandbox.registry_host}/runtime/broken:{marker[:8]}"
    build, log = cloud_build(GoogleCloud(), repo, engine_cuda, tag)
    assert build.status == cb.Build.Status.FAILURE
    assert "step exited with non-zero status" in build.status_detail
    assert f"broken-{marker}" in log
    assert "exit code: 3" in log  # BuildKit's own words for the failing RUN
