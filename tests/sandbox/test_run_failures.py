"""Deploy errors, never-ready revisions and the traffic history with invariant 1."""

from __future__ import annotations

import httpx
import pytest
from google.api_core import exceptions
from run_testkit import FAILED, FAST, READY, create, parent, short, target, template

from sandbox.invariants import traffic_violations
from sandbox.scenario import GPU_QUOTA_MESSAGE

DEPLOY_ERRORS = {
    "name": "deploy-errors",
    "regions": {
        "europe-west1": {"deploy_error": {"where": "api", "times": 1}},
        "us-central1": {"deploy_error": {"where": "operation"}},
        "asia-southeast1": {"deploy_error": {"where": "revision"}},
        "europe-north1": {"never_ready": True},
    },
    "revision_faults": [{"fault": "never_ready", "accelerator": "any", "image_contains": "broken"}],
}


def _to_gpu(cloud, svc, revision: str):
    """Deploy a GPU template onto a service that runs on CPU; returns the operation."""
    svc.template = template("registry.local/pages:gpu", gpu=True, revision=revision)
    svc.traffic = [target(percent=100)]
    return cloud.services_client().update_service(service=svc)


def test_deploy_error_where_api_is_429_before_anything_changes(sandbox_admin, cloud):
    sandbox_admin.reset(scenario_data=DEPLOY_ERRORS)
    base = create(cloud, "api-mode", template())  # CPU: gpu_only errors leave it alone
    with pytest.raises(exceptions.TooManyRequests, match=GPU_QUOTA_MESSAGE) as err:
        _to_gpu(cloud, base, "api-mode-gpu")
    assert err.value.code == 429
    after = cloud.services_client().get_service(name=base.name)
    assert after.generation == 1 and after.latest_created_revision == base.latest_created_revision
    # times: 1 -> the next deploy goes through.
    fixed = _to_gpu(cloud, after, "api-mode-gpu").result(polling=FAST)
    assert short(fixed.latest_ready_revision) == "api-mode-gpu"


def test_deploy_error_where_operation_fails_the_lro(sandbox_admin, cloud):
    sandbox_admin.reset(scenario_data=DEPLOY_ERRORS)
    base = create(cloud, "op-mode", template(), region="us-central1")
    op = _to_gpu(cloud, base, "op-mode-gpu")
    with pytest.raises(exceptions.ResourceExhausted, match=GPU_QUOTA_MESSAGE):
        op.result(polling=FAST)
    assert op.exception().code == 429
    after = cloud.services_client().get_service(name=base.name)
    assert after.terminal_condition.state == FAILED
    assert GPU_QUOTA_MESSAGE in after.terminal_condition.message
    revisions = list(cloud.revisions_client().list_revisions(parent=base.name))
    assert [r.name for r in revisions] == [base.latest_created_revision]  # no new revision
    assert after.latest_ready_revision == base.latest_ready_revision


def test_deploy_error_where_revision_fails_its_ready_condition(sandbox_admin, cloud):
    sandbox_admin.reset(scenario_data=DEPLOY_ERRORS)
    base = create(cloud, "rev-mode", template(), region="asia-southeast1")
    with pytest.raises(exceptions.FailedPrecondition, match="is not ready and cannot serve"):
        _to_gpu(cloud, base, "rev-mode-gpu").result(polling=FAST)
    rev = cloud.revisions_client().get_revision(name=f"{base.name}/revisions/rev-mode-gpu")
    ready = rev.conditions[0]
    assert ready.type_ == "Ready" and ready.state == FAILED
    assert ready.message == GPU_QUOTA_MESSAGE
    after = cloud.services_client().get_service(name=base.name)
    assert after.terminal_condition.state == FAILED
    assert GPU_QUOTA_MESSAGE in after.terminal_condition.message
    assert short(after.latest_created_revision) == "rev-mode-gpu"
    assert after.latest_ready_revision == base.latest_ready_revision  # still the CPU one
    assert [s.percent for s in after.traffic_statuses] == [100]


