"""Day two in the real Prefect UI (issue 23), in headless Chromium, as a release engineer walks it:
v1.0.0 then v1.1.0 released; the status (the `rollback` deployment's page, "Serving now", and the
`status-<service>` artifact) says v1.1.0 serves 100 %; a rollback from the `rollback` deployment's
custom run form (target only, `to` left empty: the last good) puts v1.0.0 back at 100 % (read with
the official Cloud Run client), the status says so, the `release-<service>` summary says ROLLED
BACK BY HAND and the ledger has its `rolled_back_by_hand` row; then a release cancelled with the
run page's Cancel is `cancelled` (not failed) in `shipyard report`'s data.

One `shipyard serve` process serves prefect.yaml's `release` and `rollback` (under this test's
names, without triggers), with the sandbox's environment, so every run is executed for real by the
runner, which is also what a cancel needs (it kills the run's process and runs its
`on_cancellation` hook). The two releases are started from the API (the release form is walked in
test_release_in_browser.py); the sandbox's healthy scenario with in-process revisions, except that
v1.2.0's GPU revision answers a million times slower than it serves (`slow_under_load`), so the
cancelled release is held in its canary until the Cancel, whatever the machine's load.

Screenshots go to the test's tmp dir; with SHIPYARD_SCREENSHOTS_DIR set (README's pictures:
`SHIPYARD_SCREENSHOTS_DIR=examples/ui`), they are copied there as `day-two-*.png`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from chromium_page import Page, chromium_binary
from prefect_ui_kit import (
    RUN_MENU,
    body_text_with,
    by_text,
    fill,
    served_yaml,
    start_serving_many,
    start_ui,
    state_badge,
    stop_group,
    submit_run_form,
    wait_created_run,
    wait_deployment,
    wait_run_final,
    wait_ui,
)

# As test_release_in_browser.py: under load the UI app, the runner and the browser take minutes
# to come up; every wait is on what the page (or the API) shows, with a deadline.
pytestmark = [pytest.mark.slow, pytest.mark.ui, pytest.mark.timeout(900)]

IMAGE = "registry.sandbox.local/pages/page-service"
EU = "europe-west1"
README_SHOTS = [
    "serving-now-v1.1.0",
    "rollback-form",
    "serving-now-after-rollback",
    "release-cancelled",
]


def _serving(service: str, region: str = EU) -> dict[str, int]:
    """revision -> percent that Cloud Run serves (trafficStatuses), read with the official
    client."""
    from shipyard.blocks.cloud import GoogleCloud

    cloud = GoogleCloud()
    name = f"projects/{cloud.resolved_project()}/locations/{region}/services/{service}"
    found = cloud.services_client().get_service(name=name, timeout=30)
    return {t.revision.rsplit("/", 1)[-1]: t.percent for t in found.traffic_statuses if t.percent}


def _revision_ready(service: str, revision: str, region: str = EU) -> bool:
    from google.api_core.exceptions import NotFound

    from shipyard.blocks.cloud import GoogleCloud
    from shipyard.tasks import cloud_run as cr

    cloud = GoogleCloud()
    path = (
        f"projects/{cloud.resolved_project()}/locations/{region}/services/{service}"
        f"/revisions/{revision}"
    )
    try:
        found = cloud.revisions_client().get_revision(name=path, timeout=30)
    except NotFound:
        return False
    return cr.ready_state(found)[0] == "succeeded"


def _release(deployment_id: Any, git_tag: str, block: str) -> uuid.UUID:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(
            deployment_id,
            parameters={"git_tag": git_tag, "target": block, "image": f"{IMAGE}:{git_tag}"},
        )
    return run.id


def _poll(probe: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.5)


def _state_message(run_id: uuid.UUID) -> str | None:
    """The run's state message once it is the cancel's own (None before)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state
    message = (state.message or "") if state is not None else ""
    return message if "CANCELLED by hand" in message else None


def _latest_markdown(key: str) -> str:
    from shipyard.flows.deploy.rollback_report import latest_markdown

    return latest_markdown(key) or ""


def _artifact_id(key: str) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    return found[0].id


