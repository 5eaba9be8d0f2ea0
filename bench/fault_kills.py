"""The SIGKILL cases of the fault matrix: the release runs in a process of its own and is killed
(SIGKILL: no hook runs) at a named point: in the quota polling, the deploy, the build, the
canary, during the cutover's traffic update, after the cutover. Then either the operator runs it
again, or nobody does and `flows/release/slot.py: sweep` cleans up what the dead run left (its
run and subflow runs still Running, its Cloud Build, its canary tag, its slot). Each case checks
the invariants, duplicates, the slot, the record and the ledger against the truth
(bench/fault_records.py) and that no flow run of the case is left Running. bench/faults.py runs
every case; tests/release/test_fault_matrix.py the new ones of issue 24."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.fault_matrix import (
    EU,
    IMAGE,
    US,
    BuildBlocks,
    CaseResult,
    duplicate_revisions,
    slot_held,
)
from bench.fault_records import Truth, record_problems, runs_left_running

TAG = "v1.0.0"
# The tag's push time, given to the killed run as the webhook gives it; the operator's re-run
# (the CLI) gives none: the record must still carry this one.
PUSHED_AT = "2026-01-02T03:04:05+00:00"
# When the bench's and the tests' git repositories tag v1.0.0 (an annotated tag).
TAGGED_AT = "2026-01-02T01:02:03+00:00"


def _calls(name: str, at_least: int = 1) -> Callable[[Any, str], bool]:
    return lambda admin, service: admin.calls().get(name, 0) >= at_least


def _canary_tagged(admin: Any, service: str) -> bool:
    history = admin.traffic_history(service)
    return any(t.get("tag") == "canary" for e in history for t in e["traffic"])


def _cut_over(admin: Any, service: str) -> bool:
    """The cutover's update was accepted: the tag's revision has 100% (its operation, slowed
    by the scenario's traffic_update_ms, is not done yet)."""
    from sandbox.release_invariants import release_revision_name

    gpu = release_revision_name(service, TAG)
    history = admin.traffic_history(service)
    return any(t["revision"] == gpu and t["percent"] == 100 for e in history for t in e["traffic"])


def _url_published(admin: Any, service: str) -> bool:
    """The serving URL was published: the release is past its cutover (publish-url follows it)."""
    from prefect.variables import Variable

    from shipyard.flows.deploy.traffic import serving_url_variable

    return Variable.get(serving_url_variable(service), default=None) is not None


@dataclass(frozen=True)
class KillCase:
    point: str  # where the release is killed
    ready: Callable[[Any, str], bool]  # (admin, service) -> the release reached the point
    base: str = "healthy"
    scenario: dict[str, Any] = field(default_factory=dict)
    rerun: bool = True  # False: nobody releases again; slot.sweep cleans up
    build: bool = False  # the release builds the tag (and is given no image)
    expect_region: str = EU

    @property
    def id(self) -> str:
        return f"kill:{self.point}" + ("" if self.rerun else ", nobody re-runs")


KILL_CASES: list[KillCase] = [
    KillCase("quota polling", _calls("quotas.create_preference"), base="default", expect_region=US),
    KillCase(
        "deploy", _calls("run.service_created"), scenario={"operations": {"polls_before_done": 20}}
    ),
    KillCase("canary", _canary_tagged, scenario={"serving": {"gpu_ms": 400, "cpu_ms": 4000}}),
    KillCase(
        "build",
        _calls("build.create"),
        scenario={"builds": {"queue_ms": 3000, "step_delay_ms": 500}},
        build=True,
    ),
    # The cutover's traffic update accepted, its operation not done for 4 s: killed meanwhile.
    KillCase("traffic update", _cut_over, scenario={"operations": {"traffic_update_ms": 4000}}),
    # Past the cutover (the URL published for a region outside the primary), before the record:
    # the primary refused the GPU for quota, and deleting the service the release made there is
    # slowed down, so the kill lands between the cutover and the record, every time.
    KillCase(
        "after the cutover",
        _url_published,
        scenario={
            "regions": {EU: {"deploy_error": {"where": "revision", "reason": None}}},
            "apis": {"run": {"latency_ms": 1500, "only_path": f"/locations/{EU}/services/"}},
        },
        build=True,
        expect_region=US,
    ),
    KillCase(
        "canary",
        _canary_tagged,
        scenario={"serving": {"gpu_ms": 400, "cpu_ms": 4000}},
        rerun=False,
    ),
    KillCase(
        "build",
        _calls("build.create"),
        scenario={"builds": {"queue_ms": 3000, "step_delay_ms": 2000}},
        build=True,
        rerun=False,
    ),
]

_CHILD = """
import sys
from shipyard.flows.release.flow import release
release(sys.argv[1], sys.argv[2], image=sys.argv[3], commit=sys.argv[4], tagged_at=sys.argv[5])
"""


def run_kill_case(
    case: KillCase,
    stage: Callable[..., Any],
    make_target: Callable[..., Any],
    admin: Any,
    service: str,
    build_blocks: BuildBlocks | None = None,
    deadline_s: float = 300.0,
) -> CaseResult:
    """Start the release in a process of its own, SIGKILL it at the case's point, then run it
    again (or nobody does, and `sweep` cleans up); check the invariants, duplicates, the slot,
    the record and the ledger against the truth, and that no flow run of the case is left
    Running. `build_blocks` as for `run_case` (for a build case)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL
    from prefect.variables import Variable

    from sandbox.release_invariants import all_violations, release_revision_name
    from shipyard.flows.release.flow import run_release
    from shipyard.flows.release.hooks import canary_verdict
    from shipyard.flows.release.slot import holder_variable, sweep

    started = dt.datetime.now(dt.UTC)
    stage(case.base, **case.scenario)
    # A dead holder's slot is freed at once by the re-run's slot check; the wait only covers a
    # loaded Prefect server granting a free slot late (1 s was seen to run out under load).
    fields: dict[str, Any] = {"lock_timeout_s": 20}
    image, commit = f"{IMAGE}:{TAG}", ""
    if case.build:
        if build_blocks is None:
            raise ValueError(f"case {case.id} builds: pass build_blocks")
        extra, built = build_blocks(service, 600)
        fields.update(extra)
        image, commit = "", built or ""
    target = make_target(service=service, **fields)
    block = f"kill-{service}"[:60]
    target.save(block, overwrite=True)
    env = dict(os.environ, PREFECT_API_URL=str(PREFECT_API_URL.value()))
    argv = [sys.executable, "-c", textwrap.dedent(_CHILD), TAG, block, image, commit, PUSHED_AT]
    # The child's stderr: why it ended, when it ends early (closed below, after the read).
    errors = tempfile.TemporaryFile()  # noqa: SIM115 - handed to the child, read after it ends
    child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=errors)
    reached = False
    try:
        # Bounded: starting Python with Prefect and the Google clients on a loaded machine takes
        # up to a minute; the release itself a few seconds to the point.
        until = time.monotonic() + deadline_s
        while time.monotonic() < until and child.poll() is None:
            if case.ready(admin, service):
                reached = True
                break
            time.sleep(0.05)
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    errors.seek(0)
    last = [line for line in errors.read().decode(errors="replace").splitlines() if line.strip()]
    errors.close()
    if not reached:
        why = last[-1][:300] if last else "no output"
        detail = (
            f"the release ended (exit {child.returncode}) or stalled before {case.point}: {why}"
        )
        return CaseResult(case.id, "released", "not killed", False, [], [], False, detail)
    holder = Variable.get(holder_variable(service), default=None) or {}
    killed_run = holder.get("flow_run_id")
    results = []
    if case.rerun:
        try:
            result = run_release(TAG, target, image=image, commit=commit)
            got, results = result.outcome, [result]
        except Exception as exc:  # noqa: BLE001 - any failure is this case's outcome, recorded
            got = f"error: {exc}"[:600]
        expect = "released"
    else:
        done = sweep(service)
        got, expect = ("swept" if done else "nothing swept"), "swept"
    history = admin.traffic_history(service)
    violations = all_violations(history, results)
    duplicates = duplicate_revisions(history, admin.calls())
    if case.base == "default" and admin.calls().get("quotas.create_preference", 0) > 2:
        duplicates.append("a quota preference filed twice")
    builds = admin.calls().get("build.create", 0)
    if case.build and case.rerun and builds != 1:
        duplicates.append(f"{builds} builds, not 1")
    if case.build and not case.rerun and admin.calls().get("build.cancel", 0) < 1:
        violations.append("the dead run's Cloud Build was not cancelled")
    held = slot_held(service)
    gpu = release_revision_name(service, TAG)
    if results:
        verdict = canary_verdict(service, gpu) or {}
        truth = Truth(
            service,
            TAG,
            got,
            results[0].revision,
            results[0].region,
            commit=commit or (results[0].build.commit if results[0].build else ""),
            # The killed run was given the push's time (as the webhook gives it), the re-run
            # none: the push's time stands, over the tag's date in git and any run's start.
            tagged_at=PUSHED_AT,
            tagged_at_source="push",
            cpu_baseline_ms=verdict.get("baseline_ms"),
        )
        if got == "released" and results[0].region != case.expect_region:
            violations.append(f"serves in {results[0].region}, expected {case.expect_region}")
    else:
        truth = Truth(service, TAG, None)
    records = record_problems(truth)
    left = runs_left_running(started)
    if killed_run:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(killed_run).state
        if state is None or state.name != "Crashed":
            left.append(f"the killed run {killed_run} ended {state.name if state else None}")
    else:
        left.append("the killed run recorded no holder")
    passed = (
        got == expect and not violations and not duplicates and not held and not records
    ) and not left
    detail = f"killed run {killed_run}"
    return CaseResult(
        case.id, expect, got, passed, violations, duplicates, held, detail, records, left
    )
