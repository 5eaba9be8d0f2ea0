"""Fixtures of the release tests: INFO logs for one test, the sample service built for real.
(The internal token, staged scenarios and release targets are in tests/conftest.py: the UI
tests release too.)"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest


@pytest.fixture
def info_logs():
    """Flow and task run logs at INFO for one test (the session ships WARNING and up)."""
    import logging

    names = ("prefect.flow_runs", "prefect.task_runs")
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.INFO)
    yield
    for n, level in saved.items():
        logging.getLogger(n).setLevel(level)


# ---------------------------------------------------------------- the build, for real

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "page-service"
_GIT = ["git", "-c", "user.email=tests@shipyard.invalid", "-c", "user.name=shipyard tests"]


@pytest.fixture(scope="session")
def pinned_base(sandbox) -> str:
    """A tiny NVIDIA-like base image in the sandbox registry, with its pin recorded the way
    flows/mirror/flow.py records one; returns the repository (what ReleaseTarget.base_image names)."""
    from prefect.variables import Variable

    from sandbox.seed import seed_cuda_image
    from shipyard.flows.mirror.flow import pin_variable_name

    repo = "release-tests/cuda"
    digest = seed_cuda_image(sandbox.registry_url, repo).digest
    destination = f"{sandbox.registry_host}/{repo}"
    Variable.set(
        pin_variable_name(destination),
        {"destination": destination, "digest": digest, "image": f"{destination}@{digest}"},
        overwrite=True,
    )
    return destination


class AppRepo:
    """A throwaway git repository with a copy of examples/page-service (what the build fetches)."""

    def __init__(self, root: Path):
        self.root = root
        shutil.copytree(
            EXAMPLE, root / "page-service", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
        subprocess.run([*_GIT, "init", "-q", "-b", "main", str(root)], check=True)
        subprocess.run([*_GIT, "-C", str(root), "add", "-A"], check=True)
        subprocess.run([*_GIT, "-C", str(root), "commit", "-q", "-m", "page service"], check=True)

    def tag(self, name: str, at: str | None = None) -> None:
        """A lightweight tag, or with `at` (ISO 8601) an annotated one made at that time."""
        if at is None:
            subprocess.run([*_GIT, "-C", str(self.root), "tag", name], check=True)
            return
        env = {**os.environ, "GIT_COMMITTER_DATE": at}
        args = [*_GIT, "-C", str(self.root), "tag", "-a", name, "-m", f"release {name}"]
        subprocess.run(args, check=True, env=env)


@pytest.fixture
def app_build(sandbox, tmp_path, request) -> tuple[str, AppRepo]:
    """(BuildSettings block name, the git repository it builds from), fresh per test."""
    from shipyard.blocks.build_settings import BuildSettings

    repo = AppRepo(tmp_path / "app-repo")
    name = "rel-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-")
    BuildSettings(
        image_repository=f"{sandbox.registry_host}/{name}/page-service",
        git_url=f"file://{repo.root}",
        source_dir="page-service",
        poll_s=0.05,
        timeout_s=300,
    ).save(name, overwrite=True)
    return name, repo
