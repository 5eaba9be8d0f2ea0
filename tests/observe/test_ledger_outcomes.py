"""The ledger tells a change's failure from the rest: a release that could not reach Google (here:
the target's cloud endpoint is a closed port) is `failed_infrastructure`, not a change failure;
the classification follows tasks/errors.py (transient there: infrastructure here)."""

from __future__ import annotations

import socket

import pytest
import requests
from google.api_core import exceptions as gexc

from sandbox.procs import free_port
from shipyard.flows.observe.ledger import CHANGE_FAILURES, OUTCOMES, failure_outcome, read_ledger
from shipyard.tasks.deploy_errors import ConfigurationError
from shipyard.tasks.errors import WaitExpired

IMAGE = "registry.sandbox.local/pages/page-service"


def _raised_from(outer: Exception, cause: BaseException) -> Exception:
    try:
        raise outer from cause
    except Exception as exc:  # noqa: BLE001 - the chained error itself is what is classified
        return exc


def test_failure_outcomes_follow_the_error_classification():
    assert {"rolled_back", "failed"} == CHANGE_FAILURES and set(OUTCOMES) >= CHANGE_FAILURES
    refused = requests.ConnectionError("Connection refused")
    assert failure_outcome(refused) == "failed_infrastructure"
    assert failure_outcome(gexc.ServiceUnavailable("down")) == "failed_infrastructure"
    # Retries ran out: google-api-core's RetryError keeps the last error as `cause`.
    assert failure_outcome(gexc.RetryError("gave up", refused)) == "failed_infrastructure"
    assert failure_outcome(_raised_from(RuntimeError("step"), refused)) == "failed_infrastructure"
    # The change: a configuration, a verdict, a 4xx.
    assert failure_outcome(ConfigurationError("bad template")) == "failed"
    assert failure_outcome(WaitExpired("revision never Ready")) == "failed"
    assert failure_outcome(gexc.BadRequest("Revision is not ready")) == "failed"
    assert failure_outcome(None) == "failed"


@pytest.mark.slow
def test_release_with_google_unreachable_is_failed_infrastructure(stage, make_target):
    from shipyard.blocks.cloud import GoogleCloud
    from shipyard.flows.release.flow import run_release

    stage()
    port = free_port()
    with socket.socket() as probe:  # nothing listens there: connections are refused
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    target = make_target(
        cloud=GoogleCloud(endpoint=f"http://127.0.0.1:{port}", project="shipyard-sandbox"),
        retries=1,
    )
    with pytest.raises(Exception) as raised:
        run_release("v1.0.0", target, image=f"{IMAGE}:v1.0.0")
    assert failure_outcome(raised.value) == "failed_infrastructure", repr(raised.value)
    (row,) = read_ledger(target.service)
    assert (row.git_tag, row.outcome) == ("v1.0.0", "failed_infrastructure")
    assert row.outcome not in CHANGE_FAILURES
    assert row.rollback_reason  # what could not be reached, for the report
