"""Fixtures of the CLI tests: a service's own git repository (made by the test), and a
SHIPYARD_HOME whose state file describes the session sandbox (what `shipyard sandbox up`
writes), so that `shipyard setup` / `init` find it."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from service_repo_kit import ServiceRepo


@pytest.fixture
def make_repo(tmp_path):
    def _make(name: str, files: dict[str, str]) -> ServiceRepo:
        return ServiceRepo(tmp_path / name, files)

    return _make


@pytest.fixture
def sandbox_home(sandbox, sandbox_admin, tmp_path, monkeypatch) -> Path:
    from sandbox.manager import save_info

    home = tmp_path / "home"
    save_info(sandbox, home)
    monkeypatch.setenv("SHIPYARD_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def setup_blocks_restored(prefect_server):
    """`init` rewrites the blocks `setup` makes (target `default`, build settings and tiers
    `sandbox`) on this worker's Prefect server; put them back afterwards, so a later test of the
    same worker that relies on `setup`'s page-service target does not meet this test's service."""
    from prefect.exceptions import ObjectNotFound

    from shipyard.blocks.build_settings import BuildSettings
    from shipyard.blocks.cache_tiers import CacheTiers
    from shipyard.blocks.release_target import ReleaseTarget
    from shipyard.deployments.demo.sandbox_setup import BUILD_BLOCK, TARGET_BLOCK, TIERS_BLOCK

    kinds = ((ReleaseTarget, TARGET_BLOCK), (BuildSettings, BUILD_BLOCK), (CacheTiers, TIERS_BLOCK))
    before = {}
    for kind, name in kinds:
        try:
            before[name] = kind.load(name)
        except (ValueError, ObjectNotFound):
            before[name] = None
    yield
    for kind, name in kinds:
        saved = before[name]
        if saved is not None:
            saved.save(name, overwrite=True)
            continue
        with contextlib.suppress(ValueError, ObjectNotFound):
            kind.delete(name)
