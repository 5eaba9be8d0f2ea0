"""A Release Target made in the Prefect UI's block form with its defaults releases on the sandbox
after `shipyard setup` (issue 21), and a target naming a piece that does not exist is refused
when it is loaded, naming the field and the block to choose.

The browser test drives the real UI (headless Chromium, tests/ui/prefect_ui_kit.py): the block
catalog's create form for "Shipyard Release Target" with only its required field (the block's
name), then the `release` deployment's custom run form with the git tag and that block. The
deployment is served in its own process *without* the sandbox's environment
(SHIPYARD_GOOGLE_ENDPOINT, SHIPYARD_REGISTRY_URL): the target's defaults alone (the blocks and
secret that setup saves) must bring the release to Completed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from chromium_page import Page, chromium_binary
from cli_kit import run_cli
from prefect_ui_kit import (
    by_text,
    click_until_sent,
    fill,
    release_only_yaml,
    start_ui,
    stop_group,
    submit_run_form,
    wait_created_run,
    wait_deployment,
    wait_run_final,
    wait_ui,
)

from shipyard.blocks.cloud import ENDPOINT_ENV, PROJECT_ENV, SETUP_CLOUD_BLOCK, GoogleCloud
from shipyard.blocks.release_target import SETUP_BUILD_BLOCK, SETUP_TIERS_BLOCK, ReleaseTarget
from shipyard.blocks.revision_templates import CpuTemplate, GpuTemplate
from shipyard.deployments.demo.sandbox_setup import BUILD_BLOCK, CLOUD_BLOCK, TIERS_BLOCK

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "page-service"
_GIT = ["git", "-c", "user.email=tests@shipyard.invalid", "-c", "user.name=shipyard tests"]
TAG = "v1.0.0"


# ---------------------------------------------------------------- without a browser


def test_the_forms_defaults_name_what_setup_creates():
    props = ReleaseTarget.model_json_schema()["properties"]
    assert (SETUP_CLOUD_BLOCK, SETUP_BUILD_BLOCK, SETUP_TIERS_BLOCK) == (
        CLOUD_BLOCK,
        BUILD_BLOCK,
        TIERS_BLOCK,
    )
    assert props["build_settings_block"]["default"] == BUILD_BLOCK
    assert props["build_tiers_block"]["default"] == TIERS_BLOCK
    # No default secret that setup never creates (a revision naming it fails in Cloud Run).
    assert GpuTemplate().secret_env == {} and CpuTemplate().secret_env == {}
    assert props["gpu_template"]["default"]["secret_env"] == {}


def test_a_target_naming_a_missing_block_is_refused_on_load_naming_the_field():
    name = f"missing-{uuid.uuid4().hex[:6]}"
    absent = f"no-such-settings-{uuid.uuid4().hex[:6]}"
    ReleaseTarget(service="svc", build_settings_block=absent).save(name)
    with pytest.raises(ValueError) as refused:
        ReleaseTarget.load(name)
    text = str(refused.value)
    assert f"build_settings_block={absent!r}" in text
    assert "Shipyard Build Settings block" in text and "shipyard setup" in text


def test_an_empty_cloud_without_environment_or_setup_block_is_refused_naming_cloud(monkeypatch):
    from prefect.exceptions import ObjectNotFound

    for key in (ENDPOINT_ENV, PROJECT_ENV):
        monkeypatch.delenv(key, raising=False)
    name = f"no-cloud-{uuid.uuid4().hex[:6]}"
    ReleaseTarget(service="svc").save(name)
    # This session's server may hold setup's block (another test ran setup): set it aside.
    try:
        kept: GoogleCloud | None = GoogleCloud.load(SETUP_CLOUD_BLOCK)
    except (ValueError, ObjectNotFound):
        kept = None
    if kept is not None:
        GoogleCloud.delete(SETUP_CLOUD_BLOCK)
    try:
        with pytest.raises(ValueError) as refused:
            ReleaseTarget.load(name)
        text = str(refused.value)
        assert "cloud is empty" in text and "choose a Shipyard Google Cloud block" in text
        assert "shipyard setup" in text and PROJECT_ENV not in text
        # With setup's block there, the empty field is that block.
        GoogleCloud(endpoint="http://127.0.0.1:9").save(SETUP_CLOUD_BLOCK, overwrite=True)
        loaded = ReleaseTarget.load(name)
        assert loaded.cloud is not None
        assert loaded.google().resolved_endpoint() == "http://127.0.0.1:9"
    finally:
        with contextlib.suppress(ValueError, ObjectNotFound):
            GoogleCloud.delete(SETUP_CLOUD_BLOCK)  # this test's stand-in
        if kept is not None:
            # A new document: the one `kept` was loaded from is deleted (saving `kept` itself
            # would PATCH that id and get a 404).
            GoogleCloud.model_validate(kept.model_dump()).save(SETUP_CLOUD_BLOCK)


# ---------------------------------------------------------------- in the browser


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
    subprocess.run([*_GIT, "-C", str(root), "tag", TAG], check=True)
    return f"file://{root}"


@pytest.fixture
def sandbox_home(sandbox, sandbox_admin, tmp_path, monkeypatch) -> Path:
    """A SHIPYARD_HOME whose state file describes the session sandbox (what `sandbox up`
    writes), the sandbox reset to the healthy scenario with fast serving."""
    from sandbox.manager import save_info
    from sandbox.scenario import load_scenario

    home = tmp_path / "home"
    save_info(sandbox, home)
    monkeypatch.setenv("SHIPYARD_HOME", str(home))
    data = load_scenario("healthy").model_dump()
    data["serving"] = {**data["serving"], "gpu_ms": 5, "cpu_ms": 300}
    sandbox_admin.reset(scenario_data=data)
    return home


def _serve_without_sandbox_env(prefect_file: Path, name: str, api_url: str, log: Path) -> Any:
    """`shipyard serve` of one deployment in its own session, with this process's environment
    minus what points Shipyard at the sandbox: only the blocks may say where things are."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    env.update(
        {
            "SHIPYARD_HOME": os.environ["SHIPYARD_HOME"],
            "PREFECT_API_URL": api_url,
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    shipyard = Path(sys.executable).with_name("shipyard")
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(shipyard), "serve", "--prefect-file", str(prefect_file), "--name", name],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )


