"""Releases on real containers: the page service (examples/page-service, copied into a git
repository of its own, as a team would rehearse its service) is built on the mirrored Debian base
through its cache tiers, deployed as a container and judged by the canary. Each fault comes from
the revision's env (`PAGE_FAULTS`, read by the service itself): a crash at start and a server
that never listens on $PORT never get traffic, an instance that grows past its memory limit is
killed by the kernel; each release rolls back with Google's message. Then the tiers: prewarm
again → every step CACHED; a dependency file change → its tier and the ones above rebuild, the
ones below do not.

Twice, once per build backend (`variant`): the sandbox's Cloud Build, then the local Docker
backend (BuildSettings.backend = "docker": prefect-docker's DockerHost = the sandbox's dockerd,
pushing with DockerRegistryCredentials). The variants share the repository, the mirrored base and
the tiers the first prewarm built (one daemon, one build cache: building them again would only
hit that cache); the Docker variant releases a commit with its own code change, so the release's
code layer really runs through the Docker backend, and its requirements change runs pip again
there. Each fault runs once, on one variant: a fault release reuses its variant's image, so the
backend builds nothing for it.

One module, so the base, the tiers and each variant's first release are built once (module
fixtures, grouped by variant); the tests run in file order and the last one changes the
repository.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from engine_kit import GitRepo
from secrets_scan_kit import remember

# The module's first test also pays for the tiers and the first release (its fixtures): ~2 min
# on an idle 2-core machine, several times that under load; pytest-timeout counts setup too.
pytestmark = pytest.mark.timeout(900)

PAGE_SERVICE = Path(__file__).resolve().parents[2] / "examples" / "page-service"
TOKEN_BLOCK = "shipyard-runtime-internal-token"
BUILD_BLOCK = "shipyard-runtime-build"
DOCKER_BUILD_BLOCK = "shipyard-runtime-build-docker"
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


@dataclass
class Variant:
    """One build backend's run of the group: its settings block, the commit it releases, the
    major version of its tags."""

    backend: str
    settings_block: str
    commit: str
    major: int
    # The dependency file its last test changes. Which tiers rebuild is the prewarm flow's
    # choice, the same for both backends: the Docker variant changes requirements.txt (python
    # and node rebuilt, pip really runs on the Docker backend), the Cloud Build one package.json
    # (node rebuilt, python and base not), so the group pays for one more pip install, not two.
    dependency_file: str

    def tag(self, patch: int) -> str:
        return f"v{self.major}.0.{patch}"


@pytest.fixture(scope="module")
def rehearsal(engine_session, engine_upstream, tmp_path_factory):
    """The service's own repository, the base mirrored (pin recorded), the tiers prewarmed."""
    from prefect.blocks.system import Secret

    from shipyard.blocks.build_settings import BuildSettings
    from shipyard.flows.build.prewarm import prewarm_cache_tiers
    from shipyard.flows.mirror.flow import mirror_base_image

    repo = GitRepo(tmp_path_factory.mktemp("rehearsal") / "page-service", _service_files())
    commit = repo.write({"README.md": "the page service, rehearsed\n"})
    token = remember("rehearsal internal token", "tok-" + secrets.token_hex(12))
    Secret(value=token).save(TOKEN_BLOCK, overwrite=True)
    host = engine_session.registry_host
    with engine_session.env_applied():
        base_repository = f"{host}/rehearsal-base/cuda"
        asyncio.run(mirror_base_image(engine_upstream.ref, base_repository))
        settings = BuildSettings(
            image_repository=f"{host}/rehearsal/page-service",
            base_repository=base_repository,
            git_url=repo.url,
            source_dir=".",
            poll_s=0.05,
            timeout_s=600,
        )
        settings.save(BUILD_BLOCK, overwrite=True)
        prewarm_cache_tiers(revision=commit, settings_block=BUILD_BLOCK)
    yield Rehearsal(repo, commit, base_repository, settings.resolved_image_repository(), token)


