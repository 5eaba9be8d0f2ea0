"""Fixtures for the trigger tests, all on the session's real Prefect server:

- `deployed`: `prefect deploy` of prefect.yaml (every deployment whose flow module exists)
  against a process work pool created here, in a subprocess, as a user would run it;
- `receiver` / `block_receiver`: two `shipyard webhook serve` processes on free ports, one
  with the secret in the environment, one reading it from a Prefect Secret block.

No worker is started: trigger-created runs stay Scheduled, so no test needs a sandbox or
runs a release.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from secrets_scan_kit import remember
from trigger_hooks import (
    BASE_MIRROR,
    REPO_ROOT,
    SECRET_BLOCK,
    WORK_POOL,
    DeploymentSpec,
    ReceiverProcess,
    split_specs,
    subprocess_env,
)


@pytest.fixture(scope="package")
def api_url(prefect_server) -> str:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


@pytest.fixture(scope="package")
def webhook_secret() -> str:
    return remember("webhook secret", "whsec-" + secrets.token_urlsafe(24))


async def _prepare_server(webhook_secret: str) -> None:
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.variables import Variable

    async with get_client() as client:
        with contextlib.suppress(ObjectAlreadyExists):
            await client.create_work_pool(WorkPoolCreate(name=WORK_POOL, type="process"))
    await Variable.aset("shipyard_base_mirror", BASE_MIRROR, overwrite=True)
    await Secret(value=webhook_secret).asave(SECRET_BLOCK, overwrite=True)


@pytest.fixture(scope="package")
def deployed(api_url, webhook_secret, tmp_path_factory) -> dict[str, Any]:
    """`prefect deploy` of prefect.yaml on the test server; {deployment name: Deployment}."""
    from prefect.client.orchestration import get_client

    asyncio.run(_prepare_server(webhook_secret))
    present, missing = split_specs()
    # `--all` as a user runs it; by name while a flow module is still missing (the test
    # test_every_deployment_has_its_flow_module names those).
    names = ["--all"] if not missing else [a for s in present for a in ("--name", s.name)]
    log = tmp_path_factory.mktemp("deploy") / "prefect-deploy.log"
    done = subprocess.run(
        [str(Path(sys.executable).with_name("prefect")), "--no-prompt", "deploy", *names],
        cwd=REPO_ROOT,
        env={**os.environ, **subprocess_env(api_url)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=240,
    )
    log.write_text(done.stdout)
    assert done.returncode == 0, f"prefect deploy failed:\n{done.stdout[-4000:]}"

    async def read() -> dict[str, Any]:
        async with get_client() as client:
            out = {}
            for spec in present:
                flow_name = await _flow_name(client, spec)
                out[spec.name] = await client.read_deployment_by_name(f"{flow_name}/{spec.name}")
            return out

    return asyncio.run(read())


async def _flow_name(client: Any, spec: DeploymentSpec) -> str:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    found = await client.read_deployments(
        deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[spec.name]))
    )
    assert found, f"deployment {spec.name!r} was not created by prefect deploy"
    flow = await client.read_flow(found[0].flow_id)
    return flow.name


@pytest.fixture(scope="package")
def receivers(request, api_url, webhook_secret, tmp_path_factory):
    """Both receivers, started while `prefect deploy` runs, stopped by PID.

    Tests send only once the deployment and its trigger exist (`deployed`)."""
    asyncio.run(_prepare_server(webhook_secret))  # the Secret block the second one reads
    logs = tmp_path_factory.mktemp("receivers")
    env_receiver = ReceiverProcess(
        logs / "env.log", subprocess_env(api_url, SHIPYARD_WEBHOOK_SECRET=webhook_secret)
    )
    block_receiver = ReceiverProcess(
        logs / "block.log", subprocess_env(api_url), ["--secret-block", SECRET_BLOCK]
    )
    try:
        request.getfixturevalue("deployed")
        env_receiver.wait()
        block_receiver.wait()
        yield env_receiver, block_receiver
    finally:
        env_receiver.stop()
        block_receiver.stop()


@pytest.fixture
def receiver(receivers) -> ReceiverProcess:
    return receivers[0]


@pytest.fixture
def block_receiver(receivers) -> ReceiverProcess:
    return receivers[1]
