"""Releases on real containers: the page service (examples/page-service, copied into a git
repository of its own, as a team would rehearse its service) is built on the mirrored Debian base
through its cache tiers by the sandbox's Cloud Build, deployed as a container and judged by the
canary. Each fault comes from the revision's env (`PAGE_FAULTS`, read by the service itself): a
crash at start and a server that never listens on $PORT never get traffic, an instance that grows
past its memory limit is killed by the kernel; each release rolls back with Google's message.
Then the tiers: prewarm again → every step CACHED; a dependency file change → its tier and the
ones above rebuild, the one below does not.

One module, so the base, the tiers and the first release are built once (module fixtures); the
tests run in file order and the last one changes the repository.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from engine_kit import GitRepo, build_log

# The module's first test also pays for the tiers and the first release (its fixtures): ~2 min
# on an idle 2-core machine, several times that under load; pytest-timeout counts setup too.
pytestmark = pytest.mark.timeout(900)

PAGE_SERVICE = Path(__file__).resolve().parents[2] / "examples" / "page-service"
TOKEN_BLOCK = "shipyard-runtime-internal-token"
BUILD_BLOCK = "shipyard-runtime-build"
SERVICE = "page-rehearsal"
REGION = "europe-west1"
# Far apart, so the canary's speed-up verdict does not depend on the machine's load.
SERVING = {"gpu_ms": 5, "cpu_ms": 400}


def _service_files() -> dict[str, str]:
    return {
        str(path.relative_to(PAGE_SERVICE)): path.read_text()
        for path in sorted(PAGE_SERVICE.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


@dataclass
class Rehearsal:
    repo: GitRepo
    commit: str
    base_repository: str
    image_repository: str
    token: str
    warmed: object  # PrewarmResult of the first prewarm


@pytest.fixture(scope="module")
def rehearsal(engine_session, tmp_path_factory):
    """The service's own repository, the base mirrored (pin recorded), the tiers prewarmed."""
    from prefect.blocks.system import Secret

    from blocks.build_settings import BuildSettings
    from flows.mirror import mirror_base_image
    from flows.prewarm import prewarm_cache_tiers
    from sandbox.engine.rootfs import ensure_rootfs
    from sandbox.seed import UPSTREAM_REPOSITORY, UPSTREAM_TAG, seed_cuda_image

    repo = GitRepo(tmp_path_factory.mktemp("rehearsal") / "page-service", _service_files())
    commit = repo.write({"README.md": "the page service, rehearsed\n"})
    token = "tok-" + secrets.token_hex(12)
    Secret(value=token).save(TOKEN_BLOCK, overwrite=True)
    host = engine_session.registry_host
    with engine_session.env_applied():
        upstream = seed_cuda_image(
            engine_session.registry_url, UPSTREAM_REPOSITORY, UPSTREAM_TAG, rootfs=ensure_rootfs()
        )
        base_repository = f"{host}/rehearsal-base/cuda"
        asyncio.run(mirror_base_image(upstream.ref, base_repository))
        settings = BuildSettings(
            image_repository=f"{host}/rehearsal/page-service",
            base_repository=base_repository,
            git_url=repo.url,
            source_dir=".",
            poll_s=0.05,
            timeout_s=600,
        )
        settings.save(BUILD_BLOCK, overwrite=True)
        warmed = prewarm_cache_tiers(revision=commit, settings_block=BUILD_BLOCK)
    yield Rehearsal(
        repo, commit, base_repository, settings.resolved_image_repository(), token, warmed
    )


@pytest.fixture
def cloud_admin(engine_sandbox):
    """The engine sandbox's admin client (the environment points at the sandbox meanwhile)."""
    from sandbox.admin import SandboxAdmin

    admin = SandboxAdmin(engine_sandbox.emulator_url)
    yield admin
    admin.close()


def _target(rehearsal: Rehearsal, **gpu):
    from blocks.release_target import SecretEnv
    from deployments.release_demo import sandbox_target

    target = sandbox_target(
        service=SERVICE,
        regions=[REGION],
        base_image=rehearsal.base_repository,
        build_settings_block=BUILD_BLOCK,
    )
    secret_env = {"INTERNAL_TOKEN": SecretEnv(secret=TOKEN_BLOCK)}
    return target.model_copy(
        update={
            "gpu_template": target.gpu_template.model_copy(
                update={"secret_env": secret_env, **gpu}
            ),
            "cpu_template": target.cpu_template.model_copy(update={"secret_env": secret_env}),
            "canary": target.canary.model_copy(update={"token_secret": TOKEN_BLOCK}),
        }
    )


