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
a canary or its answer check, or served before Shipyard); else the release's CPU baseline,
which must first pass the canary policy's answer checks through its `baseline` tag URL
(flows/canary/cpu_check.py; the pass is recorded, so it counts as tested from then on). When
it fails them no traffic moves: the serving GPU revision keeps the users, the canary revision
loses its tag, and the release stops before the GPU canary with the reason and the fixes
(more GPU quota in the region, or a CPU template that answers).
A release killed in between leaves the CPU revision serving: a Ready revision that passed its
check (invariant 3's CPU baseline); the next release converges from there.
"""

from __future__ import annotations

from collections.abc import Generator

from google.cloud import run_v2
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from shipyard.flows.canary.cpu_check import check_cpu_revision
from shipyard.flows.deploy.quota import read_region_quotas
from shipyard.flows.deploy.region_deploy import clear_failed_step, deploy_revision
from shipyard.flows.deploy.templates import cpu_template
from shipyard.flows.deploy.traffic import good_because
from shipyard.flows.deploy.traffic_split import BASELINE_TAG, CANARY_TAG, PRIOR_TAG, pinned_traffic
from shipyard.flows.release.context import RunContext
from shipyard.flows.release.decided import Decision, Ended, Reason
from shipyard.flows.release.steps import StepLog, note_attempt
from shipyard.tasks import cloud_run as cr

GPU_LIMIT = "nvidia.com/gpu"
_OWN_TAGS = {PRIOR_TAG, BASELINE_TAG}


class Plan(BaseModel):
    """Why the canary needs a handover, and the Ready CPU revision that would serve."""

    region: str
    quota: float  # the region's GPU quota
    holders: list[str]  # GPU revisions that may hold an instance
    held: int  # their GPUs
    needed: int  # their GPUs and the canary's
    cpu_revision: str
    serving: str  # the revision with the most traffic now
    url: str  # the service URL


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
    """A Ready CPU revision of the service: a tested one if there, else the release's CPU
    baseline, else the newest one; deployed (at 0%, waited Ready) when the service has none."""
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


@task(name="gpu-handover-plan", cache_policy=NO_CACHE, persist_result=False)
def plan_step(ctx: RunContext, region: str, canary: str) -> Plan | None:
    """Before the canary of `canary`: do the GPU revisions that may hold an instance leave a
    GPU for it? None when they do (or the quota is unknown); else the plan, with the Ready
    CPU revision that would serve meanwhile."""
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
    serving = max(current, key=lambda x: x.percent)
    return Plan(
        region=region,
        quota=quota.gpu,
        holders=holders,
        held=held,
        needed=held + t.gpu_template.gpu,
        cpu_revision=_cpu_revision(ctx, region, revisions),
        serving=serving.revision or "",
        url=service.uri,
    )


@task(name="gpu-handover", cache_policy=NO_CACHE, persist_result=False)
def handover_step(ctx: RunContext, plan: Plan, canary: str, checked: str = "") -> Handover:
    """Hand the traffic of the plan's GPU revisions to its CPU revision (tested: it passed a
    canary or its answer check, or served before Shipyard); they lose Shipyard's tags."""
    note_attempt()
    region, cpu, holders = plan.region, plan.cpu_revision, plan.holders
    service = cr.get_service(ctx.services, ctx.service_name(region))
    if service is None:
        raise RuntimeError(f"service {ctx.target.service} vanished from {region}")
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
    cr.set_traffic(ctx.services, service, split, revisions=ctx.revisions, **ctx.wait)
    because = checked or good_because(ctx, region, cpu) or "untested"
    detail = (
        f"GPU quota {plan.quota:g} in {region} cannot run {', '.join(holders)} ({plan.held} GPU) "
        f"and the canary's instance: {cpu} ({because}) serves {moved}% during the canary"
    )
    return Handover(
        region=region,
        cpu_revision=cpu,
        before=[(x.revision or "", x.percent, x.tag or "") for x in current],
        freed=holders,
        detail=detail,
    )


def hand_over(
    ctx: RunContext, steps: StepLog, region: str, canary: str
) -> Generator[Decision, None, Handover | Ended | None]:
    """The handover before the canary of `canary` (see the module docstring): None when none
    is needed, the Handover when the CPU revision serves, Ended when the CPU revision failed
    its answer check (nothing moved, the canary revision lost its tag, the release stops)."""
    plan = steps.run(f"gpu-handover-plan:{region}", plan_step, ctx, region, canary)
    if plan is None:
        return None
    checked = ""
    if not good_because(ctx, region, plan.cpu_revision):
        try:
            check = check_cpu_revision(ctx, steps, region, plan.cpu_revision)
        except BaseException:
            # Not judged: nothing moved; no stale canary tag either.
            steps.run(f"clear:{region}", clear_failed_step, ctx, region, canary)
            raise
        if not check.passed:
            steps.note(f"gpu-handover-plan:{region}", check.said())
            steps.run(f"clear:{region}", clear_failed_step, ctx, region, canary)
            why = refusal(ctx, plan, check.said(), canary)
            return Ended("rolled_back", region, plan.serving, plan.url, reasons=(why,))
        yield Reason(check.said())
        checked = "passed its answer check just now"
    handover = steps.run(f"gpu-handover:{region}", handover_step, ctx, plan, canary, checked)
    steps.note(f"gpu-handover:{region}", handover.detail)
    yield Reason(handover.detail)
    return handover


def refusal(ctx: RunContext, plan: Plan, failed: str, canary: str) -> str:
    """Why the release stopped before the GPU canary, what serves, and the fixes."""
    region = plan.region
    return (
        f"GPU hand-over refused in {region}, no traffic moved: {failed}. {plan.serving} keeps "
        f"the users and the canary of {canary} did not run (GPU quota {plan.quota:g} in "
        f"{region} cannot run {', '.join(plan.holders)} and the canary's instance side by "
        f"side, and an untested CPU revision never takes users). Fix: raise the GPU quota "
        f"{ctx.target.gpu_quota_id()} in {region} to {plan.needed} (Cloud Quotas, or "
        f"QuotaPolicy.request), or fix the CPU template (ReleaseTarget.cpu_template) so that "
        "its revision answers the canary's samples; then release again"
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
    cr.set_traffic(ctx.services, service, split, revisions=ctx.revisions, **ctx.wait)
    return True
