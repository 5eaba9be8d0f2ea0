"""The sandbox for progressive delivery and day two (issues 22 and 23), through the official
clients: faults that show only under load, in the request log with Google's fields; the Logging
filter a judge sends, paged over a store that keeps growing; traffic refused to a revision that
is not Ready; the service-level minimum instances."""

from __future__ import annotations

import datetime as dt
import itertools
import re

import httpx
import pytest
from google.api_core import exceptions as gexc
from google.cloud import run_v2
from google.cloud.logging_v2.resource import Resource
from run_testkit import FAILED, FAST, REGION, create, page_png, short, target, template

PAGE = "/internal/translate/page"
LOAD_FAULTS = {
    "name": "load-faults",
    "serving": {"gpu_ms": 40, "cpu_ms": 300},
    "revision_faults": [
        # After the first 10 requests, every 20th (rate 0.05) is a 500: requests 30 and 50.
        {"fault": "errors_under_load", "image_contains": "errload"},
        # After the first 5, each answer takes twice as long as the instance took.
        {"fault": "slow_under_load", "image_contains": "slowload", "after_requests": 5},
    ],
}
REQUESTS_LOG = "run.googleapis.com%2Frequests"


def _rfc3339(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _request_entries(cloud, filter_: str) -> list:
    project = cloud.resolved_project()
    return list(
        cloud.logging_client().list_entries(
            resource_names=[f"projects/{project}"],
            filter_=filter_,
            order_by="timestamp asc",
            page_size=1000,
        )
    )


def test_faults_under_load_show_in_the_request_log_with_googles_fields(sandbox_admin, cloud):
    sandbox_admin.reset(scenario_data=LOAD_FAULTS)
    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    errors = create(cloud, "errload", template("registry.local/pages:errload", gpu=True))
    slow = create(cloud, "slowload", template("registry.local/pages:slowload", gpu=True))
    with httpx.Client(timeout=30) as http:
        statuses = [http.get(errors.uri + "/health").status_code for _ in range(50)]
        elapsed = []
        for _ in range(10):
            answer = http.post(
                slow.uri + PAGE, content=page_png(), headers={"content-type": "image/png"}
            )
            assert answer.status_code == 200, answer.text
            elapsed.append(int(answer.headers["x-remote-elapsed-ms"]) / 1000)
    failed = [n for n, status in enumerate(statuses, start=1) if status == 500]
    assert failed == [30, 50] and statuses.count(200) == 48
    until = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)

    project = cloud.resolved_project()
    revisions = [short(errors.latest_ready_revision), short(slow.latest_ready_revision)]
    window = f'timestamp>="{_rfc3339(since)}" AND timestamp<"{_rfc3339(until)}"'
    log = f'logName="projects/{project}/logs/{REQUESTS_LOG}"'
    # The form of the issue (a value list) and the judge's (comparisons joined by OR).
    listed = f'revision_name=("{revisions[0]}" OR "{revisions[1]}")'
    ored = " OR ".join(f'resource.labels.revision_name="{r}"' for r in revisions)
    by_list = _request_entries(
        cloud,
        f'{log} AND resource.type="cloud_run_revision" AND resource.labels.{listed} AND {window}',
    )
    by_or = _request_entries(cloud, f"{log} AND ({ored}) AND {window}")
    assert [e.insert_id for e in by_list] == [e.insert_id for e in by_or]
    assert len(by_list) == 60
    # Nothing outside the window.
    assert _request_entries(cloud, f'{log} AND timestamp<"{_rfc3339(since)}"') == []

    for entry in by_list:
        assert entry.log_name == f"projects/{project}/logs/{REQUESTS_LOG}"
        assert entry.resource.type == "cloud_run_revision"
        labels = entry.resource.labels
        assert labels["revision_name"] in revisions and labels["location"] == REGION
        assert labels["configuration_name"] == labels["service_name"]
        assert labels["revision_name"].startswith(labels["service_name"] + "-")
        assert isinstance(entry.http_request["status"], int)
        assert re.fullmatch(r"\d+\.\d{6}s", entry.http_request["latency"])
        assert since <= entry.timestamp <= until
    by_revision: dict[str, list] = {r: [] for r in revisions}
    for entry in by_list:
        by_revision[entry.resource.labels["revision_name"]].append(entry)
    error_statuses = [e.http_request["status"] for e in by_revision[revisions[0]]]
    assert error_statuses.count(500) == 2 and error_statuses.count(200) == 48
    assert [e.severity for e in by_revision[revisions[0]] if e.http_request["status"] == 500] == [
        "ERROR",
        "ERROR",
    ]
    latencies = [float(e.http_request["latency"][:-1]) for e in by_revision[revisions[1]]]
    # Past the first 5, each answer took at least twice what the page service itself took.
    for took, latency in zip(elapsed[5:], latencies[5:], strict=True):
        assert latency >= 2 * took >= 2 * 0.04
    for took, latency in zip(elapsed[:5], latencies[:5], strict=True):
        assert latency >= took
    assert sandbox_admin.calls()["run.load_fault.error"] == 2
    assert sandbox_admin.calls()["run.load_fault.slowed"] == 5