def _release(rehearsal: Rehearsal, tag: str, **gpu):
    from flows.release import run_release

    return run_release(tag, _target(rehearsal, **gpu), commit=rehearsal.commit)


def _service_name() -> str:
    from blocks.cloud import GoogleCloud

    return f"projects/{GoogleCloud().resolved_project()}/locations/{REGION}/services/{SERVICE}"


def _serving() -> dict[str, int]:
    """revision short name -> percent, from what the service reports it serves."""
    from blocks.cloud import GoogleCloud

    service = GoogleCloud().services_client().get_service(name=_service_name())
    return {s.revision.rsplit("/", 1)[-1]: s.percent for s in service.traffic_statuses if s.percent}


def _revision_with(fault: str) -> str:
    """The short name of the service's newest revision whose env carries `fault`."""
    from blocks.cloud import GoogleCloud

    revisions = GoogleCloud().revisions_client().list_revisions(parent=_service_name())
    matching = [
        r
        for r in revisions
        if any(e.name == "PAGE_FAULTS" and e.value == fault for e in r.containers[0].env)
    ]
    assert matching, f"no revision of {SERVICE} runs with PAGE_FAULTS={fault}"
    return max(matching, key=lambda r: r.create_time).name.rsplit("/", 1)[-1]


def _revision_lines(cloud_admin, revision: str, wait_for: str = "") -> list[str]:
    deadline = time.monotonic() + 30
    while True:
        lines = [
            str(e.get("textPayload") or e.get("jsonPayload", {}).get("message", ""))
            for e in cloud_admin.logs()
            if e.get("resource", {}).get("labels", {}).get("revision_name") == revision
        ]
        if not wait_for or any(wait_for in line for line in lines):
            return lines
        if time.monotonic() > deadline:
            return lines
        time.sleep(0.2)


@pytest.fixture(scope="module")
def first_release(rehearsal, engine_session):
    """v1.0.0 released on the healthy sandbox: the last good revision the faults fall back to."""
    from sandbox.admin import SandboxAdmin
    from sandbox.scenario import load_scenario

    data = load_scenario("healthy").model_dump()
    data["serving"] = {**data["serving"], **SERVING}
    data["secrets"] = {**data.get("secrets", {}), TOKEN_BLOCK: rehearsal.token}
    admin = SandboxAdmin(engine_session.emulator_url)
    try:
        with engine_session.env_applied():
            admin.reset(scenario_data=data)
            result = _release(rehearsal, "v1.0.0")
    finally:
        admin.close()
    return result


def test_the_release_builds_deploys_a_container_that_answers_the_canary_and_cuts_over(
    first_release, rehearsal, cloud_admin
):
    result = first_release
    assert result.outcome == "released", result.reasons
    assert result.build is not None and not result.build.reused
    assert result.build.hit_rate > 0.5  # the tiers served the dependency steps
    assert result.image and result.image.startswith(rehearsal.image_repository)
    assert result.canary is not None and result.canary.passed
    assert _serving() == {result.revision: 100}
    # The container itself started and served the canary's pages (its own stdout).
    lines = _revision_lines(cloud_admin, result.revision, wait_for="page done")
    assert any("page service starting: device=gpu" in line for line in lines), lines
    assert any("page done" in line for line in lines)


