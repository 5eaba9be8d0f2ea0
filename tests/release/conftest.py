"""Fixtures of the release tests: the internal token as a Prefect Secret block, scenarios staged
on the session sandbox with fast serving, and release targets tuned for a local cloud (short
retry delays and polls: the code paths are the production ones, only the waits are shorter).
"""

from __future__ import annotations

import copy
import re
import secrets

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
