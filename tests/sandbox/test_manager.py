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
