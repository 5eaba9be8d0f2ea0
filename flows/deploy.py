"""GPU deploy with region fallback and quota polling (seed 003), as steps of the release flow.

Decisions, in order:

1. Quota of every candidate region, read in ONE parallel round (GPU for the zonal-redundancy
   variant the target chose, CPU, memory). The regions that can hold the GPU template, in the
   target's order, are the candidates.
2. None can, and the quota policy allows: file QuotaPreferences with deterministic ids
   per project and region, not per service (`tasks.quotas.preference_id_for`, e.g.
   `shipyard-l4-nzr-us-central1`: quota is per project+region, so a re-run, or another service
   of the project, finds the preference already filed instead of filing a second one)
   and poll them with backoff within the budget; granted regions become candidates.
3. Deploy the GPU revision, named from the git tag (`{service}-v1-2-3`), with 0% traffic and
   the tag `canary`, then wait for Ready with a timeout. A region without a service first gets
   the CPU baseline at 100% (Cloud Run cannot create a service whose only revision has 0%, and
   invariant 2 forbids giving the untested GPU revision traffic): there is always a Ready
   revision to fall back on.
4. A deploy error that is a quota error (the API call's 429, the operation's error, or the
   revision's failed Ready condition) moves to the next candidate; a transient one is
   retried by the step; anything else is a configuration error and stops the release.

The revision name is deterministic, so re-running a tag reuses the revision it created.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from google.api_core import exceptions as gexc
from google.cloud import run_v2
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from blocks.release_target import ReleaseTarget, RevisionSpec, revision_name
from flows.quota_adapter import (
    PreferenceState,
    RegionQuota,
    file_preferences,
    poll_preferences,
    preference_ids,
    read_region_quotas,
)
from flows.release_steps import StepLog, note_attempt
from tasks import cloud_run as cr
from tasks.errors import PermanentError, is_quota_error, is_transient

CANARY_TAG = "canary"
PRIOR_TAG = "prior"
BASELINE_TAG = "baseline"
ROLE_LABEL = "shipyard-role"
TAG_LABEL = "shipyard-release"

QUOTA_MESSAGES = (
    "Quota exceeded for total allowable count of GPUs per project per region",
    "You do not have quota for using GPUs without zonal redundancy.",
)


class QuotaDenied(PermanentError):
    """The region cannot host the revision for lack of quota: try the next region."""

    def __init__(self, region: str, message: str):
        super().__init__(f"{region}: {message}")
        self.region = region
        self.message = message


class DeployFailed(PermanentError):
    """The revision was created but never became Ready for another reason (or timed out)."""

    def __init__(self, region: str, revision: str, message: str):
        super().__init__(f"{region}: revision {revision} failed: {message}")
        self.region = region
        self.revision = revision
        self.message = message


class ConfigurationError(PermanentError):
    """Cloud Run refused the request itself (bad template, permissions, ...): stop."""


# ---------------------------------------------------------------- context


class RunContext:
    """What the deploy/traffic steps share: the target, project, and the Cloud Run clients.

    A plain class on purpose: Prefect passes it to tasks as is (it copies pydantic models and
    dataclasses when resolving task inputs).
    """

    def __init__(self, target: ReleaseTarget, git_tag: str, image: str | None):
        self.target = target
        self.git_tag = git_tag
        self.image = image
        cloud = target.google()
        self.cloud = cloud
        self.project = target.resolved_project()
        self.services = cloud.services_client()
        self.revisions = cloud.revisions_client()
        self.gpu_revision = revision_name(target.service, git_tag)
        self.cpu_revision = revision_name(target.service, git_tag, "cpu")

    def service_name(self, region: str) -> str:
        return cr.service_path(self.project, region, self.target.service)

    def revision_path(self, region: str, revision: str) -> str:
        return cr.revision_path(self.project, region, self.target.service, revision)

    @property
    def wait(self) -> dict[str, float]:
        return {"timeout": self.target.ready_timeout_s, "poll_s": self.target.poll_interval_s}


# ---------------------------------------------------------------- templates


def build_template(
    spec: RevisionSpec,
    *,
    image: str,
    revision: str,
    gpu_type: str,
    zonal_redundancy: bool,
    labels: dict[str, str],
) -> run_v2.RevisionTemplate:
    """A RevisionSpec as Cloud Run's RevisionTemplate (secrets by Secret Manager reference)."""
    limits = {"cpu": spec.cpu, "memory": spec.memory}
    if spec.gpu:
        limits["nvidia.com/gpu"] = str(spec.gpu)
    env = [run_v2.EnvVar(name=k, value=v) for k, v in sorted(spec.env.items())]
    env += [
        run_v2.EnvVar(
            name=k,
            value_source=run_v2.EnvVarSource(
                secret_key_ref=run_v2.SecretKeySelector(secret=ref.secret, version=ref.version)
            ),
        )
        for k, ref in sorted(spec.secret_env.items())
    ]
    template = run_v2.RevisionTemplate(
        revision=revision,
        labels=labels,
        scaling=run_v2.RevisionScaling(
            min_instance_count=spec.min_instances, max_instance_count=spec.max_instances
        ),
        containers=[
            run_v2.Container(
                image=spec.image or image,
                env=env,
                resources=run_v2.ResourceRequirements(
                    limits=limits,
                    cpu_idle=spec.cpu_throttling,
                    startup_cpu_boost=spec.startup_cpu_boost,
                ),
                ports=[run_v2.ContainerPort(container_port=spec.port)],
            )
        ],
        timeout=cr.seconds(spec.timeout_s),
        max_instance_request_concurrency=spec.concurrency,
    )
    if spec.service_account:
        template.service_account = spec.service_account
    if spec.gpu:
        template.node_selector = run_v2.NodeSelector(accelerator=gpu_type)
        template.gpu_zonal_redundancy_disabled = not zonal_redundancy
    return template


