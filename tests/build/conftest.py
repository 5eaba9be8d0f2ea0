"""Fixtures of the build tests: the example in a throwaway git repo, a base image, settings."""

from __future__ import annotations

import uuid

import pytest
from buildkit_fixtures import AppRepo

from sandbox.seed import seed_cuda_image


@pytest.fixture(scope="session")
def base_image(sandbox) -> str:
    """An NVIDIA-like base in the sandbox registry, by digest (stands in for the mirror's pin)."""
    seeded = seed_cuda_image(sandbox.registry_url, "base-images/cuda")
    return f"{seeded.repository}@{seeded.digest}"


@pytest.fixture
def app_repo(tmp_path) -> AppRepo:
    return AppRepo(tmp_path / "app-repo")


@pytest.fixture
def settings_block(sandbox, app_repo) -> str:
    """A saved BuildSettings block: a fresh image repository per test, the throwaway repo."""
    from shipyard.blocks.build_settings import BuildSettings

    name = f"build-{uuid.uuid4().hex[:10]}"
    BuildSettings(
        image_repository=f"{sandbox.registry_host}/t{name}/page-service",
        git_url=app_repo.url,
        source_dir=app_repo.dir,
        poll_s=0.05,
        timeout_s=300,
    ).save(name)
    return name


@pytest.fixture
def image_repository(sandbox, settings_block) -> str:
    return f"{sandbox.registry_host}/t{settings_block}/page-service"
