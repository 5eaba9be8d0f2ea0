"""Deploy a revision into one region of the release target, as steps of the release flow.

The GPU revision, named from the git tag (`{service}-v1-2-3`), goes on at 0% traffic with the
tag `canary`, then is waited Ready with a timeout. A region without a service first gets the CPU
baseline at 100% (Cloud Run cannot create a service whose only revision has 0%, and invariant 2
forbids giving the untested GPU revision traffic): there is always a Ready revision to fall back
on. A deploy error that is a quota error (the API call's 429, the operation's error, or the
revision's failed Ready condition) moves to the next candidate region; a transient one is
retried by the step; anything else is a configuration error and stops the release
(tasks/deploy_errors.py classifies).

A region that refused the GPU revision for lack of quota must not keep a CPU-only service that
nobody asked for: when the release ends, `remove_refused_service_step` deletes the region's
service if it holds nothing but this tag's revisions (its CPU baseline and GPU attempts: this
release, or a killed run of the same tag, created it) and the release does not end serving there.
Creating it with the GPU template instead would put 100% on an untested revision (invariant 2);
a service that served before the release is never deleted (only its canary tag is cleared); the
region the release ends in keeps its service (a CPU fallback on purpose serves there).

The revision name is deterministic, so re-running a tag reuses the revision it created; after
a quota refusal (Google accepts the update and fails the revision) a re-run deploys a new attempt,
`{name}-r2`, ... (`find_existing_step` finds the latest attempt in each region).
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass

from google.api_core import exceptions as gexc
from google.cloud import run_v2
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from shipyard.flows.deploy.templates import (
    ROLE_LABEL,
    cpu_template,
    gpu_template,
    startup_verdict,
)
from shipyard.flows.deploy.traffic_split import CANARY_TAG, pinned_traffic
from shipyard.flows.release.context import MAX_ATTEMPTS, RunContext, attempt_name
from shipyard.flows.release.steps import note_attempt
from shipyard.tasks import cloud_run as cr
from shipyard.tasks.deploy_errors import ConfigurationError, classify


class ExistingRevision(BaseModel):
    region: str
    revision: str = ""  # the latest attempt's name (the tag's name, or `{name}-rN`)
    attempt: int = 1
    state: str
    message: str = ""
    reasons: list[str] = []  # the Ready condition's reason names (tasks/deploy_errors.py)
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
    with startup_verdict(ctx, region, ctx.cpu_revision) as wait:
        with suppress(gexc.AlreadyExists):  # a retried step: the first attempt created it
            cr.create_service(ctx.services, ctx.project, region, body, ctx.target.service, **wait)
        cr.wait_revision_ready(ctx.revisions, ctx.revision_path(region, ctx.cpu_revision), **wait)
    return written_service(ctx, region), True


def written_service(ctx: RunContext, region: str) -> run_v2.Service:
    """The region's service, which this release has just written or found there: it exists."""
    service = cr.get_service(ctx.services, ctx.service_name(region))
    if service is None:
        raise RuntimeError(f"service {ctx.service_name(region)} is gone right after it was written")
    return service


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
        body = cr.replaced(  # every other field of the service as it is (ingress, IAM, ...)
            service,
            template=template,
            traffic=[t.to_proto() for t in traffic],
            invoker_iam_disabled=ctx.target.public,
        )
        with startup_verdict(ctx, region, revision) as wait:
            cr.update_service(ctx.services, body, **wait)
    with startup_verdict(ctx, region, revision) as wait:
        cr.wait_revision_ready(ctx.revisions, ctx.revision_path(region, revision), **wait)
    service = written_service(ctx, region)
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
        return deploy_revision(ctx, region, gpu_template(ctx, region), CANARY_TAG)
    except Exception as exc:  # classified and re-raised; interrupts pass through untouched
        reasons = _failed_reasons(ctx, region)
        classified = classify(exc, region, ctx.gpu_revision_in(region), reasons)
        if classified is exc:
            raise
        raise classified from exc


def _failed_reasons(ctx: RunContext, region: str) -> set[str]:
    """The Ready condition reasons of this tag's failed revisions in the region (its GPU
    attempt, and the CPU baseline a new service starts with): the operation's error of a
    failed update carries only the text. Best-effort: an unreadable revision adds nothing."""
    reasons: set[str] = set()
    for revision in (ctx.gpu_revision_in(region), ctx.cpu_revision):
        try:
            found = cr.get_revision(ctx.revisions, ctx.revision_path(region, revision))
        except Exception:  # noqa: BLE001, S112 - the classification falls back on the message
            continue
        if found is not None and cr.ready_state(found)[0] == "failed":
            reasons |= cr.ready_reasons(found)
    return reasons


