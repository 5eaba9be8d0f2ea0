"""The traffic updates of a rollout: a step's split, the abort back to the stable revision.

A step is one update through the official client: the stable revision keeps 100-p % under the
`stable` tag, the new revision gets p % and keeps its `canary` tag, every other tag stays at 0 %
(as `cutover_step` keeps them). Both revisions are checked Ready right before: Cloud Run refuses
traffic to a revision that is not Ready ("Revision '...' is not ready"), and so does Shipyard,
before it asks. The 100 % step is flows/deploy/traffic.py's `cutover_step` (the stable revision
becomes `prior`), then the `stable` tag goes.

The abort warms the stable revision before it takes the users back, so that nobody meets a cold
GPU start (issue 22 "Abort well"; the pitfall Flagger and Argo users report): the service's
`scaling.min_instance_count` (Cloud Run v2 ServiceScaling, google/cloud/run/v2/service.proto:
"Total minimum number of instances for the service. This number of instances is divided among
all revisions with specified traffic based on the percent of traffic they are receiving") is
raised to at least 1 (or the stable revision's own minimum), a request through the `stable`
tag URL must answer, then 100 % goes back to the stable revision, the `canary` and `stable`
tags go, and the service's scaling is restored as it was.
"""

from __future__ import annotations

import httpx
from google.cloud import run_v2
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from shipyard.flows.deploy.region_deploy import revision_ready
from shipyard.flows.deploy.traffic_split import CANARY_TAG, pinned_traffic
from shipyard.flows.release.context import RunContext
from shipyard.flows.release.steps import note_attempt
from shipyard.tasks import cloud_run as cr
from shipyard.tasks.deploy_errors import ConfigurationError
from shipyard.tasks.errors import PermanentError, TransientError
from shipyard.tasks.waiting import Deadline, NotYet, wait_for

STABLE_TAG = "stable"
_STEP_TAGS = {CANARY_TAG, STABLE_TAG}


class NotReadyForTraffic(PermanentError):
    """A revision of the step is not Ready: no traffic is moved."""


class StepTraffic(BaseModel):
    region: str
    percent: int
    url: str  # the service URL (the split decides who answers)
    stable_url: str | None = None  # the stable revision's tag URL
    new_url: str | None = None  # the new revision's `canary` tag URL


def _service(ctx: RunContext, region: str) -> run_v2.Service:
    service = cr.get_service(ctx.services, ctx.service_name(region))
    if service is None:
        raise ConfigurationError(f"service {ctx.target.service} vanished from {region}")
    return service


def _others(service: run_v2.Service, drop: set[str] | None = None) -> list[cr.Traffic]:
    """Every tag that is not the rollout's, at 0 % (someone else's tag stays, as the cutover
    keeps it)."""
    return [
        cr.Traffic(revision=t.revision, percent=0, tag=t.tag)
        for t in pinned_traffic(service)
        if t.tag and t.tag not in _STEP_TAGS and t.revision and t.revision not in (drop or set())
    ]


@task(name="rollout-step-traffic", cache_policy=NO_CACHE, persist_result=False)
def step_traffic_step(
    ctx: RunContext, region: str, new: str, stable: str, percent: int
) -> StepTraffic:
    """`new` gets `percent` % (tag `canary`), `stable` the rest (tag `stable`); both Ready."""
    note_attempt()
    if not 0 <= percent < 100:
        raise ValueError(f"percent={percent}: a step below 100 (100 is the cutover)")
    service = _service(ctx, region)
    for revision in (stable, new):
        if not revision_ready(ctx, region, revision):
            raise NotReadyForTraffic(
                f"revision {revision} in {region} is not Ready: no traffic moved to the {percent}% "
                "step (Cloud Run refuses traffic to a revision that is not Ready)"
            )
    traffic = [
        cr.Traffic(revision=stable, percent=100 - percent, tag=STABLE_TAG),
        cr.Traffic(revision=new, percent=percent, tag=CANARY_TAG),
        *_others(service),
    ]
    current = [(t.revision, t.percent, t.tag) for t in cr.traffic_of(service)]
    if sorted(current, key=str) != sorted(
        [(t.revision, t.percent, t.tag) for t in traffic], key=str
    ):
        service = cr.set_traffic(ctx.services, service, traffic, **ctx.wait)
    return StepTraffic(
        region=region,
        percent=percent,
        url=service.uri,
        stable_url=cr.tag_uri(service, STABLE_TAG),
        new_url=cr.tag_uri(service, CANARY_TAG),
    )


