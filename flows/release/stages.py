"""The stages of a release before the deploy: what the tag has, the no-op, the plan, the image.

Each stage takes what it needs (the run's `RunContext` and `StepLog` for its Prefect steps) and
returns what it decided (flows/release/decided.py); flows/release/run.py composes them.
"""

from __future__ import annotations

from prefect.variables import Variable

from shipyard.flows.deploy.quota import preference_ids
from shipyard.flows.deploy.region_choice import decide_regions
from shipyard.flows.deploy.region_deploy import ExistingRevision, find_existing_step
from shipyard.flows.deploy.traffic import publish_url_step, serving_url_variable
from shipyard.flows.release.context import MAX_ATTEMPTS, RunContext, attempt_name
from shipyard.flows.release.decided import (
    AlreadyServing,
    Found,
    ImageReady,
    Planned,
    UrlPublished,
    VerdictRead,
)
from shipyard.flows.release.hooks import canary_verdict
from shipyard.flows.release.image import build_image, pin_step
from shipyard.flows.release.result import BuildFigures, CanaryFigures, ReleasePlan
from shipyard.flows.release.steps import StepLog
from shipyard.tasks.deploy_errors import is_quota_message


def find_release(ctx: RunContext, steps: StepLog) -> Found:
    """The tag's revisions in every region of the target (one task run per region)."""
    found_in = steps.run_per_region("find-release", find_existing_step, ctx.target.regions, ctx)
    existing = tuple(e for e in found_in.values() if e is not None)
    refused = frozenset(
        e.region for e in existing if e.state == "failed" and is_quota_message(e.message)
    )
    return Found(existing, refused)


def already_serving(ctx: RunContext, serving: ExistingRevision, *, dry_run: bool) -> AlreadyServing:
    return AlreadyServing(
        outcome="planned" if dry_run else "released",
        region=serving.region,
        revision=serving.revision or ctx.gpu_revision,
        url=serving.uri,
        outside_primary=serving.region != ctx.target.primary_region,
    )


def read_verdict(scope: str, revision: str) -> VerdictRead:
    """The canary figures a run persisted before it cut over to `revision` (hooks.py), of
    `scope` (ReleaseTarget.scope)."""
    verdict = canary_verdict(scope, revision)
    return VerdictRead(CanaryFigures.model_validate(verdict) if verdict is not None else None)


def published_elsewhere(scope: str, url: str) -> bool:
    """The published serving URL of `scope` (ReleaseTarget.scope) is another one than `url`."""
    current = Variable.get(serving_url_variable(scope), default=None)
    return current is not None and current != url


def publish_url(
    ctx: RunContext, steps: StepLog, region: str, revision: str, url: str
) -> UrlPublished:
    variable = steps.run(
        "publish-url", publish_url_step, ctx.target, region, revision, url, ctx.git_tag
    )
    return UrlPublished(variable)


def noop_plan(ctx: RunContext, found: Found) -> Planned:
    """A dry run of a tag that already serves."""
    return Planned(
        ReleasePlan(
            image=ctx.image or "(already deployed)",
            revision=ctx.gpu_revision,
            cpu_revision=ctx.cpu_revision,
            existing=list(found.existing),
            note="nothing to do: the tag already serves",
        )
    )


def plan(ctx: RunContext, steps: StepLog, found: Found) -> Planned:
    """A dry run: the regions, quotas and preferences the release would use; nothing changes."""
    target = ctx.target
    decision = decide_regions(ctx, steps, allow_requests=False)
    prefs: list[str] = []
    if not decision.candidates and target.quota.request:
        prefs = list(
            preference_ids(
                target.gpu_quota_id(),
                [q.region for q in decision.quotas if q.why.startswith("GPU quota")],
            ).values()
        )
    return Planned(
        ReleasePlan(
            image=ctx.image or f"(built from {ctx.git_tag} at release time)",
            revision=ctx.gpu_revision,
            cpu_revision=ctx.cpu_revision,
            quotas=decision.quotas,
            candidates=decision.candidates,
            quota_preferences=prefs,
            existing=list(found.existing),
            note=decision.reason
            or f"would deploy {ctx.gpu_revision} to {decision.candidates[0]} as a 0% canary",
        ),
        region=decision.candidates[0] if decision.candidates else None,
        revision=ctx.gpu_revision,
    )


def ensure_image(ctx: RunContext, steps: StepLog, commit: str | None) -> ImageReady | None:
    """The image to deploy: built from the tag (from the pinned base image when the target
    names one); None when the release was given its image."""
    if ctx.image:
        steps.skip("base-image-pin", "image given")
        steps.skip("build", "image given")
        return None
    pin = None
    if ctx.target.base_image:
        pin = steps.run("base-image-pin", pin_step, ctx.target.base_image)
    else:
        steps.skip("base-image-pin", "no base_image on the target")
    with steps.inline("build") as info:
        built = build_image(ctx, ctx.git_tag, commit, pin)
        figures = BuildFigures.of(built)
        image = figures.image if figures else str(built)
        info["detail"] = image
    return ImageReady(image, figures)


def next_attempts(
    gpu_revision: str, existing: tuple[ExistingRevision, ...]
) -> tuple[dict[str, str], tuple[str, ...]]:
    """(region -> the GPU revision name this run deploys there when it is not the tag's own,
    the regions whose tag revision failed and stay skipped). Where it failed for lack of quota
    (Google accepts the update and fails the revision), this run deploys a new attempt under a
    new name instead: the quota may have been granted since."""
    attempts: dict[str, str] = {}
    skipped: list[str] = []
    for e in existing:
        if e.revision and e.revision != gpu_revision:
            attempts[e.region] = e.revision
        if e.state != "failed":
            continue
        if is_quota_message(e.message) and not e.percent and e.attempt < MAX_ATTEMPTS:
            attempts[e.region] = attempt_name(gpu_revision, e.attempt + 1)
        else:
            skipped.append(e.region)
    return attempts, tuple(dict.fromkeys(skipped))
