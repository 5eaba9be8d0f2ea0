"""Fixtures of the CLI tests: a service's own git repository (made by the test), and a
SHIPYARD_HOME whose state file describes the session sandbox (what `shipyard sandbox up`
writes), so that `shipyard setup` / `init` find it."""

from __future__ import annotations

from pathlib import Path

import pytest
from service_repo_kit import ServiceRepo
from setup_blocks_kit import setup_blocks_kept


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
    """`init` rewrites the blocks `setup` makes: put them back after each test."""
    with setup_blocks_kept():
        yield
