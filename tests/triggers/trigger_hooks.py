"""Helpers for the trigger tests: webhook payloads as GitHub/GitLab send them, signing,
receivers run by the real CLI (`shipyard webhook serve`) in their own process, run polling."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from sandbox.procs import free_port, spawn, stop_pid, wait_for_port
from shipyard.deployments.serve import DeploymentSpec, read_specs

REPO_ROOT = Path(__file__).resolve().parents[2]
REPOSITORY = "acme/manga-translator"
WORK_POOL = "shipyard-process"
BASE_MIRROR = "127.0.0.1:5999/base/cuda"
SECRET_BLOCK = "shipyard-webhook-secret-tests"
GITLAB_REPOSITORY = "acme/gpu/manga-translator"
# The receivers' allow-list: both test repositories release the `default` target.
ALLOWED = [f"{REPOSITORY}=default", f"{GITLAB_REPOSITORY}=default"]


def module_file(spec: DeploymentSpec) -> Path:
    module = spec.entrypoint.rsplit(".", 1)[0].removeprefix("shipyard.")
    return REPO_ROOT / (module.replace(".", "/") + ".py")


def split_specs() -> tuple[list[DeploymentSpec], list[DeploymentSpec]]:
    """(deployments whose flow module exists, deployments whose module is still missing)."""
    specs = read_specs(REPO_ROOT / "prefect.yaml")
    present = [s for s in specs if module_file(s).exists()]
    return present, [s for s in specs if s not in present]


def sha() -> str:
    return hashlib.sha1(uuid.uuid4().bytes, usedforsecurity=False).hexdigest()


PUSHED_AT = 1770888600


def github_push(
    tag: str | None = None,
    *,
    branch: str | None = None,
    deleted: bool = False,
    commit: str | None = None,
    repository: str = REPOSITORY,
) -> dict[str, Any]:
    ref = f"refs/heads/{branch}" if branch else f"refs/tags/{tag}"
    after = "0" * 40 if deleted else (commit or sha())
    return {
        "ref": ref,
        "before": "0" * 40 if not deleted else sha(),
        "after": after,
        "created": not deleted,
        "deleted": deleted,
        "forced": False,
        # A push delivery says when GitHub got the push in Unix seconds (2026-02-12 09:30 UTC).
        "repository": {
            "full_name": repository,
            "name": repository.split("/")[-1],
            "pushed_at": PUSHED_AT,
        },
        "pusher": {"name": "octocat"},
        "head_commit": None if deleted else {"id": after},
    }


def github_create(tag: str, repository: str = REPOSITORY) -> dict[str, Any]:
    return {
        "ref": tag,
        "ref_type": "tag",
        "master_branch": "main",
        "repository": {"full_name": repository},
    }


def gitlab_tag_push(
    tag: str,
    *,
    deleted: bool = False,
    commit: str | None = None,
    repository: str = GITLAB_REPOSITORY,
) -> dict[str, Any]:
    after = "0" * 40 if deleted else (commit or sha())
    return {
        "object_kind": "tag_push",
        "event_name": "tag_push",
        "ref": f"refs/tags/{tag}",
        "before": "0" * 40,
        "after": after,
        "checkout_sha": None if deleted else after,
        "project": {"path_with_namespace": repository},
    }


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass
class Delivery:
    """One webhook POST, with everything a test may want to break."""

    payload: Any
    event: str = "push"
    provider: str = "github"
    delivery_id: str = ""
    secret: str | None = None  # None: no signature/token header
    content_type: str = "application/json"
    body: bytes | None = None  # raw body instead of the JSON of payload

    def __post_init__(self) -> None:
        self.delivery_id = self.delivery_id or str(uuid.uuid4())

    def request(self) -> tuple[bytes, dict[str, str]]:
        body = self.body if self.body is not None else json.dumps(self.payload).encode()
        headers = {"Content-Type": self.content_type, "User-Agent": "GitHub-Hookshot/test"}
        if self.provider == "github":
            headers["X-GitHub-Event"] = self.event
            headers["X-GitHub-Delivery"] = self.delivery_id
            if self.secret is not None:
                headers["X-Hub-Signature-256"] = signature(self.secret, body)
        else:
            headers["X-Gitlab-Event"] = self.event
            headers["X-Gitlab-Event-UUID"] = self.delivery_id
            if self.secret is not None:
                headers["X-Gitlab-Token"] = self.secret
        return body, headers


class ReceiverProcess:
    """`shipyard webhook serve` on a free loopback port, stopped by PID."""

    def __init__(self, log_path: Path, env: dict[str, str], extra_args: list[str] | None = None):
        self.port = free_port()
        self.journal = log_path.with_suffix(".journal.db")
        self.url = f"http://127.0.0.1:{self.port}/webhook"
        self.log_path = log_path
        self.proc = spawn(
            [
                str(Path(sys.executable).with_name("shipyard")),
                "webhook",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--journal",
                str(self.journal),
                *(a for r in ALLOWED for a in ("--repo", r)),
                *(extra_args or []),
            ],
            log_path,
            env=env,
        )

    def wait(self, timeout: float = 60) -> ReceiverProcess:
        wait_for_port("127.0.0.1", self.port, timeout, proc=self.proc)
        return self

    def send(self, delivery: Delivery, client: httpx.Client | None = None) -> httpx.Response:
        body, headers = delivery.request()
        if client is not None:
            return client.post(self.url, content=body, headers=headers)
        return httpx.post(self.url, content=body, headers=headers, timeout=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        stop_pid(self.proc.pid)


def subprocess_env(api_url: str, **extra: str) -> dict[str, str]:
    env = {"PREFECT_API_URL": api_url, "PYTHONUNBUFFERED": "1"}
    env.update(extra)
    # The env var wins over a block: a receiver meant to use the block must not inherit it.
    if "SHIPYARD_WEBHOOK_SECRET" not in extra and "SHIPYARD_WEBHOOK_SECRET" in os.environ:
        env["SHIPYARD_WEBHOOK_SECRET"] = ""
    return env


async def wait_for_runs(
    client: Any, deployment_id: uuid.UUID, predicate, count: int, timeout: float = 45.0
) -> list[Any]:
    """Poll the API (no fixed sleep) until `count` runs of the deployment match `predicate`."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    deadline = time.monotonic() + timeout
    found: list[Any] = []
    while time.monotonic() < deadline:
        runs = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            limit=200,
        )
        found = [r for r in runs if predicate(r)]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.1)
    return found


async def runs_of(client: Any, deployment_id: uuid.UUID, predicate=lambda r: True) -> list[Any]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    runs = await client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        limit=200,
    )
    return [r for r in runs if predicate(r)]


def journal_state(receiver: ReceiverProcess, delivery_id: str, timeout: float = 30.0) -> str:
    """The final state of a delivery in a receiver's journal (read-only; polled)."""
    import sqlite3

    deadline = time.monotonic() + timeout
    state = "missing"
    while time.monotonic() < deadline:
        with sqlite3.connect(f"file:{receiver.journal}?mode=ro", uri=True) as db:
            row = db.execute(
                "SELECT state FROM deliveries WHERE delivery_id = ?", (delivery_id,)
            ).fetchone()
        state = row[0] if row else "missing"
        if state not in ("missing", "pending", "emit"):
            return state
        time.sleep(0.1)
    return state