def test_day_two_status_rollback_and_cancel_in_the_ui(stage, make_target, sandbox, tmp_path):
    from prefect.settings import PREFECT_API_URL

    from shipyard.deployments.report.figures import report_data
    from shipyard.flows.observe.ledger import read_ledger

    assert chromium_binary(), "Debian's chromium is missing (Makefile APT_PKGS: make setup)"
    api_url = PREFECT_API_URL.value()
    suffix = uuid.uuid4().hex[:6]
    names = {"release": f"release-d2-{suffix}", "rollback": f"rollback-d2-{suffix}"}
    shots = tmp_path / "screenshots"
    shots.mkdir()
    # v1.2.0's GPU revision answers a million times slower than it serves (`slow_under_load`
    # from its first request: about 80 minutes a page): its canary is held, the release waits.
    stage(
        revision_faults=[
            {
                "fault": "slow_under_load",
                "image_contains": ":v1.2.0",
                "after_requests": 0,
                "factor": 1_000_000,
            }
        ]
    )
    ui, ui_url = start_ui(api_url, tmp_path / "ui.log")
    serve_log = tmp_path / "serve.log"
    served = start_serving_many(
        served_yaml(tmp_path / "prefect.yaml", names), list(names.values()), api_url, serve_log
    )
    page = None
    try:
        page = Page(width=1400, height=1150)
        target = make_target()
        service = target.service
        block = f"d2-{suffix}"
        target.save(block, overwrite=True)
        # The cancelled release goes to the same block: its canary's request deadline
        # (CanaryPolicy.request_timeout_s, 900 s) is longer than the test, so only the Cancel
        # ends it.
        release = wait_deployment(f"release/{names['release']}", served, serve_log)
        rollback = wait_deployment(f"rollback/{names['rollback']}", served, serve_log)

        # 1. v1.0.0 then v1.1.0, run by the served deployment.
        for tag in ("v1.0.0", "v1.1.0"):
            ended = wait_run_final(_release(release.id, tag, block), 420)
            assert ended == "Completed", f"release {tag}: {ended}\n" + serve_log.read_text()[-3000:]
        v1, v11 = f"{service}-v1-0-0", f"{service}-v1-1-0"
        assert _serving(service) == {v11: 100}, _serving(service)

        # 2. The status: the rollback deployment's page ("Serving now") and the status artifact.
        wait_ui(ui, ui_url)
        page.goto(f"{ui_url}/v2/deployments/deployment/{rollback.id}")
        page.click(by_text("Description"), 120, "the deployment page's Description tab")
        text = page.wait_for(
            body_text_with("Serving now", service, f"v1.1.0 serves 100% in {EU}"),
            180,
            "the deployment page's Serving now section with v1.1.0 at 100%",
        )
        assert v11 in text
        page.screenshot(shots / "1-serving-now-v1.1.0.png")
        status_key = f"status-{service}"
        page.goto(f"{ui_url}/v2/artifacts/artifact/{_artifact_id(status_key)}")
        page.wait_for(
            body_text_with(f"v1.1.0 serves 100% in {EU}", v11), 120, "the status artifact"
        )
        page.screenshot(shots / "2-status-artifact-v1.1.0.png")

        # 3. Rollback from the rollback deployment's custom run form: target only, `to` empty.
        page.goto(f"{ui_url}/v2/deployments/deployment/{rollback.id}")
        page.click(by_text("Run"), 120, "the deployment's Run button")
        page.click(by_text("Custom run"), 120, "Custom run in the Run menu")
        fill(page, "target", block)
        page.screenshot(shots / "3-rollback-form.png")
        submit_run_form(page)
        rollback_run = wait_created_run(page, rollback.id)
        ended = wait_run_final(uuid.UUID(rollback_run), 300)
        assert ended == "Completed", f"rollback: {ended}\n" + serve_log.read_text()[-3000:]
        after = _serving(service)
        assert after == {v1: 100}, after  # Cloud Run's truth: v1.0.0 serves again
        page.goto(f"{ui_url}/v2/deployments/deployment/{rollback.id}")
        page.click(by_text("Description"), 120, "the deployment page's Description tab")
        page.wait_for(
            body_text_with(
                "Serving now", f"v1.0.0 serves 100% in {EU}", "after: rollback by hand to v1.0.0"
            ),
            180,
            "the Serving now section after the rollback",
        )
        page.screenshot(shots / "4-serving-now-after-rollback.png")
        summary = _latest_markdown(f"release-{service}")
        assert summary.startswith(f"# Release v1.1.0 of `{service}`: **ROLLED BACK BY HAND**")
        assert f"to `v1.0.0` (revision `{v1}`, 100% in `{EU}`)" in summary
        page.goto(f"{ui_url}/v2/artifacts/artifact/{_artifact_id(f'release-{service}')}")
        page.wait_for(body_text_with("ROLLED BACK BY HAND", v1), 120, "the release summary")
        page.screenshot(shots / "5-release-summary-rolled-back.png")
        by_hand = [e for e in read_ledger(service) if e.outcome == "rolled_back_by_hand"]
        assert [(e.git_tag, e.revision, e.flow_run_id) for e in by_hand] == [
            ("v1.1.0", v1, rollback_run)
        ]

        # 4. A release cancelled from its run page once held in its canary (v1.2.0's GPU
        # revision is Ready: its canary's first request is next), then Open menu -> Cancel ->
        # Cancel Flow Run.
        cancelled_run = _release(release.id, "v1.2.0", block)
        _poll(
            lambda: _revision_ready(service, f"{service}-v1-2-0"),
            300,
            "v1.2.0's GPU revision Ready (the release at its canary)",
        )
        page.goto(f"{ui_url}/v2/runs/flow-run/{cancelled_run}")
        page.wait_for(f"!!{state_badge('Running')}", 180, "the run page's Running badge")
        page.click(RUN_MENU, 120, "the run page's menu")
        page.click(by_text("Cancel"), 60, "Cancel in the run's menu")
        page.wait_for(f"!!{by_text('Cancel Flow Run')}", 60, "the cancel dialog")
        page.screenshot(shots / "6-cancel-dialog.png", beyond_viewport=False)
        page.click(by_text("Cancel Flow Run"), 60, "the dialog's Cancel Flow Run")
        ended = wait_run_final(cancelled_run, 300)
        assert ended == "Cancelled", f"cancel: {ended}\n" + serve_log.read_text()[-3000:]
        # The state message says what serves (flows/release/cancelled.py sets it once the
        # runner's own Cancelled state is in): on the run page, Details.
        message = _poll(lambda: _state_message(cancelled_run), 120, "the cancel's message")
        assert f"{v1} serves 100% in {EU}" in message, message
        # Straight to the Details tab (?tab=Details, the URL the tab itself sets): a click on the
        # tab while the page still settles was undone in CI by the page choosing its default tab.
        page.goto(f"{ui_url}/v2/runs/flow-run/{cancelled_run}?tab=Details")
        page.wait_for(f"!!{state_badge('Cancelled')}", 120, "the Cancelled badge")
        page.wait_for(body_text_with("State Message", "CANCELLED by hand"), 120, "the message")
        page.evaluate(
            "Array.from(document.querySelectorAll('*')).find(e => !e.children.length"
            " && e.textContent.trim() === 'State Message').scrollIntoView({block: 'center'})"
        )
        page.send("Input.dispatchMouseEvent", type="mouseMoved", x=1, y=1)  # no hover effect
        page.screenshot(shots / "7-release-cancelled.png", beyond_viewport=False)
        after = _serving(service)
        assert after == {v1: 100}, f"the cancel left {after}\n" + serve_log.read_text()[-3000:]

        def cancelled_row() -> Any:
            rows = report_data(read_ledger(service), window_days=30)["releases"]
            return next((r for r in rows if r["git_tag"] == "v1.2.0"), None)

        row = _poll(cancelled_row, 120, "v1.2.0's row in the report's data")
        assert row["outcome"] == "cancelled", row
    except BaseException:
        if page is not None:
            # The page as the failure left it; a browser that is gone must not hide the failure.
            with contextlib.suppress(Exception):
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
        for shot in README_SHOTS:  # the ones README shows
            found = next(shots.glob(f"[0-9]-{shot}.png"))
            shutil.copy(found, Path(wanted) / f"day-two-{shot}.png")
