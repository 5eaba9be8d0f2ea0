"""The release steps on shapes Google answers that a kinder emulator hid.

After a failed update Google keeps the requested `traffic` and only `trafficStatuses` keep the
last serving state (google/cloud/run/v2/service.proto, Service.reconciling): the steps that ask
"what serves" read the statuses, the steps that clean up read both.
"""

from __future__ import annotations

import pytest
from google.api_core import exceptions as gexc
from google.cloud import run_v2

from shipyard.flows.deploy.region_deploy import (
    _ensure_service,
    clear_failed_step,
    find_existing_step,
)
from shipyard.flows.deploy.templates import gpu_template
from shipyard.flows.release.context import RunContext
from shipyard.tasks import cloud_run as cr

IMAGE = "registry.sandbox.local/pages/page-service"


def test_a_failed_update_asking_100_percent_is_not_taken_for_serving(stage, make_target):
    stage(
        revision_faults=[{"fault": "never_ready", "accelerator": "any", "image_contains": "broken"}]
    )
    target = make_target(regions=["europe-west1"])
    ctx = RunContext(target, "v13.0.0", f"{IMAGE}:v13.0.0")
    region = "europe-west1"
    _ensure_service(ctx, region)  # the CPU baseline at 100%
    ctx.image = f"{IMAGE}:broken"
    service = cr.get_service(ctx.services, ctx.service_name(region))
    assert service is not None
    body = run_v2.Service(
        name=service.name,
        template=gpu_template(ctx, region),
        traffic=[cr.Traffic(ctx.gpu_revision, 100).to_proto()],
    )
    with pytest.raises(gexc.FailedPrecondition):
        cr.update_service(ctx.services, body, **ctx.wait)
    asked = cr.get_service(ctx.services, ctx.service_name(region))
    assert asked is not None
    assert [(t.revision, t.percent) for t in cr.traffic_of(asked)] == [(ctx.gpu_revision, 100)]

    found = find_existing_step.fn(ctx, region)
    assert found is not None
    assert (found.region, found.state, found.percent) == (region, "failed", 0)

    assert clear_failed_step.fn(ctx, region, ctx.gpu_revision) is True  # the spec is cleaned
    after = cr.get_service(ctx.services, ctx.service_name(region))
    assert after is not None
    assert [(t.revision, t.percent) for t in cr.traffic_of(after)] == [(ctx.cpu_revision, 100)]


def test_the_cutover_keeps_a_public_service_public_and_its_other_fields(stage, make_target):
    """An update replaces the whole service: the cutover's traffic update must send every field
    it does not change, or Cloud Run resets it (invoker IAM: a public service turned private)."""
    import httpx

    from shipyard.flows.deploy.region_deploy import deploy_gpu_step
    from shipyard.flows.deploy.traffic import cutover_step

    stage()
    target = make_target(regions=["europe-west1"], public=True)
    ctx = RunContext(target, "v14.0.0", f"{IMAGE}:v14.0.0")
    region = "europe-west1"
    service, _ = _ensure_service(ctx, region)
    assert service.invoker_iam_disabled
    # Fields set outside Shipyard (the console, another tool): they must survive too.
    cr.update_service(
        ctx.services,
        cr.replaced(service, description="page translation", annotations={"team": "docs"}),
        **ctx.wait,
    )
    deployed = deploy_gpu_step.fn(ctx, region)

    outcome = cutover_step.fn(ctx, region, deployed.revision)

    after = cr.get_service(ctx.services, ctx.service_name(region))
    assert after is not None and outcome.revision == deployed.revision
    assert [(t.revision, t.percent) for t in cr.serving_traffic(after) if t.percent] == [
        (deployed.revision, 100)
    ]
    assert after.invoker_iam_disabled is True
    assert after.description == "page translation" and dict(after.annotations) == {"team": "docs"}
    with httpx.Client(timeout=20) as http:  # anonymous: still public
        assert http.get(after.uri + "/health").status_code == 200


def test_traffic_naming_a_missing_revision_is_a_permanent_refusal(stage, make_target):
    """Google fails the operation with code 13 (INTERNAL: transient to google-api-core) and
    the text "Revision '...' does not exist or is deleted" (terraform-google-modules/
    terraform-docs-samples#269): retrying cannot create the revision, so it is permanent, and
    says which revision and what to do."""
    from shipyard.flows.deploy.traffic import cutover_step
    from shipyard.flows.release.steps import StepLog
    from shipyard.tasks.errors import is_transient

    stage()
    target = make_target(regions=["europe-west1"])
    ctx = RunContext(target, "v15.0.0", f"{IMAGE}:v15.0.0")
    region = "europe-west1"
    _ensure_service(ctx, region)
    gone = f"{target.service}-v0-9-0"

    steps = StepLog(retries=3, retry_delays=[0.01] * 3)
    with pytest.raises(cr.MissingRevision) as err:
        steps.run("cutover", cutover_step, ctx, region, gone)

    assert not is_transient(err.value)
    assert steps.steps[-1].attempts == 1  # not retried
    text = str(err.value)
    assert f"revision '{gone}' does not exist or was deleted" in text
    assert "Fix: route the traffic to revisions the service has" in text
    after = cr.get_service(ctx.services, ctx.service_name(region))
    assert after is not None
    assert [(t.revision, t.percent) for t in cr.serving_traffic(after)] == [(ctx.cpu_revision, 100)]
