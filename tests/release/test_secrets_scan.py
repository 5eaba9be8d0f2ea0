"""No secret anywhere: after a released and a rolled-back release (the canary's internal
token), a mirror into a password-protected registry with the right and a wrong password, and
signed and forged webhook deliveries (the webhook secret), every place a secret could land
is searched for the known values: Prefect logs, artifacts, events, flow- and task-run state
messages and parameters, every row of the test server's SQLite database (the file itself),
the sandbox's Cloud Logging entries, and every log file of the sandbox, the registry and the
receiver. Zero hits.

The scan itself is tests/secrets_scan_kit.py. Its secrets are registered for the scan that
tests/conftest.py runs at the end of each session too: under `-n 2` each xdist worker has its own
Prefect server and sandbox, so that scan, on every worker, is the one that sees every run of the
suite (the internal token is each worker's session token)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
import sys
from pathlib import Path

import httpx
import pytest
from secrets_scan_kit import Haystacks, database_files, folder_files, prefect_texts, remember

from sandbox.procs import free_port, spawn, stop_pid, wait_for_port

pytestmark = pytest.mark.slow

IMAGE = "registry.sandbox.local/pages/page-service"
REPOSITORY = "acme/manga-translator"
WEBHOOK_BLOCK = "shipyard-webhook-secret-scan"


@pytest.fixture
def webhook_receiver(sandbox, tmp_path):
    """`shipyard webhook serve` reading its secret from a Prefect Secret block."""
    from prefect.blocks.system import Secret
    from prefect.settings import PREFECT_API_URL

    secret = remember("webhook secret", "whsec-scan-" + secrets.token_urlsafe(18))
    Secret(value=secret).save(WEBHOOK_BLOCK, overwrite=True)
    port = free_port()
    log = tmp_path / "receiver.log"
    proc = spawn(
        [
            str(Path(sys.executable).with_name("shipyard")),
            *("webhook", "serve", "--port", str(port), "--secret-block", WEBHOOK_BLOCK),
            *("--repo", f"{REPOSITORY}=default", "--journal", str(tmp_path / "journal.db")),
        ],
        log,
        env={"PREFECT_API_URL": PREFECT_API_URL.value(), "SHIPYARD_WEBHOOK_SECRET": ""},
    )
    try:
        wait_for_port("127.0.0.1", port, 90, proc=proc)
        yield f"http://127.0.0.1:{port}", secret, log
    finally:
        stop_pid(proc.pid)


def _deliver(url: str, secret: str, tag: str) -> list[int]:
    import hashlib
    import hmac
    import uuid

    body = json.dumps(
        {
            "ref": f"refs/tags/{tag}",
            "after": hashlib.sha1(tag.encode(), usedforsecurity=False).hexdigest(),
            "deleted": False,
            "repository": {"full_name": REPOSITORY},
        }
    ).encode()

    def send(headers: dict[str, str]) -> int:
        headers = {"Content-Type": "application/json", **headers}
        return httpx.post(f"{url}/webhook", content=body, headers=headers, timeout=30).status_code

    def github(key: str) -> dict[str, str]:
        mac = hmac.new(key.encode(), body, hashlib.sha256).hexdigest()
        return {
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": f"sha256={mac}",
        }

    # Signed, forged, and GitLab's token header (the secret itself) a near miss: the wrong
    # values must not be logged either.
    gitlab = {
        "X-Gitlab-Event": "Tag Push Hook",
        "X-Gitlab-Event-UUID": str(uuid.uuid4()),
        "X-Gitlab-Token": secret + "-near-miss",
    }
    # The forged key differs from the secret in its last character (a secret that happens to
    # end in "x" made the "forged" signature valid: a replay, 409, instead of 401).
    forged = secret[:-1] + ("y" if secret.endswith("x") else "x")
    statuses = [send(github(secret)), send(github(forged)), send(gitlab)]
    return statuses


def _wait_emitted(url: str, timeout: float = 60) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = httpx.get(f"{url}/healthz", timeout=10).json()["journal"]
        if counts.get("emitted") or counts.get("done"):
            return
        time.sleep(0.2)
    raise AssertionError(f"the webhook event was never emitted: {counts}")


def _mirror_with_password(sandbox, tmp_path) -> tuple[list[str], Path]:
    """A mirror into a registry behind htpasswd: right password, then a wrong one."""
    from prefect_docker import DockerRegistryCredentials

    from sandbox.registry import start_registry
    from sandbox.seed import seed_cuda_image
    from shipyard.flows.mirror.flow import mirror_base_image

    good = remember("registry password", "Reg-pw-" + secrets.token_hex(8))
    bad = remember("wrong registry password", "Reg-wrong-" + secrets.token_hex(8))
    private = start_registry(tmp_path / "private-registry", htpasswd=("scan-bot", good))
    try:
        for name, password in (("scan-dst-ok", good), ("scan-dst-bad", bad)):
            DockerRegistryCredentials(
                username="scan-bot", password=password, registry_url=private.host
            ).save(name, overwrite=True)
        seeded = seed_cuda_image(sandbox.registry_url, "scan/cuda", "12.1.1-scan")
        ok = asyncio.run(
            mirror_base_image(
                seeded.ref, f"{private.host}/base/cuda", destination_credentials="scan-dst-ok"
            )
        )
        assert ok["digest"] == seeded.digest
        state = asyncio.run(
            mirror_base_image(
                seeded.ref,
                f"{private.host}/other/cuda",
                destination_credentials="scan-dst-bad",
                return_state=True,
            )
        )
        assert state.is_failed()
    finally:
        private.stop()
    return [good, bad], tmp_path / "private-registry"


def test_no_secret_in_any_log_artifact_event_state_row_or_file(
    stage,
    make_target,
    sandbox,
    sandbox_admin,
    internal_token,
    webhook_receiver,
    tmp_path,
    info_logs,
):
    from shipyard.flows.release.flow import run_release

    since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)  # the session's events too
    url, webhook_secret, receiver_log = webhook_receiver

    # A release that passes its canary (the token is sent), one retried 503 on the way,
    # then one whose canary fails and rolls back.
    stage(
        revision_faults=[
            {"fault": "http_503", "requests": 1},
            {"fault": "silent_cpu_fallback", "image_contains": ":v2"},
        ]
    )
    target = make_target()
    good = run_release("v1.0.0", target, image=f"{IMAGE}:v1.0.0")
    bad = run_release("v2.0.0", target, image=f"{IMAGE}:v2.0.0")
    assert good.outcome == "released" and good.canary.passed
    assert bad.outcome == "rolled_back"

    registry_passwords, registry_root = _mirror_with_password(sandbox, tmp_path)

    assert _deliver(url, webhook_secret, "v9.0.0") == [202, 401, 401]
    _wait_emitted(url)

    needles = {
        "internal token": internal_token,
        "webhook secret": webhook_secret,
        "registry password": registry_passwords[0],
        "wrong registry password": registry_passwords[1],
    }
    haystacks = Haystacks()
    prefect_texts(haystacks, since)
    haystacks.add("results", [("good", good.model_dump_json()), ("bad", bad.model_dump_json())])
    haystacks.add("cloud logging", (("entry", json.dumps(e)) for e in sandbox_admin.logs()))
    haystacks.files = [*database_files(), receiver_log, *folder_files(sandbox.root)]
    haystacks.files += [p for p in registry_root.rglob("*") if p.is_file() and p.name != "htpasswd"]
    assert haystacks.of("logs") and haystacks.of("events") and haystacks.of("cloud logging")
    assert any("TransientAnswer" in m for m in haystacks.of("logs"))  # the retried 503
    assert any("scan-dst-bad" in m for m in haystacks.of("logs"))  # the refused password
    assert "delivery" in receiver_log.read_text()
    # The scan reads real data: the service's name is in the database files.
    assert any(target.service.encode() in p.read_bytes() for p in database_files())

    assert haystacks.hits(needles) == []
