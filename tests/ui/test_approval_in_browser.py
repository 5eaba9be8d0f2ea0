"""The approval gate in the real Prefect UI, in headless Chromium: a release (the gate's stand-in,
tests/rollout/gate_standin.py, served by a runner in its own process) waits suspended at its
gate; on the run page a person opens the Resume form (the run's menu > Resume), reads the
evidence, gives their name and a comment, ticks Approve and resumes. The release runs again from
the start, goes past the gate with that answer, and its decision carries the approver.

Screenshots go to the test's tmp dir; with SHIPYARD_SCREENSHOTS_DIR set, the filled form's is
copied there too (README's picture of the gate).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import uuid
from pathlib import Path

import pytest
from chromium_page import Page, chromium_binary
from prefect_ui_kit import fill, start_ui, stop_group, wait_run_final, wait_ui

pytestmark = [pytest.mark.slow, pytest.mark.ui, pytest.mark.timeout(900)]

ROLLOUT_TESTS = Path(__file__).parents[1] / "rollout"
# The run page's menu (a button whose only text is the screen-reader "Open menu").
RUN_MENU = (
    "Array.from(document.querySelectorAll('button')).find(b => b.innerText.trim() === 'Open menu')"
)
MENU_RESUME = (
    "Array.from(document.querySelectorAll('[role=menuitem]'))"
    ".find(e => e.innerText.trim() === 'Resume')"
)
DIALOG = "document.querySelector('[role=dialog]')"
DIALOG_RESUME = (
    f"Array.from({DIALOG}.querySelectorAll('button')).find(b => b.innerText.trim() === 'Resume')"
)
# The Approve field's control: the switch or checkbox nearest to the label titled "Approve".
APPROVE = (
    "(() => { const l = Array.from(document.querySelectorAll('[role=dialog] label'))"
    ".find(e => e.innerText.trim().split(/\\s/)[0] === 'Approve'); if (!l) return null;"
    " let c = l; while (c && !c.querySelector('[role=switch], [role=checkbox],"
    " input[type=checkbox]')) c = c.parentElement;"
    " return c && c.querySelector('[role=switch], [role=checkbox], input[type=checkbox]'); })()"
)


def _wait(what: str, probe, timeout: float, proc=None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log else ""
            raise TimeoutError(f"{what}: not within {timeout:.0f} s\n{tail}")
        time.sleep(0.5)


def test_approve_from_the_resume_form(prefect_server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL
    from prefect.variables import Variable

    from sandbox.procs import spawn
    from shipyard.blocks.release_target import ReleaseTarget
    from shipyard.blocks.rollout_policy import RolloutPolicy, RolloutStep

    assert chromium_binary(), "Debian's chromium is missing (Makefile APT_PKGS: make setup)"
    api_url = str(PREFECT_API_URL.value())
    tag = uuid.uuid4().hex[:6]
    name, service, block = f"gate-ui-{tag}", f"gate-ui-{tag}", f"gate-ui-{tag}"
    shots = tmp_path / "screenshots"
    shots.mkdir()
    ui, ui_url = start_ui(api_url, tmp_path / "ui.log")
    serve_log = tmp_path / "serve.log"
    served = spawn(
        [sys.executable, str(ROLLOUT_TESTS / "gate_standin.py"), name],
        serve_log,
        env={
            "PREFECT_API_URL": api_url,
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(ROLLOUT_TESTS),
        },
    )
    page = None
    try:
        page = Page(width=1400, height=1150)
        ReleaseTarget(
            service=service,
            regions=["europe-west1"],
            project="gate-test",
            rollout=RolloutPolicy(
                steps=[RolloutStep(percent=10), RolloutStep(percent=50, approval=True)],
                gate_timeout_s=1800,
            ),
        ).save(block, overwrite=True)
        wait_ui(ui, ui_url)
        with get_client(sync_client=True) as client:

            def deployed() -> bool:
                try:
                    client.read_deployment_by_name(f"gate-standin/{name}")
                except ObjectNotFound:
                    return False
                return True

            _wait("the served stand-in", deployed, 180, served, serve_log)
            run_id = run_deployment(
                f"gate-standin/{name}", parameters={"target": block}, timeout=0, as_subflow=False
            ).id

            def suspended() -> bool:
                state = client.read_flow_run(run_id).state
                assert state is None or not state.is_final(), state
                return state is not None and state.is_paused()

            _wait("the release suspended at its gate", suspended, 300, served, serve_log)

        # The run page > its menu > Resume: the form the RunInput draws, under the evidence.
        page.goto(f"{ui_url}/v2/runs/flow-run/{run_id}")
        page.click(RUN_MENU, 120, "the run's menu")
        page.click(MENU_RESUME, 60, "Resume in the run's menu")
        page.wait_for(
            f"{DIALOG} && {DIALOG}.innerText.includes('Approve to go on to 50%')",
            120,
            "the Resume form with the evidence",
        )
        (tmp_path / "dialog.html").write_text(page.evaluate(f"{DIALOG}.outerHTML") or "")
        fill(page, "Approver", "Grace Hopper")
        fill(page, "Comment", "error rate and p95 within band")
        page.click(APPROVE, 60, "the Approve switch")
        page.wait_for(
            f"{APPROVE}.getAttribute('aria-checked') === 'true' || {APPROVE}.checked === true",
            30,
            "Approve ticked",
        )
        page.screenshot(shots / "1-resume-form.png")
        page.click(DIALOG_RESUME, 60, "the form's Resume button")

        ended = wait_run_final(run_id, 420)
        assert ended == "Completed", ended
        decision = Variable.get(f"standin-{service}")
        assert decision == {
            "runs": 2,
            "approved": True,
            "by": "Grace Hopper",
            "comment": "error rate and p95 within band",
            "timed_out": False,
        }
        page.goto(f"{ui_url}/v2/runs/flow-run/{run_id}")
        page.wait_for("document.body.innerText.includes('Completed')", 120, "the run Completed")
        page.screenshot(shots / "2-run-completed.png", beyond_viewport=False)
    except BaseException:
        if page is not None:
            page.screenshot(shots / "failure.png")
        raise
    finally:
        if page is not None:
            page.close()
        stop_group(served)
        stop_group(ui)
    wanted = os.environ.get("SHIPYARD_SCREENSHOTS_DIR")
    if wanted:
        Path(wanted).mkdir(parents=True, exist_ok=True)
        shutil.copy(shots / "1-resume-form.png", Path(wanted) / "approval-resume-form.png")
