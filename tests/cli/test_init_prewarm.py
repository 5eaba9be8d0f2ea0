"""`shipyard init` in a service's own repository on the session sandbox, then `shipyard prewarm`
with nothing else: the blocks are named after the service, the tiers are the repository's (no
node tier for a Python service), the canary is the example request given, and the second
prewarm builds nothing."""

from __future__ import annotations

import base64
import json
from typing import cast

import pytest
from cli_kit import run_cli
from service_repo_kit import PYTHON_SERVICE

from shipyard.deployments.demo.sandbox_setup import BUILD_BLOCK, TARGET_BLOCK, TIERS_BLOCK

pytestmark = pytest.mark.slow  # setup's mirror and two Cloud Builds on the sandbox


def test_init_then_prewarm_builds_the_repositorys_tiers_and_a_second_prewarm_is_all_cached(
    sandbox, sandbox_home, sandbox_admin, make_repo, monkeypatch, capsys
):
    from shipyard.blocks.build_settings import BuildSettings
    from shipyard.blocks.cache_tiers import CacheTiers
    from shipyard.blocks.release_target import ReleaseTarget

    repo = make_repo("digit-guesser", {**PYTHON_SERVICE, "samples/seven.png": "PNG-ish"})
    monkeypatch.chdir(repo.root)
    code, output = run_cli(
        monkeypatch,
        capsys,
        "init",
        "--sample",
        "samples/seven.png",
        "--path",
        "/guess",
        "--form",
        "image",
    )
    assert code == 0, output
    assert "wrote" in output and "Dockerfile" in output and "git add Dockerfile" in output
    assert "Traceback" not in output
    target = cast(ReleaseTarget, ReleaseTarget.load(TARGET_BLOCK))
    settings = cast(BuildSettings, BuildSettings.load(BUILD_BLOCK))
    tiers = cast(CacheTiers, CacheTiers.load(TIERS_BLOCK))
    assert target.service == "digit-guesser"
    assert (target.build_settings_block, target.build_tiers_block) == (BUILD_BLOCK, TIERS_BLOCK)
    assert settings.image_repository == f"{sandbox.registry_host}/shipyard/digit-guesser"
    assert (settings.git_url, settings.source_dir) == (f"file://{repo.root}", ".")
    assert [t.name for t in tiers.tiers] == ["base", "python"]
    assert "manga" not in target.model_dump_json() + settings.model_dump_json()
    canary = target.canary
    assert canary.path == "/guess"
    assert canary.body.kind == "multipart" and canary.body.field == "image"
    assert base64.b64decode(canary.samples[0].data_base64 or "") == b"PNG-ish"

    repo.commit("Dockerfile written by shipyard init")  # builds fetch git
    code, output = run_cli(monkeypatch, capsys, "prewarm", "--json")
    assert code == 0, output
    first = json.loads(output)
    assert [(t["tier"], t["action"]) for t in first["tiers"]] == [
        ("base", "built"),
        ("python", "built"),
    ]
    assert all(t["image"].startswith(settings.image_repository) for t in first["tiers"])

    code, output = run_cli(monkeypatch, capsys, "prewarm", "--json")
    assert code == 0, output
    second = json.loads(output)
    assert [t["action"] for t in second["tiers"]] == ["skipped", "skipped"]
    assert [t["digest"] for t in second["tiers"]] == [t["digest"] for t in first["tiers"]]

    # The scheduled deployment, with prefect.yaml's parameters, run in this process with no
    # sandbox environment: the target block `default` says it all.
    state = _run_prewarm_deployment(monkeypatch)
    assert state.is_completed(), state.message
    assert [t.action for t in state.result().tiers] == ["skipped", "skipped"]


def _run_prewarm_deployment(monkeypatch):
    from pathlib import Path

    import yaml
    from prefect.deployments import run_deployment
    from prefect.flow_engine import run_flow

    from shipyard.flows.build.prewarm import prewarm_cache_tiers

    spec = Path(__file__).resolve().parents[2] / "prefect.yaml"
    (deployment,) = [
        d for d in yaml.safe_load(spec.read_text())["deployments"] if d["name"] == "prewarm-cache"
    ]
    assert deployment["parameters"]["target"] == TARGET_BLOCK
    deployment_id = prewarm_cache_tiers.to_deployment(
        name="after-init", parameters=deployment["parameters"]
    ).apply()
    flow_run = run_deployment(deployment_id, timeout=0)
    for key in ("SHIPYARD_GOOGLE_ENDPOINT", "SHIPYARD_REGISTRY_URL"):
        monkeypatch.delenv(key, raising=False)
    return run_flow(prewarm_cache_tiers, flow_run=flow_run, return_type="state")
