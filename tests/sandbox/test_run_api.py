"""Cloud Run Admin v2 in the emulator, through the official run_v2 clients over REST."""

from __future__ import annotations

import collections

import httpx
import pytest
from google.api_core import exceptions
from google.cloud import run_v2
from run_testkit import FAST, LATEST, READY, RECONCILING, create, parent, short, target, template


def test_service_lifecycle_revisions_and_tag_urls(sandbox_admin, cloud):
    sandbox_admin.reset(scenario_data={"operations": {"polls_before_done": 2}})
    services, revisions = cloud.services_client(), cloud.revisions_client()

    op = services.create_service(
        parent=parent(cloud),
        service=run_v2.Service(
            template=template(gpu=True), labels={"app": "pages"}, invoker_iam_disabled=True
        ),
        service_id="pages",
    )
    assert op.done() is False  # the first poll answers done=false
    pending = services.get_service(name=f"{parent(cloud)}/services/pages")
    assert pending.reconciling and pending.terminal_condition.state == RECONCILING
    svc = op.result(polling=FAST)
    assert sandbox_admin.calls()["run.get_operation"] >= 3  # really polled
    assert svc.terminal_condition.state == READY and not svc.reconciling
    assert svc.generation == 1 and svc.observed_generation == 1
    assert svc.labels["app"] == "pages"
    first = svc.latest_ready_revision
    assert short(first).startswith("pages-00001-") and svc.latest_created_revision == first
    assert svc.uri.endswith("-europe-west1.a.run.app") and "/run/pages-" in svc.uri
    limits = svc.template.containers[0].resources.limits
    assert limits["nvidia.com/gpu"] == "1" and svc.template.node_selector.accelerator == "nvidia-l4"
    assert svc.template.gpu_zonal_redundancy_disabled is True

    assert services.get_service(name=svc.name).etag == svc.etag
    assert [s.name for s in services.list_services(parent=parent(cloud))] == [svc.name]

    # New image -> second revision, named; 50/50 with a tag on each.
    current = services.get_service(name=svc.name)
    current.template = template("registry.local/pages:2", gpu=True, revision="pages-v2")
    current.traffic = [target(short(first), 50, "blue"), target("pages-v2", 50, "green")]
    updated = services.update_service(service=current).result(polling=FAST)
    assert updated.generation == 2 and updated.etag != svc.etag
    assert short(updated.latest_created_revision) == "pages-v2"
    statuses = {s.tag: s for s in updated.traffic_statuses}
    assert {t: (s.revision, s.percent) for t, s in statuses.items()} == {
        "blue": (short(first), 50),
        "green": ("pages-v2", 50),
    }
    assert statuses["green"].uri.split("/run/")[1].startswith("green---pages-")

    listed = list(revisions.list_revisions(parent=svc.name))
    assert [short(r.name) for r in listed] == ["pages-v2", short(first)]
    rev = revisions.get_revision(name=f"{svc.name}/revisions/pages-v2")
    assert rev.containers[0].image == "registry.local/pages:2" and rev.service == svc.name
    assert rev.conditions[0].type_ == "Ready" and rev.conditions[0].state == READY

    # Each tag URL reaches its revision; the service URL reaches both.
    with httpx.Client(timeout=10) as http:
        for status in statuses.values():
            health = http.get(status.uri + "/health").json()
            assert health["revision"] == status.revision and health["device"] == "gpu"
        seen = collections.Counter(
            http.get(updated.uri + "/health").headers["x-revision"] for _ in range(40)
        )
        assert set(seen) == {short(first), "pages-v2"}
        assert http.get(updated.uri.replace("/run/", "/run/nope---") + "/health").status_code == 404

    # Traffic-only update: no new revision; an etag precondition that is stale is refused.
    current = services.get_service(name=svc.name)
    current.traffic = [target("pages-v2", 100)]
    moved = services.update_service(service=current).result(polling=FAST)
    assert len(list(revisions.list_revisions(parent=svc.name))) == 2
    assert [(s.revision, s.percent) for s in moved.traffic_statuses] == [("pages-v2", 100)]
    with pytest.raises(exceptions.Conflict, match="etag"):
        services.update_service(service=current)  # current.etag is now stale

    # An old revision without traffic can be deleted (LRO with a Revision response).
    deleted = revisions.delete_revision(name=first).result(polling=FAST)
    assert deleted.name == first
    with pytest.raises(exceptions.NotFound):
        revisions.get_revision(name=first)

    gone = services.delete_service(name=svc.name).result(polling=FAST)
    assert gone.name == svc.name
    with pytest.raises(exceptions.NotFound, match="does not exist"):
        services.get_service(name=svc.name)
    assert list(services.list_services(parent=parent(cloud))) == []
    calls = sandbox_admin.calls()
    assert calls["run.revision_created"] == 2 and calls["run.update_service"] == 3


def test_update_mask_allow_missing_and_int_enums(sandbox_admin, cloud):
    services = cloud.services_client()
    name = f"{parent(cloud)}/services/masked"
    with pytest.raises(exceptions.NotFound):
        services.update_service(service=run_v2.Service(name=name, template=template()))
    made = services.update_service(
        request=run_v2.UpdateServiceRequest(
            service=run_v2.Service(
                name=name, template=template(), ingress=run_v2.IngressTraffic.INGRESS_TRAFFIC_ALL
            ),
            allow_missing=True,
        )
    ).result(polling=FAST)
    assert made.ingress == run_v2.IngressTraffic.INGRESS_TRAFFIC_ALL  # sent as int, answered
    # Only `labels` in the mask: the template in the body is ignored, no new revision.
    patch = run_v2.Service(name=name, labels={"team": "pages"}, template=template("other:9"))
    masked = services.update_service(
        request=run_v2.UpdateServiceRequest(service=patch, update_mask={"paths": ["labels"]})
    ).result(polling=FAST)
    assert masked.labels == {"team": "pages"}
    assert masked.template.containers[0].image == "registry.local/pages:1"
    assert masked.latest_created_revision == made.latest_created_revision


@pytest.mark.parametrize(
    ("traffic", "message"),
    [
        ([("", 60, ""), ("split-v1", 30, "")], "add up to 100, got 90"),
        ([("", 50, "dup"), ("split-v1", 50, "dup")], "tag 'dup' is used more than once"),
    ],
)
def test_bad_traffic_is_invalid_argument(sandbox_admin, cloud, traffic, message):
    # (A target naming a missing revision is not refused here: its operation fails, see
    # test_run_failures.test_traffic_to_a_missing_revision_fails_the_operation.)
    services = cloud.services_client()
    svc = create(cloud, "split", template(revision="split-v1"))
    svc.traffic = [target(*t) for t in traffic]
    with pytest.raises(exceptions.BadRequest, match=message):
        services.update_service(service=svc)
    again = services.get_service(name=svc.name)
    assert [(s.type_, s.percent) for s in again.traffic_statuses] == [(LATEST, 100)]
    assert short(again.latest_ready_revision) == "split-v1" and again.generation == 1


def test_duplicate_revision_name_is_already_exists(sandbox_admin, cloud):
    services = cloud.services_client()
    svc = create(cloud, "dup", template(revision="dup-v1"))
    svc.template = template("registry.local/pages:2", revision="dup-v1")
    with pytest.raises(exceptions.Conflict, match="already exists"):
        services.update_service(service=svc)
    with pytest.raises(exceptions.Conflict, match="already exists"):
        services.create_service(
            parent=parent(cloud), service=run_v2.Service(template=template()), service_id="dup"
        )
