"""A release terminated midway (SIGTERM to its process, as a worker's cancel or a node drain
does) still leaves its `started` events and the `failed` ones of the stage it was in."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_release_guards import _all_events

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import sys
from shipyard.blocks.release_target import ReleaseTarget
from shipyard.flows.release.flow import release
release("v7.0.0", ReleaseTarget.model_validate_json(sys.argv[1]), image=sys.argv[2])
"""


def _names(service: str, since: dt.datetime) -> list[str]:
    from prefect.events.filters import EventFilter, EventOccurredFilter, EventResourceFilter

    event_filter = EventFilter(
        occurred=EventOccurredFilter(since=since),
        resource=EventResourceFilter(id=[f"shipyard.cloud-run.service.{service}"]),
    )
    events = _all_events(event_filter)
    return [e.event for e in sorted(events, key=lambda e: e.occurred)]


def _wait_for(service, since, name, timeout=120.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        names = _names(service, since)
        if name in names:
            return names
        time.sleep(0.2)
    raise AssertionError(f"{name} never arrived; saw {_names(service, since)}")


def test_release_terminated_midway_leaves_started_and_failed_events(stage, make_target):
    from prefect.settings import PREFECT_API_URL

    # The deploy's operation never finishes: the deploy step waits (up to 90 s) when killed.
    # (A revision that cannot start fails at once and the release rolls back by itself.)
    stage(operations={"polls_before_done": 1_000_000})
    target = make_target(ready_timeout_s=90)
    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, target.model_dump_json(), "registry.sandbox.local/p:v7"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(target.service, since, "shipyard.deploy.started")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    names = _wait_for(target.service, since, "shipyard.release.failed", timeout=30)
    assert names[0] == "shipyard.release.started"
    assert "shipyard.quota.succeeded" in names
    assert names.index("shipyard.deploy.started") < names.index("shipyard.deploy.failed")
    assert names.index("shipyard.deploy.failed") < names.index("shipyard.release.failed")
    assert not any(n.endswith(".succeeded") and "deploy" in n for n in names)