@task(name="rollout-warm-stable", cache_policy=NO_CACHE, persist_result=False)
def warm_stable_step(ctx: RunContext, region: str, stable: str, wait_s: float) -> str:
    """Raise the service's minimum instances so the stable revision keeps a warm instance, and
    wait until a request through its tag URL answers. The scaling before (JSON) is returned:
    what `restore_scaling_step` puts back."""
    note_attempt()
    service = _service(ctx, region)
    before: str = run_v2.ServiceScaling.to_json(service.scaling)
    found = cr.get_revision(ctx.revisions, ctx.revision_path(region, stable))
    own_min = int(found.scaling.min_instance_count) if found is not None else 0
    wanted = max(1, own_min, int(service.scaling.min_instance_count))
    if int(service.scaling.min_instance_count) < wanted:
        scaling = run_v2.ServiceScaling.from_json(before)
        scaling.min_instance_count = wanted
        service = cr.update_service(ctx.services, cr.replaced(service, scaling=scaling), **ctx.wait)
    url = cr.tag_uri(service, STABLE_TAG)
    if url is None:  # a stable revision without its tag (a run that stopped before tagging it)
        traffic = [t for t in pinned_traffic(service) if t.tag != STABLE_TAG]
        traffic.append(cr.Traffic(revision=stable, percent=0, tag=STABLE_TAG))
        service = cr.set_traffic(ctx.services, service, traffic, **ctx.wait)
        url = cr.tag_uri(service, STABLE_TAG)
    if url is not None:
        _wait_answers(ctx, url, wait_s)
    return before


def _wait_answers(ctx: RunContext, url: str, wait_s: float) -> None:
    """Until a GET of the canary's health path (or /) through `url` answers below 500."""
    path = ctx.target.canary.health_path or "/"
    bearer = None if ctx.target.public else ctx.cloud.id_token(url)
    headers = {"authorization": f"Bearer {bearer}"} if bearer else {}

    def answered() -> int:
        try:
            status = httpx.get(url.rstrip("/") + path, headers=headers, timeout=30.0).status_code
        except httpx.HTTPError as exc:
            raise NotYet(f"{type(exc).__name__}") from exc
        if status >= 500:
            raise NotYet(f"status {status}")
        return status

    wait_for(
        answered,
        what=f"the stable revision answering at its tag URL ({path})",
        first_delay_s=0.1,
        max_delay_s=2.0,
        deadline=Deadline(wait_s),
        retry_on=lambda exc: isinstance(exc, TransientError),
    )


@task(name="rollout-abort-traffic", cache_policy=NO_CACHE, persist_result=False)
def abort_traffic_step(ctx: RunContext, region: str, new: str, stable: str) -> StepTraffic:
    """100 % back on `stable` (checked Ready first); `new` at 0 % without its tag; the `canary`
    and `stable` tags gone, other tags kept."""
    note_attempt()
    service = _service(ctx, region)
    if not revision_ready(ctx, region, stable):
        raise NotReadyForTraffic(
            f"the stable revision {stable} in {region} is not Ready: traffic left as it is; "
            f"move it by hand: gcloud run services update-traffic {ctx.target.service} "
            f"--region {region} --to-revisions=REVISION=100"
        )
    traffic = [cr.Traffic(revision=stable, percent=100), *_others(service, drop={new})]
    traffic += [
        cr.Traffic(revision=t.revision, percent=0, tag=t.tag)
        for t in pinned_traffic(service)
        if t.revision == new and t.tag and t.tag not in _STEP_TAGS
    ]
    if any(
        t.tag in _STEP_TAGS or (t.percent and t.revision != stable) for t in cr.traffic_of(service)
    ):
        service = cr.set_traffic(ctx.services, service, traffic, **ctx.wait)
    return StepTraffic(region=region, percent=0, url=service.uri)


@task(name="rollout-restore-scaling", cache_policy=NO_CACHE, persist_result=False)
def restore_scaling_step(ctx: RunContext, region: str, before: str) -> bool:
    """The service's scaling as it was before the warm-up; True when it changed."""
    note_attempt()
    service = _service(ctx, region)
    scaling = run_v2.ServiceScaling.from_json(before)
    if run_v2.ServiceScaling.to_json(service.scaling) == run_v2.ServiceScaling.to_json(scaling):
        return False
    cr.update_service(ctx.services, cr.replaced(service, scaling=scaling), **ctx.wait)
    return True


@task(name="rollout-untag-stable", cache_policy=NO_CACHE, persist_result=False)
def untag_stable_step(ctx: RunContext, region: str) -> bool:
    """After the cutover: the `stable` tag goes (the stable revision is `prior` now)."""
    note_attempt()
    service = _service(ctx, region)
    if cr.tag_uri(service, STABLE_TAG) is None:
        return False
    traffic = [t for t in pinned_traffic(service) if t.tag != STABLE_TAG]
    cr.set_traffic(ctx.services, service, traffic, **ctx.wait)
    return True
