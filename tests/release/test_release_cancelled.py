"""A release cancelled through the Prefect API at each step leaves the service as the last good
release left it: no running Cloud Build, no `canary` tag, 100% on a Ready last-good revision,
the release slot free, and the invariants over the whole traffic history.

Cancellation from the API (the UI's Cancel button) only reaches a run that something
supervises: the release is a deployment served by a runner (`release.serve`, in its own process
with the sandbox's environment), as a user's worker would run it. The runner kills the run's
process and runs the flow's `on_cancellation` hook (flows/release/hooks.py) before it marks the
run Cancelled. Each case makes one step slow with a scenario the sandbox emulates (a queued
build, a revision that never becomes Ready, slow pages, a traffic update that takes its time)
and cancels when that step has started.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.states import Cancelling
from test_release_guards import _events

from bench.fault_matrix import slot_held
from sandbox.release_invariants import (
    invariant_violations,
    serving,
    stale_canary_tags,
    stale_tags,
)
from shipyard.flows.release.hooks import canary_verdict

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "registry.sandbox.local/pages/page-service"
DEPLOYMENT = "release-cancel-tests"
EU = "europe-west1"
SERVE = """
import sys
from shipyard.flows.release.flow import release
release.serve(name=sys.argv[1], print_starting_message=False)
"""


@dataclass(frozen=True)
class Pause:
    """Where a case cancels: the step, what makes it slow, the event that says it started."""

    step: str
    started: str  # the event (or "build-listed": the tag's build exists on Cloud Build)
    scenario: dict[str, Any] = field(default_factory=dict)
    target: dict[str, Any] = field(default_factory=dict)
    builds: bool = False  # no image: the release builds the tag


PAUSES = [
    # The GPU revision never becomes Ready: the deploy step waits for it.
    Pause(
        "deploy",
        "shipyard.deploy.started",
        {"revision_faults": [{"fault": "never_ready"}]},
        {"ready_timeout_s": 120},
    ),
    # Each page takes a minute on the GPU revision: the canary's first request is in flight.
    Pause("canary", "shipyard.canary.started", {"serving": {"gpu_ms": 60_000}}),
    # The cutover's traffic update takes its time (Google routes traffic in seconds).
    Pause("cutover", "shipyard.cutover.started", {"operations": {"traffic_update_ms": 15_000}}),
    # The build waits in Cloud Build's queue.
    Pause("build", "build-listed", {"builds": {"queue_ms": 120_000}}, builds=True),
]


@pytest.fixture(scope="module")
def served(sandbox, prefect_server, tmp_path_factory):
    """The release flow served as a deployment by a runner process; its deployment id."""
    from prefect.settings import PREFECT_API_URL

    log = tmp_path_factory.mktemp("runner") / "runner.log"
    env = {
        **os.environ,  # the sandbox's endpoints (the session fixture applied them)
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PREFECT_LOGGING_LEVEL": "INFO",  # the runner's log says how far a run got
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVE, DEPLOYMENT],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deployment_id = _wait(lambda: _deployment_id(), 240, "the served deployment", proc, log)
        yield SimpleNamespace(id=deployment_id, log=log, proc=proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _deployment_id():
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(f"release/{DEPLOYMENT}").id
        except ObjectNotFound:
            return None


def _wait(probe, timeout: float, what: str, proc=None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(f"{what}: not within {timeout:.0f} s\n{tail}")


def _tag_builds(git_tag: str) -> list:
    from shipyard.blocks.cloud import GoogleCloud

    cloud = GoogleCloud()
    client = cloud.builds_client()
    return list(client.list_builds(project_id=cloud.resolved_project(), filter=f'tags="{git_tag}"'))


def _started(pause: Pause, service: str, git_tag: str, since: dt.datetime) -> bool:
    if pause.started == "build-listed":
        return bool(_tag_builds(git_tag))
    events = _events(f"shipyard.cloud-run.service.{service}", since, pause.started, timeout=0)
    return any(e.event == pause.started for e in events)


def _release_cancelled_when(served, target, git_tag: str, image: str, started, what: str):
    """Run the served release of `git_tag` to `target` (saved as a block), cancel it through
    the API once `started()` holds, and return the run's final state."""
    block = f"cancel-{what}-{uuid.uuid4().hex[:6]}"
    target.save(block, overwrite=True)
    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(
            served.id, parameters={"git_tag": git_tag, "target": block, "image": image}
        )
        _wait(
            started,
            180,  # a generous bound for a loaded machine; no timing is asserted
            f"{what} to start",
            served.proc,
            served.log,
        )
        client.set_flow_run_state(run.id, Cancelling(message="cancelled by the test"))
        return _wait(
            lambda: (s := client.read_flow_run(run.id).state) is not None and s.is_final() and s,
            120,
            "the run to end",
            served.proc,
            served.log,
        )


