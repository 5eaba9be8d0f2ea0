"""One log line per decision in the release's run log, read back through the Prefect API: the
skipped region and why, each quota preference's state, the canary verdict with its thresholds,
the rollback and to what; the summary's Regions section lists every region considered."""

from __future__ import annotations

import time

import pytest

from shipyard.flows.release.flow import run_release

pytestmark = pytest.mark.slow

IMAGE = "registry.sandbox.local/pages/page-service"


def _run_log(flow_run_id: str, want: str, timeout: float = 30.0) -> list[str]:
    """The flow run's log messages, polled until `want` arrived (logs are shipped in batches)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            logs = client.read_logs(
                LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200
            )
            messages = [log.message for log in logs]
            if any(want in m for m in messages) or time.monotonic() > deadline:
                return messages


def test_skipped_region_preferences_canary_verdict_and_rollback_are_logged(
    stage, make_target, info_logs
):
    from prefect.artifacts import Artifact

    stage(
        "default",  # europe-west1: GPU quota 0, preference denied; us-central1: granted
        revision_faults=[{"fault": "silent_cpu_fallback", "image_contains": ":v2.0.0"}],
    )
    target = make_target(regions=["europe-west1", "us-central1"])
    first = run_release("v1.0.0", target, image=f"{IMAGE}:v1.0.0")
    assert first.outcome == "released" and first.region == "us-central1"
    result = run_release("v2.0.0", target, image=f"{IMAGE}:v2.0.0")
    assert result.outcome == "rolled_back"

    # The first release decided the regions (quota 0 in both, preferences filed) ...
    first_log = _run_log(first.flow_run_id, "us-central1: candidate")
    text = "\n".join(first_log)
    assert "europe-west1 skipped: GPU quota 0 < 1, preference denied" in first_log, text
    assert any(
        m.startswith("us-central1: candidate (GPU quota 0 < 1, preference granted")
        for m in first_log
    ), text
    prefs = [m for m in first_log if m.startswith("quota preference ")]
    assert any("in europe-west1: denied" in m for m in prefs), text
    assert any("in us-central1: granted" in m for m in prefs), text
    # ... the second found us-central1's quota granted, judged the canary and rolled back.
    log = _run_log(result.flow_run_id, "rolled back in")
    text = "\n".join(log)
    assert "europe-west1 skipped: GPU quota 0 < 1" in log, text
    (canary,) = [m for m in log if m.startswith("canary of ")]
    assert "FAILED" in canary and "limit 90000 ms" in canary and "minimum 30%" in canary, canary
    assert "x-fallback-used: 0" in canary and "reasons:" in canary, canary
    rolled = [m for m in log if m.startswith("rolled back in us-central1: 100% on ")]
    assert len(rolled) == 1 and first.revision in rolled[0] and result.revision == first.revision

    summary = Artifact.get(f"release-{target.service}")
    assert summary is not None
    regions = summary.data.split("## Regions", 1)[1].split("##", 1)[0]
    assert "`europe-west1`: skipped: GPU quota 0 < 1" in regions, regions
    assert "`us-central1`: deployed" in regions, regions