def _revision(service: str, revision: str) -> Resource:
    return Resource(
        type="cloud_run_revision",
        labels={
            "service_name": service,
            "revision_name": revision,
            "location": REGION,
            "configuration_name": service,
        },
    )


def test_a_judge_pages_a_window_while_requests_keep_coming(sandbox_admin, cloud):
    """2,500 request entries of two revisions, read 1,000 a page; entries written between two
    pages (later ones, and one of an earlier time that Logging received late) are listed once,
    in order, never twice; a dry-run write is never listed."""
    client = cloud.logging_client()
    # google-cloud-logging adds a diagnostic entry to a process's first write: done before the
    # reset, which wipes it.
    client.logger("warm-up").log_text("warm-up")
    sandbox_admin.reset(scenario_data={})
    logger = client.logger(REQUESTS_LOG)
    t0 = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=30)
    with logger.batch() as batch:
        for n in range(2500):
            batch.log_text(
                "GET 200 /",
                resource=_revision("judged", f"judged-{'ab'[n % 2]}"),
                timestamp=t0 + dt.timedelta(milliseconds=100 * n),
                http_request={"requestMethod": "GET", "status": 200, "latency": "0.040000s"},
            )
    project = cloud.resolved_project()
    query = (
        f'logName="projects/{project}/logs/{REQUESTS_LOG}" AND '
        'resource.labels.revision_name=("judged-a" OR "judged-b") AND '
        f'timestamp>="{_rfc3339(t0)}" AND timestamp<"{_rfc3339(t0 + dt.timedelta(hours=1))}"'
    )
    # The client pages lazily: the 1,000th entry is the last of the first page it fetched.
    listing = client.list_entries(
        resource_names=[f"projects/{project}"], filter_=query, page_size=1000
    )
    first = [e.insert_id for e in itertools.islice(listing, 1000)]
    assert len(first) == 1000 and sandbox_admin.calls()["logging.list_entries"] == 1
    late = [t0 + dt.timedelta(seconds=1000), t0 + dt.timedelta(milliseconds=50)]
    for when in late:  # one after everything, one inside the first page's span
        logger.log_text("GET 200 /", resource=_revision("judged", "judged-a"), timestamp=when)
    rest = list(listing)
    ids = first + [e.insert_id for e in rest]
    assert len(ids) == len(set(ids)) == 2501  # the late one of an earlier time: behind the token
    assert rest[-1].timestamp == late[0]
    stamps = [e.timestamp for e in rest]
    assert stamps == sorted(stamps)
    # A dry run validates only; what the index keeps stays exact.
    client.logging_api.write_entries(
        [
            {
                "logName": f"projects/{project}/logs/{REQUESTS_LOG}",
                "resource": {"type": "cloud_run_revision", "labels": {"revision_name": "judged-a"}},
                "timestamp": _rfc3339(t0 + dt.timedelta(seconds=2)),
                "textPayload": "dry",
            }
        ],
        dry_run=True,
    )
    again = list(client.list_entries(resource_names=[f"projects/{project}"], filter_=query))
    assert len(again) == 2502 and not any(e.payload == "dry" for e in again)


