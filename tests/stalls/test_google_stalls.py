"""Every Google client against a server that accepts the connection and never answers (issue 24):
each call ends, with a transient error (a single call) or the wait's own verdict (a wait), within
its deadline plus one poll. The deadlines are the GoogleCloud block's (`call_timeout_s`), kept
short here by configuration; nothing waits for the production figures.

Before: `get_revision`, `list_revisions` and an operation's `get_operation` were sent with no
timeout at all (google-cloud-run 0.16 has no default): blocked until the flow's 3-hour timeout."""

from __future__ import annotations

import datetime as dt
import logging
from types import SimpleNamespace

import pytest
from google.cloud import run_v2
from google.cloud.devtools import cloudbuild_v1
from google.longrunning import operations_pb2
from stall_server import bound, ended

from shipyard.blocks.cloud import GoogleCloud
from shipyard.tasks import cloud_build as cb
from shipyard.tasks import cloud_run as cr
from shipyard.tasks.cloud_logging import find_revision_entries, write_structured_entry
from shipyard.tasks.cloud_logging_handler import CloudLoggingHandler
from shipyard.tasks.errors import WaitExpired, is_transient
from shipyard.tasks.quotas import read_region_capacity, wait_quota_decision

CALL_S = 0.5  # each call's deadline here (the block's call_timeout_s)
WAIT_S = 1.5  # a wait's whole deadline here
PROJECT = "stall-project"
REGION = "europe-west1"
SERVICE = f"projects/{PROJECT}/locations/{REGION}/services/svc"
REVISION = f"{SERVICE}/revisions/svc-v1"


@pytest.fixture(scope="module")
def cloud(stall):
    return GoogleCloud(endpoint=stall.url, project=PROJECT, call_timeout_s=CALL_S)


def _transient(call):
    """The call ends within its deadline's bound with a transient error (retried by its step)."""
    error, seconds = ended(call, bound(CALL_S))
    assert error is not None and is_transient(error), repr(error)
    assert seconds < bound(CALL_S), seconds
    return error


def _wait_verdict(call, kind=WaitExpired):
    """A wait ends within its own deadline plus one call with its verdict, never retried."""
    limit = bound(WAIT_S + CALL_S)
    error, seconds = ended(call, limit)
    assert isinstance(error, kind) and not is_transient(error), repr(error)
    assert seconds < limit, seconds
    return error


# ---------------------------------------------------------------- Cloud Run


def test_cloud_run_service_reads_and_writes_end(cloud):
    services = cloud.services_client()
    _transient(lambda: cr.get_service(services, SERVICE))
    body = run_v2.Service(name=SERVICE, template=run_v2.RevisionTemplate())
    _transient(lambda: cr.update_service(services, body, timeout=WAIT_S))
    _transient(lambda: cr.delete_service(services, SERVICE, timeout=WAIT_S))


def test_cloud_run_revision_reads_end(cloud):
    revisions = cloud.revisions_client()
    _transient(lambda: cr.get_revision(revisions, REVISION))
    _transient(lambda: cr.list_revisions(revisions, SERVICE))


def test_an_operation_poll_ends_within_the_waits_deadline(cloud):
    """The operation was accepted; its polls stall: the wait ends with its verdict."""
    accepted = SimpleNamespace(
        operation=operations_pb2.Operation(
            name=f"projects/{PROJECT}/locations/{REGION}/operations/o1"
        )
    )
    error = _wait_verdict(
        lambda: cr.wait_operation(
            accepted, timeout=WAIT_S, poll_s=0.05, client=cloud.services_client()
        ),
        cr.ReadyTimeout,
    )
    assert "o1" in str(error)


def test_the_ready_wait_ends_within_its_own_deadline(cloud):
    """Every read of the revision stalls: the Ready wait (not each read) owns the deadline."""
    error = _wait_verdict(
        lambda: cr.wait_revision_ready(
            cloud.revisions_client(), REVISION, timeout=WAIT_S, poll_s=0.05
        ),
        cr.ReadyTimeout,
    )
    assert "Timeout" in str(error)  # the last thing seen: a read that timed out


# ---------------------------------------------------------------- Cloud Build


def test_cloud_build_calls_end(cloud):
    builds = cloud.builds_client()
    _transient(lambda: cb.submit_build(builds, PROJECT, cloudbuild_v1.Build()))
    _transient(lambda: cb.get_build(builds, PROJECT, "b1"))
    _transient(lambda: cb.find_submitted(builds, PROJECT, "shipyard-x"))
    _transient(lambda: cb.cancel_build(builds, PROJECT, "b1"))


# ---------------------------------------------------------------- Cloud Quotas


def test_cloud_quotas_calls_end(cloud):
    _transient(lambda: read_region_capacity.fn(cloud, [REGION], zonal_redundancy_disabled=True))
    # The hand poll of a preference: a budget spent without an answer is the wait's verdict
    # (WaitExpired, never retried), not the builtin TimeoutError that is_transient retries.
    name = f"projects/{PROJECT}/locations/global/quotaPreferences/p1"
    _wait_verdict(
        lambda: wait_quota_decision.fn(
            cloud, name, budget_s=WAIT_S, first_delay_s=0.05, max_delay_s=0.5
        )
    )


# ---------------------------------------------------------------- Cloud Logging


def test_cloud_logging_calls_end(cloud):
    _transient(lambda: write_structured_entry(cloud, {"message": "x"}, attempts=1))
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    _transient(
        lambda: find_revision_entries.fn(
            cloud, service="svc", revision=None, signatures=["boom"], start=start
        )
    )
    _transient(lambda: cb._read_build_log(cloud.logging_client(), PROJECT, "b1"))


def test_the_logging_handler_gives_up_a_stalled_batch(cloud):
    handler = CloudLoggingHandler(cloud.logging_client(), attempts=1, flush_interval_s=0.05)
    record = logging.LogRecord("shipyard", logging.INFO, __file__, 1, "a line", None, None)
    handler.emit(record)
    ended(lambda: handler.drain(timeout=bound(CALL_S)), bound(CALL_S) + 1)
    handler.close(timeout=1)
    assert handler.stats.failed == 1 and handler.stats.sent == 0, handler.stats