def test_never_ready_revision_keeps_traffic_on_the_old_one(sandbox_admin, cloud):
    sandbox_admin.reset(scenario_data=DEPLOY_ERRORS)
    services = cloud.services_client()
    good = create(cloud, "steady", template(revision="steady-v1"))
    svc = services.get_service(name=good.name)
    svc.template = template("registry.local/pages:broken", revision="steady-v2")
    svc.traffic = [target("steady-v1", 0, "prev"), target("steady-v2", 100, "canary")]
    with pytest.raises(exceptions.FailedPrecondition, match="failed to start and listen"):
        services.update_service(service=svc).result(polling=FAST)

    after = services.get_service(name=good.name)
    assert [(s.revision, s.percent, s.tag) for s in after.traffic_statuses] == [
        ("steady-v1", 100, "")
    ]
    assert short(after.latest_ready_revision) == "steady-v1"
    # As Google (service.proto, Service.reconciling): the requested traffic is kept, only the
    # statuses keep the last serving state.
    assert [(t.revision, t.percent, t.tag) for t in after.traffic] == [
        ("steady-v1", 0, "prev"),
        ("steady-v2", 100, "canary"),
    ]
    broken = cloud.revisions_client().get_revision(name=f"{good.name}/revisions/steady-v2")
    assert broken.conditions[0].state == FAILED
    health = httpx.get(after.uri + "/health", timeout=10).json()
    assert health["revision"] == "steady-v1"
    logs = [
        e
        for e in sandbox_admin.logs()
        if e["resource"]["labels"].get("revision_name") == "steady-v2"
    ]
    assert any("STARTUP TCP probe failed" in e["textPayload"] for e in logs)

    history = sandbox_admin.traffic_history("steady")
    assert [h["event"] for h in history] == ["create", "update"]
    assert history[1]["revisions"] == {"steady-v1": True, "steady-v2": False}
    assert history[1]["note"].startswith("failed: Revision 'steady-v2' is not ready")
    assert traffic_violations(history) == []

    # A tag alone on a failed revision is refused too.
    svc = services.get_service(name=good.name)
    svc.traffic = [target(percent=100), target("steady-v2", 0, "canary")]
    with pytest.raises(exceptions.FailedPrecondition):
        services.update_service(service=svc).result(polling=FAST)
    assert [s.tag for s in services.get_service(name=good.name).traffic_statuses] == [""]
    # A revision that serves traffic cannot be deleted.
    with pytest.raises(exceptions.BadRequest, match="receiving traffic"):
        cloud.revisions_client().delete_revision(name=after.latest_ready_revision)


def test_first_revision_never_ready_serves_nothing(sandbox_admin, cloud):
    sandbox_admin.reset(scenario_data=DEPLOY_ERRORS)
    services = cloud.services_client()
    op = services.create_service(
        parent=parent(cloud, "europe-north1"),
        service={"template": template(), "invoker_iam_disabled": True},
        service_id="doomed",
    )
    with pytest.raises(
        exceptions.FailedPrecondition, match="is not ready and cannot serve traffic"
    ):
        op.result(polling=FAST)
    svc = services.get_service(name=f"{parent(cloud, 'europe-north1')}/services/doomed")
    assert list(svc.traffic_statuses) == [] and svc.latest_ready_revision == ""
    assert svc.terminal_condition.state == FAILED
    assert httpx.get(svc.uri + "/health", timeout=10).status_code == 503
    # Honest history: a service that exists and serves nothing breaks invariant 1.
    assert traffic_violations(sandbox_admin.traffic_history("doomed")) == [
        "#1 create of doomed: traffic adds up to 0%, not 100%"
    ]


def test_invariant_checker_on_a_bad_and_a_real_history(sandbox_admin, cloud):
    bad = [
        {
            "seq": 1,
            "event": "create",
            "service": "s",
            "exists": True,
            "traffic": [{"revision": "s-1", "percent": 100, "ready": True}],
        },
        {
            "seq": 2,
            "event": "update",
            "service": "s",
            "exists": True,
            "traffic": [
                {"revision": "s-1", "percent": 60, "ready": True},
                {"revision": "s-2", "percent": 30, "ready": False},
            ],
        },
        {
            "seq": 3,
            "event": "update",
            "service": "s",
            "exists": True,
            "traffic": [{"revision": "s-2", "percent": 100}],
            "revisions": {"s-2": False},
        },
        {"seq": 4, "event": "delete", "service": "s", "exists": False, "traffic": []},
    ]
    assert traffic_violations(bad) == [
        "#2 update of s: traffic adds up to 90%, not 100%",
        "#2 update of s: 30% on revision 's-2', which is not Ready",
        "#3 update of s: 100% on revision 's-2', which is not Ready",
    ]

    services = cloud.services_client()
    svc = create(cloud, "real", template(revision="real-v1"))
    svc.template = template("registry.local/pages:2", revision="real-v2")
    svc.traffic = [target("real-v1", 90), target("real-v2", 10, "canary")]
    svc = services.update_service(service=svc).result(polling=FAST)
    svc.traffic = [target("real-v2", 100)]
    services.update_service(service=svc).result(polling=FAST)
    services.delete_service(name=svc.name).result(polling=FAST)
    history = sandbox_admin.traffic_history("real")
    assert [h["event"] for h in history] == ["create", "update", "update", "delete"]
    assert [[(t["revision"], t["percent"]) for t in h["traffic"]] for h in history] == [
        [("real-v1", 100)],
        [("real-v1", 90), ("real-v2", 10)],
        [("real-v2", 100)],
        [],
    ]
    assert all(t["ready"] for h in history for t in h["traffic"])
    assert history[0]["revisions"] == {"real-v1": True}
    assert traffic_violations(history) == []
    assert svc.traffic_statuses[1].tag == "canary"
    assert svc.terminal_condition.state == READY


