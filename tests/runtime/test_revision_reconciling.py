"""While a revision's container starts (docker run, then the startup probe's window), the
emulator keeps answering and reports what Google reports: the create's operation is not done,
the service is `reconciling` with its terminal condition CONDITION_RECONCILING, the revision's
Ready condition is reconciling; once the probe gives up, the operation is done with Google's
error and both are failed (google/cloud/run/v2/service.proto, Service.reconciling;
revision.proto, Revision.reconciling; condition.proto, Condition.State).

The container is the base image itself with a `command` that never listens: nothing to build.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from google.api_core import exceptions
from google.cloud import run_v2
from google.longrunning import operations_pb2
from google.protobuf import duration_pb2

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sandbox"))
from run_testkit import FAILED, FAST, READY, RECONCILING, parent, short, template

NEVER_LISTENS = [
    "python3",
    "-c",
    "import time; print('not listening', flush=True); time.sleep(600)",
]

LISTENS = [
    "python3",
    "-c",
    "import http.server, os; http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT'])), "
    "http.server.BaseHTTPRequestHandler).serve_forever()",
]


def _template(image: str, command: list[str]) -> run_v2.RevisionTemplate:
    """The base image running `command`, with a startup probe of 3 s (1 s period, 3 failures)
    instead of Cloud Run's default 240 s."""
    tpl = template(image)
    tpl.containers[0].command = command
    tpl.containers[0].startup_probe = run_v2.Probe(
        tcp_socket=run_v2.TCPSocketAction(port=8080), period_seconds=1, failure_threshold=3
    )
    return tpl


def test_the_emulator_answers_while_a_revision_starts_and_reports_it_reconciling(
    engine_sandbox, engine_base
):
    from shipyard.blocks.cloud import GoogleCloud

    cloud = GoogleCloud()
    services, revisions = cloud.services_client(), cloud.revisions_client()
    op = services.create_service(
        parent=parent(cloud),
        service={"template": _template(engine_base, NEVER_LISTENS)},
        service_id="slow-start",
    )
    # Answered before the container was even started: not done yet.
    assert not op.operation.done

    # The probe's window has not begun (docker run comes first), let alone ended: every read
    # below is answered meanwhile and sees the revision reconciling.
    assert not op.done(retry=None)
    svc = services.get_service(name=f"{parent(cloud)}/services/slow-start")
    assert svc.reconciling and svc.terminal_condition.state == RECONCILING
    assert svc.latest_created_revision and not svc.latest_ready_revision
    rev = revisions.get_revision(name=svc.latest_created_revision)
    assert rev.reconciling
    assert [c.state for c in rev.conditions if c.type_ == "Ready"] == [RECONCILING]
    listed = [s.name for s in services.list_services(parent=parent(cloud))]
    assert svc.name in listed

    # Then the probe gives up: the operation is done with Google's error (WaitOperation
    # answers then: "Waits until the specified long-running operation is done or reaches at
    # most a specified timeout", google/longrunning/operations.proto).
    waited = services.wait_operation(
        request=operations_pb2.WaitOperationRequest(
            name=op.operation.name, timeout=duration_pb2.Duration(seconds=60)
        )
    )
    assert waited.done and "is not ready and cannot serve" in waited.error.message
    with pytest.raises(exceptions.FailedPrecondition, match="is not ready and cannot serve"):
        op.result(polling=FAST)
    svc = services.get_service(name=svc.name)
    assert not svc.reconciling and svc.terminal_condition.state == FAILED
    rev = revisions.get_revision(name=svc.latest_created_revision)
    assert not rev.reconciling
    ready = next(c for c in rev.conditions if c.type_ == "Ready")
    assert ready.state == FAILED
    assert "failed to start and listen on the port" in ready.message
    assert ready.revision_reason.name == "HEALTH_CHECK_CONTAINER_ERROR"


def test_an_update_while_a_revision_starts_supersedes_it(engine_sandbox, engine_base):
    """Whichever container is decided first, the service ends as the newer revision left it
    (Ready, serving it); the first operation reports its own revision's failure."""
    from shipyard.blocks.cloud import GoogleCloud

    cloud = GoogleCloud()
    services = cloud.services_client()
    name = f"{parent(cloud)}/services/superseded"
    first = services.create_service(
        parent=parent(cloud),
        service={"template": _template(engine_base, NEVER_LISTENS)},
        service_id="superseded",
    )
    starting = services.get_service(name=name)
    assert starting.reconciling
    second = services.update_service(
        service=run_v2.Service(name=name, template=_template(engine_base, LISTENS))
    )
    assert not second.operation.done

    served = second.result(polling=FAST)
    assert served.latest_created_revision != starting.latest_created_revision
    assert served.latest_ready_revision == served.latest_created_revision
    with pytest.raises(exceptions.FailedPrecondition) as failed:
        first.result(polling=FAST)
    assert f"Revision '{short(starting.latest_created_revision)}' is not ready" in str(failed.value)
    after = services.get_service(name=name)
    assert not after.reconciling and after.terminal_condition.state == READY
    assert [(t.revision, t.percent) for t in after.traffic_statuses] == [
        (short(served.latest_created_revision), 100)
    ]
