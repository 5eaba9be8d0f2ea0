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


KILLED_PAST_CUTOVER = """
import sys
from shipyard.flows.release.flow import release
release("v2.0.0", sys.argv[1], image=sys.argv[2], commit=sys.argv[3], tagged_at=sys.argv[4])
"""


def test_rerun_after_a_kill_past_the_cutover_records_the_original_release(
    stage, make_target, sandbox_admin
):
    """SIGKILL (no hook runs) once the cutover moved the traffic: the re-run a person starts
    (tag only: no image, commit or push time) is a no-op on Cloud Run, and its ledger row and the
    release record carry the killed run's commit, image, push time and CPU baseline."""
    from prefect.settings import PREFECT_API_URL

    from sandbox.release_invariants import serving
    from shipyard.flows.canary.stage import recorded_release
    from shipyard.flows.observe.ledger import read_ledger
    from shipyard.flows.release.flow import release
    from shipyard.flows.release.hooks import canary_verdict

    # The cutover's traffic update is accepted (the traffic moves) and reported done only after
    # an hour: the kill lands past the cutover, before anything is recorded.
    stage(operations={"traffic_update_ms": 3_600_000})
    target = make_target(lock_timeout_s=20)
    block = f"killed-{target.service}"[:60]
    target.save(block, overwrite=True)
    commit, image = "c0ffee" * 6 + "abcd", "registry.sandbox.local/pages/page-service:v2.0.0"
    gpu = f"{target.service}-v2-0-0"
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_PAST_CUTOVER, block, image, commit, "2026-02-12T09:30:00Z"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # No deadline of its own while the child lives (the suite's per-test timeout bounds it).
        while serving(sandbox_admin.traffic_history(target.service), "europe-west1") != {gpu: 100}:
            assert child.poll() is None, "the release ended before its cutover"
            time.sleep(0.1)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert read_ledger(target.service) == []  # the killed run recorded nothing

    again = release("v2.0.0", block)

    assert again.noop and again.revision == gpu
    (row,) = read_ledger(target.service)
    assert (row.outcome, row.noop, row.revision) == ("released", False, gpu)
    assert (row.commit, row.image) == (commit, image)
    assert row.tagged_at_source == "push" and (row.tagged_at or "").startswith("2026-02-12T09:30")
    assert row.completes_run and row.completes_run != row.flow_run_id
    record = recorded_release(target.service)
    baseline = canary_verdict(target.service, gpu)["baseline_ms"]
    assert baseline and record["cpu_baseline_ms"] == baseline
    assert (record["commit"], record["image"], record["git_tag"]) == (commit, image, "v2.0.0")
    assert (record["tagged_at"] or "").startswith("2026-02-12T09:30")
