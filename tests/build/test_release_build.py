"""The release build on the sandbox: cache-tier hits, reuse of a built commit, failures surfaced."""

from __future__ import annotations

import datetime as dt

import pytest

from shipyard.flows.build.cloud_build_run import BuildFailedError
from shipyard.flows.build.flow import build_release_image
from shipyard.flows.build.prewarm import prewarm_cache_tiers

# Each test runs several flows and Cloud Builds (10-15 s each on a loaded machine).
pytestmark = pytest.mark.slow

TIER_STAGES = {"base", "python-deps", "node-deps"}
APP_STAGES = {"builder", "runtime"}


def test_build_after_prewarm_runs_only_app_steps_and_a_second_build_submits_nothing(
    sandbox_admin, app_repo, settings_block, image_repository, base_image
):
    prewarm_cache_tiers(
        base_image=base_image, settings_block=settings_block, run_date=dt.date(2026, 11, 23)
    )
    assert sandbox_admin.calls()["build.create"] == 3

    first = build_release_image(
        "v1.0.0", app_repo.head(), base_image=base_image, settings_block=settings_block
    )
    assert not first.reused and first.build_id
    assert first.image == f"{image_repository}@{first.digest}"
    by_stage: dict[str, set[str]] = {}
    for step in first.steps:
        if not step.instruction.startswith("FROM "):
            by_stage.setdefault(step.stage, set()).add(step.status)
    assert set(by_stage) == TIER_STAGES | APP_STAGES
    assert all(by_stage[s] == {"CACHED"} for s in TIER_STAGES), by_stage
    assert all(by_stage[s] == {"RUN"} for s in APP_STAGES), by_stage
    assert first.cached_steps == 6 and first.run_steps == 4
    assert first.hit_rate == pytest.approx(0.6)
    assert first.pull_bytes > 0  # no previous image: a deploy host pulls everything

    # A new commit that touches the app only: the deploy pulls the app layers, not the tiers.
    second_commit = app_repo.edit("app/main.py", "\n# a comment\n", "touch the app")
    second = build_release_image(
        "v1.0.1", second_commit, base_image=base_image, settings_block=settings_block
    )
    assert second.previous_image == first.image
    assert 0 < second.pull_bytes < first.pull_bytes
    assert second.pull_warning is None
    assert {s.stage for s in second.steps if s.status == "RUN"} == APP_STAGES
    assert sandbox_admin.calls()["build.create"] == 5

    again = build_release_image(
        "v1.0.1", second_commit, base_image=base_image, settings_block=settings_block
    )
    assert again.reused and again.digest == second.digest and again.build_id is None
    retag = build_release_image(
        "v1.0.1-rc", second_commit, base_image=base_image, settings_block=settings_block
    )
    assert retag.reused and retag.digest == second.digest
    assert sandbox_admin.calls()["build.create"] == 5  # nothing submitted twice


def test_a_failing_build_step_fails_the_flow_with_the_step_and_the_message(
    sandbox_admin, app_repo, settings_block, base_image
):
    sandbox_admin.reset(
        scenario_data={"builds": {"fail_step": "[builder", "message": "No space left on device"}}
    )
    with pytest.raises(BuildFailedError) as failed:
        build_release_image(
            "v2.0.0", app_repo.head(), base_image=base_image, settings_block=settings_block
        )
    err = failed.value
    assert err.step.startswith("[builder 2/3] COPY app/")
    assert "No space left on device" in str(err)
    assert "FAILURE" in str(err) and "last log lines" in str(err)
    assert "build step 1" in str(err)  # Cloud Build's statusDetail names its step


def test_a_rejected_build_request_surfaces_the_message(
    sandbox_admin, app_repo, settings_block, base_image
):
    sandbox_admin.reset(
        scenario_data={"builds": {"reject_message": "invalid build: options.machineType quota"}}
    )
    with pytest.raises(BuildFailedError, match=r"refused the build request.*machineType quota"):
        build_release_image(
            "v3.0.0", app_repo.head(), base_image=base_image, settings_block=settings_block
        )


def test_an_unpinned_base_image_is_refused_before_any_build(
    sandbox_admin, app_repo, settings_block
):
    with pytest.raises(Exception, match="not pinned by digest"):
        build_release_image(
            "v4.0.0",
            app_repo.head(),
            base_image="127.0.0.1:1/base-images/cuda:12.1.1",
            settings_block=settings_block,
        )
    assert sandbox_admin.calls().get("build.create", 0) == 0


def test_a_rerun_while_the_killed_runs_build_still_runs_follows_it_instead_of_building_twice(
    sandbox_admin, app_repo, settings_block, base_image
):
    """A release killed mid-build leaves its Cloud Build running; the re-run for the same commit
    follows that build (found by its commit tag) and submits nothing.

    The sandbox holds the build QUEUED (scenario `builds.hold`) until the re-run has looked for it
    (its Cloud Build list call), then lets it go: the build cannot end before the re-run looks,
    however loaded the machine (it used to, under load: the re-run then reused the pushed image,
    build_id None, instead of following the build)."""
    import threading
    from typing import Any

    from shipyard.tasks.waiting import Deadline, NotYet, wait_for

    sandbox_admin.reset(scenario_data={"builds": {"hold": True}})
    commit = app_repo.head()
    images: dict[str, Any] = {}
    errors: list[BaseException] = []

    def run(name: str) -> None:  # "killed" stands for the run that died: its build goes on
        try:
            images[name] = build_release_image(
                "v4.0.0", commit, base_image=base_image, settings_block=settings_block
            )
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread, re-raised there
            errors.append(exc)

    def counted(name: str, above: int) -> int:
        now = sandbox_admin.calls().get(name, 0)
        if now > above or errors:
            return now
        raise NotYet(f"{name}: {now}")

    threads = {name: threading.Thread(target=run, args=(name,)) for name in ("killed", "rerun")}
    try:
        threads["killed"].start()
        wait_for(
            lambda: counted("build.create", 0),
            what="the killed run's build submitted",
            first_delay_s=0.05,
            max_delay_s=0.5,
            deadline=Deadline(120),
        )
        looked_before = sandbox_admin.calls().get("build.list", 0)
        threads["rerun"].start()
        wait_for(
            lambda: counted("build.list", looked_before),
            what="the re-run's look for a running build",
            first_delay_s=0.05,
            max_delay_s=0.5,
            deadline=Deadline(120),
        )
        assert not errors, errors
        # The build is still held: the re-run cannot be done, it waits for that build.
        assert threads["rerun"].is_alive()
        assert sandbox_admin.release_builds()["held"] == 1
    finally:
        sandbox_admin.release_builds()  # never leave a thread following a held build
        for thread in threads.values():
            if thread.ident is not None:  # started
                thread.join(timeout=300)
    if errors:
        raise errors[0]

    assert sandbox_admin.calls()["build.create"] == 1  # one build for the commit
    assert images["rerun"].build_id is not None  # followed, not reused
    assert images["killed"].build_id == images["rerun"].build_id
    assert images["rerun"].digest == images["killed"].digest
