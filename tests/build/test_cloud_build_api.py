"""The emulated Cloud Build v1 through the official client: create/get/list/cancel, the LRO."""

from __future__ import annotations

import time

import pytest
from google.api_core import exceptions as gexc
from google.api_core import retry as gretry
from google.cloud.devtools import cloudbuild_v1 as cb

PROJECT = "shipyard-sandbox"
FAST_POLL = gretry.Retry(
    initial=0.05,
    maximum=0.2,
    multiplier=1.5,
    timeout=60,
    predicate=gretry.if_exception_type(Exception),
)


def _request(app_repo, base_image: str, repo: str, *, name: str = "gcr.io/cloud-builders/docker"):
    args = [
        "buildx",
        "build",
        "--progress=plain",
        "--build-arg",
        f"BASE_IMAGE={base_image}",
        "--target",
        "python-deps",
        "--tag",
        f"{repo}:api-test",
        "--push",
        ".",
    ]
    return cb.Build(
        source=cb.Source(
            git_source=cb.GitSource(url=app_repo.url, revision=app_repo.head(), dir=app_repo.dir)
        ),
        steps=[cb.BuildStep(name=name, id="buildx", args=args)],
        options=cb.BuildOptions(
            machine_type=cb.BuildOptions.MachineType.E2_HIGHCPU_8,
            disk_size_gb=100,
            logging=cb.BuildOptions.LoggingMode.CLOUD_LOGGING_ONLY,
        ),
        timeout={"seconds": 120},
        tags=["api-test"],
    )


def _wait(client, build_id: str, until: set[str], timeout: float = 60) -> cb.Build:
    deadline = time.monotonic() + timeout
    while True:
        build = client.get_build(project_id=PROJECT, id=build_id)
        if build.status.name in until or time.monotonic() > deadline:
            return build
        time.sleep(0.05)


def test_create_polls_the_operation_to_success_and_get_list_log_agree(
    sandbox_admin, cloud, app_repo, base_image, image_repository
):
    sandbox_admin.reset(scenario_data={"builds": {"queue_ms": 150}})
    client = cloud.builds_client()
    operation = client.create_build(
        project_id=PROJECT, build=_request(app_repo, base_image, image_repository)
    )
    build_id = operation.metadata.build.id
    assert operation.metadata.build.status == cb.Build.Status.QUEUED
    result = operation.result(timeout=60, polling=FAST_POLL)
    assert result.status == cb.Build.Status.SUCCESS and result.id == build_id
    assert [i.name for i in result.results.images] == [f"{image_repository}:api-test"]
    assert result.results.images[0].digest.startswith("sha256:")
    assert result.source_provenance.resolved_git_source.revision == app_repo.head()
    assert sandbox_admin.get("/_sandbox/builds")[build_id]["history"] == [
        "QUEUED",
        "WORKING",
        "SUCCESS",
    ]

    got = client.get_build(project_id=PROJECT, id=build_id)
    assert got.status == cb.Build.Status.SUCCESS and got.options.disk_size_gb == 100
    assert [s.status for s in got.steps] == [cb.Build.Status.SUCCESS]
    listed = list(client.list_builds(project_id=PROJECT, filter='tags="api-test"'))
    assert [b.id for b in listed] == [build_id]

    from shipyard.tasks.cloud_build import fetch_build_log

    # Cloud Build's shape: step lines prefixed `Step #0 - "buildx": `, reaching Cloud Logging
    # late (builds.log_delay_ms, 300 ms by default): the fetch still returns the whole log.
    lines = fetch_build_log(cloud.logging_client(), PROJECT, build_id)
    assert any(
        line.startswith('Step #0 - "buildx": ')
        and line.endswith("RUN python3 -m pip install --no-cache-dir -r requirements.txt")
        for line in lines
    )
    assert 'Starting Step #0 - "buildx"' in lines and lines[-1] == "DONE"
    written = [
        e for e in sandbox_admin.logs() if e["resource"]["labels"].get("build_id") == build_id
    ]
    assert len(lines) == len(written)
    from shipyard.tasks.buildkit_log import parse_buildkit_log

    report = parse_buildkit_log(lines)
    assert report.steps and report.error is None
    assert sandbox_admin.calls()["build.create"] == 1


