"""Session-wide fixtures: one real Prefect server per test session, an isolated PREFECT_HOME,
the sandbox; for tests that release: the internal token as a Prefect Secret block, scenarios
staged on the session sandbox with fast serving, and release targets tuned for a local cloud
(short retry delays and polls: the code paths are the production ones, only the waits are
shorter)."""

from __future__ import annotations

import copy
import os
import re
import secrets
import tempfile
from pathlib import Path

import pytest
import secrets_scan_kit

_HOME = tempfile.mkdtemp(prefix="shipyard-test-prefect-")
os.environ.setdefault("PREFECT_HOME", _HOME)
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("SHIPYARD_HOME", tempfile.mkdtemp(prefix="shipyard-test-home-"))


_ENGINE_GROUP = "tests/runtime/"
# The modules on the fleet's PostgreSQL stack (tests/fleet/stack_kit.py): one worker, so one
# PostgreSQL + Prefect server (and one Docker daemon with the worker image) serves them all.
_POSTGRES_GROUP = (
    "tests/fleet/test_postgres_stack.py",
    "tests/fleet/test_docker_pool_fleet.py",
    "tests/fleet/test_docker_pool_promotion.py",
    "tests/fleet/test_fleet_concurrency.py",
)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Workers get whole modules (`make test`: `--dist loadgroup --no-loadscope-reorder`),
    except the container engine group: all of tests/runtime goes to one worker, so one Docker
    daemon and one set of built tiers serve the whole group instead of one per worker. The group
    is collected first so that its long run starts at once, beside the rest of the suite on the
    other worker."""
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        group = "runtime" if path.startswith(_ENGINE_GROUP) else path
        if path in _POSTGRES_GROUP:
            group = "fleet-postgres"
        item.add_marker(pytest.mark.xdist_group(group))
    # The two long groups first (the engine's, then the PostgreSQL stack's), each on a worker.
    items.sort(
        key=lambda item: (
            0
            if item.nodeid.startswith(_ENGINE_GROUP)
            else 1
            if item.nodeid.split("::", 1)[0] in _POSTGRES_GROUP
            else 2
        )
    )


class _GroupsApplied:
    """Fails the collection when `--dist loadgroup` silently ignores the groups above: with
    pytest 9, pytest-xdist 3.8 writes its `@group` suffix to an attribute pytest no longer reads,
    so every test was scheduled on its own and tests/runtime ran its daemon, base and tiers on both
    workers (pyproject pins pytest < 9 for that reason)."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config, items):
        if (
            getattr(config.option, "loadgroup", False)
            and items
            and not all("@" in item.nodeid for item in items)
        ):
            raise pytest.UsageError(
                "pytest-xdist did not apply the xdist_group markers (--dist loadgroup): "
                "tests/runtime would run on both workers; use a pytest that xdist supports "
                "(pyproject: pytest<9)"
            )


def pytest_configure(config):
    config.pluginmanager.register(_GroupsApplied(), "shipyard-groups-applied")