def _docker_settings(engine_session) -> None:
    """The Cloud Build settings with the Docker backend: the sandbox's dockerd through
    prefect-docker's DockerHost, pushing with DockerRegistryCredentials, RUN on the host network
    (the daemon has no bridge), the daemon's own Dockerfile frontend (it cannot pull one)."""
    from prefect_docker import DockerHost, DockerRegistryCredentials

    from shipyard.blocks.build_settings import BuildSettings

    cloud_build = BuildSettings.load(BUILD_BLOCK)
    cloud_build.model_copy(
        update={
            "backend": "docker",
            "docker_host": DockerHost(base_url=engine_session.docker_host),
            "docker_registry_credentials": DockerRegistryCredentials(
                username="rehearsal",
                password=remember("docker registry password", "pw-" + secrets.token_hex(8)),
                registry_url=engine_session.registry_host,
            ),
            "docker_network": "host",
            "docker_builtin_frontend": True,
        }
    ).save(DOCKER_BUILD_BLOCK, overwrite=True)


@pytest.fixture(scope="module", params=["cloud-build", "docker"])
def variant(request, rehearsal, engine_session) -> Variant:
    """The build backend the tests of one pass use (pytest runs all of a variant's tests, in
    file order, before the next variant's)."""
    if request.param == "cloud-build":
        return Variant("cloud-build", BUILD_BLOCK, rehearsal.commit, 1, "package.json")
    # The Docker variant's own code change: its release builds the code layer for real (the
    # tiers below it are the ones the Cloud Build variant left, still current).
    main = (PAGE_SERVICE / "app" / "main.py").read_text()
    commit = rehearsal.repo.write({"app/main.py": main + "# released with the Docker backend\n"})
    with engine_session.env_applied():
        _docker_settings(engine_session)
    return Variant("docker", DOCKER_BUILD_BLOCK, commit, 2, "requirements.txt")


@pytest.fixture
def cloud_admin(engine_sandbox):
    """The engine sandbox's admin client (the environment points at the sandbox meanwhile)."""
    from sandbox.admin import SandboxAdmin

    admin = SandboxAdmin(engine_sandbox.emulator_url)
    yield admin
    admin.close()


def _target(rehearsal: Rehearsal, variant: Variant, canary: dict | None = None, **gpu):
    from shipyard.blocks.revision_templates import SecretEnv
    from shipyard.deployments.demo.run import sandbox_target

    target = sandbox_target(
        service=SERVICE,
        regions=[REGION],
        base_image=rehearsal.base_repository,
        build_settings_block=variant.settings_block,
    )
    secret_env = {"INTERNAL_TOKEN": SecretEnv(secret=TOKEN_BLOCK)}
    return target.model_copy(
        update={
            "gpu_template": target.gpu_template.model_copy(
                update={"secret_env": secret_env, **gpu}
            ),
            "cpu_template": target.cpu_template.model_copy(update={"secret_env": secret_env}),
            "canary": target.canary.model_copy(
                update={"token_secret": TOKEN_BLOCK, **(canary or {})}
            ),
        }
    )


def _release(rehearsal: Rehearsal, variant: Variant, patch: int, canary: dict | None = None, **gpu):
    from shipyard.flows.release.flow import run_release

    target = _target(rehearsal, variant, canary, **gpu)
    rehearsal.repo.tag(variant.tag(patch), variant.commit)  # as a team pushes its release tag
    return run_release(variant.tag(patch), target, commit=variant.commit)


def _service_name() -> str:
    from shipyard.blocks.cloud import GoogleCloud

    return f"projects/{GoogleCloud().resolved_project()}/locations/{REGION}/services/{SERVICE}"


def _serving() -> dict[str, int]:
    """revision short name -> percent, from what the service reports it serves."""
    from shipyard.blocks.cloud import GoogleCloud

    service = GoogleCloud().services_client().get_service(name=_service_name())
    return {s.revision.rsplit("/", 1)[-1]: s.percent for s in service.traffic_statuses if s.percent}