def test_gpu_deploy_over_quota_fails_where_the_scenario_says(sandbox_admin, cloud):
    sandbox_admin.reset(
        scenario_data={
            "regions": {
                "europe-west1": {"gpu_no_zonal_redundancy": 0},
                "us-central1": {"gpu": 0, "gpu_no_zonal_redundancy": 0, "quota_where": "revision"},
            }
        }
    )
    services = cloud.services_client()
    with pytest.raises(exceptions.TooManyRequests, match="without zonal redundancy"):
        services.create_service(
            parent=parent(cloud), service={"template": template(gpu=True)}, service_id="nozonal"
        )
    with_redundancy = template(gpu=True)
    with_redundancy.gpu_zonal_redundancy_disabled = False  # needs the other quota: still 1
    assert create(cloud, "zonal", with_redundancy).terminal_condition.state == READY

    op = services.create_service(
        parent=parent(cloud, "us-central1"),
        service={"template": template(gpu=True, revision="noquota-gpu")},
        service_id="noquota",
    )
    with pytest.raises(exceptions.FailedPrecondition):
        op.result(polling=FAST)
    rev = cloud.revisions_client().get_revision(
        name=f"{parent(cloud, 'us-central1')}/services/noquota/revisions/noquota-gpu"
    )
    assert (
        rev.conditions[0].message
        == "You do not have quota for using GPUs without zonal redundancy."
    )
    assert sandbox_admin.calls()["run.quota_exceeded"] == 2


def test_gpu_quota_refused_on_update_fails_the_revision_by_default(sandbox_admin, cloud):
    """As Google: the update over the GPU quota is accepted and its revision fails with
    "Revision '<name>' is not ready and cannot serve traffic. Quota exceeded for total
    allowable count of GPUs per project per region." (hashicorp/terraform-provider-google#21999);
    a create without zonal redundancy over its quota is refused by the call itself."""
    sandbox_admin.reset(
        scenario_data={"regions": {"us-central1": {"gpu": 0, "gpu_no_zonal_redundancy": 0}}}
    )
    services = cloud.services_client()
    with pytest.raises(exceptions.TooManyRequests, match="without zonal redundancy"):
        services.create_service(
            parent=parent(cloud, "us-central1"),
            service={"template": template(gpu=True)},
            service_id="nozonal-create",
        )
    base = create(cloud, "upd-quota", template(), region="us-central1")
    gpu = template("registry.local/pages:gpu", gpu=True, revision="upd-quota-gpu")
    gpu.gpu_zonal_redundancy_disabled = False
    base.template = gpu
    base.traffic = [target(percent=100)]
    op = services.update_service(service=base)  # accepted: no synchronous error
    with pytest.raises(exceptions.FailedPrecondition) as err:
        op.result(polling=FAST)
    assert (
        "Revision 'upd-quota-gpu' is not ready and cannot serve traffic. Quota exceeded for "
        "total allowable count of GPUs per project per region." in str(err.value)
    )
    rev = cloud.revisions_client().get_revision(name=f"{base.name}/revisions/upd-quota-gpu")
    assert rev.conditions[0].state == FAILED


def test_traffic_to_a_missing_revision_fails_the_operation(sandbox_admin, cloud):
    """Not a synchronous 400: the operation fails with code 13 and Google's text, quoted from
    a real deploy in terraform-google-modules/terraform-docs-samples#269."""
    sandbox_admin.reset(scenario_data={})
    services = cloud.services_client()
    svc = create(cloud, "ghost", template(revision="ghost-v1"))
    svc.traffic = [target("ghost-v1", 50), target("ghost-gone", 50)]
    op = services.update_service(service=svc)  # accepted
    with pytest.raises(exceptions.InternalServerError) as err:
        op.result(polling=FAST)
    assert (
        "Revision 'ghost-gone' does not exist or is deleted. Update all traffic to route to "
        "currently available revisions." in str(err.value)
    )
    after = services.get_service(name=svc.name)
    assert [(s.revision, s.percent) for s in after.traffic_statuses] == [("ghost-v1", 100)]
