"""A release cancelled through the Prefect API at each step leaves the service as the last good
release left it: no running Cloud Build, no `canary` tag, 100% on a Ready last-good revision,
the release slot free, and the invariants over the whole traffic history; and the cancel is recorded as one (a `cancelled`
ledger row, a state message and a summary that say what serves).

Cancellation from the API (the UI's Cancel button) only reaches a run that something
supervises: the release is a deployment served by a runner (`release.serve`, in its own process
with the sandbox's environment), as a user's worker would run it. The runner kills the run's
process and runs the flow's `on_cancellation` hook (flows/release/hooks.py) before it marks the
run Cancelled. Each case holds one step with a scenario the sandbox emulates (a queued build,
a service whose deploy operation never reports done, slow pages, a traffic update that takes its
time), each far longer than the test may last, so that the step cannot end by itself before the
cancel, whatever the machine's load; and it cancels only once it has seen the step start (its
`started` event) and, where the sandbox shows it, the held state itself (the deploy's service
created, the cutover's traffic moved): no race between the cancel and a timeout.
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
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import ArtifactSort
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

# The module's first test also waits for the served runner to come up (and, first in a session,
# for the session's server and sandbox): under load that alone can take minutes, which the
# suite's 300 s per test would count against the test.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "registry.sandbox.local/pages/page-service"
DEPLOYMENT = "release-cancel-tests"
EU = "europe-west1"
SERVE = """
import sys
from shipyard.flows.release.flow import release
release.serve(name=sys.argv[1], print_starting_message=False)
"""


# Longer than a test may last (pytest's timeout: 300 s): a held step cannot end by itself.
HOLD_MS = 3_600_000


@dataclass(frozen=True)
class Pause:
    """Where a case cancels: the step, what holds it, the event that says it started and what
    the sandbox shows once it is held."""

    step: str
    started: str  # the event (or "build-listed": the tag's build exists on Cloud Build)
    scenario: dict[str, Any] = field(default_factory=dict)
    target: dict[str, Any] = field(default_factory=dict)
    builds: bool = False  # no image: the release builds the tag
    # What the traffic history shows once the step is held: "created" (the region's service
    # exists), "gpu-serves" (the tag's GPU revision has the traffic), "" (nothing to see).
    held: str = ""


PAUSES = [
    # Cloud Run's operations never report done: the deploy step's first call, creating the
    # region's service with its CPU baseline (Google settles it at once: the baseline serves),
    # waits on its operation; the run's timeouts are longer than the test.
    Pause(
        "deploy",
        "shipyard.deploy.started",
        {"operations": {"polls_before_done": 1_000_000}},
        {"ready_timeout_s": HOLD_MS / 1000},
        held="created",
    ),
    # Each page takes a minute on the GPU revision: the canary's first request is in flight,
    # and the canary needs three of them.
    Pause("canary", "shipyard.canary.started", {"serving": {"gpu_ms": 60_000}}),
    # The cutover's traffic update takes its time (Google routes traffic in seconds, here it
    # reports the operation done after an hour); the traffic has moved already.
    Pause(
        "cutover",
        "shipyard.cutover.started",
        {"operations": {"traffic_update_ms": HOLD_MS}},
        {"ready_timeout_s": HOLD_MS / 1000},
        held="gpu-serves",
    ),
    # The build waits in Cloud Build's queue.
    Pause("build", "build-listed", {"builds": {"queue_ms": HOLD_MS}}, builds=True),
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
        deployment_id = _wait(lambda: _deployment_id(), 480, "the served deployment", proc, log)
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


def _started(pause: Pause, service: str, git_tag: str, since: dt.datetime, admin) -> bool:
    """The step has started and, where the sandbox shows it, is held."""
    if pause.started == "build-listed":
        return bool(_tag_builds(git_tag))
    events = _events(f"shipyard.cloud-run.service.{service}", since, pause.started, timeout=0)
    if not any(e.event == pause.started for e in events):
        return False
    history = admin.traffic_history(service)
    if pause.held == "created":
        return bool(history)
    if pause.held == "gpu-serves":
        return serving(history, EU) == {f"{service}-{git_tag.replace('.', '-')}": 100}
    return True


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


def _recorded_as_cancelled(service: str, git_tag: str, final) -> str:
    """The cancel is recorded as one (flows/release/cancelled.py): the run's last state is
    Cancelled with a message that says what serves, the ledger's row is `cancelled` (no `failed`
    row from the stopped process), the release summary says CANCELLED. The message."""
    from shipyard.flows.observe.ledger import CHANGE_FAILURES, read_ledger
    from shipyard.tasks.reports import artifact_key

    run_id = final.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        state = _wait(
            lambda: (
                (s := client.read_flow_run(run_id).state) is not None
                and "CANCELLED by hand" in (s.message or "")
                and s
            ),
            60,
            "the cancelled run's state message",
        )
        summary = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[artifact_key("release", service)])
            ),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )[0]
    assert state.type == StateType.CANCELLED
    rows = [r for r in read_ledger(service) if r.flow_run_id == str(run_id)]
    assert [(r.outcome, r.git_tag) for r in rows] == [("cancelled", git_tag)], rows
    assert rows[0].outcome not in CHANGE_FAILURES
    assert "**CANCELLED**" in str(summary.data)
    return state.message


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
        lambda: _started(pause, target.service, git_tag, since, sandbox_admin),
        pause.step,
    )
    assert final.type == StateType.CANCELLED, (final.name, final.message)
    message = _recorded_as_cancelled(target.service, git_tag, final)

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
        assert "nothing serves" in message, message
    else:
        last_good = {gpu, cpu} if pause.step == "cutover" else {cpu}
        now = serving(history, EU)
        assert list(now.values()) == [100] and set(now) <= last_good, now
        assert f"{next(iter(now))} serves 100% in {EU}" in message, message

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