@task(name="clear-failed-revision", cache_policy=NO_CACHE, persist_result=False)
def clear_failed_step(ctx: RunContext, region: str, revision: str) -> bool:
    """After a failed deploy: the failed revision keeps 0% and loses its tag (no stale canary).

    Returns True when the traffic had to be changed.
    """
    note_attempt()
    service = cr.get_service(ctx.services, ctx.service_name(region))
    if service is None:
        return False
    # Both shapes: what is asked (spec: a refused update keeps it) and what serves.
    current = cr.traffic_of(service) + cr.serving_traffic(service)
    if not any(t.revision == revision or t.tag == CANARY_TAG for t in current):
        return False
    traffic = pinned_traffic(service, drop={revision})
    if sum(t.percent for t in traffic) != 100:
        return False  # the failed revision carried traffic: the rollback step moves it
    if not all(revision_ready(ctx, region, t.revision) for t in traffic):
        return False  # Cloud Run refuses a split naming a revision that is not Ready
    try:
        cr.set_traffic(ctx.services, service, traffic, **ctx.wait)
    except gexc.FailedPrecondition as exc:
        # Refused as a whole ("Revision '...' is not ready and cannot serve traffic."): what
        # serves is unchanged, the rollback step decides; a cleanup never fails the release.
        get_run_logger().warning("could not clear %s in %s: %s", revision, region, exc.message)
        return False
    return True


def revision_ready(ctx: RunContext, region: str, revision: str | None) -> bool:
    """The revision exists in the region and its Ready condition succeeded."""
    if not revision:
        return False
    found = cr.get_revision(ctx.revisions, ctx.revision_path(region, revision))
    return found is not None and cr.ready_state(found)[0] == "succeeded"


def created_for_tag(ctx: RunContext, revisions: list[str]) -> bool:
    """Every revision is this tag's (its CPU baseline or one of its GPU attempts)."""
    own = {ctx.cpu_revision} | {
        attempt_name(ctx.gpu_revision, n) for n in range(1, MAX_ATTEMPTS + 1)
    }
    return bool(revisions) and set(revisions) <= own


@task(name="remove-refused-service", cache_policy=NO_CACHE, persist_result=False)
def remove_refused_service_step(ctx: RunContext, region: str) -> bool:
    """A region that refused the GPU: delete the service if this tag's release created it.

    Returns True when a service was deleted.
    """
    note_attempt()
    name = ctx.service_name(region)
    if cr.get_service(ctx.services, name) is None:
        return False
    revisions = [cr.short_name(r.name) for r in cr.list_revisions(ctx.revisions, name)]
    if not created_for_tag(ctx, revisions):
        return False  # it served before this release: keep it
    cr.delete_service(ctx.services, name, **ctx.wait)
    return True


@task(name="find-release", cache_policy=NO_CACHE, persist_result=False)
def find_existing_step(ctx: RunContext, region: str) -> ExistingRevision | None:
    """The tag's GPU revision in one candidate region: its latest attempt (None if none).

    Run once per region side by side (`StepLog.run_per_region`): one task run each."""
    note_attempt()
    revision, name, attempt = None, "", 0
    while attempt < MAX_ATTEMPTS:
        candidate = attempt_name(ctx.gpu_revision, attempt + 1)
        found = cr.get_revision(ctx.revisions, ctx.revision_path(region, candidate))
        if found is None:
            break
        revision, name, attempt = found, candidate, attempt + 1
    if revision is None:
        return None
    state, message = cr.ready_state(revision)
    service = cr.get_service(ctx.services, ctx.service_name(region))
    percent = 0
    tags: list[str] = []
    uri = ""
    if service is not None:
        uri = service.uri
        for t in cr.serving_traffic(service):  # what serves, not what was asked
            if t.revision == name:
                percent += t.percent
                if t.tag:
                    tags.append(t.tag)
    return ExistingRevision(
        region=region,
        revision=name,
        attempt=attempt,
        state=state,
        message=message,
        reasons=sorted(cr.ready_reasons(revision)),
        percent=percent,
        tags=tags,
        uri=uri,
    )