@pytest.fixture(scope="session", autouse=True)
def prefect_server():
    """A real Prefect server (temporary database) shared by the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session", autouse=True)
def no_secret_anywhere_at_the_end(prefect_server):
    """The secrets scan (tests/secrets_scan_kit.py) of everything this session's Prefect server
    and sandbox hold, once every test ran, for every secret a test registered: under `-n 2` each
    xdist worker is a session with its own server, so each scans the runs it held, and a hit
    fails the suite (an error at the teardown of the session's last test, naming the secret and
    where it was found, never its value). Torn down before the server it reads."""
    yield
    hits = secrets_scan_kit.session_scan()
    if hits:
        pytest.fail(
            "secrets scan at the end of the session (tests/secrets_scan_kit.py): a known "
            "secret was found in " + str(len(hits)) + " place(s):\n  " + "\n  ".join(hits),
            pytrace=False,
        )


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory):
    """The sandbox (real registry + emulator) on free loopback ports, one per session.

    Sets SHIPYARD_GOOGLE_ENDPOINT / SHIPYARD_REGISTRY_URL so the code under test uses it.
    """
    import httpx

    from sandbox.admin import SandboxAdmin
    from sandbox.manager import start_sandbox

    info = start_sandbox(root=tmp_path_factory.mktemp("sandbox"))
    secrets_scan_kit.remember_folder(Path(info.root))
    with info.env_applied():
        yield info
    # What the last test left in Cloud Logging (a reset clears it), for the end-of-session scan.
    admin = SandboxAdmin(info.emulator_url)
    try:
        secrets_scan_kit.remember_sandbox_logs(admin.logs())
    except httpx.HTTPError:
        pass  # an emulator that is gone holds no entries; its files are still scanned
    finally:
        admin.close()
        info.stop()


@pytest.fixture
def sandbox_admin(sandbox):
    """Admin client of the session sandbox, reset to the healthy scenario for each test."""
    from sandbox.admin import SandboxAdmin

    admin = SandboxAdmin(sandbox.emulator_url)
    admin.reset(scenario="healthy")
    yield admin
    admin.close()


@pytest.fixture
def cloud(sandbox):
    """The GoogleCloud block as a flow would build it: pointed at the sandbox by the environment."""
    from shipyard.blocks.cloud import GoogleCloud

    return GoogleCloud()


TOKEN_BLOCK = "shipyard-test-internal-token"
# Serving speeds: far apart, so the speed-up verdict does not depend on machine load.
FAST_SERVING = {"gpu_ms": 5, "cpu_ms": 300}


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@pytest.fixture(scope="session")
def internal_token(prefect_server) -> str:
    """The token the canary sends: a Prefect Secret block, and the sandbox's Secret Manager."""
    from prefect.blocks.system import Secret

    token = secrets_scan_kit.remember("internal token", "tok-" + secrets.token_hex(12))
    Secret(value=token).save(TOKEN_BLOCK, overwrite=True)
    return token


@pytest.fixture
def stage(sandbox_admin, internal_token):
    """stage(base="healthy", **overrides): reset the sandbox to a scenario file plus overrides."""
    from sandbox.scenario import load_scenario

    def _stage(base: str = "healthy", **overrides) -> dict:
        data = load_scenario(base).model_dump()
        data = _merge(data, {"serving": FAST_SERVING, "secrets": {TOKEN_BLOCK: internal_token}})
        data = _merge(data, overrides)
        sandbox_admin.reset(scenario_data=data)
        return data

    return _stage


@pytest.fixture
def make_target(request, sandbox):
    """make_target(**overrides): a ReleaseTarget for this test's own service name."""
    from shipyard.blocks.canary_policy import CanaryPolicy
    from shipyard.blocks.quota_policy import QuotaPolicy
    from shipyard.blocks.release_target import ReleaseTarget
    from shipyard.blocks.revision_templates import RevisionSpec, SecretEnv

    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")
    # At most 38: with the release's longest tag, "baseline", Cloud Run's 46 (blocks/names.py).
    service = ("pg-" + name.removeprefix("test-"))[:38].rstrip("-")

    def _make(**overrides) -> ReleaseTarget:
        secret_env = {"INTERNAL_TOKEN": SecretEnv(secret=TOKEN_BLOCK)}
        fields = dict(
            service=service,
            regions=["europe-west1", "us-central1"],
            gpu_template=RevisionSpec(secret_env=secret_env),
            cpu_template=RevisionSpec(
                gpu=0, memory="8Gi", max_instances=2, cpu_throttling=True, secret_env=secret_env
            ),
            quota=QuotaPolicy(
                contact_email="platform@example.com",
                budget_s=5,
                poll_initial_s=0.05,
                poll_max_s=0.2,
            ),
            canary=CanaryPolicy(
                token_secret=TOKEN_BLOCK, log_settle_s=0, retry_delay_s=0.05, retries=3
            ),
            retries=3,
            retry_delay_s=0.05,
            poll_interval_s=0.02,
            ready_timeout_s=15,
            lock_timeout_s=5,
        )
        fields.update(overrides)
        return ReleaseTarget(**fields)

    return _make
