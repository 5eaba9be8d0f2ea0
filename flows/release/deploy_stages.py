"""The stages of a release from the GPU deploy on: region by region, canary, cutover | rollback.

These stages decide several things in turn (a region refused, the next one deployed ...): they
are generators that yield each decision as it is taken (flows/release/decided.py) and return
how the stage ended, so a run that fails half-way still reports the decisions taken before.
`yield from` composes them in flows/release/run.py.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Mapping

from shipyard.flows.canary.stage import recorded_release, run_canary
from shipyard.flows.deploy.gpu_handover import Handover, hand_over, restore_step
from shipyard.flows.deploy.region_choice import decide_regions, quota_preferences_step
from shipyard.flows.deploy.region_deploy import (
    ExistingRevision,
    RevisionDeploy,
    clear_failed_step,
    deploy_gpu_step,
    remove_refused_service_step,
)
from shipyard.flows.deploy.traffic import (
    TrafficResult,
    cpu_path_step,
    cutover_step,
    rollback_step,
)
from shipyard.flows.observe.stage_events import stage
from shipyard.flows.release.context import RunContext
from shipyard.flows.release.decided import (
    CanaryJudged,
    Decision,
    Ended,
    PreferencesFiled,
    Reason,
    RegionsDecided,
    Tried,
)
from shipyard.flows.release.decisions import (
    log_canary,
    log_preferences,
    log_rollback,
    region_decisions,
)
from shipyard.flows.release.hooks import record_verdict
from shipyard.flows.release.result import CanaryFigures
from shipyard.flows.release.stages import publish_url, published_elsewhere
from shipyard.flows.release.steps import StepLog
from shipyard.flows.rollout.stage import canary_of, eligible, resumed_journal, run_rollout
from shipyard.tasks import cloud_run as cr
from shipyard.tasks.deploy_errors import (
    ConfigurationError,
    DeployFailed,
    ImageFault,
    QuotaDenied,
    is_image_fault,
)

# A stage that yields its decisions and returns how the deploy ended: the revision deployed,
# the rollback that ended the release, or None (no region could run it).
Stage = Generator[Decision, None, RevisionDeploy | Ended | None]


def deploy(
    ctx: RunContext, steps: StepLog, existing: tuple[ExistingRevision, ...], skip: tuple[str, ...]
) -> Stage:
    """Deploy the tag's GPU revision: resume the tag's revision where it succeeded before, else
    region after region (`skip`: where it failed before). Returns the deployed revision, the
    rollback that ended the release, or None: no region could run it (the CPU path)."""
    resumable = [e for e in existing if e.state == "succeeded"]
    broken = next((e for e in existing if _image_verdict(e)), None)
    if broken is not None and not resumable:
        # The tag's image could not start before: the same image fails in every region.
        yield Tried(broken.region, "the tag's image could not start here before")
        fault = ImageFault(broken.region, broken.revision, broken.message)
        return (yield from roll_back_failed_deploy(ctx, steps, broken.region, fault))
    if resumable:
        region = resumable[0].region
        yield Tried(region, "resumed the tag's existing revision")
        deployed = yield from deploy_in(ctx, steps, region)
        if deployed is not None:
            return deployed
    return (yield from deploy_somewhere(ctx, steps, skip))


def deploy_in(
    ctx: RunContext, steps: StepLog, region: str
) -> Generator[Decision, None, RevisionDeploy | None]:
    """Deploy to one region; None when the region refused for lack of quota."""
    try:
        deployed = steps.run(f"deploy:{region}", deploy_gpu_step, ctx, region)
    except QuotaDenied as exc:
        yield Tried(region, f"quota: {exc.message}")
        steps.run(f"clear:{region}", clear_failed_step, ctx, region, ctx.gpu_revision_in(region))
        return None
    yield Tried(region, "deployed" + (" (reused)" if deployed.reused else ""))
    return deployed


def deploy_somewhere(ctx: RunContext, steps: StepLog, skip: tuple[str, ...]) -> Stage:
    """The candidate regions the quota allows, in order; when none is left and the policy
    allows, quota preferences for the untried regions, then the regions granted."""
    for region in skip:
        yield Tried(region, "the tag's revision failed here before")
    decision = decide_regions(ctx, steps, allow_requests=True)
    yield RegionsDecided(tuple(decision.preferences), decision.decisions, decision.reason)
    tried = set(skip)
    candidates = decision.candidates
    requested = decision.requested
    while True:
        for region in candidates:
            if region in tried:
                continue
            tried.add(region)
            try:
                deployed = yield from deploy_in(ctx, steps, region)
            except DeployFailed as exc:
                # Not a quota problem: the image or the template. Clean up and stop.
                yield Tried(region, f"failed: {exc.message}")
                return (yield from roll_back_failed_deploy(ctx, steps, region, exc))
            if deployed is not None:
                return deployed
        if requested or not ctx.target.quota.request:
            return None
        untried = [r for r in ctx.target.regions if r not in tried]
        if not untried:
            return None
        prefs = steps.run_with("quota-preferences", 0, [], quota_preferences_step, ctx, untried)
        requested = True
        log_preferences(prefs)
        considered = region_decisions(
            untried, [q for q in decision.quotas if q.region in untried], prefs
        )
        yield PreferencesFiled(tuple(prefs), considered)
        candidates = [p.region for p in prefs if p.granted]
        if not candidates:
            yield Reason("no quota preference was granted within the budget")
            return None


def roll_back_failed_deploy(
    ctx: RunContext, steps: StepLog, region: str, exc: DeployFailed
) -> Generator[Decision, None, Ended]:
    """Roll back in the region. An image that cannot start (ImageFault) is a verdict on
    the image: no other region and no CPU baseline of that image is tried; traffic stays
    on the last good revision, wherever it serves."""
    image = isinstance(exc, ImageFault)
    steps.run(f"clear:{region}", clear_failed_step, ctx, region, exc.revision)
    outcome = steps.run("rollback", rollback_step, ctx, region, exc.revision, image_failed=image)
    log_rollback(region, exc.revision, outcome.revision, outcome.detail)
    if outcome.deleted:
        yield Tried(region, f"failed: {exc.message}; {outcome.detail}")
    region_now: str | None
    revision: str | None
    url: str | None
    if outcome.revision:
        region_now, revision, url = outcome.region, outcome.revision, outcome.url
    else:  # nothing served in that region: the last release's revision serves elsewhere
        last = recorded_release(ctx.target.scope) or {}
        region_now, revision, url = last.get("region"), last.get("revision"), last.get("url")
    if image:
        why = (
            f"GPU deploy failed in {region}: the image cannot start (no other region, no "
            f"CPU revision of it tried): {exc.message}"
        )
    else:
        why = f"GPU deploy failed in {region}: {exc.message}"
    return Ended(
        "rolled_back",
        region_now,
        revision,
        url,
        reasons=(why, *([outcome.detail] if outcome.untested else [])),
        image_failed=region if image else None,
    )


def cpu_path(ctx: RunContext, steps: StepLog) -> Ended:
    """No region could run the GPU revision: 100% on a Ready CPU revision in the primary."""
    region = ctx.target.primary_region
    outcome = steps.run("cpu-path", cpu_path_step, ctx, region)
    why = f"no region could run the GPU revision; {outcome.revision} serves 100% in {region}"
    return Ended("cpu_fallback", outcome.region, outcome.revision, outcome.url, reasons=(why,))


def canary_and_traffic(
    ctx: RunContext, steps: StepLog, deployed: RevisionDeploy
) -> Iterator[Decision]:
    """GPU handover, canary on the tag URL, then the cutover (in steps when the target has
    them and a tested revision serves: flows/rollout/stage.py), or the rollback."""
    region = deployed.region
    if not deployed.tag_uri:
        raise ConfigurationError(f"Cloud Run published no canary URL in {region}")
    resumed = resumed_journal(ctx, deployed.revision)
    if resumed is not None:
        # Prefect re-ran this run after a suspension at a gate: the hand-over and the canary
        # happened before it; their figures are in the journal, the steps replay from it.
        figures = canary_of(resumed)
        if figures is not None:
            yield CanaryJudged(figures, resumed.baseline_ms)
        service = cr.get_service(ctx.services, ctx.service_name(region))
        released = yield from run_rollout(
            ctx,
            steps,
            region=region,
            new=deployed.revision,
            stable=resumed.stable,
            url=service.uri if service is not None else deployed.service_uri,
            canary=figures or CanaryFigures(runs=0, passed=True),
            baseline_ms=resumed.baseline_ms,
            resumed=resumed,
        )
        if released is not None:
            yield from _released(ctx, steps, region, released)
        return
    # The GPU quota counts running instances: free the serving GPU revision's if needed.
    handover = yield from hand_over(ctx, steps, region, deployed.revision)
    if isinstance(handover, Ended):  # the CPU revision failed its check: nothing moved
        yield handover
        return
    try:
        with stage("canary", region=region, revision=deployed.revision, image=ctx.image) as ev:
            report = run_canary(ctx, steps, region, deployed.revision, deployed.tag_uri)
            ev["failed"] = None if report.passed else "; ".join(report.reasons)
    except BaseException:
        # The canary could not be judged: no traffic for it, no stale canary tag.
        steps.run(f"clear:{region}", clear_failed_step, ctx, region, deployed.revision)
        _restore(ctx, steps, handover, deployed.revision)
        raise
    figures = CanaryFigures.of(report)
    yield CanaryJudged(figures, report.baseline_ms)
    log_canary(report, ctx.target.canary)
    if report.passed:
        # Persisted BEFORE the cutover: a re-run after a kill right here knows why it serves.
        record_verdict(ctx.target.scope, deployed.revision, figures.model_dump())
        plan = eligible(ctx, region, deployed.revision, handover is not None)
        if plan.why:
            yield Reason(plan.why)
        if plan.stable is not None:
            released = yield from run_rollout(
                ctx,
                steps,
                region=region,
                new=deployed.revision,
                stable=plan.stable,
                url=deployed.service_uri,
                canary=figures,
                baseline_ms=report.baseline_ms,
            )
            if released is not None:
                yield from _released(ctx, steps, region, released)
            return
        outcome = steps.run("cutover", cutover_step, ctx, region, deployed.revision)
        yield from _released(ctx, steps, region, outcome)
    else:
        steps.run(f"clear:{region}", clear_failed_step, ctx, region, deployed.revision)
        _restore(ctx, steps, handover, deployed.revision)
        outcome = steps.run("rollback", rollback_step, ctx, region, deployed.revision)
        log_rollback(region, deployed.revision, outcome.revision, outcome.detail)
        yield Ended(
            "rolled_back",
            outcome.region,
            outcome.revision,
            outcome.url,
            reasons=(
                *(f"canary: {r}" for r in report.reasons),
                *([outcome.detail] if outcome.untested else []),
            ),
        )


def _released(
    ctx: RunContext, steps: StepLog, region: str, outcome: TrafficResult
) -> Iterator[Decision]:
    """The cutover is done: the release ends released (and the URL is published when the
    GPU serves outside the primary region or another URL was published)."""
    outside = region != ctx.target.primary_region
    yield Ended("released", outcome.region, outcome.revision, outcome.url, outside_primary=outside)
    if outside or published_elsewhere(ctx.target.scope, outcome.url):
        yield publish_url(ctx, steps, region, outcome.revision, outcome.url)


def _restore(ctx: RunContext, steps: StepLog, handover: Handover | None, failed: str) -> None:
    """After a failed canary: the traffic the GPU handover moved goes back."""
    if handover is not None:
        steps.run(f"gpu-handover-restore:{handover.region}", restore_step, ctx, handover, failed)


def remove_refused_services(
    ctx: RunContext,
    steps: StepLog,
    refused_before: set[str],
    tried: Mapping[str, str],
    serving_region: str | None,
) -> Iterator[Decision]:
    """Regions that refused the GPU for quota (this run or a killed run of the tag) keep no
    service this tag's release created there, unless the release ends serving there
    (flows/deploy/region_deploy.py: remove_refused_service_step)."""
    refused = refused_before | {r for r, why in tried.items() if why.startswith("quota: ")}
    for region in sorted(refused - {serving_region}):
        try:
            removed = steps.run(f"remove:{region}", remove_refused_service_step, ctx, region)
        except Exception as exc:  # noqa: BLE001 - the release's outcome stands
            yield Reason(
                f"could not delete the service this release created in {region} ({exc}); "
                f"delete it: gcloud run services delete {ctx.target.service} "
                f"--region {region}"
            )
            continue
        if removed:
            yield Tried(
                region,
                tried.get(region, "the tag's revision was refused here before")
                + "; the service this release created here was deleted",
            )


def _image_verdict(existing: ExistingRevision) -> bool:
    """The tag's revision failed because its container could not start."""
    return existing.state == "failed" and is_image_fault(existing.message, set(existing.reasons))