def _revision_with(fault: str) -> str:
    """The short name of the service's newest revision whose env carries `fault`."""
    from shipyard.blocks.cloud import GoogleCloud

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
def first_release(rehearsal, variant, engine_session):
    """vN.0.0 released on a fresh healthy sandbox: the last good revision the faults fall back
    to."""
    from sandbox.admin import SandboxAdmin
    from sandbox.scenario import load_scenario

    data = load_scenario("healthy").model_dump()
    data["serving"] = {**data["serving"], **SERVING}
    data["secrets"] = {**data.get("secrets", {}), TOKEN_BLOCK: rehearsal.token}
    admin = SandboxAdmin(engine_session.emulator_url)
    try:
        with engine_session.env_applied():
            admin.reset(scenario_data=data)
            result = _release(rehearsal, variant, 0)
    finally:
        admin.close()
    return result


def test_the_release_builds_deploys_a_container_that_answers_the_canary_and_cuts_over(
    first_release, rehearsal, variant, cloud_admin
):
    result = first_release
    assert result.outcome == "released", result.reasons
    assert result.build is not None and not result.build.reused
    assert result.build.hit_rate > 0.5  # the tiers served the dependency steps
    assert result.build.run_steps >= 1  # the code layer was built, not found in a cache
    # The backend that built it: the Docker backend names its builds docker-<image id>.
    assert (result.build.build_id or "").startswith("docker-") == (variant.backend == "docker")
    assert result.image and result.image.startswith(rehearsal.image_repository)
    assert result.canary is not None and result.canary.passed
    assert _serving() == {result.revision: 100}
    # The container itself started and served the canary's pages (its own stdout).
    lines = _revision_lines(cloud_admin, result.revision, wait_for="page done")
    assert any("page service starting: device=gpu" in line for line in lines), lines
    assert any("page done" in line for line in lines)


@dataclass(frozen=True)
class StartFault:
    gpu: dict  # the GPU template's changes
    probe_says: str  # how Google's line in the revision's system log starts
    service_says: str | None  # the service's own last words, if it must have said them


START_FAULTS = {
    "crash_at_start": StartFault(
        {},  # Cloud Run's default probe; the container exits long before its 240 s
        "Default STARTUP TCP probe failed 1 time consecutively for container ",
        "cannot open shared object file",
    ),
    "never_ready": StartFault(
        {"startup_probe_s": 3},  # the target's own probe: 3 s, not 240
        "STARTUP TCP probe failed 1 time consecutively for container ",
        None,  # under load, 3 s may pass before the service even prints its first line
    ),
}


def _check_start_fault(rehearsal, variant, first_release, cloud_admin, fault: str) -> None:
    from sandbox.release_invariants import all_violations

    case = START_FAULTS[fault]
    good = first_release.revision
    result = _release(rehearsal, variant, 1, env={"PAGE_FAULTS": fault}, **case.gpu)
    assert result.outcome == "rolled_back", result.reasons
    assert result.build is not None and result.build.reused  # the first release's image
    assert _serving() == {good: 100}
    reasons = " ".join(result.reasons)
    assert "failed to start and listen on the port defined provided by the PORT=8080" in reasons
    assert all_violations(cloud_admin.traffic_history(SERVICE), [first_release, result]) == []
    # Google's lines in the failed revision's system log, and the service's own last words.
    waited = case.service_says or case.probe_says
    lines = _revision_lines(cloud_admin, _revision_with(fault), wait_for=waited)
    assert any(line.startswith(case.probe_says) for line in lines), lines
    if case.service_says:
        assert any(case.service_says in line for line in lines), lines


# Each fault once: a fault release reuses the image its variant's first release built (same
# commit), so which backend built it changes nothing in how the container fails. The Docker
# variant takes a crash at start and the OOM, the Cloud Build one the server that never listens.
@pytest.mark.parametrize("variant", ["cloud-build"], indirect=True)
def test_a_revision_that_never_listens_on_port_never_gets_traffic_and_the_release_rolls_back(
    first_release, rehearsal, variant, cloud_admin
):
    _check_start_fault(rehearsal, variant, first_release, cloud_admin, "never_ready")


