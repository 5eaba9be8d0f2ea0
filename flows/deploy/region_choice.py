"""Which regions a release may deploy its GPU revision to, decided on quota.

1. Quota of every candidate region, read in ONE parallel round (GPU for the zonal-redundancy
   variant the target chose, CPU, memory). The regions that can hold the GPU template, in the
   target's order, are the candidates.
2. None can, and the quota policy allows: file QuotaPreferences with deterministic ids
   per project and region, not per service (`shipyard.tasks.quotas.preference_id_for`, e.g.
   `shipyard-l4-nzr-us-central1`: quota is per project+region, so a re-run, or another service
   of the project, finds the preference already filed instead of filing a second one)
   and poll them with backoff within the budget; granted regions become candidates.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from shipyard.blocks.release_target import ReleaseTarget
from shipyard.flows.deploy.quota import (
    file_preferences,
    poll_preferences,
    preference_ids,
    read_region_quotas,
)
from shipyard.flows.release.context import RunContext
from shipyard.flows.release.decisions import log_preferences, log_regions, region_decisions
from shipyard.flows.release.steps import StepLog, note_attempt
from shipyard.tasks.deploy_errors import ConfigurationError
from shipyard.tasks.quotas import PreferenceState, RegionQuota


class RegionChoice(BaseModel):
    """The regions to try, in order, with the quotas read and the preferences filed."""

    quotas: list[RegionQuota]
    candidates: list[str]
    preferences: list[PreferenceState] = []
    requested: bool = False
    reason: str = ""
    decisions: dict[str, str] = {}  # region -> candidate, or skipped and why


def fits(q: RegionQuota, target: ReleaseTarget) -> tuple[bool, str]:
    spec = target.gpu_template
    gpus = spec.gpu * spec.max_instances
    cpu = spec.cpu_count() * spec.max_instances
    memory = spec.memory_gib() * spec.max_instances
    if q.error:
        return False, f"quota unreadable: {q.error}"
    if q.gpu is not None and q.gpu < gpus:
        return False, f"GPU quota {q.gpu:g} < {gpus}"
    if q.cpu is not None and q.cpu < cpu:
        return False, f"CPU quota {q.cpu:g} < {cpu:g}"
    if q.memory_gib is not None and q.memory_gib < memory:
        return False, f"memory quota {q.memory_gib:g} GiB < {memory:g} GiB"
    return True, "fits"


@task(name="read-quotas", cache_policy=NO_CACHE, persist_result=False)
def read_quotas_step(ctx: RunContext) -> list[RegionQuota]:
    note_attempt()
    t = ctx.target
    return read_region_quotas(
        ctx.cloud, ctx.project, t.regions, zonal_redundancy=t.gpu_zonal_redundancy, stage="quota"
    )


@task(name="quota-preferences", cache_policy=NO_CACHE, persist_result=False)
def quota_preferences_step(ctx: RunContext, regions: list[str]) -> list[PreferenceState]:
    """File (idempotently) and poll the preferences of `regions` within the policy budget."""
    note_attempt()
    t = ctx.target
    if not t.quota.contact_email:
        raise ConfigurationError(
            "ReleaseTarget.quota.contact_email is not set: Cloud Quotas requires a contact "
            "email to request a quota increase; set it, or set quota.request=False"
        )
    ids = preference_ids(t.gpu_quota_id(), regions)
    created = file_preferences(
        ctx.cloud,
        ctx.project,
        ids,
        quota_id=t.gpu_quota_id(),
        preferred_value=t.quota.preferred_value,
        justification=t.quota.justification,
        contact_email=t.quota.contact_email,
        stage="quota-preferences",
    )
    states = poll_preferences(
        ctx.cloud,
        ctx.project,
        ids,
        budget_s=t.quota.budget_s,
        initial_s=t.quota.poll_initial_s,
        max_s=t.quota.poll_max_s,
    )
    for state in states:  # (file_preferences put adopted preferences' ids into `ids`)
        state.created = created.get(state.region, False)
    return states


def decide_regions(ctx: RunContext, steps: StepLog, *, allow_requests: bool) -> RegionChoice:
    """Candidate regions in order: those whose quota fits, else those granted on request."""
    target = ctx.target
    # The read retries itself (reported as the stage's `retrying` events): the step does not.
    quotas = steps.run_with("quota", 0, [], read_quotas_step, ctx)
    verdicts = {q.region: fits(q, target) for q in quotas}
    for q in quotas:
        q.fits, q.why = verdicts[q.region]
    candidates = [r for r in target.regions if verdicts[r][0]]
    steps.note("quota", ", ".join(f"{q.region}: {q.why}" for q in quotas))
    decision = RegionChoice(quotas=quotas, candidates=candidates)
    decision.decisions = region_decisions(target.regions, quotas, [])
    if candidates:
        log_regions(decision.decisions)
        return decision
    if not target.quota.request:
        decision.reason = "no region has GPU quota and the quota policy does not ask for more"
        log_regions(decision.decisions)
        return decision
    if not allow_requests:
        decision.reason = "no region has GPU quota; a release would file quota preferences"
        log_regions(decision.decisions)
        return decision
    lacking = [r for r in target.regions if verdicts[r][1].startswith("GPU quota")]
    if not lacking:
        decision.reason = "no region fits (CPU or memory quota), and only GPU quota is requested"
        log_regions(decision.decisions)
        return decision
    preferences = steps.run_with("quota-preferences", 0, [], quota_preferences_step, ctx, lacking)
    decision.preferences = preferences
    decision.requested = True
    decision.candidates = [p.region for p in preferences if p.granted]
    steps.note(
        "quota-preferences",
        ", ".join(f"{p.region}: {p.state} (granted {p.granted_value})" for p in preferences),
    )
    log_preferences(preferences)
    decision.decisions = region_decisions(target.regions, quotas, preferences)
    log_regions(decision.decisions)
    if not decision.candidates:
        decision.reason = "no quota preference was granted within the budget"
    return decision