def _labels(ctx: RunContext, role: str) -> dict[str, str]:
    tag = re.sub(r"[^a-z0-9_-]+", "-", ctx.git_tag.lower())[:63]
    return {ROLE_LABEL: role, TAG_LABEL: tag}


def gpu_template(ctx: RunContext) -> run_v2.RevisionTemplate:
    t = ctx.target
    return build_template(
        t.gpu_template,
        image=ctx.image or "",
        revision=ctx.gpu_revision,
        gpu_type=t.gpu_type,
        zonal_redundancy=t.gpu_zonal_redundancy,
        labels=_labels(ctx, "gpu"),
    )


def cpu_template(ctx: RunContext) -> run_v2.RevisionTemplate:
    t = ctx.target
    return build_template(
        t.cpu_template,
        image=ctx.image or "",
        revision=ctx.cpu_revision,
        gpu_type=t.gpu_type,
        zonal_redundancy=True,
        labels=_labels(ctx, "cpu-baseline"),
    )


# ---------------------------------------------------------------- error classification


_REST_PREFIX = re.compile(r"^(GET|POST|PATCH|PUT|DELETE) \S+: ")


def error_message(exc: BaseException) -> str:
    """Google's own message (REST errors arrive prefixed with 'PATCH <url>: ')."""
    if isinstance(exc, gexc.GoogleAPICallError):
        return _REST_PREFIX.sub("", exc.message or str(exc))
    if isinstance(exc, cr.RevisionFailed):
        return exc.message
    return str(exc)


def is_quota_message(message: str) -> bool:
    """Google's GPU quota messages (seed 003), or an allocation-quota refusal (CPU, memory)
    as tasks/errors.py recognises it (rate-limit quotas are not: they are transient)."""
    return any(m.lower() in message.lower() for m in QUOTA_MESSAGES) or is_quota_error(
        Exception(message)
    )


def classify(exc: BaseException, region: str, revision: str) -> BaseException:
    """Quota first (a 429 RESOURCE_EXHAUSTED can be a quota refusal, not a rate limit),
    then failed/timed-out revisions, then transient (returned as is, for the step's retry),
    else a configuration error."""
    if isinstance(exc, PermanentError):
        return exc
    message = error_message(exc)
    if is_quota_message(message):
        return QuotaDenied(region, message)
    if isinstance(exc, cr.RevisionFailed | cr.ReadyTimeout):
        return DeployFailed(region, revision, message)
    if is_transient(exc):
        return exc
    if isinstance(exc, gexc.FailedPrecondition) and "not ready" in message:
        return DeployFailed(region, revision, message)
    return ConfigurationError(f"Cloud Run refused the deploy in {region}: {message}")


