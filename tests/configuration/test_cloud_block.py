"""The GoogleCloud block: the environment fills what a block leaves open, never what a saved
block says (a worker's leftover SHIPYARD_GOOGLE_ENDPOINT must not redirect production)."""

from __future__ import annotations

import uuid

from shipyard.blocks.cloud import ENDPOINT_ENV, GoogleCloud
from shipyard.blocks.release_target import ReleaseTarget

SANDBOX_URL = "http://127.0.0.1:9"  # never called: only where the clients would go is checked


def test_saved_block_without_endpoint_calls_google_whatever_the_environment(monkeypatch):
    monkeypatch.setenv(ENDPOINT_ENV, SANDBOX_URL)
    name = f"prod-{uuid.uuid4().hex[:8]}"
    GoogleCloud(project="prod-project").save(name)

    loaded = GoogleCloud.load(name)

    assert loaded.resolved_endpoint() is None
    assert loaded.resolved_project() == "prod-project"


def test_saved_target_with_a_cloud_block_is_not_redirected_by_the_environment(monkeypatch):
    monkeypatch.setenv(ENDPOINT_ENV, SANDBOX_URL)
    name = f"prod-target-{uuid.uuid4().hex[:8]}"
    ReleaseTarget(service="svc", cloud=GoogleCloud(project="prod-project")).save(name)

    cloud = ReleaseTarget.load(name).google()

    assert cloud.resolved_endpoint() is None


def test_the_environment_fills_an_unsaved_block_and_a_saved_endpoint_wins(monkeypatch):
    monkeypatch.setenv(ENDPOINT_ENV, SANDBOX_URL)
    assert GoogleCloud().resolved_endpoint() == SANDBOX_URL  # a target without a cloud block
    assert ReleaseTarget(service="svc").google().resolved_endpoint() == SANDBOX_URL

    name = f"sandbox-{uuid.uuid4().hex[:8]}"
    GoogleCloud(endpoint="http://127.0.0.1:8123").save(name)
    assert GoogleCloud.load(name).resolved_endpoint() == "http://127.0.0.1:8123"


def test_a_block_that_names_credentials_is_never_redirected(monkeypatch):
    from prefect_gcp import GcpCredentials

    monkeypatch.setenv(ENDPOINT_ENV, SANDBOX_URL)
    # model_construct: a real GcpCredentials without a key would look for ADC on this machine
    credentials = GcpCredentials.model_construct(project="prod-project")
    cloud = GoogleCloud.model_construct(gcp_credentials=credentials)

    assert cloud.resolved_endpoint() is None
