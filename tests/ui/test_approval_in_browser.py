"""The approval gate of the real release in the real Prefect UI, in headless Chromium (issue 22,
"Done when": "once in headless Chromium through the Prefect UI's Resume form, with the approver
in the ledger").

The release deployment is prefect.yaml's `release`, served by `shipyard serve` in its own
process with the session sandbox's environment (as tests/ui/test_release_in_browser.py serves
it), so its runs are deployment runs that the gate suspends (no abort deployment is served: the
gate's timeout, 30 min, is not this test's; the run page says so in one WARNING). v1 is released first (the stable revision; the
emulator's in-process revisions), then a run of the deployment releases v2 with a
50 % step (judged against v1 with the load generator on) and a 100 % step that asks approval:
the run suspends before 100 %. On the run page a person opens the Resume form (the run's menu >
Resume), reads the evidence (the 50 % step's figures and the decision line), gives their name
and a comment, ticks Approve and resumes. Prefect runs the release again from the start; it goes
past the gate with that answer and ends `released`. The approver is in the ledger's steps and
in the release summary's rollout table.

Screenshots go to the test's tmp dir; with SHIPYARD_SCREENSHOTS_DIR set, the filled form's is
copied there as approval-resume-form.png (README's picture of the gate).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

import pytest
from chromium_page import Page, chromium_binary
from prefect_ui_kit import (
    RUN_MENU,
    fill,
    post_answer,
    release_only_yaml,
    start_serving,
    start_ui,
    stop_group,
    wait_deployment,
    wait_run_final,
    wait_ui,
)

pytestmark = [pytest.mark.slow, pytest.mark.ui, pytest.mark.timeout(900)]

IMAGE = "registry.sandbox.local/pages/page-service"
APPROVER, COMMENT = "Grace Hopper", "error rate and p95 within band"
DIALOG = "document.querySelector('[role=dialog]')"
MENU_RESUME = (
    "Array.from(document.querySelectorAll('[role=menuitem]'))"
    ".find(e => e.innerText.trim() === 'Resume')"
)
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


def _wait_suspended(run_id, served, log: Path, timeout: float = 300):
    """The run's Suspended state once the gate suspended it (a final state fails at once)."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(run_id).state
            assert state is None or not state.is_final(), (state.name, state.message)
            if state is not None and state.is_paused():
                return state
            if served.poll() is not None or time.monotonic() > deadline:
                raise TimeoutError(
                    f"the release did not suspend at its gate within {timeout:.0f} s: "
                    + log.read_text(errors="replace")[-2000:]
                )
            time.sleep(0.5)


def _open_resume_form(page) -> str:
    """The run's menu > Resume; the dialog's text once it shows the gate's evidence."""
    page.click(RUN_MENU, 120, "the run's menu")
    page.click(MENU_RESUME, 60, "Resume in the run's menu")
    return page.wait_for(
        f"{DIALOG} && {DIALOG}.innerText.includes('Approve to go on to 100%') && "
        f"{DIALOG}.innerText",
        120,
        "the Resume form with the evidence",
    )


def _resume_answer(events: list[dict]) -> str | None:
    """What became of the last resume request among `events` (the UI's
    `POST /api/flow_runs/{id}/resume`): None (none sent), "sent", "ok" or "failed: why"."""
    return post_answer(events, "/resume")


def _resumed(run_id) -> bool:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state
    return state is not None and not state.is_paused()


def _fill_and_resume(page, run_id, screenshot: Path, tries: int = 3) -> None:
    """Fill the form as a person does (Approver, Comment, Approve ticked) and press Resume,
    until the UI's resume request is answered with success. A loaded session server can answer
    it with a 500 (SQLite's "database is locked", seen once in a full run): a person would press
    Resume again, so the test does, filling the form again if the dialog closed."""
    answers: list[str] = []
    for attempt in range(1, tries + 1):
        if attempt > 1 and not page.evaluate(f"!!{DIALOG}"):
            _open_resume_form(page)  # the failed answer closed the form: open it again
        fill(page, "Approver", APPROVER)
        fill(page, "Comment", COMMENT)
        if not page.evaluate(f"{APPROVE}.getAttribute('aria-checked') === 'true'"):
            page.click(APPROVE, 60, "the Approve switch")
        page.wait_for(
            f"{APPROVE}.getAttribute('aria-checked') === 'true' || {APPROVE}.checked === true",
            30,
            "Approve ticked",
        )
        if attempt == 1:
            page.screenshot(screenshot)
        page.send("Network.enable")  # from here on, every request the page sends is logged
        mark = len(page.events)
        page.click(DIALOG_RESUME, 60, f"the form's Resume button (click {attempt})")
        deadline = time.monotonic() + 240
        answer = None
        while time.monotonic() < deadline:
            page.evaluate("0")  # reads the events the browser sent meanwhile
            answer = _resume_answer(page.events[mark:])
            if answer == "ok" or _resumed(run_id):
                return
            if answer and answer.startswith("failed"):
                break
            time.sleep(0.5)
        answers.append(answer or "no request")
    raise TimeoutError(f"the Resume form's request did not succeed: {', '.join(answers)}")


