"""Before a rollout step: do the GPU instances it needs fit the region's GPU quota?

During a step both revisions serve: the new one its share, the stable one the rest. Each
revision that asks for a GPU holds GPU instances while it gets traffic — at least one (a
request to a revision with no instance starts one), and its warm minimum while it is
addressable ("Minimum instances are started only if the revision is addressable",
cloud.google.com/run/docs/configuring/min-instances). A GPU quota that held one revision at
100 % may not hold two side by side: Cloud Run then answers the requests that need a new
instance with 503 "The request failed because the project exceeded its quota limit for
run.googleapis.com/nvidia_l4_gpu_allocation_no_zonal_redundancy" (sandbox/emulator/
gpu_instances.py cites the report) — a step that would fail for a reason the judge would blame
on the new revision. So before each step:

    needed(revision) = max(1, ceil(max(1, min_instances) x share)) x GPUs per instance
                       (0 when its share is 0 or it asks for no GPU)

for the new revision at `percent` and the stable one at 100 - `percent`, against the region's
GPU quota for the target's variant (zonal redundancy or not: flows/deploy/quota.py reads it with
tasks/quotas.py, one Cloud Quotas list call). The revisions' own specs are read from Cloud Run
(the stable one may be a CPU baseline, or come from an older template), not from the target.

Not counted: GPUs held by other services of the project in the region (the quota is per
project and region), which only a read of every service would show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from google.cloud import run_v2

from shipyard.flows.deploy.quota import read_region_quotas
from shipyard.flows.release.context import RunContext
from shipyard.tasks import cloud_run as cr
from shipyard.tasks.deploy_errors import ConfigurationError

__all__ = ["QuotaFit", "RevisionGpus", "gpus_needed", "revision_gpus", "step_fits"]

GPU_LIMIT = "nvidia.com/gpu"


@dataclass(frozen=True)
class QuotaFit:
    """Whether a step's GPU instances fit the region's GPU quota. `limit`: the quota (None:
    unlimited, or not read because the step needs no GPU); `why` names the figures."""

    fits: bool
    needed: int
    limit: int | None
    why: str


@dataclass(frozen=True)
class RevisionGpus:
    """What a revision asks for: GPUs per instance (0: a CPU revision), its accelerator and its
    minimum instances."""

    gpus: int
    accelerator: str
    min_instances: int


def revision_gpus(revision: run_v2.Revision) -> RevisionGpus:
    """The GPU request of a Cloud Run revision (`nvidia.com/gpu` limit of its containers)."""
    gpus = 0
    for container in revision.containers:
        raw = dict(container.resources.limits).get(GPU_LIMIT, "0")
        try:
            gpus += int(raw)
        except ValueError:
            gpus += 0  # not a count: Cloud Run would have refused the revision
    return RevisionGpus(
        gpus=gpus,
        accelerator=revision.node_selector.accelerator,
        min_instances=revision.scaling.min_instance_count,
    )


def gpus_needed(spec: RevisionGpus, percent: int) -> int:
    """GPUs the revision holds at `percent` of the traffic: its minimum (at least 1) scaled by
    its share, rounded up, at least one instance while it has a share."""
    if percent <= 0 or spec.gpus <= 0:
        return 0
    minimum = max(1, spec.min_instances)
    instances = max(1, -(-minimum * percent // 100))  # ceil in integers: no float rounding
    return instances * spec.gpus


def _gpu_name(accelerator: str) -> str:
    """'nvidia-l4' -> 'L4' (the name Google's quota and pricing pages use)."""
    return accelerator.removeprefix("nvidia-").upper() if accelerator else "GPU"


def _read(ctx: RunContext, region: str, revision: str, role: str) -> RevisionGpus:
    found = cr.get_revision(ctx.revisions, ctx.revision_path(region, revision))
    if found is None:
        raise ConfigurationError(
            f"{role} revision {revision!r} does not exist in service {ctx.target.service} in "
            f"{region}; pass the name of one of its revisions (shipyard status shows them)"
        )
    return revision_gpus(found)


def step_fits(ctx: RunContext, region: str, new: str, stable: str, percent: int) -> QuotaFit:
    """Whether the step that gives `new` `percent` % (and `stable` the rest) fits the region's
    GPU quota; `why` names the figures, e.g. "the 50% step needs 2 L4 GPUs in us-central1
    (new 1 + stable 1), quota 1"."""
    if not 0 <= percent <= 100:
        raise ValueError(f"percent: {percent!r} is not a share; give a whole percent 0..100")
    specs = {"new": _read(ctx, region, new, "new"), "stable": _read(ctx, region, stable, "stable")}
    needs = {
        "new": gpus_needed(specs["new"], percent),
        "stable": gpus_needed(specs["stable"], 100 - percent),
    }
    needed = needs["new"] + needs["stable"]
    accelerator = next((s.accelerator for s in specs.values() if s.gpus and s.accelerator), "")
    gpu = _gpu_name(accelerator or ctx.target.gpu_type)
    parts = " + ".join(f"{role} {n}" for role, n in needs.items())
    step = f"the {percent}% step"
    if needed == 0:
        cpu = [role for role, s in specs.items() if not s.gpus]
        return QuotaFit(
            True,
            0,
            None,
            f"{step} needs no GPU in {region} ({' and '.join(cpu) or 'neither revision'} "
            f"{'asks' if len(cpu) == 1 else 'ask'} for none, or has no share)",
        )
    quota = read_region_quotas(
        ctx.cloud,
        ctx.project,
        [region],
        zonal_redundancy=ctx.target.gpu_zonal_redundancy,
    )[0]
    plural = "GPU" if needed == 1 else "GPUs"
    head = f"{step} needs {needed} {gpu} {plural} in {region} ({parts})"
    if quota.gpu is None:
        return QuotaFit(False, needed, None, f"{head}, quota not read: {quota.error}")
    if math.isinf(quota.gpu):
        return QuotaFit(True, needed, None, f"{head}, quota unlimited")
    limit = int(quota.gpu)
    if needed <= limit:
        return QuotaFit(True, needed, limit, f"{head}, quota {limit}")
    return QuotaFit(
        False,
        needed,
        limit,
        f"{head}, quota {limit} ({ctx.target.gpu_quota_id()}): raise the quota, lower the "
        "revisions' min_instances, or skip the steps (rollout.on_quota_short=direct)",
    )
