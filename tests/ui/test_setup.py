"""`shipyard setup` on the session's sandbox and Prefect server: a release started from a
deployment then works with no other step (and no sandbox environment in the run's process),
and a second setup changes nothing (block documents and variables compared before/after)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cli_kit import run_cli

from shipyard.deployments.demo.sandbox_setup import (
    BUILD_BLOCK,
    CLOUD_BLOCK,
    TARGET_BLOCK,
    TIERS_BLOCK,
    TOKEN_BLOCK,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "page-service"
_GIT = ["git", "-c", "user.email=tests@shipyard.invalid", "-c", "user.name=shipyard tests"]


@pytest.fixture
def app_repo(tmp_path) -> str:
    """A git repository laid out like Shipyard's (examples/page-service), tagged v1.0.0."""
    root = tmp_path / "app"
    shutil.copytree(
        EXAMPLE,
        root / "examples" / "page-service",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    subprocess.run([*_GIT, "init", "-q", "-b", "main", str(root)], check=True)
    subprocess.run([*_GIT, "-C", str(root), "add", "-A"], check=True)
    subprocess.run([*_GIT, "-C", str(root), "commit", "-q", "-m", "app"], check=True)
    subprocess.run([*_GIT, "-C", str(root), "tag", "v1.0.0"], check=True)
    return f"file://{root}"


@pytest.fixture
def sandbox_home(sandbox, sandbox_admin, tmp_path, monkeypatch) -> Path:
    """A SHIPYARD_HOME whose state file describes the session sandbox (what `sandbox up` writes),
    the sandbox reset to the healthy scenario with fast serving."""
    from sandbox.manager import save_info
    from sandbox.scenario import load_scenario

    home = tmp_path / "home"
    save_info(sandbox, home)
    monkeypatch.setenv("SHIPYARD_HOME", str(home))
    data = load_scenario("healthy").model_dump()
    data["serving"] = {**data["serving"], "gpu_ms": 5, "cpu_ms": 300}
    sandbox_admin.reset(scenario_data=data)
    return home


async def _documents() -> dict[str, Any]:
    """What setup leaves on the server: its block documents and every variable."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        out: dict[str, Any] = {}
        for slug, name in [
            ("shipyard-release-target", TARGET_BLOCK),
            ("shipyard-google-cloud", CLOUD_BLOCK),
            ("shipyard-build-settings", BUILD_BLOCK),
            ("shipyard-cache-tiers", TIERS_BLOCK),
            ("secret", TOKEN_BLOCK),
        ]:
            doc = await client.read_block_document_by_name(name, slug, include_secrets=True)
            out[f"{slug}/{name}"] = (doc.id, doc.data, doc.block_schema_id)
        for var in await client.read_variables():
            out[f"variable/{var.name}"] = (var.id, var.value, var.updated)
        return out


def test_setup_then_a_deployment_run_releases_and_a_second_setup_changes_nothing(
    sandbox_home, app_repo, monkeypatch, capsys
):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.flow_engine import run_flow

    from shipyard.flows.release.flow import release

    code, output = run_cli(monkeypatch, capsys, "setup", "--git-url", app_repo)
    assert code == 0, output
    lines = output.splitlines()
    for needle in (
        "block 'default': service",
        f"Secret block '{TOKEN_BLOCK}'",
        f"sandbox Secret Manager entry '{TOKEN_BLOCK}'",
        "upstream image",
        "pinned by digest",
        "variable shipyard_base_mirror",
        f"Shipyard Google Cloud block '{CLOUD_BLOCK}'",
    ):
        assert any(needle in line for line in lines), (needle, output)
    assert "Traceback" not in output
    # Named after the repository's build context, not the demo; the block's own Ready wait.
    from shipyard.blocks.release_target import ReleaseTarget

    target = ReleaseTarget.load(TARGET_BLOCK)
    assert target.service == "page-service"
    assert target.ready_timeout_s == ReleaseTarget.model_fields["ready_timeout_s"].default

    before = asyncio.run(_documents())
    code, output = run_cli(monkeypatch, capsys, "setup", "--git-url", app_repo)
    assert code == 0, output
    assert output.strip().splitlines()[-1] == "nothing changed: everything was already there"
    assert all(line.startswith("already there") for line in output.strip().splitlines()[:-1])
    assert asyncio.run(_documents()) == before

    # A run of the release deployment, as `prefect deployment run release/... -p git_tag=v1.0.0`
    # creates it, executed in this process with no sandbox environment: the blocks say it all.
    deployment_id = release.to_deployment(name="after-setup").apply()
    flow_run = run_deployment(deployment_id, parameters={"git_tag": "v1.0.0"}, timeout=0)
    assert flow_run.parameters == {"git_tag": "v1.0.0"}
    for key in ("SHIPYARD_GOOGLE_ENDPOINT", "SHIPYARD_REGISTRY_URL"):
        monkeypatch.delenv(key, raising=False)
    state = run_flow(release, flow_run=flow_run, return_type="state")
    assert state.is_completed(), state.message
    result = state.result()
    assert result.outcome == "released", result.reasons
    assert (
        result.image
        and result.image.split("/")[0] in Path(sandbox_home / "sandbox.json").read_text()
    )

    async def final() -> Any:
        async with get_client() as client:
            return await client.read_flow_run(flow_run.id)

    assert asyncio.run(final()).state.is_completed()


def test_no_sandbox_is_one_line_naming_sandbox_up(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SHIPYARD_HOME", str(tmp_path / "empty-home"))
    code, output = run_cli(monkeypatch, capsys, "setup", "--git-url", "file:///nowhere")
    assert code == 2, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in output, output
    assert "no sandbox is running" in errors[0] and "shipyard sandbox up" in errors[0]


def test_no_prefect_api_is_one_line_naming_the_exports(monkeypatch, capsys):
    from api_switch_kit import pointed_at

    from sandbox.procs import free_port

    dead = f"http://127.0.0.1:{free_port()}/api"
    with pointed_at(dead):
        code, output = run_cli(monkeypatch, capsys, "setup")
    assert code == 2, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in output, output
    assert dead in errors[0] and "export PREFECT_API_URL=" in errors[0]