def test_traffic_to_a_revision_that_is_not_ready_is_refused_as_google_does(sandbox_admin, cloud):
    sandbox_admin.reset(
        scenario_data={
            "revision_faults": [
                {"fault": "never_ready", "accelerator": "any", "image_contains": "broken"}
            ]
        }
    )
    services = cloud.services_client()
    good = create(cloud, "gate", template(revision="gate-v1"))
    svc = services.get_service(name=good.name)
    svc.template = template("registry.local/pages:broken", revision="gate-v2")
    svc.traffic = [target("gate-v1", 100), target("gate-v2", 0)]
    with pytest.raises(gexc.FailedPrecondition):
        services.update_service(service=svc).result(polling=FAST)
    # A traffic-only update naming the failed revision: the operation fails (code 9).
    svc = services.get_service(name=good.name)
    svc.traffic = [target("gate-v1", 90), target("gate-v2", 10)]
    op = services.update_service(service=svc)
    with pytest.raises(gexc.FailedPrecondition) as refused:
        op.result(polling=FAST)
    assert refused.value.message.startswith(
        "Revision 'gate-v2' is not ready and cannot serve traffic. The user-provided container "
        "failed to start and listen on the port"
    )
    assert op.operation.error.code == 9  # google.rpc.Code FAILED_PRECONDITION
    after = services.get_service(name=good.name)
    serving = [(s.revision, s.percent) for s in after.traffic_statuses if s.percent]
    assert serving == [("gate-v1", 100)]
    assert after.terminal_condition.state == FAILED
    assert all(
        entry["ready"] or entry["percent"] == 0
        for h in sandbox_admin.traffic_history("gate")
        for entry in h["traffic"]
    )


def test_service_level_minimum_instances_warm_the_revisions_that_serve(sandbox_admin, cloud):
    """scaling.min_instance_count on the Service (no new revision): kept and returned; split by
    share over the revisions with traffic, each holding its GPU instance: with a GPU quota of 1,
    the stable revision's warm instance leaves no GPU for the other one until the minimum goes."""
    sandbox_admin.reset(scenario_data={"default_region": {"gpu": 1, "gpu_no_zonal_redundancy": 1}})
    services = cloud.services_client()
    stable = create(
        cloud, "warmed", template("registry.local/pages:v1", gpu=True, revision="warmed-v1")
    )
    svc = services.get_service(name=stable.name)
    svc.template = template("registry.local/pages:v2", gpu=True, revision="warmed-v2")
    svc.traffic = [target("warmed-v1", 90), target("warmed-v2", 10, "canary")]
    svc = services.update_service(service=svc).result(polling=FAST)
    canary_uri = next(s.uri for s in svc.traffic_statuses if s.tag == "canary")
    with httpx.Client(timeout=30) as http:
        svc.scaling = run_v2.ServiceScaling(min_instance_count=1)
        revisions_before = len(list(cloud.revisions_client().list_revisions(parent=svc.name)))
        svc = services.update_service(service=svc).result(polling=FAST)
        assert svc.scaling.min_instance_count == 1
        read = services.get_service(name=svc.name)
        assert read.scaling.min_instance_count == 1
        assert len(list(cloud.revisions_client().list_revisions(parent=svc.name))) == (
            revisions_before
        )
        # 1 x 90 % and 1 x 10 % round up to one instance each; minimums start in creation
        # order: the stable revision holds the region's one GPU, the canary gets none.
        refused = http.get(canary_uri + "/health")
        assert refused.status_code == 503
        assert "exceeded its quota limit for run.googleapis.com/nvidia_l4_gpu_allocation" in (
            refused.text
        )
        read.scaling = run_v2.ServiceScaling(min_instance_count=0)
        services.update_service(service=read).result(polling=FAST)
        assert http.get(canary_uri + "/health").status_code == 200  # no minimum: the GPU is free

    bad = services.get_service(name=svc.name)
    bad.scaling = run_v2.ServiceScaling(min_instance_count=3, max_instance_count=2)
    with pytest.raises(gexc.BadRequest, match=r"minInstanceCount: 3 is more than maxInstanceCount"):
        services.update_service(service=bad)
    bad.scaling = run_v2.ServiceScaling(min_instance_count=-1)
    with pytest.raises(gexc.BadRequest, match=r"scaling\.minInstanceCount: -1 is not a count"):
        services.update_service(service=bad)