@pytest.mark.parametrize(
    ("tag", "fault", "gpu", "probe_says", "service_says"),
    [
        (
            "v1.0.1",
            "crash_at_start",
            {},  # Cloud Run's default probe; the container exits long before its 240 s
            "Default STARTUP TCP probe failed 1 time consecutively for container ",
            "cannot open shared object file",
        ),
        (
            "v1.0.2",
            "never_ready",
            {"startup_probe_s": 3},  # the target's own probe: 3 s, not 240
            "STARTUP TCP probe failed 1 time consecutively for container ",
            None,  # under load, 3 s may pass before the service even prints its first line
        ),
    ],
    ids=["crashes at start", "never listens on PORT"],
)
def test_a_revision_that_does_not_start_never_gets_traffic_and_the_release_rolls_back(
    first_release, rehearsal, cloud_admin, tag, fault, gpu, probe_says, service_says
):
    from sandbox.release_invariants import all_violations

    good = first_release.revision
    result = _release(rehearsal, tag, env={"PAGE_FAULTS": fault}, **gpu)
    assert result.outcome == "rolled_back", result.reasons
    assert _serving() == {good: 100}
    reasons = " ".join(result.reasons)
    assert "failed to start and listen on the port defined provided by the PORT=8080" in reasons
    assert all_violations(cloud_admin.traffic_history(SERVICE), [first_release, result]) == []
    # Google's lines in the failed revision's system log, and the service's own last words.
    lines = _revision_lines(cloud_admin, _revision_with(fault), wait_for=service_says or probe_says)
    assert any(line.startswith(probe_says) for line in lines), lines
    if service_says:
        assert any(service_says in line for line in lines), lines


def test_an_instance_past_its_memory_limit_is_killed_and_the_release_rolls_back(
    first_release, rehearsal, cloud_admin
):
    from sandbox.release_invariants import all_violations

    good = first_release.revision
    result = _release(rehearsal, "v1.0.3", env={"PAGE_FAULTS": "oom"})
    assert result.outcome == "rolled_back", result.reasons
    assert _serving() == {good: 100}
    assert all_violations(cloud_admin.traffic_history(SERVICE), [first_release, result]) == []
    reasons = " ".join(result.reasons)
    assert "Memory limit of" in reasons and "MiB exceeded with" in reasons, reasons
    oom_lines = [
        str(e.get("textPayload", ""))
        for e in cloud_admin.logs()
        if e.get("logName", "").endswith("varlog%2Fsystem")
        and e.get("resource", {}).get("labels", {}).get("service_name") == SERVICE
    ]
    assert any(line.startswith("Memory limit of ") for line in oom_lines), oom_lines
    assert "Container terminated on signal 9." in oom_lines


def _tier_report(build_id: str):
    from tasks.buildkit_log import parse_buildkit_log

    return parse_buildkit_log(build_log(build_id))


def test_prewarm_again_finds_every_step_cached(rehearsal, engine_sandbox):
    from flows.prewarm import prewarm_cache_tiers

    again = prewarm_cache_tiers(revision=rehearsal.commit, settings_block=BUILD_BLOCK)
    assert [t.action for t in again.tiers] == ["skipped"] * len(again.tiers)
    forced = prewarm_cache_tiers(force=True, revision=rehearsal.commit, settings_block=BUILD_BLOCK)
    for tier in forced.tiers:
        assert tier.action == "built" and tier.build_id
        report = _tier_report(tier.build_id)
        assert report.counted and report.run == 0, (tier.tier, report.by_stage())
        assert report.hit_rate == 1.0
        first = next(t for t in rehearsal.warmed.tiers if t.tier == tier.tier)
        assert tier.digest == first.digest  # the same image, nothing rebuilt


def test_a_dependency_change_rebuilds_its_tier_and_the_ones_above_only(rehearsal, engine_sandbox):
    from flows.prewarm import prewarm_cache_tiers

    requirements = (PAGE_SERVICE / "requirements.txt").read_text()
    commit = rehearsal.repo.write(
        {"requirements.txt": requirements + "# rehearsal: a dependency change\n"}
    )
    changed = prewarm_cache_tiers(revision=commit, settings_block=BUILD_BLOCK)
    assert {t.tier: t.action for t in changed.tiers} == {
        "base": "skipped",
        "python": "built",
        "node": "built",
    }
    python = _tier_report(changed.tiers[1].build_id).by_stage()
    assert python["base"]["RUN"] == 0 and python["base"]["CACHED"] >= 1
    assert python["python-deps"]["RUN"] >= 1  # pip install ran again, for real
    node = _tier_report(changed.tiers[2].build_id).by_stage()
    assert node["python-deps"]["RUN"] == 0  # reused from the tier just built
    assert node["node-deps"]["RUN"] >= 1
