"""The fleet's shared session set-up (tests/fleet/docker_pool_kit.py): `docker_pool_fleet`, a
Docker work pool on PostgreSQL with two workers and Shipyard's worker image, one per session,
built on first use. Talk to its Prefect server inside `fleet.api()`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from docker_pool_kit import DockerPoolFleet, start_docker_pool_fleet
from stack_kit import session_stack


@pytest.fixture(scope="session")
def docker_pool_fleet(
    sandbox, internal_token, tmp_path_factory, request
) -> Iterator[DockerPoolFleet]:
    """The Docker pool `shipyard-docker` with two docker workers on the session's PostgreSQL
    stack (stack_kit.py), the session sandbox's endpoints in the containers' environment."""
    root = tmp_path_factory.mktemp("docker-pool-fleet")
    with ExitStack() as stack:
        yield start_docker_pool_fleet(
            stack,
            root,
            lambda: session_stack(tmp_path_factory, request.config).api_url,
            sandbox,
            internal_token,
        )