def test_cancel_while_working(sandbox_admin, cloud, app_repo, base_image, image_repository):
    sandbox_admin.reset(scenario_data={"builds": {"step_delay_ms": 1500}})
    client = cloud.builds_client()
    operation = client.create_build(
        project_id=PROJECT, build=_request(app_repo, base_image, image_repository)
    )
    build_id = operation.metadata.build.id
    assert _wait(client, build_id, {"WORKING"}).status == cb.Build.Status.WORKING
    cancelled = client.cancel_build(project_id=PROJECT, id=build_id)
    assert cancelled.status == cb.Build.Status.CANCELLED
    with pytest.raises(gexc.GoogleAPICallError, match="cancelled"):
        operation.result(timeout=30, polling=FAST_POLL)
    assert sandbox_admin.get("/_sandbox/builds")[build_id]["history"][-1] == "CANCELLED"


def test_a_step_the_executor_does_not_understand_fails_the_build(
    sandbox_admin, cloud, app_repo, base_image, image_repository
):
    client = cloud.builds_client()
    operation = client.create_build(
        project_id=PROJECT,
        build=_request(
            app_repo, base_image, image_repository, name="gcr.io/kaniko-project/executor"
        ),
    )
    with pytest.raises(gexc.GoogleAPICallError, match="Build failed"):
        operation.result(timeout=60, polling=FAST_POLL)
    build = client.get_build(project_id=PROJECT, id=operation.metadata.build.id)
    assert build.status == cb.Build.Status.FAILURE
    assert build.failure_info.type_ == cb.Build.FailureInfo.FailureType.USER_BUILD_STEP
    assert 'build step 0 "gcr.io/kaniko-project/executor" failed' in build.status_detail
    assert "gcr.io/cloud-builders/docker" in build.status_detail


def test_a_broken_dockerfile_fails_like_buildkit(
    sandbox_admin, cloud, app_repo, base_image, image_repository
):
    app_repo.edit("Dockerfile", "\nRUNN echo typo\n", "break the Dockerfile")
    client = cloud.builds_client()
    operation = client.create_build(
        project_id=PROJECT, build=_request(app_repo, base_image, image_repository)
    )
    with pytest.raises(gexc.GoogleAPICallError):
        operation.result(timeout=60, polling=FAST_POLL)
    from shipyard.tasks.buildkit_log import parse_buildkit_log
    from shipyard.tasks.cloud_build import fetch_build_log

    build_id = operation.metadata.build.id
    report = parse_buildkit_log(fetch_build_log(cloud.logging_client(), PROJECT, build_id))
    assert report.error is not None and "unknown instruction: RUNN" in report.error
    assert (
        "step exited with non-zero status"
        in client.get_build(project_id=PROJECT, id=build_id).status_detail
    )


def test_invalid_requests_are_rejected_with_the_field(
    sandbox_admin, cloud, app_repo, base_image, image_repository
):
    client = cloud.builds_client()
    request = _request(app_repo, base_image, image_repository)
    request.options.disk_size_gb = 5000
    with pytest.raises(gexc.BadRequest, match="diskSizeGb 5000"):
        client.create_build(project_id=PROJECT, build=request)
    # A mistyped builds key is refused when the scenario loads (606e11e), naming the key.
    with pytest.raises(ValueError, match=r"builds\.fail_stepp"):
        sandbox_admin.reset(scenario_data={"builds": {"fail_stepp": "x"}})
    with pytest.raises(gexc.NotFound):
        client.get_build(project_id=PROJECT, id="no-such-build")


@pytest.mark.parametrize(
    "machine_type",
    [cb.BuildOptions.MachineType.E2_MEDIUM, cb.BuildOptions.MachineType.E2_STANDARD_2],
)
def test_enum_options_keep_the_proto_numbers(
    sandbox_admin, cloud, app_repo, base_image, image_repository, machine_type
):
    """The REST client sends enums as numbers: E2_MEDIUM = 7, E2_STANDARD_2 = 11,
    CLOUD_LOGGING_ONLY = 5 (google/devtools/cloudbuild/v1/cloudbuild.proto). The build
    comes back with the same options, not the names at those list positions."""
    sandbox_admin.reset(scenario_data={"builds": {"queue_ms": 60000}})
    client = cloud.builds_client()
    request = _request(app_repo, base_image, image_repository)
    request.options.machine_type = machine_type
    operation = client.create_build(project_id=PROJECT, build=request)
    build = client.get_build(project_id=PROJECT, id=operation.metadata.build.id)
    client.cancel_build(project_id=PROJECT, id=build.id)
    assert build.options.machine_type == machine_type
    assert build.options.logging == cb.BuildOptions.LoggingMode.CLOUD_LOGGING_ONLY
