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
    is_missing_secret,
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
    """The region's service; created with the CPU baseline at 100% (and Ready) if missing.

    A service that exists but serves no Ready revision (a create whose only revision failed,
    left by an older release) is recovered the same way: a new attempt of the CPU baseline at
    100% (nothing serves, so no user moves off a Ready revision). A create whose CPU baseline
    fails leaves no service behind (`_drop_unserving_service`): a service whose traffic names a
    failed revision wedges every later release."""
    name = ctx.service_name(region)
    service = cr.get_service(ctx.services, name)
    if service is not None and _serves_ready(ctx, region, service):
        return service, False
    revision = fresh_cpu_baseline(ctx, region)
    template = cpu_template(ctx)
    try:
        with startup_verdict(ctx, region, revision) as wait:
            if service is None:
                body = run_v2.Service(
                    template=template,
                    traffic=[cr.Traffic(revision, 100).to_proto()],
                    labels={ROLE_LABEL: "inference"},
                    invoker_iam_disabled=ctx.target.public,
                )
                with suppress(gexc.AlreadyExists):  # a retried step: the first one created it
                    cr.create_service(
                        ctx.services, ctx.project, region, body, ctx.target.service, **wait
                    )
            else:
                get_run_logger().warning(
                    "%s in %s serves no Ready revision (%s): recovering with the CPU baseline "
                    "%s at 100%%",
                    ctx.target.service,
                    region,
                    _serving_names(service) or "no traffic",
                    revision,
                )
                tags = [  # other people's tags on Ready revisions stay
                    t
                    for t in cr.traffic_of(service)
                    if t.tag and t.revision and revision_ready(ctx, region, t.revision)
                ]
                traffic = [cr.Traffic(revision, 100)] + [
                    cr.Traffic(t.revision, 0, t.tag) for t in tags
                ]
                body = cr.replaced(
                    service,
                    template=template,
                    traffic=[t.to_proto() for t in traffic],
                    invoker_iam_disabled=ctx.target.public,
                )
                cr.update_service(ctx.services, body, **wait)
            cr.wait_revision_ready(ctx.revisions, ctx.revision_path(region, revision), **wait)
    except (cr.RevisionFailed, cr.ReadyTimeout, gexc.GoogleAPICallError):
        if service is None:
            _drop_unserving_service(ctx, region)
        raise
    return written_service(ctx, region), service is None


def _serving_names(service: run_v2.Service) -> str:
    return ", ".join(f"{t.revision}={t.percent}%" for t in pinned_traffic(service) if t.percent)


def _serves_ready(ctx: RunContext, region: str, service: run_v2.Service) -> bool:
    """Some traffic of the service is on a Ready revision."""
    return any(
        t.percent and revision_ready(ctx, region, t.revision) for t in pinned_traffic(service)
    )


def _drop_unserving_service(ctx: RunContext, region: str) -> None:
    """The service this run just created, whose CPU baseline failed: deleted when it serves no
    Ready revision and holds only this tag's revisions (Cloud Run keeps a failed create's
    service, with its traffic on the failed revision). Best-effort: the deploy's own error is
    what the release reports."""
    logger = get_run_logger()
    name = ctx.service_name(region)
    try:
        service = cr.get_service(ctx.services, name)
        if service is None or _serves_ready(ctx, region, service):
            return
        revisions = [cr.short_name(r.name) for r in cr.list_revisions(ctx.revisions, name)]
        if not created_for_tag(ctx, revisions):
            return
        cr.delete_service(ctx.services, name, **ctx.wait)
        logger.warning(
            "deleted %s in %s: created by this release, its CPU baseline %s failed, it served "
            "nothing (a service whose traffic names a failed revision blocks later releases)",
            ctx.target.service,
            region,
            ctx.cpu_revision,
        )
    except Exception as exc:  # noqa: BLE001 - the deploy's error is raised by the caller
        logger.warning("could not delete %s in %s: %s", ctx.target.service, region, exc)


def fresh_cpu_baseline(ctx: RunContext, region: str) -> str:
    """The CPU baseline's name for this run in `region`, kept in `ctx.cpu_revision`: the
    tag's latest attempt there when it did not fail, else the next attempt's name (`-r2`, ...):
    a revision that failed is never deployed again nor given traffic (re-applying a template
    under a failed revision's name creates nothing; Cloud Run refuses traffic to it)."""
    latest: run_v2.Revision | None = None
    attempt = 0
    while attempt < MAX_ATTEMPTS:
        candidate = attempt_name(ctx.cpu_baseline, attempt + 1)
        found = cr.get_revision(ctx.revisions, ctx.revision_path(region, candidate))
        if found is None:
            break
        latest, attempt = found, attempt + 1
    if latest is None:
        name = ctx.cpu_baseline
    elif cr.ready_state(latest)[0] == "failed":
        if attempt >= MAX_ATTEMPTS:
            raise ConfigurationError(
                f"the CPU baseline of {ctx.git_tag} failed {attempt} times in {region} "
                f"(last: {cr.ready_state(latest)[1]}); fix ReleaseTarget.cpu_template, then "
                "release a new tag"
            )
        name = attempt_name(ctx.cpu_baseline, attempt + 1)
    else:
        name = attempt_name(ctx.cpu_baseline, attempt)
    ctx.cpu_revision = name
    return name


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
    cpu_baseline = template.revision == ctx.cpu_revision
    service, created = _ensure_service(ctx, region)
    if cpu_baseline:  # a failed CPU baseline is never reused: its next attempt instead
        fresh_cpu_baseline(ctx, region)
        template = cpu_template(ctx)
    revision = template.revision
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
        cr.refuse_unready(ctx.revisions, service.name, traffic)  # users only on Ready ones
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
        service = cr.set_traffic(
            ctx.services, service, traffic, revisions=ctx.revisions, **ctx.wait
        )
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
        if isinstance(exc, cr.RevisionFailed) and is_missing_secret(exc.message):
            # State the blocks rely on is gone (templates.missing_secret_fix says what and how
            # to restore it): the same in every region, and no rollback can fix it.
            raise ConfigurationError(f"{region}: {exc.message}") from exc
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
        cr.set_traffic(ctx.services, service, traffic, revisions=ctx.revisions, **ctx.wait)
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
    own = {
        attempt_name(base, n)
        for base in (ctx.cpu_baseline, ctx.gpu_revision)
        for n in range(1, MAX_ATTEMPTS + 1)
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
