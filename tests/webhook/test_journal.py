"""The journal outlives its receiver: rows answered 202 and never handed to Prefect (the
receiver was SIGKILLed right after answering, or in the middle of dispatching one) are
emitted by the next receiver started on the same file."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from receiver_kit import REPOSITORY, SECRET

from sandbox.procs import free_port, spawn, stop_pid, wait_for_port
from shipyard.deployments.webhook.journal import Journal
from shipyard.deployments.webhook.parse import TagPush


def _push(tag: str) -> TagPush:
    return TagPush("github", str(uuid.uuid4()), REPOSITORY, tag, "ab" * 20, f"refs/tags/{tag}")


def _dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(done.stdout)


def test_a_lease_of_a_killed_process_is_free_at_once_a_live_one_is_not(tmp_path):
    path = tmp_path / "journal.db"
    first = Journal(path)
    first.record(_push("v1.0.0"), "push", "d1", 0)
    first.owner = f"{first.owner.split(':')[0]}:{_dead_pid()}:gone"
    assert [r.push.tag for r in first.lease_due()] == ["v1.0.0"]
    second = Journal(path)
    assert [r.push.tag for r in second.lease_due()] == ["v1.0.0"]  # the holder is dead
    third = Journal(path)  # same process as `second`, alive: its lease holds
    assert third.lease_due() == []


@pytest.mark.slow  # a receiver process: ~5 s to start
def test_restarted_receiver_emits_what_its_predecessor_journaled(prefect_server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    path = tmp_path / "journal.db"
    journal = Journal(path)
    answered = _push("v2.0.0")  # answered 202, then the receiver died
    mid_dispatch = _push("v2.0.1")  # leased by the dispatcher when it died
    assert journal.record(answered, "push", "d-answered", 0).status == "accepted"
    assert journal.record(mid_dispatch, "push", "d-mid", 0).status == "accepted"
    journal.owner = f"{journal.owner.split(':')[0]}:{_dead_pid()}:killed"
    journal.lease_due()
    journal.close()

    port = free_port()
    proc = spawn(
        [
            str(Path(sys.executable).with_name("shipyard")),
            *("webhook", "serve", "--port", str(port), "--journal", str(path)),
            *("--repo", f"{REPOSITORY}=default"),
        ],
        tmp_path / "receiver.log",
        env={"PREFECT_API_URL": PREFECT_API_URL.value(), "SHIPYARD_WEBHOOK_SECRET": SECRET},
    )
    try:
        wait_for_port("127.0.0.1", port, 90, proc=proc)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            counts = httpx.get(f"http://127.0.0.1:{port}/healthz").json()["journal"]
            if counts.get("emitted", 0) + counts.get("done", 0) == 2:
                break
            time.sleep(0.2)
        assert counts.get("emitted", 0) + counts.get("done", 0) == 2, counts
    finally:
        stop_pid(proc.pid)

    wanted = {str(answered.event_id), str(mid_dispatch.event_id)}
    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = client.request(
                "POST", "/events/filter", json={"filter": {"id": {"id": list(wanted)}}}
            ).json()["events"]
            if {e["id"] for e in found} == wanted:
                break
            time.sleep(0.2)
    assert {e["id"] for e in found} == wanted
    assert {e["payload"]["tag"] for e in found} == {"v2.0.0", "v2.0.1"}
