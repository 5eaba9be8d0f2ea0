"""A release engineer's path through the real Prefect UI, in headless Chromium (Debian's
`chromium` over the DevTools protocol): open the release deployment, fill the custom run form
for the sandbox, submit, follow the run, and read on the run page that the rolled-back release
is not a Completed run: its `RolledBack` state badge in the failed colour, and the state message
naming the reason and what serves.

The deployment is prefect.yaml's `release`, served by `shipyard serve` in its own process with
the sandbox's environment, so the run the UI creates is executed for real; the sandbox's canary
revision runs out of memory (Cloud Run's OOM), so the release rolls back to the CPU baseline.

Screenshots go to the test's tmp dir; with SHIPYARD_SCREENSHOTS_DIR set (README's picture:
`SHIPYARD_SCREENSHOTS_DIR=examples/ui`), the run page's is copied there too.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest
from chromium_page import Page, chromium_binary
from prefect_ui_kit import (
    by_text,
    fill,
    release_only_yaml,
    start_serving,
    start_ui,
    state_badge,
    stop_group,
    submit_run_form,
    wait_created_run,
    wait_deployment,
    wait_run_final,
    wait_ui,
)

# Under a loaded machine (other suites beside this one) a flow run's process takes a minute to
# start, and the UI app, the served deployment and the browser take minutes to come up; the
# suite's 300 s per test would cut the waits short. Every wait is on what the page (or the API)
# shows, with a deadline: none costs more than the machine needs.
pytestmark = [pytest.mark.slow, pytest.mark.ui, pytest.mark.timeout(900)]

IMAGE = "registry.sandbox.local/pages/page-service"
TAG = "v21.0.0"


def test_rolled_back_release_from_the_ui_form(stage, make_target, sandbox, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    assert chromium_binary(), "Debian's chromium is missing (Makefile APT_PKGS: make setup)"
    api_url = PREFECT_API_URL.value()
    name = f"release-ui-{uuid.uuid4().hex[:6]}"
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
        stage(revision_faults=[{"fault": "oom"}])
        target = make_target()
        block = f"ui-{uuid.uuid4().hex[:6]}"
        target.save(block, overwrite=True)
        wait_ui(ui, ui_url)
        deployment = wait_deployment(f"release/{name}", served, serve_log)

        # The deployment's page -> Run -> Custom run: the form, filled as a person does.
        page.goto(f"{ui_url}/v2/deployments/deployment/{deployment.id}")
        page.click(by_text("Run"), 120, "the deployment's Run button")
        page.click(by_text("Custom run"), 120, "Custom run in the Run menu")
        fill(page, "git_tag", TAG)
        fill(page, "target", block)
        fill(page, "image", f"{IMAGE}:{TAG}")
        page.screenshot(shots / "1-custom-run-form.png")
        submit_run_form(page)

        # The UI creates the run (and lists it on the deployment's page when it refreshes it);
        # follow it.
        run_id = wait_created_run(page, deployment.id)
        page.goto(f"{ui_url}/v2/runs/flow-run/{run_id}")
        # The run page shows the run's state as the UI polls it; the API says when it is final
        # (a loaded machine makes both slow: the page is loaded again once the run has ended).
        ended = wait_run_final(uuid.UUID(run_id), 420)
        if not page.evaluate(f"!!{state_badge('RolledBack')}"):
            page.goto(f"{ui_url}/v2/runs/flow-run/{run_id}")
        page.wait_for(
            f"!!{state_badge('RolledBack')}", 120, f"the RolledBack state badge (API: {ended})"
        )

        # Not a Completed run: the badge has the failed colour, and the API agrees.
        badge_class = page.evaluate(f"{state_badge('RolledBack')}.className")
        assert "state-failed" in badge_class and "state-completed" not in badge_class
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(uuid.UUID(run_id)).state
        assert state is not None and state.is_failed() and state.name == "RolledBack"

        # The reason and what serves, on the run page (Details: State Message).
        page.click(by_text("Details"), 120, "the run's Details tab")
        message = page.wait_for(
            "(() => { const t = document.body.innerText; const i = t.indexOf('State Message');"
            " return i >= 0 && t.includes('ROLLED BACK', i) ? t.slice(i) : null; })()",
            120,
            "the state message",
        )
        assert f"release {TAG} ROLLED BACK" in message
        assert f"{target.service}-v21-0-0-cpu serves 100% in europe-west1" in message
        assert "Memory limit of 16384 MiB exceeded" in message  # the canary's reason: the OOM
        page.send("Input.dispatchMouseEvent", type="mouseMoved", x=1, y=1)  # no hover effect
        page.screenshot(shots / "2-run-rolled-back.png", beyond_viewport=False)
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
        shutil.copy(shots / "2-run-rolled-back.png", Path(wanted) / "release-rolled-back.png")
