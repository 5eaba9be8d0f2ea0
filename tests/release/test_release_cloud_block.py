"""One GoogleCloud block for a release: the build runs in the project (and with the identity) of
the target's `cloud` block, like the deploy, not with whatever the environment says."""

from __future__ import annotations

import pytest

from shipyard.blocks.cloud import GoogleCloud

pytestmark = pytest.mark.slow

TARGET_PROJECT = "shipyard-target-project"


def test_release_builds_in_the_target_cloud_blocks_project(
    stage, make_target, sandbox, sandbox_admin, app_build, pinned_base
):
    from shipyard.flows.release.flow import ReleaseError

    # The build fails at once (cheap): only where it was submitted matters here.
    stage(builds={"fail_step": "[base", "message": "No space left on device"})
    settings_block, repo = app_build
    repo.tag("v11.0.0")
    cloud = GoogleCloud(endpoint=sandbox.emulator_url, project=TARGET_PROJECT)
    target = make_target(base_image=pinned_base, build_settings_block=settings_block, cloud=cloud)
    target.save(target.service, overwrite=True)

    with pytest.raises(ReleaseError, match=r"build of v11\.0\.0 failed"):
        release_saved(target.service)

    assert sandbox_admin.calls()["build.create"] == 1
    builds = cloud.builds_client().list_builds(project_id=TARGET_PROJECT)
    assert [b.project_id for b in builds] == [TARGET_PROJECT]


def release_saved(name: str):
    """The release of a saved target, as a deployment run or `shipyard release --target` loads it."""
    from shipyard.blocks.release_target import ReleaseTarget
    from shipyard.flows.release.flow import release

    return release("v11.0.0", ReleaseTarget.load(name))
