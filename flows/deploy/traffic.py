"""Cutover and rollback: where 100% of a service's traffic goes after the canary's verdict.

- Cutover: 100% to the canary revision in one update (it is Ready: invariant 1), the revision
  that served before keeps a `prior` tag for an instant rollback, the `canary` tag goes.
- Rollback: 100% stays on (or returns to) the last good revision; the failed revision keeps
  0% and loses its tag. When no revision that can serve is left (or the target asks for it),
  the CPU baseline template is applied, waited Ready, and gets 100%. Last good means tested
  (`good_because`): a revision that passed a canary, or served before Shipyard touched the
  service. The CPU baseline a first release started a new service with is neither: when it
  is what keeps serving, the rollback says plainly that nothing good exists yet.
- A GPU revision serving outside the primary region is published for consumers: a Prefect
  Variable with the serving URL and an event.

Every change is one traffic update of a Ready target, so no moment of the history has
traffic on a revision that is not Ready, and the new revision never has traffic before its
canary passed (the cutover is the only step that gives it any).
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from pydantic import BaseModel

from shipyard.blocks.names import sanitize_name
from shipyard.blocks.release_target import ReleaseTarget
from shipyard.flows.canary.stage import recorded_release
from shipyard.flows.deploy.region_deploy import deploy_revision, revision_ready, written_service
from shipyard.flows.deploy.templates import TAG_LABEL, cpu_template
from shipyard.flows.deploy.traffic_split import BASELINE_TAG, CANARY_TAG, PRIOR_TAG, pinned_traffic
from shipyard.flows.observe.variables import set_variable
from shipyard.flows.release.context import RunContext
from shipyard.flows.release.steps import note_attempt
from shipyard.tasks import cloud_run as cr
from shipyard.tasks.deploy_errors import ConfigurationError

_OWN_TAGS = {CANARY_TAG, PRIOR_TAG, BASELINE_TAG}


class TrafficResult(BaseModel):
    region: str
    revision: str
    url: str
    prior: str | None = None
    applied_cpu_baseline: bool = False
    detail: str = ""
    untested: bool = False  # what serves never passed a canary nor served before Shipyard
    deleted: bool = False  # the service was gone: the deploy deleted the one it created


def good_because(ctx: RunContext, region: str, revision: str | None) -> str | None:
    """Why `revision` may be called good: it passed a canary (the release record lists the
    revisions released: canary passed, then cut over) or, a CPU revision, the canary's answer
    checks before a GPU hand-over gave it users (the record's `checked`), or it served before
    Shipyard touched the service (it carries no `shipyard-release` label). None: untested (a CPU
    baseline that Shipyard created for a new service or a fallback never had a canary)."""
    if not revision:
        return None
    record = recorded_release(ctx.target.scope) or {}
    if revision in (record.get("tags") or {}):
        return "passed its canary"
    if revision in (record.get("checked") or {}):  # flows/canary/cpu_check.py
        return "passed its answer check before the GPU hand-over"
    found = cr.get_revision(ctx.revisions, ctx.revision_path(region, revision))
    if found is not None and TAG_LABEL not in found.labels:
        return "served before Shipyard"
    return None


def nothing_good_yet(revision: str) -> str:
    return (
        f"nothing good exists yet: {revision} keeps serving, but it never passed a canary "
        "(the CPU baseline Shipyard started the service with); no earlier revision to return to"
    )


def _ensure_image(ctx: RunContext, region: str) -> None:
    """A standalone rollback knows no image: use the one the tag's GPU revision runs."""
    if ctx.image:
        return
    found = cr.get_revision(ctx.revisions, ctx.revision_path(region, ctx.gpu_revision_in(region)))
    if found is None or not found.containers:
        raise ConfigurationError(
            f"no image to apply the CPU baseline with in {region}: pass image=..., or set "
            "ReleaseTarget.cpu_template.image"
        )
    ctx.image = found.containers[0].image


@task(name="cutover", cache_policy=NO_CACHE, persist_result=False)
def cutover_step(ctx: RunContext, region: str, revision: str) -> TrafficResult:
    """100% to `revision`; the revision that had the most traffic before is tagged `prior`."""
    note_attempt()
    service = cr.get_service(ctx.services, ctx.service_name(region))
    if service is None:
        raise RuntimeError(f"service {ctx.target.service} vanished from {region}")
    current = pinned_traffic(service)
    serving = sorted(
        (t for t in current if t.percent > 0 and t.revision != revision),
        key=lambda t: -t.percent,
    )
    prior = serving[0].revision if serving else None
    if [(t.revision, t.percent) for t in current if t.percent] == [(revision, 100)] and not any(
        t.tag == CANARY_TAG for t in cr.traffic_of(service)
    ):
        return TrafficResult(region=region, revision=revision, url=service.uri, detail="already")
    traffic = [cr.Traffic(revision=revision, percent=100)]
    if prior:
        traffic.append(cr.Traffic(revision=prior, percent=0, tag=PRIOR_TAG))
    else:
        old = next((t for t in current if t.tag == PRIOR_TAG and t.revision != revision), None)
        if old is not None:
            traffic.append(cr.Traffic(revision=old.revision, percent=0, tag=PRIOR_TAG))
    # Other people's tags stay (at 0%); ours are re-derived above.
    traffic += [
        cr.Traffic(revision=t.revision, percent=0, tag=t.tag)
        for t in current
        if t.tag and t.tag not in _OWN_TAGS and t.revision
    ]
    updated = cr.set_traffic(ctx.services, service, traffic, **ctx.wait)
    return TrafficResult(region=region, revision=revision, url=updated.uri, prior=prior)


@task(name="rollback", cache_policy=NO_CACHE, persist_result=False)
def rollback_step(
    ctx: RunContext, region: str, failed: str | None, image_failed: bool = False
) -> TrafficResult:
    """Traffic on the last good revision (or the CPU baseline); `failed` at 0%, untagged.

    `image_failed`: the release's image could not start (tasks/deploy_errors.ImageFault). A
    CPU baseline of that same image would fail the same way: it is not deployed; traffic stays
    where it is (a region with nothing good serving answers with an empty `revision`)."""
    note_attempt()
    service = cr.get_service(ctx.services, ctx.service_name(region))
    if service is None:
        # The deploy deleted the service it created: its first revision never started, so
        # nothing ever served there (flows/deploy/region_deploy.py `_drop_unserving_service`).
        return TrafficResult(
            region=region,
            revision="",
            url="",
            detail="the service this release created here was deleted (nothing served)",
            deleted=True,
        )
    drop = {failed} if failed else set()
    keep = pinned_traffic(service, drop=drop)
    serving = [t for t in keep if t.percent > 0]
    good = [t for t in serving if revision_ready(ctx, region, t.revision)]
    broken_baseline = image_failed and not ctx.target.cpu_template.image
    use_cpu = (ctx.target.rollback_to_cpu or not good) and not broken_baseline
    if not use_cpu and not good:
        return TrafficResult(
            region=region,
            revision="",
            url=service.uri,
            detail="nothing good serves here; no CPU baseline of an image that cannot start",
        )
    if not use_cpu:
        missing = 100 - sum(t.percent for t in keep)
        if missing:
            # The failed revision carried traffic: give it to the biggest good target.
            best = max(good, key=lambda t: t.percent)
            keep = [
                cr.Traffic(t.revision, t.percent + missing, t.tag) if t is best else t for t in keep
            ]
        if keep != pinned_traffic(service) or any(
            t.tag == CANARY_TAG or t.revision in drop for t in cr.traffic_of(service)
        ):
            service = cr.set_traffic(ctx.services, service, keep, **ctx.wait)
        top = max(good, key=lambda t: t.percent)
        because = good_because(ctx, region, top.revision)
        return TrafficResult(
            region=region,
            revision=top.revision or "",
            url=service.uri,
            detail=f"kept last good ({because})"
            if because
            else nothing_good_yet(top.revision or ""),
            untested=because is None,
        )
    # No good revision left (or the policy asks): the CPU baseline, Ready, then 100%.
    baseline = ctx.cpu_revision
    if not revision_ready(ctx, region, baseline):
        if not ctx.target.cpu_template.image:
            _ensure_image(ctx, region)
        # A failed baseline is not reused: deploy_revision names a new attempt.
        baseline = deploy_revision(ctx, region, cpu_template(ctx), tag=None).revision
    service = written_service(ctx, region)
    traffic = [cr.Traffic(revision=baseline, percent=100)]
    traffic += [
        cr.Traffic(revision=t.revision, percent=0, tag=t.tag)
        for t in pinned_traffic(service, drop=drop | {baseline})
        if t.tag and t.tag != CANARY_TAG
    ]
    service = cr.set_traffic(ctx.services, service, traffic, **ctx.wait)
    return TrafficResult(
        region=region,
        revision=baseline,
        url=service.uri,
        applied_cpu_baseline=True,
        detail="CPU baseline applied",
    )


@task(name="ensure-cpu-serving", cache_policy=NO_CACHE, persist_result=False)
def cpu_path_step(ctx: RunContext, region: str) -> TrafficResult:
    """No GPU anywhere: 100% on a Ready revision; the CPU baseline if none serves."""
    note_attempt()
    service = cr.get_service(ctx.services, ctx.service_name(region))
    if service is not None:
        serving = [t for t in pinned_traffic(service) if t.percent > 0]
        if serving and all(revision_ready(ctx, region, t.revision) for t in serving):
            if any(t.tag == CANARY_TAG for t in cr.traffic_of(service)):
                service = cr.set_traffic(ctx.services, service, pinned_traffic(service), **ctx.wait)
            top = max(serving, key=lambda t: t.percent)
            return TrafficResult(
                region=region, revision=top.revision or "", url=service.uri, detail="kept serving"
            )
    # deploy_revision creates the service with the CPU baseline at 100% when it is missing.
    deploy_revision(ctx, region, cpu_template(ctx), tag=None)  # sets ctx.cpu_revision
    service = written_service(ctx, region)
    if [t.revision for t in pinned_traffic(service) if t.percent == 100] != [ctx.cpu_revision]:
        traffic = [cr.Traffic(revision=ctx.cpu_revision, percent=100)]
        service = cr.set_traffic(ctx.services, service, traffic, **ctx.wait)
    return TrafficResult(
        region=region,
        revision=ctx.cpu_revision,
        url=service.uri,
        applied_cpu_baseline=True,
        detail="CPU baseline applied",
    )


def serving_url_variable(scope: str) -> str:
    """Where a target's serving URL is published: per ReleaseTarget.scope (the service, or
    `service-environment`: staging and production each publish their own)."""
    return sanitize_name(f"shipyard-serving-url-{scope}", 255)


@task(name="publish-serving-url", cache_policy=NO_CACHE, persist_result=False)
def publish_url_step(
    target: ReleaseTarget, region: str, revision: str, url: str, git_tag: str
) -> str:
    """The GPU serves outside the primary region: tell consumers where (Variable + event)."""
    note_attempt()
    name = serving_url_variable(target.scope)
    set_variable(name, url)
    emit_event(
        event="shipyard.release.serving-url.changed",
        resource={
            "prefect.resource.id": f"shipyard.cloud-run.service.{target.service}",
            "prefect.resource.name": target.service,
        },
        payload={
            "service": target.service,
            "region": region,
            "primary_region": target.primary_region,
            "revision": revision,
            "url": url,
            "git_tag": git_tag,
            "variable": name,
        },
    )
    return name