@pytest.mark.parametrize("variant", ["docker"], indirect=True)
def test_a_revision_that_crashes_at_start_never_gets_traffic_and_the_release_rolls_back(
    first_release, rehearsal, variant, cloud_admin
):
    _check_start_fault(rehearsal, variant, first_release, cloud_admin, "crash_at_start")


@pytest.mark.parametrize("variant", ["docker"], indirect=True)
def test_an_instance_past_its_memory_limit_is_killed_and_the_release_rolls_back(
    first_release, rehearsal, variant, cloud_admin
):
    from sandbox.release_invariants import all_violations

    good = first_release.revision
    # One canary run: its first request already grows the instance past its limit (three
    # would only kill three instances the same way).
    result = _release(rehearsal, variant, 2, canary={"runs": 1}, env={"PAGE_FAULTS": "oom"})
    assert result.outcome == "rolled_back", result.reasons
    assert result.build is not None and result.build.reused
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


def test_prewarm_again_finds_every_step_cached(variant, engine_sandbox):
    from shipyard.flows.build.prewarm import prewarm_cache_tiers

    block = variant.settings_block
    again = prewarm_cache_tiers(revision=variant.commit, settings_block=block)
    assert [t.action for t in again.tiers] == ["skipped"] * len(again.tiers)
    forced = prewarm_cache_tiers(force=True, revision=variant.commit, settings_block=block)
    for tier in forced.tiers:
        assert tier.action == "built" and tier.build_id
        assert tier.build_id.startswith("docker-") == (variant.backend == "docker")
        # Every step of every stage CACHED in the build's own BuildKit log.
        assert tier.steps_by_stage and tier.hit_rate == 1.0, (tier.tier, tier.steps_by_stage)
        assert all(row["RUN"] == 0 for row in tier.steps_by_stage.values())
        found = next(t for t in again.tiers if t.tier == tier.tier)
        assert tier.size == found.size  # the same layers as the image found, nothing rebuilt


def _dependency_change(name: str, backend: str) -> str:
    """The file `name` of the page service with a change that keeps it valid."""
    text = (PAGE_SERVICE / name).read_text()
    if name == "package.json":
        data = json.loads(text)
        data["description"] += f" Changed in a rehearsal ({backend} backend)."
        return json.dumps(data, indent=2) + "\n"
    return text + f"# rehearsal: a dependency change ({backend} backend)\n"


def test_a_dependency_change_rebuilds_its_tier_and_the_ones_above_only(
    rehearsal, variant, engine_sandbox
):
    from shipyard.flows.build.prewarm import prewarm_cache_tiers

    name = variant.dependency_file
    commit = rehearsal.repo.write({name: _dependency_change(name, variant.backend)})
    changed = prewarm_cache_tiers(revision=commit, settings_block=variant.settings_block)
    tiers = [t.tier for t in changed.tiers]
    assert tiers == ["base", "python", "node"]
    first = {"requirements.txt": "python", "package.json": "node"}[name]
    rebuilt = tiers[tiers.index(first) :]
    assert {t.tier: t.action for t in changed.tiers} == {
        t: "built" if t in rebuilt else "skipped" for t in tiers
    }
    for i, tier in enumerate(changed.tiers):
        if tier.tier not in rebuilt:
            continue
        assert tier.build_id and tier.build_id.startswith("docker-") == (
            variant.backend == "docker"
        )
        steps = tier.steps_by_stage
        assert steps[tier.target]["RUN"] >= 1, steps  # its own install ran again, for real
        for below in changed.tiers[:i]:  # unchanged, or just rebuilt: reused, never run again
            assert steps[below.target]["RUN"] == 0 and steps[below.target]["CACHED"] >= 1, steps
