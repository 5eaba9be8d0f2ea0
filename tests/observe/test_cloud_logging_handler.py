"""The pipeline's log lines in Cloud Logging (sandbox), through the background handler."""

from __future__ import annotations

import logging

from shipyard.flows.observe.stage_events import release_scope
from shipyard.flows.release.observe import pipeline_logging
from shipyard.tasks.cloud_logging_handler import CloudLoggingHandler, severity_of

LOG = "projects/shipyard-sandbox/logs/shipyard"


def _shipyard_entries(cloud, query: str) -> list:
    client = cloud.logging_client()
    return list(client.list_entries(filter_=f'logName="{LOG}" AND {query}', page_size=1000))


def test_lines_reach_logging_with_labels_and_severity(sandbox_admin, cloud):
    logger = logging.getLogger("shipyard.test-handler")
    logger.setLevel(logging.DEBUG)
    with (
        release_scope(service="pages", git_tag="v9.1.0", flow_run_id="run-1"),
        pipeline_logging(cloud) as handler,
    ):
        assert handler is not None  # on by default with the sandbox endpoint
        with release_scope(stage="deploy", region="us-central1", revision="pages-v9-1-0"):
            logger.info("deploying %s", "pages-v9-1-0")
            logger.warning("slow operation")
        logger.error("token=abc should stay a message; boom")
        logger.debug("below the handler's level")

    entries = _shipyard_entries(cloud, 'labels.service="pages" AND labels.git_tag="v9.1.0"')
    by_text = {e.payload["message"]: e for e in entries}
    assert set(by_text) == {
        "deploying pages-v9-1-0",
        "slow operation",
        "token=abc should stay a message; boom",
    }
    deploy = by_text["deploying pages-v9-1-0"]
    assert deploy.labels == {
        "service": "pages",
        "git_tag": "v9.1.0",
        "stage": "deploy",
        "region": "us-central1",
        "revision": "pages-v9-1-0",
        "flow_run_id": "run-1",
    }
    assert deploy.severity == "INFO"
    assert by_text["slow operation"].severity == "WARNING"
    assert by_text["token=abc should stay a message; boom"].severity == "ERROR"
    assert "stage" not in by_text["token=abc should stay a message; boom"].labels
    # The filter narrows by label: only the deploy stage's lines.
    staged = _shipyard_entries(cloud, 'labels.stage="deploy" AND severity>=WARNING')
    assert [e.payload["message"] for e in staged] == ["slow operation"]
    assert handler.stats.sent == 3 and handler.stats.unsent == 0


def test_nothing_lost_when_logging_answers_429(sandbox_admin, cloud):
    from sandbox.scenario import load_scenario

    data = load_scenario("healthy").model_dump()
    data["apis"]["logging"] = {"every_nth": 2, "error_codes": [429, 503]}
    sandbox_admin.reset(scenario_data=data)
    handler = CloudLoggingHandler(
        cloud.logging_client(),
        labels=lambda record: {"service": "pages-429"},
        batch_size=10,
        flush_interval_s=0.01,
    )
    logger = logging.getLogger("shipyard.test-429")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        for i in range(60):
            logger.info("line %03d", i)
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert sandbox_admin.calls().get("fault.logging", 0) >= 3  # the sandbox did refuse writes
    assert handler.stats.retried_batches >= 3
    assert handler.stats.unsent == 0
    texts = sorted(  # read through the admin route: the API still refuses every 2nd call
        e["jsonPayload"]["message"]
        for e in sandbox_admin.logs()
        if e["logName"] == LOG and (e.get("labels") or {}).get("service") == "pages-429"
    )
    assert texts == [f"line {i:03d}" for i in range(60)]  # each once: retries deduplicated


def test_full_buffer_and_permanent_errors_are_counted_and_said(sandbox_admin, cloud, capsys):
    data_denied = {"apis": {"logging": {"error_rate": 1.0, "error_codes": [500]}}}
    from sandbox.scenario import load_scenario

    data = load_scenario("healthy").model_dump()
    data.update(data_denied)
    sandbox_admin.reset(scenario_data=data)
    handler = CloudLoggingHandler(
        cloud.logging_client(), max_buffer=5, batch_size=100, flush_interval_s=5, attempts=2
    )
    record = logging.LogRecord("shipyard.x", logging.INFO, __file__, 1, "line", None, None)
    for _ in range(8):
        handler.emit(record)
    handler.close(timeout=10)
    assert handler.stats.dropped_full == 3
    assert handler.stats.failed == 5
    err = capsys.readouterr().err
    assert (
        "Cloud Logging: 8 of 8 log lines were not sent (3 over the 5-line buffer, 5 failed" in err
    )


def test_severity_mapping():
    assert [severity_of(n) for n in (0, 5, 10, 20, 25, 30, 40, 50, 60)] == [
        "DEFAULT",
        "DEBUG",
        "DEBUG",
        "INFO",
        "INFO",
        "WARNING",
        "ERROR",
        "CRITICAL",
        "CRITICAL",
    ]
