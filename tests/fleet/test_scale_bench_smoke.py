"""bench/scale.py's code path, tiny: 2 services x 2 tags through their fleet deployments and a
2-delivery webhook burst (one per service's repository), on the session's Prefect server and
sandbox, with one real process worker. The bench's own checks must hold (every release completed,
one run per service at a time, no tag lost or run twice) and its figures must all be measured.

One worker: with two or more, two polls at the same moment can each take a run of the same queue
(Prefect picks scheduled runs `FOR UPDATE SKIP LOCKED`, so the second poll skips the run the first
one locked and takes the next), which the full bench shows (`overlapping_runs`) and reports; this
test checks the bench's path, not that race."""

from __future__ import annotations

import asyncio
import secrets

import pytest
import secrets_scan_kit

TOKEN_BLOCK = "shipyard-scale-smoke-token"


# 6 releases, each a fresh process: ~1 min on a quiet machine, ~3 under load 16.
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_scale_bench_code_path_holds_its_checks(sandbox, tmp_path):
    from prefect.blocks.system import Secret
    from prefect.settings import PREFECT_API_URL

    from bench.scale import FleetSize, fleet_round, missed_goals, problems
    from sandbox.admin import SandboxAdmin
    from shipyard.deployments.demo.run import LocalCloud

    token = secrets_scan_kit.remember("scale smoke token", "tok-" + secrets.token_hex(12))
    Secret(value=token).save(TOKEN_BLOCK, overwrite=True)
    admin = SandboxAdmin(sandbox.emulator_url)
    cloud = LocalCloud(info=sandbox, admin=admin, token_block=TOKEN_BLOCK, token=token)
    size = FleetSize(
        services=2, tags=2, deliveries=2, workers=1, gpu_quota=2, timeout=600, prefix="smoke"
    )
    try:
        figures = asyncio.run(
            fleet_round(cloud, PREFECT_API_URL.value(), size, tmp_path, "scale-smoke")
        )
    finally:
        admin.close()

    assert problems(figures, size) == [], figures
    assert figures["completed"] == 4, figures
    assert figures["run_states"] == {"Completed": 4}, figures
    assert figures["max_concurrent_per_service"] == 1, figures
    assert figures["global_limit"] == 2  # the staged region quota, through gpu_global_limit
    burst = figures["burst"]
    assert (burst["accepted"], burst["completed"], burst["lost"], burst["twice"]) == (2, 2, 0, 0)
    assert burst["max_concurrent_per_service"] == 1, burst
    # The figures the bench judges are all measured (not None), whatever their values here.
    assert figures["releases_per_min"] > 0
    assert figures["p95_queue_wait_s"] is not None and figures["p95_queue_wait_s"] >= 0
    assert figures["webhook_p95_accept_ms"] is not None and figures["webhook_p95_accept_ms"] > 0
    for key in (
        "median_due_to_pending_s",
        "median_pending_to_running_s",
        "median_running_to_end_s",
    ):
        assert figures[key] is not None and figures[key] >= 0, key
    # What a release sent the server, read back: its task runs' state events among its events.
    sent = figures["sent_per_release"]
    assert sent["sampled_runs"] >= 1 and sent["task_runs"] >= 5, sent
    assert sent["top_events"].get("prefect.task-run.Completed", 0) >= 5, sent
    assert sent["events"] > sent["task_runs"] and sent["logs"] > 0, sent
    # Each run's worker saw its process end after the run's final state.
    assert figures["median_end_to_worker_done_s"] is not None, figures
    assert figures["median_end_to_worker_done_s"] > 0, figures
    # missed_goals names only speed goals here: the one-at-a-time and exactly-once ones held.
    assert not [m for m in missed_goals(figures) if m.split()[0] in ("lost", "twice")]
