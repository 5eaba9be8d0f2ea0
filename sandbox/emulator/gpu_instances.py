"""GPU instances against the region's GPU quota, as Cloud Run counts them when it serves.

The deploy-time check (run_revisions.RevisionLifecycle._quota_shortfall) only compares one
revision's `maxInstanceCount` x GPUs with the quota. When it serves, Cloud Run counts the GPU
instances that are *running* in the project and region: with a quota of 1 and another revision
holding its instance (a warm minimum, or a request in flight), a request that needs a new GPU
instance gets a 503 and the request log says why:

    HTTP 503 ... textPayload: The request failed because the project exceeded its quota limit
    for run.googleapis.com/nvidia_l4_gpu_allocation_no_zonal_redundancy

(quoted from a public production runbook, nirholas/three.ws docs/ops/production-log-triage.md,
"gpu-quota-starved": "When warm min-instances across the fleet pin all of them, a min-0 service
can never allocate: every request ... 503s without an instance ever starting"; the CPU variant,
".../cpu_allocation recently.", is in the same kind of reports.)

Who holds an instance here:
- a revision with `scaling.minInstanceCount` >= 1 while it is addressable: "Minimum instances
  are started only if the revision is addressable ... if it receives a percentage of the
  traffic [or] was assigned a revision tag" (cloud.google.com/run/docs/configuring/min-instances);
  or with a share of the service's `scaling.minInstanceCount` (service_min_shares); minimums
  start in creation order while the quota lasts;
- a revision with a request in flight;
- an addressable revision for `serving.idle_instance_s` after its last request (Google keeps an
  idle instance up to 15 minutes; the scenario's default 0 lets only minimums and requests in
  flight hold a GPU, which is what the report above describes).
A revision that is neither tagged nor given traffic keeps no instance.
"""

from __future__ import annotations

import time
from typing import Any

from sandbox.emulator.run_resources import Revision
from sandbox.emulator.run_templates import template_gpus

INSTANCE_QUOTA_MESSAGE = (
    "The request failed because the project exceeded its quota limit for {metric}"
)
_QUOTAS = {  # gpuZonalRedundancyDisabled -> (quota id, metric)
    True: (
        "NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion",
        "run.googleapis.com/nvidia_l4_gpu_allocation_no_zonal_redundancy",
    ),
    False: ("NvidiaL4GpuAllocPerProjectRegion", "run.googleapis.com/nvidia_l4_gpu_allocation"),
}


def _gpu_quota(rev: Revision) -> tuple[str, str] | None:
    if rev.device != "gpu" or template_gpus(rev.template) <= 0:
        return None
    return _QUOTAS[bool(rev.template.get("gpuZonalRedundancyDisabled"))]


def gpu_revision(rev: Revision) -> bool:
    """Whether the revision's instances count against a GPU quota."""
    return _gpu_quota(rev) is not None


def min_instances(store: Any, rev: Revision) -> int:
    """The instances Cloud Run keeps started for the revision: its own
    `template.scaling.minInstanceCount`, or its share of the service's
    `scaling.minInstanceCount`, whichever is larger (service_min_shares)."""
    own = int(rev.template.get("scaling", {}).get("minInstanceCount", 0) or 0)
    svc = store.services.get(rev.service)
    share = service_min_shares(svc).get(rev.name, 0) if svc is not None else 0
    return max(own, share)


def service_min_shares(svc: Any) -> dict[str, int]:
    """The service-level minimum (`Service.scaling.minInstanceCount`) split over the revisions
    that serve traffic (full revision name -> instances).

    Google: "total min instances for the service. This number of instances is divided among
    all revisions with specified traffic based on the percent of traffic they are receiving"
    (google/cloud/run/v2/vendor_settings.proto, ServiceScaling); "Tagged revisions are started,
    but do not count toward the service-level minimum instances if they are not part of a
    traffic split" (cloud.google.com/run/docs/configuring/min-instances). How a share is rounded
    is not written down; here each revision with a percentage gets ceil(minimum x percent /
    100), so every revision that serves keeps at least one instance warm and the service at
    least its minimum: 1 over 90/10 warms both (an abort's stable revision at 10 % is warm
    before it takes the traffic back), 4 over 90/10 gives 4 and 1. Each share still needs its
    GPU within the region's quota (`refresh`: minimums start in creation order)."""
    total = int((svc.spec.get("scaling") or {}).get("minInstanceCount", 0) or 0)
    if total <= 0:
        return {}
    percents: dict[str, int] = {}
    for status in svc.statuses:
        if status["percent"] > 0:
            percents[status["revision"]] = percents.get(status["revision"], 0) + status["percent"]
    return {name: -(-total * percent // 100) for name, percent in percents.items()}


def addressable(store: Any, rev: Revision) -> bool:
    """The revision gets a share of the traffic or has a tag (its statuses: what serves)."""
    svc = store.services.get(rev.service)
    if svc is None:
        return False
    return any(
        s["revision"] == rev.name and (s["percent"] > 0 or s.get("tag")) for s in svc.statuses
    )


def _holds(store: Any, rev: Revision, now: float) -> bool:
    if rev.in_flight > 0:
        return True
    if not rev.ready or not addressable(store, rev):
        return False
    idle_s = store.state.scenario.serving.idle_instance_s
    return min_instances(store, rev) >= 1 or now - rev.last_used < idle_s


def _region_gpu_revisions(store: Any, project: str, region: str) -> list[Revision]:
    return [
        r
        for r in store.revisions.values()
        if r.project == project and r.region == region and _gpu_quota(r) is not None
    ]


def _in_use(store: Any, rev: Revision, quota_id: str) -> int:
    return sum(
        template_gpus(r.template)
        for r in _region_gpu_revisions(store, rev.project, rev.region)
        if r is not rev and r.instance and (_gpu_quota(r) or ("",))[0] == quota_id
    )


def _fits(store: Any, rev: Revision) -> bool:
    quota = _gpu_quota(rev)
    if quota is None:
        return True  # no GPU asked for: no GPU quota to fit in
    limit = store.quota_limit(rev.project, rev.region, quota[0])
    return _in_use(store, rev, quota[0]) + template_gpus(rev.template) <= limit


def refresh(store: Any, project: str, region: str) -> None:
    """Stop the instances nothing holds any more; start addressable minimums the quota allows
    (called after every change of traffic or revisions, and before a request is admitted)."""
    now = time.monotonic()
    revisions = _region_gpu_revisions(store, project, region)
    for rev in revisions:
        if rev.instance and not _holds(store, rev, now):
            rev.instance = False
    for rev in revisions:  # creation order
        wants = rev.ready and min_instances(store, rev) >= 1 and addressable(store, rev)
        if wants and not rev.instance and _fits(store, rev):
            rev.instance, rev.last_used = True, now


def admit(store: Any, rev: Revision) -> str | None:
    """None when the request may run (on an instance the revision has or may start now), else
    Google's 503 text: no GPU instance can start within the region's quota."""
    quota = _gpu_quota(rev)
    if quota is None:
        return None
    refresh(store, rev.project, rev.region)
    if not rev.instance:
        if not _fits(store, rev):
            store.state.calls["run.instance_quota_exceeded"] += 1
            return INSTANCE_QUOTA_MESSAGE.format(metric=quota[1])
        rev.instance = True
    rev.in_flight += 1
    return None


def done(rev: Revision) -> None:
    """The request that `admit` let in has ended."""
    if _gpu_quota(rev) is not None:
        rev.in_flight = max(0, rev.in_flight - 1)
        rev.last_used = time.monotonic()