# ---------------------------------------------------------------- traffic helpers


def serving_revisions(service: run_v2.Service) -> list[str]:
    return [t.revision for t in cr.traffic_of(service) if t.percent > 0 and t.revision]


def pinned_traffic(service: run_v2.Service, drop: set[str] = frozenset()) -> list[cr.Traffic]:
    """The current split with LATEST replaced by the revision it means (Cloud Run: the latest
    *ready* revision), so that a template change cannot move traffic; without the `canary` tag,
    without revisions in `drop`, without untagged 0% entries."""
    latest = cr.short_name(service.latest_ready_revision) if service.latest_ready_revision else ""
    pinned: list[cr.Traffic] = []
    for t in cr.traffic_of(service):
        revision = latest if t.latest else t.revision
        tag = None if t.tag == CANARY_TAG else t.tag
        if not revision or revision in drop:
            continue
        if t.percent == 0 and tag is None:
            continue
        pinned.append(cr.Traffic(revision=revision, percent=t.percent, tag=tag))
    return _merged(pinned)


def _merged(traffic: list[cr.Traffic]) -> list[cr.Traffic]:
    """One untagged entry per revision (LATEST and a pinned entry may name the same one)."""
    out: list[cr.Traffic] = []
    for t in traffic:
        same = next((o for o in out if o.revision == t.revision and not o.tag and not t.tag), None)
        if same is not None:
            out[out.index(same)] = cr.Traffic(t.revision, same.percent + t.percent)
        else:
            out.append(t)
    return out


# ---------------------------------------------------------------- steps (Prefect tasks)


class ExistingRevision(BaseModel):
    region: str
    state: str
    message: str = ""
    percent: int = 0
    tags: list[str] = []
    uri: str = ""


@dataclass
class RevisionDeploy:
    region: str
    revision: str
    service_uri: str
    tag_uri: str | None
    created_service: bool = False
    reused: bool = False


def _ensure_service(ctx: RunContext, region: str) -> tuple[run_v2.Service, bool]:
    """The region's service; created with the CPU baseline at 100% (and Ready) if missing."""
    name = ctx.service_name(region)
    service = cr.get_service(ctx.services, name)
    if service is not None:
        return service, False
    template = cpu_template(ctx)
    body = run_v2.Service(
        template=template,
        traffic=[cr.Traffic(ctx.cpu_revision, 100).to_proto()],
        labels={ROLE_LABEL: "inference"},
        invoker_iam_disabled=ctx.target.public,
    )
    try:
        cr.create_service(ctx.services, ctx.project, region, body, ctx.target.service, **ctx.wait)
    except gexc.AlreadyExists:
        pass  # a retried step: the first attempt created it
    cr.wait_revision_ready(ctx.revisions, ctx.revision_path(region, ctx.cpu_revision), **ctx.wait)
    service = cr.get_service(ctx.services, name)
    assert service is not None
    return service, True