@pytest.mark.parametrize("pause", PAUSES, ids=lambda p: p.step)
def test_cancelled_at_each_step_leaves_the_last_good_release(
    pause, served, stage, make_target, sandbox_admin, request
):
    from google.cloud.devtools import cloudbuild_v1

    stage(**pause.scenario)
    fields: dict[str, Any] = {"ready_timeout_s": 60, **pause.target}
    if pause.builds:
        settings_block, repo = request.getfixturevalue("app_build")
        fields.update(
            base_image=request.getfixturevalue("pinned_base"), build_settings_block=settings_block
        )
    target = make_target(**fields)
    git_tag = "v1.0.0"
    if pause.builds:
        repo.tag(git_tag)
    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    final = _release_cancelled_when(
        served,
        target,
        git_tag,
        "" if pause.builds else f"{IMAGE}:{git_tag}",
        lambda: _started(pause, target.service, git_tag, since),
        pause.step,
    )
    assert final.type == StateType.CANCELLED, (final.name, final.message)

    # No build of the tag still runs; the queued one was cancelled.
    builds = _tag_builds(git_tag)
    running = {cloudbuild_v1.Build.Status.QUEUED, cloudbuild_v1.Build.Status.WORKING}
    assert not [b.id for b in builds if b.status in running]
    if pause.builds:
        assert [b.status for b in builds] == [cloudbuild_v1.Build.Status.CANCELLED]

    # Traffic: 100% on a Ready last-good revision, no canary tag, invariants over the history.
    history = sandbox_admin.traffic_history(target.service)
    assert stale_canary_tags(history) == []
    gpu, cpu = f"{target.service}-v1-0-0", f"{target.service}-v1-0-0-cpu"
    passed = []
    if pause.step == "cutover":  # the canary passed and its verdict was recorded first
        verdict = canary_verdict(target.service, gpu)
        assert verdict is not None and verdict["passed"]
        passed = [
            SimpleNamespace(
                revision=gpu,
                outcome="released",
                canary=SimpleNamespace(passed=True, judged_at=verdict["judged_at"]),
            )
        ]
    assert invariant_violations(history, passed) == []
    if pause.step == "build":
        assert history == []  # nothing was deployed
    else:
        last_good = {gpu, cpu} if pause.step == "cutover" else {cpu}
        now = serving(history, EU)
        assert list(now.values()) == [100] and set(now) <= last_good, now

    # The slot is free for the next release of the service.
    assert _wait(lambda: not slot_held(target.service), 30, "the release slot to be freed")


def test_cancelled_while_the_cpu_baseline_is_tagged_leaves_no_baseline_tag(
    served, stage, make_target, sandbox_admin
):
    """v1's GPU revision serves, its CPU revision is Ready at 0% (what a release of v1 leaves).
    v2's canary tags that CPU revision `baseline` to measure it, and the run is cancelled while
    the tag's traffic update is still under way: the run's own untag (after the measurement)
    is never reached, so the hook takes the tag off, with the canary's."""
    from google.cloud import run_v2

    from shipyard.flows.deploy.templates import cpu_template, gpu_template
    from shipyard.flows.release.context import RunContext
    from shipyard.tasks import cloud_run as cr

    # Quota for two GPU instances: v1 keeps serving during v2's canary (no handover to the
    # CPU revision), so the baseline is measured through a `baseline` tag. A traffic update
    # takes 2 s (Google's take seconds): the cancel lands while the tag is being put on.
    stage(
        default_region={"gpu": 2, "gpu_no_zonal_redundancy": 2},
        operations={"traffic_update_ms": 2_000},
    )
    target = make_target(regions=[EU])
    v1 = RunContext(target, "v1.0.0", f"{IMAGE}:v1.0.0")
    created = cr.create_service(
        v1.services,
        v1.project,
        EU,
        run_v2.Service(template=cpu_template(v1)),
        target.service,
        poll_s=0.02,
    )
    created.template = gpu_template(v1, EU)  # a new revision: no traffic-only delay
    created.traffic = [cr.Traffic(v1.gpu_revision, 100).to_proto()]
    cr.update_service(v1.services, created, poll_s=0.02)

    final = _release_cancelled_when(
        served,
        target,
        "v2.0.0",
        f"{IMAGE}:v2.0.0",
        lambda: stale_tags(sandbox_admin.traffic_history(target.service), "baseline"),
        "cpu-baseline",
    )
    assert final.type == StateType.CANCELLED, (final.name, final.message)

    history = sandbox_admin.traffic_history(target.service)
    assert stale_tags(history, "baseline") == []
    assert stale_canary_tags(history) == []
    assert invariant_violations(history, [], known_good={v1.gpu_revision}) == []
    assert serving(history, EU) == {v1.gpu_revision: 100}
    assert _wait(lambda: not slot_held(target.service), 30, "the release slot to be freed")
