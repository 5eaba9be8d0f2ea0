"""A run page a person can follow (issue 23): a rolled-back run ends without a traceback, says
its reason once in one WARNING, and a wait that lasts logs a heartbeat line naming what it
waits for."""

from __future__ import annotations

import logging

import pytest

pytestmark = pytest.mark.slow

IMAGE = "registry.sandbox.local/pages/page-service"


def _run_page(flow_run_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200
        )
    return sorted(logs, key=lambda log: log.timestamp)


def test_a_rolled_back_run_page_has_no_traceback_and_one_warning(
    stage, make_target, info_logs, tmp_path
):
    """Run as a deployment's run is (prefect/engine.py: `run_flow` with the run's logger as
    `error_logger`), the OOM canary rolls back."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import flow_run_logger, run_flow

    from shipyard.flows.release.flow import ReleaseRolledBack, release

    stage(revision_faults=[{"fault": "oom"}])
    target = make_target()
    block = f"{target.service}-page"
    target.save(block, overwrite=True)
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run(
            release,
            parameters={"git_tag": "v6.2.0", "target": block, "image": f"{IMAGE}:v6.2.0"},
        )
    with pytest.raises(ReleaseRolledBack):
        run_flow(release, flow_run=flow_run, error_logger=flow_run_logger(flow_run))

    logs = _run_page(flow_run.id)
    text = "\n".join(log.message for log in logs)
    (tmp_path / "run-page.txt").write_text(text)
    assert "Traceback" not in text, text
    assert "unexpected exception" not in text, text
    warnings = [log.message for log in logs if log.level == logging.WARNING]
    rolled = [m for m in warnings if "ROLLED BACK" in m]
    assert len(rolled) == 1, warnings
    assert "Memory limit of" in rolled[0]
    assert rolled[0].count("Memory limit of") == 1, rolled[0]  # the reason once, not doubled
    assert not [log for log in logs if log.level >= logging.ERROR], text


def test_a_long_wait_logs_a_heartbeat_naming_what_it_waits_for(caplog):
    from shipyard.tasks.errors import WaitExpired
    from shipyard.tasks.waiting import Deadline, NotYet, wait_for

    def never() -> None:
        raise NotYet("reconciling: container starting")

    with caplog.at_level(logging.INFO, logger="shipyard.waiting"):
        with pytest.raises(WaitExpired):
            wait_for(
                never,
                what="revision pg-x-v1",
                first_delay_s=0.01,
                max_delay_s=0.05,
                deadline=Deadline(0.5),
                heartbeat_s=0.1,
            )
        silent = wait_for(lambda: 1, what="quick", first_delay_s=0.01, max_delay_s=0.01)
    lines = [r.getMessage() for r in caplog.records if r.name == "shipyard.waiting"]
    assert silent == 1
    assert 3 <= len(lines) <= 6, lines  # one per 0.1 s of a 0.5 s wait
    assert all(line.startswith("still waiting for revision pg-x-v1: ") for line in lines)
    assert "s left (last: reconciling: container starting)" in lines[-1]