def deploy_revision(
    ctx: RunContext,
    region: str,
    template: run_v2.RevisionTemplate,
    tag: str | None,
) -> RevisionDeploy:
    """Put `template` on the region's service as a new revision at 0% (tagged), wait Ready.

    Idempotent: if the service already names this revision, nothing is re-deployed; a Ready
    revision of that name is reused (and re-tagged if needed).
    """
    revision = template.revision
    service, created = _ensure_service(ctx, region)
    existing = cr.get_revision(ctx.revisions, ctx.revision_path(region, revision))
    reused = existing is not None
    if existing is not None:
        state, message = cr.ready_state(existing)
        if state == "failed":
            raise cr.RevisionFailed(revision, message)
    if existing is None:  # (re-applying an unchanged template creates nothing)
        traffic = pinned_traffic(service, drop={revision})
        if tag:
            traffic = [t for t in traffic if t.tag != tag]
        if not any(t.percent for t in traffic):
            raise ConfigurationError(
                f"service {ctx.target.service} in {region} serves no Ready revision: "
                "cannot add a 0% revision beside nothing"
            )
        traffic.append(cr.Traffic(revision=revision, percent=0, tag=tag))
        body = run_v2.Service(
            name=service.name,
            template=template,
            traffic=[t.to_proto() for t in traffic],
            labels=dict(service.labels),
            invoker_iam_disabled=ctx.target.public,
        )
        cr.update_service(ctx.services, body, **ctx.wait)
    cr.wait_revision_ready(ctx.revisions, ctx.revision_path(region, revision), **ctx.wait)
    service = cr.get_service(ctx.services, ctx.service_name(region))
    assert service is not None
    if tag and cr.tag_uri(service, tag) is None:
        # Reused revision without its tag (a re-run after rollback): tag it again at 0%.
        traffic = [t for t in pinned_traffic(service) if t.tag != tag and t.revision]
        traffic = [t for t in traffic if not (t.revision == revision and t.percent == 0)]
        traffic.append(cr.Traffic(revision=revision, percent=0, tag=tag))
        service = cr.set_traffic(ctx.services, service, traffic, **ctx.wait)
    return RevisionDeploy(
        region=region,
        revision=revision,
        service_uri=service.uri,
        tag_uri=cr.tag_uri(service, tag) if tag else None,
        created_service=created,
        reused=reused,
    )


@task(name="deploy-gpu", cache_policy=NO_CACHE, persist_result=False)
def deploy_gpu_step(ctx: RunContext, region: str) -> RevisionDeploy:
    """One region: the GPU revision at 0% with the canary tag, Ready. Classified errors."""
    note_attempt()
    try:
        return deploy_revision(ctx, region, gpu_template(ctx), CANARY_TAG)
    except BaseException as exc:  # noqa: BLE001 - classified and re-raised
        classified = classify(exc, region, ctx.gpu_revision)
        if classified is exc:
            raise
        raise classified from exc


@task(name="clear-failed-revision", cache_policy=NO_CACHE, persist_result=False)
def clear_failed_step(ctx: RunContext, region: str, revision: str) -> bool:
    """After a failed deploy: the failed revision keeps 0% and loses its tag (no stale canary).

    Returns True when the traffic had to be changed.
    """
    note_attempt()
    service = cr.get_service(ctx.services, ctx.service_name(region))
    if service is None:
        return False
    current = cr.traffic_of(service)
    if not any(t.revision == revision or t.tag == CANARY_TAG for t in current):
        return False
    traffic = pinned_traffic(service, drop={revision})
    if sum(t.percent for t in traffic) != 100:
        return False  # the failed revision carried traffic: the rollback step moves it
    cr.set_traffic(ctx.services, service, traffic, **ctx.wait)
    return True


@task(name="find-release", cache_policy=NO_CACHE, persist_result=False)
def find_existing_step(ctx: RunContext) -> list[ExistingRevision]:
    """The tag's GPU revision in each candidate region (one parallel round of reads)."""
    note_attempt()

    def look(region: str) -> ExistingRevision | None:
        revision = cr.get_revision(ctx.revisions, ctx.revision_path(region, ctx.gpu_revision))
        if revision is None:
            return None
        state, message = cr.ready_state(revision)
        service = cr.get_service(ctx.services, ctx.service_name(region))
        percent = 0
        tags: list[str] = []
        uri = ""
        if service is not None:
            uri = service.uri
            for t in cr.traffic_of(service):
                if t.revision == ctx.gpu_revision:
                    percent += t.percent
                    if t.tag:
                        tags.append(t.tag)
        return ExistingRevision(
            region=region, state=state, message=message, percent=percent, tags=tags, uri=uri
        )

    with ThreadPoolExecutor(max_workers=len(ctx.target.regions)) as pool:
        found = list(pool.map(look, ctx.target.regions))
    return [f for f in found if f is not None]


# ---------------------------------------------------------------- quota decision


