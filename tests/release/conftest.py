"""Fixtures of the release tests: the internal token as a Prefect Secret block, scenarios staged
on the session sandbox with fast serving, and release targets tuned for a local cloud (short
retry delays and polls: the code paths are the production ones, only the waits are shorter).
"""

from __future__ import annotations

import copy
import os
import re
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

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

    token = "tok-" + secrets.token_hex(12)
    Secret(value=token).save(TOKEN_BLOCK, overwrite=True)
    return token


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
    from blocks.release_target import (
        CanaryPolicy,
        QuotaPolicy,
        ReleaseTarget,
        RevisionSpec,
        SecretEnv,
    )

    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")
    service = ("pg-" + name.removeprefix("test-"))[:40].rstrip("-")

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


# ---------------------------------------------------------------- the build, for real

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "page-service"
_GIT = ["git", "-c", "user.email=tests@shipyard.invalid", "-c", "user.name=shipyard tests"]


@pytest.fixture(scope="session")
def pinned_base(sandbox) -> str:
    """A tiny NVIDIA-like base image in the sandbox registry, with its pin recorded the way
    flows/mirror.py records one; returns the repository (what ReleaseTarget.base_image names)."""
    from prefect.variables import Variable

    from flows.mirror import pin_variable_name
    from sandbox.seed import seed_cuda_image

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
    from blocks.build_settings import BuildSettings

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
