"""`shipyard sweep` after a release process was killed outright (SIGKILL: no hook runs) while
its build ran, and nobody releases the service again: the run and its child build run both end
Crashed, the Cloud Build is cancelled, the slot is freed; a second sweep finds nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
KILLED_IN_BUILD = """
import sys
from shipyard.flows.release.flow import release
release("v1.0.0", sys.argv[1])
"""


def _children(client, run_id) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    return client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id])
        )
    )


def test_sweep_ends_a_killed_release_and_its_build_crashed(
    stage, make_target, sandbox_admin, app_build, pinned_base
):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL
    from prefect.variables import Variable
    from typer.testing import CliRunner

    from shipyard.deployments.cli.main import app
    from shipyard.flows.release.slot import holder_variable

    stage(builds={"queue_ms": 3_600_000})  # the build stays QUEUED: the kill lands during it
    settings_block, repo = app_build
    repo.tag("v1.0.0")
    target = make_target(base_image=pinned_base, build_settings_block=settings_block)
    block = f"sweep-{target.service}"[:60]
    target.save(block, overwrite=True)
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_IN_BUILD, block],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # No deadline of its own while the child lives (the suite's per-test timeout bounds it).
        run_id = None
        with get_client(sync_client=True) as client:
            while True:
                assert proc.poll() is None, "the release ended before its build was followed"
                holder = Variable.get(holder_variable(target.service), default=None)
                run_id = (holder or {}).get("flow_run_id")
                if run_id and sandbox_admin.calls().get("build.create", 0) >= 1:
                    builds = _children(client, run_id)
                    if builds and all(b.state and b.state.is_running() for b in builds):
                        break
                time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    swept = CliRunner().invoke(app, ["sweep", block])

    assert swept.exit_code == 0, swept.output
    assert "marked Crashed: 2 flow run(s)" in swept.output, swept.output
    assert "cancelled Cloud Build" in swept.output, swept.output
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        (build,) = _children(client, run_id)
    assert run.state is not None and run.state.is_crashed()
    assert build.state is not None and build.state.is_crashed()
    assert sandbox_admin.calls().get("build.cancel", 0) == 1
    assert Variable.get(holder_variable(target.service), default=None) is None  # slot freed

    again = CliRunner().invoke(app, ["sweep", target.service])  # by service name too
    assert again.exit_code == 0 and "nothing to sweep" in again.output, again.output
