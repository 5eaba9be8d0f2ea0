"""A Cloud Build submission whose answer is lost after Google accepted it is not submitted a
second time: the retried attempt finds the build by its unique submission tag."""

from __future__ import annotations

from prefect import flow
from test_cloud_build_api import _request  # the same small build request

from shipyard.blocks.build_settings import BuildSettings
from shipyard.flows.build.cloud_build_run import SUBMISSION_PREFIX, run_cloud_build


def test_lost_answer_to_create_build_does_not_start_a_second_build(
    sandbox_admin, cloud, app_repo, base_image, image_repository
):
    # The first Cloud Build request (the create) is carried out, then its answer is lost.
    sandbox_admin.reset(
        scenario_data={"apis": {"build": {"first_n": 1, "error_codes": ["lost_answer"]}}}
    )
    settings = BuildSettings(image_repository=image_repository, poll_s=0.05, timeout_s=120)

    @flow
    def submit() -> str:
        return run_cloud_build(
            cloud, settings, _request(app_repo, base_image, image_repository), "t"
        ).build_id

    build_id = submit()

    builds = sandbox_admin.get("/_sandbox/builds")
    assert sandbox_admin.calls()["fault.build"] == 1
    assert list(builds) == [build_id], "a second build was started"
    assert builds[build_id]["history"][-1] == "SUCCESS"
    listed = list(
        cloud.builds_client().list_builds(
            project_id=cloud.resolved_project(), filter=f'tags="{SUBMISSION_PREFIX}"'
        )
    )
    assert listed == []  # the filter matches a whole tag, not a prefix
