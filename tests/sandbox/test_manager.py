"""The sandbox starts, answers, reports, validates scenarios, and stops by PID."""

from __future__ import annotations

import httpx
import pytest

from sandbox.manager import read_info, save_info, start_sandbox, stop_sandbox
from sandbox.procs import pid_alive
from sandbox.scenario import ScenarioError, load_scenario, parse_scenario


def test_up_status_down(tmp_path):
    info = start_sandbox(root=tmp_path / "sb")
    save_info(info, home=tmp_path)
    try:
        assert info.startup_s < 10
        assert httpx.get(info.emulator_url + "/_sandbox/health").json()["ok"] is True
        assert httpx.get(info.registry_url + "/v2/").status_code == 200
        again = read_info(home=tmp_path)
        assert again.pids == info.pids and all(again.alive().values())
    finally:
        stopped = stop_sandbox(home=tmp_path)
    assert len(stopped) == 2
    assert not any(pid_alive(pid) for pid in info.pids.values())
    assert read_info(home=tmp_path) is None


def test_bad_scenario_names_file_key_and_allowed(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "regions:\n  europe-west1:\n    gpu: many\n    preference: {decision: maybe}\nflavour: 1\n"
    )
    with pytest.raises(ScenarioError) as err:
        load_scenario(bad)
    text = str(err.value)
    assert str(bad) in text
    assert "regions.europe-west1.gpu" in text
    assert "'grant', 'deny' or 'never'" in text
    assert "key 'flavour' is not allowed" in text


def test_bad_scenario_refused_before_anything_starts(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[apis.run]\nerror_rate = 2.0\n")
    with pytest.raises(ScenarioError, match=r"apis\.run\.error_rate"):
        start_sandbox(scenario=str(bad), root=tmp_path / "sb")


def test_shipped_scenarios_parse():
    assert load_scenario("default").region("us-central1").preference.decision == "grant"
    assert parse_scenario({}).region("anywhere").gpu == 1
    from sandbox.scenario import SCENARIO_DIR

    for path in SCENARIO_DIR.glob("*.yaml"):
        assert load_scenario(path).description, f"{path.name}: give it a description"
    faults = {
        name: [
            (f.fault, f.accelerator, f.revision_contains)
            for f in load_scenario(name).revision_faults
        ]
        for name in ("canary-fails", "progressive-errors", "progressive-slow")
    }
    assert faults == {
        "canary-fails": [("http_503", "gpu", "-v2-")],
        "progressive-errors": [("errors_under_load", "gpu", "-v2-")],
        "progressive-slow": [("slow_under_load", "gpu", "-v2-")],
    }


def test_down_then_up_keeps_the_secret_manager_entries(tmp_path):
    """Issue 23: `shipyard setup` puts the internal token in the sandbox's Secret Manager; after
    `sandbox down` and `up` (the same root) a revision still resolves it, as a release's
    revision does (env valueSource.secretKeyRef), and it is on disk encrypted only."""
    import secrets

    import secrets_scan_kit
    from google.cloud import run_v2
    from run_testkit import READY, create, page_png, template

    from sandbox.admin import SandboxAdmin
    from shipyard.blocks.cloud import GoogleCloud

    token = secrets_scan_kit.remember(
        "sandbox secret manager token", "tok-" + secrets.token_hex(12)
    )
    root = tmp_path / "sb"
    secrets_scan_kit.remember_folder(root)
    registry = "http://127.0.0.1:9"  # the emulator only records it: no registry needed here
    info = start_sandbox(root=root, registry_url=registry)
    try:
        admin = SandboxAdmin(info.emulator_url)
        digest = admin.put_secret("shipyard-internal-token", token)
        admin.close()
    finally:
        info.stop()
    assert not any(token.encode() in p.read_bytes() for p in root.rglob("*") if p.is_file())

    info = start_sandbox(root=root, registry_url=registry)  # as `sandbox up` after `down`
    try:
        admin = SandboxAdmin(info.emulator_url)
        assert admin.secret_digest("shipyard-internal-token") == digest
        admin.close()
        with info.env_applied():
            cloud = GoogleCloud()
            tpl = template()
            tpl.containers[0].env = [
                run_v2.EnvVar(
                    name="INTERNAL_TOKEN",
                    value_source=run_v2.EnvVarSource(
                        secret_key_ref=run_v2.SecretKeySelector(
                            secret=f"projects/{cloud.resolved_project()}/secrets/"
                            "shipyard-internal-token",
                            version="latest",
                        )
                    ),
                )
            ]
            svc = create(cloud, "after-restart", tpl)
        assert svc.terminal_condition.state == READY
        page = {"content": page_png(), "headers": {"content-type": "image/png"}}
        url = svc.uri + "/internal/translate/page"
        with httpx.Client(timeout=30) as http:
            assert http.post(url, **page).status_code == 401
            page["headers"]["x-internal-token"] = token
            assert http.post(url, **page).status_code == 200
    finally:
        info.stop()