class QuotaDecision(BaseModel):
    quotas: list[RegionQuota]
    candidates: list[str]
    preferences: list[PreferenceState] = []
    requested: bool = False
    reason: str = ""


def fits(q: RegionQuota, target: ReleaseTarget) -> tuple[bool, str]:
    spec = target.gpu_template
    gpus = spec.gpu * spec.max_instances
    cpu = spec.cpu_count() * spec.max_instances
    memory = spec.memory_gib() * spec.max_instances
    if q.error:
        return False, f"quota unreadable: {q.error}"
    if q.gpu is not None and q.gpu < gpus:
        return False, f"GPU quota {q.gpu} < {gpus}"
    if q.cpu is not None and q.cpu < cpu:
        return False, f"CPU quota {q.cpu} < {cpu:g}"
    if q.memory_gib is not None and q.memory_gib < memory:
        return False, f"memory quota {q.memory_gib:g} GiB < {memory:g} GiB"
    return True, "fits"


@task(name="read-quotas", cache_policy=NO_CACHE, persist_result=False)
def read_quotas_step(ctx: RunContext) -> list[RegionQuota]:
    note_attempt()
    t = ctx.target
    return read_region_quotas(
        ctx.cloud, ctx.project, t.regions, zonal_redundancy=t.gpu_zonal_redundancy
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
    )
    states = poll_preferences(
        ctx.cloud,
        ctx.project,
        ids,
        budget_s=t.quota.budget_s,
        initial_s=t.quota.poll_initial_s,
        max_s=t.quota.poll_max_s,
    )
    for state in states:
        state.created = created.get(state.region, False)
    return states


def decide_regions(ctx: RunContext, steps: StepLog, *, allow_requests: bool) -> QuotaDecision:
    """Candidate regions in order: those whose quota fits, else those granted on request."""
    target = ctx.target
    quotas = steps.run("quota", read_quotas_step, ctx)
    verdicts = {q.region: fits(q, target) for q in quotas}
    for q in quotas:
        q.fits, q.why = verdicts[q.region]
    candidates = [r for r in target.regions if verdicts[r][0]]
    steps.note("quota", ", ".join(f"{q.region}: {q.why}" for q in quotas))
    decision = QuotaDecision(quotas=quotas, candidates=candidates)
    if candidates:
        return decision
    if not target.quota.request:
        decision.reason = "no region has GPU quota and the quota policy does not ask for more"
        return decision
    if not allow_requests:
        decision.reason = "no region has GPU quota; a release would file quota preferences"
        return decision
    lacking = [r for r in target.regions if verdicts[r][1].startswith("GPU quota")]
    if not lacking:
        decision.reason = "no region fits (CPU or memory quota), and only GPU quota is requested"
        return decision
    preferences = steps.run("quota-preferences", quota_preferences_step, ctx, lacking)
    decision.preferences = preferences
    decision.requested = True
    decision.candidates = [p.region for p in preferences if p.granted]
    steps.note(
        "quota-preferences",
        ", ".join(f"{p.region}: {p.state} (granted {p.granted_value})" for p in preferences),
    )
    if not decision.candidates:
        decision.reason = "no quota preference was granted within the budget"
    return decision


# ---------------------------------------------------------------- standalone flow


@flow(name="deploy-gpu-canary")
def deploy_flow(git_tag: str, image: str, target: ReleaseTarget) -> dict:
    """Standalone: choose a region and deploy the tag's GPU revision as a 0% canary."""
    ctx = RunContext(target, git_tag, image)
    steps = StepLog(target.retries, target.retry_delays())
    decision = decide_regions(ctx, steps, allow_requests=True)
    for region in decision.candidates:
        try:
            deployed = steps.run(f"deploy:{region}", deploy_gpu_step, ctx, region)
        except QuotaDenied:
            steps.run(f"clear:{region}", clear_failed_step, ctx, region, ctx.gpu_revision)
            continue
        return {"region": region, "revision": deployed.revision, "tag_uri": deployed.tag_uri}
    return {"region": None, "reason": decision.reason or "every candidate region refused"}