@pytest.mark.slow
@pytest.mark.ui
@pytest.mark.timeout(900)
def test_a_target_made_in_the_ui_form_with_its_defaults_releases(
    sandbox_home, app_repo, monkeypatch, capsys, tmp_path
):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    assert chromium_binary(), "Debian's chromium is missing (Makefile APT_PKGS: make setup)"
    api_url = PREFECT_API_URL.value()
    deployment_name = f"release-form-{uuid.uuid4().hex[:6]}"
    block = f"ui-target-{uuid.uuid4().hex[:6]}"
    shots = tmp_path / "screenshots"
    shots.mkdir()
    ui, ui_url = start_ui(api_url, tmp_path / "ui.log")
    serve_log = tmp_path / "serve.log"
    served = _serve_without_sandbox_env(
        release_only_yaml(tmp_path / "prefect.yaml", deployment_name),
        deployment_name,
        api_url,
        serve_log,
    )
    page = None
    try:
        code, output = run_cli(monkeypatch, capsys, "setup", "--git-url", app_repo)
        assert code == 0, output
        page = Page(width=1400, height=1150)
        wait_ui(ui, ui_url)

        # The block catalog's create form: only the name typed, every other field as shown.
        page.goto(f"{ui_url}/v2/blocks/catalog/shipyard-release-target/create")
        name_input = (
            "Array.from(document.querySelectorAll('label')).filter(l => l.innerText.trim() === "
            "'Name').map(l => document.getElementById(l.htmlFor)).find(i => i)"
        )
        page.click(name_input, 120, "the block form's Name field")
        page.type_text(block)
        page.wait_for(f"{name_input}.value === {block!r}", what="the block's name typed")
        page.evaluate("document.activeElement && document.activeElement.blur()")
        page.screenshot(shots / "1-block-form.png")
        click_until_sent(page, by_text("Save"), "/block_documents", "the block form's Save button")
        page.wait_for("location.pathname.includes('/blocks/block/')", 120, "the saved block page")

        with get_client(sync_client=True) as client:
            saved = client.read_block_document_by_name(block, "shipyard-release-target")
        assert saved.data.get("build_settings_block") == BUILD_BLOCK, saved.data
        assert saved.data.get("build_tiers_block") == TIERS_BLOCK, saved.data

        # The release deployment's custom run form, with that block.
        deployment = wait_deployment(f"release/{deployment_name}", served, serve_log)
        page.goto(f"{ui_url}/v2/deployments/deployment/{deployment.id}")
        page.click(by_text("Run"), 120, "the deployment's Run button")
        page.click(by_text("Custom run"), 120, "Custom run in the Run menu")
        fill(page, "git_tag", TAG)
        fill(page, "target", block)
        page.screenshot(shots / "2-custom-run-form.png")
        submit_run_form(page)
        run_id = wait_created_run(page, deployment.id)
        ended = wait_run_final(uuid.UUID(run_id), 600)
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(uuid.UUID(run_id)).state
        assert ended == "Completed", (
            f"{ended}: {state and state.message}\n" + serve_log.read_text(errors="replace")[-3000:]
        )
    except BaseException:
        if page is not None:
            page.screenshot(shots / "failure.png")
        raise
    finally:
        if page is not None:
            page.close()
        stop_group(served)
        stop_group(ui)
