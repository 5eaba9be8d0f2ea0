"""The release, played on a fresh local sandbox: used by `shipyard demo` and bench/release.py.

Everything the demo starts, it stops, by handle/PID: a temporary Prefect server (only when no
Prefect API is configured), the sandbox (registry + Google API emulator). The release itself
is the production flow; only the target is tuned for a local cloud (short polls, no log
ingestion wait) and the internal token is a fresh random value in a Prefect Secret block and
in the sandbox's Secret Manager.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEMO_TOKEN_BLOCK = "shipyard-demo-internal-token"
DEMO_SERVICE = "manga-translator-compute"
DEMO_IMAGE = "registry.sandbox.local/manga/page-service"


@contextmanager
def prefect_api(startup_timeout: float = 90.0) -> Iterator[str]:
    """The configured Prefect API, or a temporary local server (temporary database) for the
    duration of the block."""
    import prefect.settings as ps

    configured = ps.get_current_settings().api.url
    if configured:
        yield str(configured)
        return
    from prefect.server.api.server import SubprocessASGIServer

    from sandbox.procs import free_port

    home = tempfile.mkdtemp(prefix="shipyard-demo-prefect-")
    db = "sqlite+aiosqlite:///" + str(Path(home) / "prefect.db")
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, home, True)
        stack.enter_context(
            ps.temporary_settings(
                updates={
                    ps.PREFECT_SERVER_DATABASE_CONNECTION_URL: db,
                    ps.PREFECT_HOME: home,
                    ps.PREFECT_SERVER_ANALYTICS_ENABLED: False,  # no telemetry from a demo
                }
            )
        )
        server = SubprocessASGIServer(port=free_port())
        server.start(timeout=int(startup_timeout))
        stack.callback(server.stop)
        stack.enter_context(ps.temporary_settings(updates={ps.PREFECT_API_URL: server.api_url}))
        stack.callback(_drain_workers)  # runs first: logs and events reach the server
        yield server.api_url


def _drain_workers() -> None:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    EventsWorker.drain_all(timeout=10)


@dataclass
class LocalCloud:
    info: Any  # sandbox.manager.SandboxInfo
    admin: Any  # sandbox.admin.SandboxAdmin
    token_block: str
    token: str


@contextmanager
def local_cloud(startup_timeout: float = 60.0) -> Iterator[LocalCloud]:
    """A fresh sandbox with the env pointing Shipyard at it, and the internal token stored."""
    from prefect.blocks.system import Secret

    from sandbox.admin import SandboxAdmin
    from sandbox.manager import start_sandbox

    root = Path(tempfile.mkdtemp(prefix="shipyard-demo-sandbox-"))
    info = start_sandbox(root=root, timeout=startup_timeout)
    saved = {k: os.environ.get(k) for k in info.env()}
    os.environ.update(info.env())
    admin = SandboxAdmin(info.emulator_url)
    try:
        token = "tok-" + secrets.token_hex(16)
        Secret(value=token).save(DEMO_TOKEN_BLOCK, overwrite=True)
        yield LocalCloud(info=info, admin=admin, token_block=DEMO_TOKEN_BLOCK, token=token)
    finally:
        admin.close()
        info.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(root, ignore_errors=True)


def stage(cloud: LocalCloud, scenario: str, **overrides: Any) -> dict:
    """Reset the sandbox to a scenario (name or file), with the token in its Secret Manager."""
    from sandbox.scenario import load_scenario

    data = load_scenario(scenario).model_dump()
    data["secrets"] = {**data.get("secrets", {}), cloud.token_block: cloud.token}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    cloud.admin.reset(scenario_data=data)
    return data


def sandbox_target(service: str = DEMO_SERVICE, regions: list[str] | None = None, **overrides):
    """The seed-003 target with waits tuned for a local cloud (polls in ms, no log lag)."""
    from blocks.release_target import (
        CanaryPolicy,
        QuotaPolicy,
        ReleaseTarget,
        RevisionSpec,
        SecretEnv,
        default_cpu_template,
    )

    secret_env = {"INTERNAL_TOKEN": SecretEnv(secret=DEMO_TOKEN_BLOCK)}
    cpu = default_cpu_template().model_copy(update={"secret_env": secret_env})
    fields: dict[str, Any] = dict(
        service=service,
        regions=regions or ["europe-west1", "us-central1"],
        gpu_template=RevisionSpec(secret_env=secret_env),
        cpu_template=cpu,
        quota=QuotaPolicy(
            contact_email="platform@example.com", budget_s=30, poll_initial_s=0.1, poll_max_s=1
        ),
        canary=CanaryPolicy(token_secret=DEMO_TOKEN_BLOCK, log_settle_s=0, retry_delay_s=0.1),
        retries=3,
        retry_delay_s=0.1,
        poll_interval_s=0.05,
        ready_timeout_s=60,
    )
    fields.update(overrides)
    return ReleaseTarget(**fields)


def check_invariants(cloud: LocalCloud, service: str, results: list) -> list[str]:
    """Invariants 1-3 over the service's whole traffic history in the sandbox."""
    from flows.release_invariants import all_violations

    return all_violations(cloud.admin.traffic_history(service), results)


def run_demo(scenario: str = "default", git_tag: str = "v1.0.0") -> dict[str, Any]:
    """A fresh Prefect API (if none) and sandbox, one release of the scenario, the figures."""
    from flows.release import release

    with prefect_api(), local_cloud() as cloud:
        stage(cloud, scenario)
        target = sandbox_target()
        result = release(git_tag, target, image=f"{DEMO_IMAGE}:{git_tag}")
        violations = check_invariants(cloud, target.service, [result])
        history = cloud.admin.traffic_history(target.service)
    out = result.model_dump(mode="json")
    out["scenario"] = scenario
    out["invariants_ok"] = not violations
    out["invariant_violations"] = violations
    out["traffic_history"] = [
        {
            "seq": h["seq"],
            "service": h["name"],
            "event": h["event"],
            "traffic": [
                {k: t[k] for k in ("revision", "percent", "tag", "ready")} for t in h["traffic"]
            ],
        }
        for h in history
    ]
    return out
