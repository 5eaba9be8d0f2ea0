"""The release steps on shapes Google answers that a kinder emulator hid.

After a failed update Google keeps the requested `traffic` and only `trafficStatuses` keep the
last serving state (google/cloud/run/v2/service.proto, Service.reconciling): the steps that ask
"what serves" read the statuses, the steps that clean up read both.
"""

from __future__ import annotations

import pytest
from google.api_core import exceptions as gexc
from google.cloud import run_v2

from flows.region_deploy import _ensure_service, clear_failed_step, find_existing_step
from flows.run_context import RunContext
from flows.templates import gpu_template
from tasks import cloud_run as cr

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

    found = find_existing_step.fn(ctx)
    assert [(e.region, e.state, e.percent) for e in found] == [(region, "failed", 0)]

    assert clear_failed_step.fn(ctx, region, ctx.gpu_revision) is True  # the spec is cleaned
    after = cr.get_service(ctx.services, ctx.service_name(region))
    assert after is not None
    assert [(t.revision, t.percent) for t in cr.traffic_of(after)] == [(ctx.cpu_revision, 100)]
