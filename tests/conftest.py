"""Session-wide fixtures: one real Prefect server per test session, an isolated PREFECT_HOME."""

from __future__ import annotations

import os
import tempfile

import pytest

_HOME = tempfile.mkdtemp(prefix="shipyard-test-prefect-")
os.environ.setdefault("PREFECT_HOME", _HOME)
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("SHIPYARD_HOME", tempfile.mkdtemp(prefix="shipyard-test-home-"))


@pytest.fixture(scope="session", autouse=True)
def prefect_server():
    """A real Prefect server (temporary database) shared by the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory):
    """The sandbox (real registry + emulator) on free loopback ports, one per session.

    Sets SHIPYARD_GOOGLE_ENDPOINT / SHIPYARD_REGISTRY_URL so the code under test uses it.
    """
    from sandbox.manager import start_sandbox

    info = start_sandbox(root=tmp_path_factory.mktemp("sandbox"))
    with info.env_applied():
        yield info
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
    from blocks.cloud import GoogleCloud

    return GoogleCloud()
