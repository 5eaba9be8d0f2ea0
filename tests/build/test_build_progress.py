"""The build's progress artifact, read back through the Prefect API: steps done over all steps."""

from __future__ import annotations

import pytest
from google.cloud.devtools import cloudbuild_v1 as cb
from prefect import flow

from shipyard.blocks.build_settings import BuildSettings
from shipyard.flows.build.cloud_build_run import BuildFailedError, run_cloud_build

DOCKER = "gcr.io/cloud-builders/docker"


def test_build_progress_counts_the_steps_done(sandbox_admin, cloud, app_repo, image_repository):
    # Three steps; the third uses a builder the sandbox's Cloud Build refuses (as an unknown
    # executor fails on Google), so the build ends FAILURE with 2 of 3 steps done.
    request = cb.Build(
        source=cb.Source(
            git_source=cb.GitSource(url=app_repo.url, revision=app_repo.head(), dir=app_repo.dir)
        ),
        steps=[
            cb.BuildStep(name=DOCKER, id="buildx-a", args=["buildx", "version"]),
            cb.BuildStep(name=DOCKER, id="buildx-b", args=["buildx", "version"]),
            cb.BuildStep(name="gcr.io/kaniko-project/executor", id="kaniko", args=["--help"]),
        ],
        timeout={"seconds": 120},
    )
    settings = BuildSettings(image_repository=image_repository, poll_s=0.05, timeout_s=120)
    seen: dict[str, str] = {}

    @flow
    def build_three_steps() -> None:
        from prefect.runtime import flow_run

        seen["flow_run_id"] = flow_run.id
        run_cloud_build(cloud, settings, request, "progress test")

    with pytest.raises(BuildFailedError) as failed:
        build_three_steps()

    from progress_bars import progress_bars

    build_id = failed.value.build_id
    (bar,) = progress_bars(seen["flow_run_id"], f"build-{build_id}")
    assert float(bar.data) == 66.7  # 2 of 3 steps
    assert bar.description == f"Cloud Build {build_id}: FAILURE, 2/3 steps"