def _summary(service: str) -> str:
    """The latest release summary of the service (markdown artifact `release-<service>`)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey

    from shipyard.tasks.reports import artifact_key

    key = artifact_key(f"release-{service}")
    with get_client(sync_client=True) as client:
        found = client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=[key]))
        )
    return next((str(a.data) for a in found if a.key == key), "")


def test_approve_the_real_release_from_the_resume_form(stage, make_target, sandbox, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.input.run_input import keyset_from_paused_state
    from prefect.settings import PREFECT_API_URL

    from sandbox.admin import SandboxAdmin
    from sandbox.release_invariants import serving, stale_canary_tags, stale_tags
    from shipyard.blocks.rollout_policy import (
        JudgePolicy,
        LoadGenerator,
        RolloutPolicy,
        RolloutStep,
    )
    from shipyard.flows.observe.ledger import read_ledger
    from shipyard.flows.release.flow import run_release
    from shipyard.flows.rollout.journal import read

    assert chromium_binary(), "Debian's chromium is missing (Makefile APT_PKGS: make setup)"
    api_url = PREFECT_API_URL.value()
    name = f"approval-ui-{uuid.uuid4().hex[:6]}"
    shots = tmp_path / "screenshots"
    shots.mkdir()
    # The slow starts first, side by side: the UI app, the served deployment, the browser.
    ui, ui_url = start_ui(api_url, tmp_path / "ui.log")
    serve_log = tmp_path / "serve.log"
    served = start_serving(
        release_only_yaml(tmp_path / "prefect.yaml", name), name, api_url, serve_log
    )
    page = None
    try:
        page = Page(width=1400, height=1150)
        stage(default_region={"gpu": 2, "gpu_no_zonal_redundancy": 2})  # both revisions' GPUs
        rollout = RolloutPolicy(
            steps=[RolloutStep(percent=50, bake_s=4.0), RolloutStep(percent=100, approval=True)],
            judge=JudgePolicy(min_samples=10, analysis_interval_s=1.0, failure_limit=1),
            load=LoadGenerator(rate_per_s=40, max_in_flight=32),
            gate_timeout_s=1800,
        )
        target = make_target(regions=["europe-west1"], rollout=rollout)
        block = f"approval-ui-{uuid.uuid4().hex[:6]}"
        target.save(block, overwrite=True)
        first = run_release("v1.0.0", block, image=f"{IMAGE}:v1.0.0")
        assert first.outcome == "released", first.reasons

        wait_deployment(f"release/{name}", served, serve_log)
        run_id = run_deployment(
            f"release/{name}",
            parameters={"git_tag": "v2.0.0", "target": block, "image": f"{IMAGE}:v2.0.0"},
            timeout=0,
            as_subflow=False,
        ).id
        state = _wait_suspended(run_id, served, serve_log)
        assert state.name == "Suspended", state.name  # not paused: the runner's process is gone
        # The form the UI draws: the RunInput's schema (its three fields) and the evidence.
        keys = keyset_from_paused_state(state)
        waiting = read(target.service)
        assert (
            waiting is not None and waiting.state == "awaiting-approval" and waiting.percent == 50
        )
        with get_client(sync_client=True) as client:
            schema = client.read_flow_run_input(run_id, keys["schema"])
        for field in ('"approve"', '"approver"', '"comment"', '"Approve"', '"Approver"'):
            assert field in schema, schema

        # The run page > its menu > Resume: the form, under the evidence.
        wait_ui(ui, ui_url)
        page.goto(f"{ui_url}/v2/runs/flow-run/{run_id}")
        evidence = _open_resume_form(page)
        (tmp_path / "dialog.html").write_text(page.evaluate(f"{DIALOG}.outerHTML") or "")
        assert "50%" in evidence and first.revision in evidence, evidence  # the step, the stable
        _fill_and_resume(page, run_id, shots / "1-resume-form.png")

        ended = wait_run_final(run_id, 420)
        assert ended == "Completed", (ended, serve_log.read_text(errors="replace")[-2000:])
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

    # The approver, the decision and the comment: in the ledger and the summary.
    entry = [e for e in read_ledger(target.service) if e.git_tag == "v2.0.0"][-1]
    assert entry.outcome == "released"
    assert entry.steps == f"50:pass,100:approved by {APPROVER},100:pass", entry.steps
    summary = _summary(target.service)
    assert "## Rollout steps" in summary and f"{APPROVER}: {COMMENT}" in summary, summary
    admin = SandboxAdmin(sandbox.emulator_url)
    try:
        history = admin.traffic_history(target.service)
    finally:
        admin.close()
    assert serving(history, "europe-west1") == {f"{target.service}-v2-0-0": 100}
    assert stale_canary_tags(history) == [] and stale_tags(history, "stable") == []
    assert read(target.service) is None  # the journal ends with the rollout
    wanted = os.environ.get("SHIPYARD_SCREENSHOTS_DIR")
    if wanted:
        Path(wanted).mkdir(parents=True, exist_ok=True)
        shutil.copy(shots / "1-resume-form.png", Path(wanted) / "approval-resume-form.png")
