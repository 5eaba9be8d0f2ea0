"""`shipyard release` and `shipyard demo` through the real typer app."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from shipyard.deployments.cli.main import app

pytestmark = pytest.mark.slow


def test_release_command_dry_run_with_a_saved_target_block(stage, make_target, sandbox_admin):
    stage("default")
    target = make_target()
    target.save(target.service, overwrite=True)

    out = CliRunner().invoke(
        app,
        ["release", "v1.2.3", "--target", target.service, "--dry-run", "--json", "--image", "x:1"],
    )

    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["outcome"] == "planned" and data["dry_run"] is True
    assert data["plan"]["revision"] == f"{target.service}-v1-2-3"
    assert len(data["plan"]["quota_preferences"]) == 2
    assert sandbox_admin.traffic_history(target.service) == []


def test_release_command_names_a_missing_block(sandbox):
    out = CliRunner().invoke(app, ["release", "v1.0.0", "--target", "no-such-target"])
    assert out.exit_code == 2
    assert "no-such-target" in out.output and "Shipyard Release Target" in out.output
    assert "Traceback" not in out.output


def test_demo_json_plays_the_full_pipeline_on_a_fresh_sandbox(sandbox):
    out = CliRunner().invoke(app, ["demo", "--json", "--no-engine"])

    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    # mirror: the upstream the sandbox seeded, pinned by the same digest in the base repository
    mirror = data["mirror"]
    assert mirror["status"] == "mirrored" and mirror["cudnn"] == "8.9.0.131"
    assert mirror["digest"] == mirror["upstream_digest"] == mirror["destination_digest"]
    assert mirror["destination"].endswith("/base-images/cuda")
    assert mirror["source"].endswith("/nvidia/cuda:12.1.1-cudnn8-runtime-ubuntu22.04")
    # prewarm: every tier built on a fresh sandbox, from the mirrored pin
    assert data["prewarm"]["built"] == ["base", "python", "node"]
    assert data["prewarm"]["skipped"] == []
    assert data["prewarm"]["base_image"] == f"{mirror['destination']}@{mirror['digest']}"
    # build: through the sandbox Cloud Build from this checkout's commit, on the warm tiers
    build = data["build"]
    assert build["reused"] is False and build["build_id"]
    assert build["commit"] == data["commit"] and len(data["commit"]) == 40
    assert build["cached_steps"] > 0 and build["run_steps"] > 0 and 0 < build["hit_rate"] < 1
    assert data["image"] == build["image"] and "/shipyard/page-service@sha256:" in build["image"]
    assert {s["name"]: s["state"] for s in data["steps"]}["build"] == "completed"
    assert data["outcome"] == "released"
    assert data["region"] == "us-central1" and data["outside_primary"] is True
    assert data["revision"] == "manga-translator-compute-v1-0-0"
    assert data["url"].endswith("us-central1.a.run.app")
    canary = data["canary"]
    assert canary["runs"] == 3 and canary["fallback_used"] is False and canary["p95_ms"] > 0
    assert {s["name"] for s in data["steps"]} >= {"quota", "quota-preferences", "cutover"}
    assert all({"name", "state", "seconds", "attempts"} <= set(s) for s in data["steps"])
    prefs = {p["region"]: p["state"] for p in data["preferences"]}
    assert prefs == {"europe-west1": "denied", "us-central1": "granted"}
    assert data["invariants_ok"] is True and data["invariant_violations"] == []
