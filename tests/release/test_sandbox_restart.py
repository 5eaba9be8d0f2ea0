"""A sandbox restart between two releases keeps every release working (issue 23: `sandbox down`
then `up` lost the Secret Manager entry, the next release left 100% on a CPU revision that
failed to become Ready, and re-runs stayed wedged).

The sandbox is restarted the way `shipyard sandbox down` / `up` do it (sandbox/manager.py: the
processes stopped by PID, started again on the same root and port). Where the state is really
gone (a sandbox started on a new root: Secret Manager empty), the release stops saying what is
missing and how to restore it, leaves no service whose traffic names a failed revision, and
releases once the secret is back."""

from __future__ import annotations

import json

import pytest

from sandbox.invariants import traffic_violations
from sandbox.release_invariants import serving
from shipyard.flows.release.flow import run_release

pytestmark = pytest.mark.slow

IMAGE = "registry.sandbox.local/pages/page-service"
TOKEN_BLOCK = "shipyard-test-internal-token"  # tests/conftest.py: make_target's secret_env


def test_a_sandbox_restart_between_two_releases_keeps_releases_working(
    sandbox, make_target, internal_token, tmp_path
):
    from sandbox.admin import SandboxAdmin
    from sandbox.manager import start_sandbox

    scenario = tmp_path / "restart.yaml"  # JSON is YAML
    scenario.write_text(json.dumps({"name": "restart", "serving": {"gpu_ms": 5, "cpu_ms": 300}}))

    def up(root: str, port: int | None = None):
        return start_sandbox(
            scenario=str(scenario),
            registry_url=sandbox.registry_url,
            root=tmp_path / root,
            emulator_port=port,
        )

    target = make_target()
    region = "europe-west1"
    info = up("sandbox")
    try:
        with info.env_applied():
            admin = SandboxAdmin(info.emulator_url)
            admin.put_secret(TOKEN_BLOCK, internal_token)  # what `shipyard setup` does
            first = run_release("v1.0.0", target, image=f"{IMAGE}:v1.0.0")
            assert first.outcome == "released", first.reasons
        port = int(info.emulator_url.rsplit(":", 1)[1])
        info.stop()  # `shipyard sandbox down`
        info = up("sandbox", port)  # `shipyard sandbox up`: same root, same port
        with info.env_applied():
            admin = SandboxAdmin(info.emulator_url)
            assert admin.secret_digest(TOKEN_BLOCK) is not None  # Secret Manager kept
            second = run_release("v1.1.0", target, image=f"{IMAGE}:v1.1.0")
            assert second.outcome == "released", second.reasons
            history = admin.traffic_history(target.service)
            assert traffic_violations(history) == []
            assert serving(history, region) == {second.revision: 100}
        info.stop()

        # State really gone: a sandbox on a new root has an empty Secret Manager.
        info = up("elsewhere", port)
        with info.env_applied():
            admin = SandboxAdmin(info.emulator_url)
            with pytest.raises(Exception, match="missing: the Secret Manager secret") as stopped:
                run_release("v1.2.0", target, image=f"{IMAGE}:v1.2.0")
            assert TOKEN_BLOCK in str(stopped.value) and "shipyard setup" in str(stopped.value)
            history = admin.traffic_history(target.service)
            # Cloud Run cannot create a service without a revision: the failed create is a
            # moment where the new service serves nothing (no user was ever on it), then it is
            # deleted. No moment gives a share to a revision that is not Ready.
            assert [h["event"] for h in history] == ["create", "delete"], history
            assert not [t for h in history for t in h["traffic"] if t["percent"]]
            assert history[-1]["exists"] is False  # no service left on a failed revision

            admin.put_secret(TOKEN_BLOCK, internal_token)  # `shipyard setup` again
            third = run_release("v1.2.0", target, image=f"{IMAGE}:v1.2.0")

            assert third.outcome == "released", third.reasons
            history = admin.traffic_history(target.service)[2:]  # after the create and delete
            assert traffic_violations(history) == []
            assert serving(history, region) == {third.revision: 100}
    finally:
        info.stop()
