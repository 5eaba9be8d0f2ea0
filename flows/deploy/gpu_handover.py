"""Room for the canary in a region whose GPU quota the serving GPU revision already uses.

Cloud Run counts *running* instances against the region's GPU quota, not only the deploy: with
a quota of 1 and the previous GPU revision holding its instance (it serves traffic, or keeps a
warm minimum), every request to the new revision gets Google's 503 "The request failed because
the project exceeded its quota limit for run.googleapis.com/nvidia_l4_gpu_allocation_no_zonal_
redundancy" and the canary can never pass (sandbox/emulator/gpu_instances.py has the source).

So before the canary, the GPU revisions of the service that may hold an instance (those with
traffic, and those with a tag: Cloud Run starts minimums on every addressable revision) are
counted against the region's quota with the canary's one instance. When they do not fit, the
service hands over: their traffic goes to a Ready CPU revision (the CPU baseline, deployed at
0% and waited Ready first if none is there) and they lose Shipyard's own tags, so no GPU
instance is held; the canary tag stays. The invariants hold: 100% is always on a Ready revision,
the untested revision gets no traffic. After the verdict:
- passed: the cutover gives the canary 100% (the CPU revision that served is its `prior`);
- failed: the split from before the handover is restored (minus the failed revision), then
  the rollback step keeps the last good revision serving.
The CPU revision chosen is a tested one when the service has one (`good_because`: it passed
a canary or served before Shipyard); else the release's CPU baseline, and the handover's detail
(a reason of the release) says that it never passed a canary.
A release killed in between leaves the CPU revision serving: a Ready revision (invariant 3's
CPU baseline); the next release converges from there.
"""

from __future__ import annotations

from google.cloud import run_v2
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from shipyard.flows.deploy.quota import read_region_quotas
from shipyard.flows.deploy.region_deploy import deploy_revision
from shipyard.flows.deploy.templates import cpu_template
from shipyard.flows.deploy.traffic import good_because
from shipyard.flows.deploy.traffic_split import BASELINE_TAG, CANARY_TAG, PRIOR_TAG, pinned_traffic
from shipyard.flows.release.context import RunContext
from shipyard.flows.release.steps import note_attempt
from shipyard.tasks import cloud_run as cr

GPU_LIMIT = "nvidia.com/gpu"
_OWN_TAGS = {PRIOR_TAG, BASELINE_TAG}


class Handover(BaseModel):
    """What the handover changed: the split before it, and the CPU revision that served."""

    region: str
    cpu_revision: str
    before: list[tuple[str, int, str]]  # (revision, percent, tag) as it served
    freed: list[str]  # the GPU revisions that gave up their traffic / tags
    detail: str


def _gpus(revision: run_v2.Revision | None) -> int:
    if revision is None or not revision.containers:
        return 0
    return int(revision.containers[0].resources.limits.get(GPU_LIMIT, "0") or 0)


def _cpu_revision(ctx: RunContext, region: str, revisions: dict[str, run_v2.Revision]) -> str:
    """A Ready CPU revision of the service: the release's CPU baseline if there, else the
    newest one; deployed (at 0%, waited Ready) when the service has none."""
    ready = [
        name
        for name, r in revisions.items()
        if not _gpus(r) and cr.ready_state(r)[0] == "succeeded"
    ]
    tested = [name for name in ready if good_because(ctx, region, name)]
    if tested:
        return tested[0]  # last good means tested: a CPU revision that passed, or served before
    if ctx.cpu_revision in ready:
        return ctx.cpu_revision
    if ready:
        return ready[0]  # list_revisions answers newest first
    return deploy_revision(ctx, region, cpu_template(ctx), tag=None).revision


@task(name="gpu-handover", cache_policy=NO_CACHE, persist_result=False)
def handover_step(ctx: RunContext, region: str, canary: str) -> Handover | None:
    """Before the canary of `canary`: hand the traffic of GPU revisions that would leave no
    GPU for it to a Ready CPU revision. None when the quota holds them all (or is unknown)."""
    note_attempt()
    t = ctx.target
    quota = read_region_quotas(
        ctx.cloud, ctx.project, [region], zonal_redundancy=t.gpu_zonal_redundancy
    )[0]
    if quota.gpu is None:
        return None
    service = cr.get_service(ctx.services, ctx.service_name(region))
    if service is None:
        return None
    revisions = {cr.short_name(r.name): r for r in cr.list_revisions(ctx.revisions, service.name)}
    current = pinned_traffic(service)
    holders = sorted(
        {
            x.revision
            for x in current
            if x.revision and x.revision != canary and _gpus(revisions.get(x.revision))
        }
    )
    held = sum(_gpus(revisions[r]) for r in holders)
    if not holders or held + t.gpu_template.gpu <= quota.gpu:
        return None
    cpu = _cpu_revision(ctx, region, revisions)
    service = cr.get_service(ctx.services, ctx.service_name(region)) or service
    current = pinned_traffic(service)
    moved = sum(x.percent for x in current if x.revision in holders)
    split: list[cr.Traffic] = []
    for x in current:
        if x.revision in holders:
            if x.tag and x.tag not in _OWN_TAGS:
                split.append(cr.Traffic(x.revision, 0, x.tag))  # someone else's tag stays
            continue
        split.append(x)
    base = next((x for x in split if x.revision == cpu and not x.tag), None)
    if base is not None:
        split[split.index(base)] = cr.Traffic(cpu, base.percent + moved)
    elif moved:
        split.append(cr.Traffic(cpu, moved))
    split.append(cr.Traffic(canary, 0, CANARY_TAG))
    cr.set_traffic(ctx.services, service, split, **ctx.wait)
    untested = (
        "" if good_because(ctx, region, cpu) else " (a CPU baseline that never passed a canary)"
    )
    detail = (
        f"GPU quota {quota.gpu:g} in {region} cannot run {', '.join(holders)} ({held} GPU) and "
        f"the canary's instance: {cpu}{untested} serves {moved}% during the canary"
    )
    return Handover(
        region=region,
        cpu_revision=cpu,
        before=[(x.revision or "", x.percent, x.tag or "") for x in current],
        freed=holders,
        detail=detail,
    )


@task(name="gpu-handover-restore", cache_policy=NO_CACHE, persist_result=False)
def restore_step(ctx: RunContext, handover: Handover, failed: str) -> bool:
    """After a failed canary: the split from before the handover, without `failed` (its canary
    tag is gone already). False (nothing changed) when a revision of it is no longer Ready:
    the rollback step then decides from what serves."""
    note_attempt()
    region = handover.region
    service = cr.get_service(ctx.services, ctx.service_name(region))
    if service is None:
        return False
    split = [cr.Traffic(r, p, t or None) for r, p, t in handover.before if r != failed]
    if sum(x.percent for x in split) != 100:
        return False
    for x in split:
        found = cr.get_revision(ctx.revisions, ctx.revision_path(region, x.revision or ""))
        if found is None or cr.ready_state(found)[0] != "succeeded":
            return False
    if split == pinned_traffic(service):
        return False
    cr.set_traffic(ctx.services, service, split, **ctx.wait)
    return True
