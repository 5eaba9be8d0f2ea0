"""The release: base-image pin -> build -> GPU deploy -> canary -> cutover | rollback.

`release(git_tag, target, dry_run=False)` is one Prefect flow; every step is a Prefect task
inside it, retried on transient errors only (tasks/errors.py decides), timed, and its
attempts counted into the typed `ReleaseResult`. Only one release of a service runs at a
time: the flow holds the global concurrency slot `shipyard-release-{service}` (limit 1).

Outcomes:
- `released`: the GPU canary passed and has 100% (`noop=True` when the tag was already
  serving: nothing was built, deployed or requested again);
- `rolled_back`: the canary (or the GPU deploy) failed; traffic stays on / returns to the
  last good revision or the CPU baseline;
- `cpu_fallback`: no region could get a GPU; 100% on a Ready CPU revision in the primary region;
- `planned`: a dry run, nothing changed (regions and quotas it would use, image, revision).

A configuration error (bad template, missing secret block, a build failure) fails the flow
after writing the summary artifact.
"""

from __future__ import annotations

import datetime as dt
import inspect
import time
from typing import Any, Literal, cast

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.events import emit_event
from prefect.variables import Variable
from pydantic import BaseModel

from blocks.release_tag import configured_tag_pattern, validate_release_tag
from blocks.release_target import ReleaseTarget, cpu_template_fingerprint
from flows.canary import CanaryReport, recorded_release, release_variable, run_canary
from flows.exposure import check_exposure_step
from flows.gpu_handover import Handover, handover_step, restore_step
from flows.ledger import record_release
from flows.observe import observed_release, release_crashed
from flows.quota_adapter import PreferenceState, RegionQuota, preference_ids
from flows.region_choice import decide_regions, quota_preferences_step
from flows.region_deploy import (
    ExistingRevision,
    RevisionDeploy,
    clear_failed_step,
    deploy_gpu_step,
    find_existing_step,
    remove_refused_service_step,
)
from flows.release_decisions import log_canary, log_preferences, log_rollback, region_decisions
from flows.release_hooks import abort_cleanup, canary_verdict, record_verdict
from flows.release_outcome import (
    STATE_NAMES,
    ReleaseRolledBack,
    final_state,
    how_to_return,
    outcome_message,
    serving_and_attempted,
)
from flows.release_params import OptionalText, TargetParam, resolve_annotations
from flows.release_slot import ReleaseError, ensure_slot, release_slot, slot_name
from flows.release_steps import Step, StepLog, note_attempt
from flows.run_context import MAX_ATTEMPTS, RunContext, attempt_name
from flows.stage_events import stage
from flows.tag_time import TagTime, parse_given, tag_time
from flows.traffic import (
    TrafficResult,
    cpu_path_step,
    cutover_step,
    publish_url_step,
    rollback_step,
    serving_url_variable,
)
from tasks.deploy_errors import ConfigurationError, DeployFailed, QuotaDenied, is_quota_message
from tasks.git_source import redact_credentials
from tasks.reports import markdown_table, publish_markdown

Outcome = Literal["released", "rolled_back", "cpu_fallback", "planned"]

# A release that runs longer than this is stopped by Prefect (TimedOut): 3 h covers a cold
# build of a CUDA image, the quota budget and the canary with room to spare.
RELEASE_TIMEOUT_S = 3 * 3600

__all__ = [
    "ReleaseError",
    "ReleaseRolledBack",
    "ensure_slot",
    "release",
    "run_release",
    "slot_name",
]


class CanaryFigures(BaseModel):
    runs: int
    passed: bool
    p50_ms: float | None = None
    p95_ms: float | None = None
    fallback_used: bool = False
    speedup: float | None = None
    baseline_ms: float | None = None
    baseline_source: str = ""
    requests: int = 0
    remote_503_rate: float | None = None
    reasons: list[str] = []
    judged_at: str = ""

    @classmethod
    def of(cls, report: CanaryReport) -> CanaryFigures:
        return cls(
            runs=len(report.runs),
            passed=report.passed,
            p50_ms=report.p50_ms,
            p95_ms=report.p95_ms,
            fallback_used=report.fallback_used,
            speedup=report.speedup,
            baseline_ms=report.baseline_ms,
            baseline_source=report.baseline_source,
            requests=report.requests,
            remote_503_rate=report.remote_503_rate,
            reasons=report.reasons,
            judged_at=report.judged_at,
        )


class BuildFigures(BaseModel):
    """What the build step did (flows/build.py's ReleaseImage, without its step rows)."""

    image: str
    reused: bool
    build_id: str | None = None
    commit: str = ""
    cached_steps: int = 0
    run_steps: int = 0
    hit_rate: float = 0.0
    pull_bytes: int = 0
    seconds: float = 0.0

    @classmethod
    def of(cls, built: Any) -> BuildFigures | None:
        if isinstance(built, str):
            return None
        return cls.model_validate(built, from_attributes=True)


class ReleasePlan(BaseModel):
    image: str
    revision: str
    cpu_revision: str
    quotas: list[RegionQuota] = []
    candidates: list[str] = []
    quota_preferences: list[str] = []
    existing: list[ExistingRevision] = []
    note: str = ""


class ReleaseResult(BaseModel):
    git_tag: str
    service: str
    outcome: Outcome
    noop: bool = False
    dry_run: bool = False
    region: str | None = None
    primary_region: str
    outside_primary: bool = False
    revision: str | None = None
    url: str | None = None
    image: str | None = None
    build: BuildFigures | None = None
    canary: CanaryFigures | None = None
    reasons: list[str] = []
    regions_tried: dict[str, str] = {}
    # Every candidate region with what the quota (and preferences) decided, in order.
    regions_considered: dict[str, str] = {}
    preferences: list[PreferenceState] = []
    plan: ReleasePlan | None = None
    serving_url_variable: str | None = None
    steps: list[Step] = []
    started_at: str = ""
    tag_time: TagTime | None = None  # where the lead time starts (flows/tag_time.py)
    seconds: float = 0.0
    flow_run_id: str | None = None


# ---------------------------------------------------------------- build adapter


@task(name="base-image-pin", cache_policy=NO_CACHE, persist_result=False)
def pin_step(base_image: str) -> dict[str, Any]:
    note_attempt()
    from flows.mirror import read_base_pin

    pin = read_base_pin(base_image)
    if not pin:
        raise ConfigurationError(
            f"ReleaseTarget.base_image={base_image!r} has no recorded pin: run the mirror "
            "flow for it first (shipyard mirror ...), or leave base_image empty"
        )
    return pin


def build_image(ctx: RunContext, git_tag: str, commit: str | None, pin: dict | None) -> Any:
    """Adapter over flows/build.py's `build_release_image` (a subflow: it reuses an image that
    already holds the commit, so a re-run does not build twice). `commit` defaults to the git
    tag, which the build resolves to a sha. A build failure stops the release before any deploy.
    """
    try:
        from flows.build import build_release_image
    except ImportError as exc:
        raise ReleaseError(
            "no image given and no build available (flows/build.py): pass image=..."
        ) from exc
    params = inspect.signature(build_release_image).parameters
    offered: dict[str, Any] = {
        "git_tag": git_tag,
        "commit": commit or git_tag,
        "base_image": (pin or {}).get("image"),
        "settings_block": ctx.target.build_settings_block,
        "tiers_block": ctx.target.build_tiers_block,
        "cloud": ctx.cloud,  # one GoogleCloud block for the build and the deploy
    }
    kwargs = {k: v for k, v in offered.items() if k in params and v is not None}
    try:
        built = build_release_image(**kwargs)
    except Exception as exc:
        detail = redact_credentials(f"{type(exc).__name__}: {exc}")  # a git URL's user:token@
        raise ReleaseError(f"build of {git_tag} failed: {detail}") from exc
    image = getattr(built, "image", None) or (built if isinstance(built, str) else None)
    if not image:
        raise ReleaseError(f"the build of {git_tag} returned no image reference: {built!r}")
    return built


# ---------------------------------------------------------------- the flow


def resolve_target(target: ReleaseTarget | str) -> ReleaseTarget:
    if isinstance(target, ReleaseTarget):
        return target
    try:
        return cast(ReleaseTarget, ReleaseTarget.load(target))
    except ValueError as exc:
        raise ReleaseError(
            f"target={target!r}: no ReleaseTarget block of that name; save one "
            "(ReleaseTarget(...).save(name)) or pass the block"
        ) from exc


@flow(
    name="release",
    flow_run_name="release-{git_tag}",
    log_prints=False,
    timeout_seconds=RELEASE_TIMEOUT_S,
    on_cancellation=[abort_cleanup],
    on_crashed=[release_crashed, abort_cleanup],
)
def release(
    git_tag: str,
    target: TargetParam = "default",
    dry_run: bool = False,
    image: OptionalText = "",
    commit: OptionalText = "",
    tagged_at: OptionalText = "",
) -> ReleaseResult:
    """Release `git_tag` of the target service (see the module docstring for outcomes).

    Args:
        git_tag: Release tag, e.g. v1.4.0 (the pattern the webhook and the CLI use too).
        target: Name of the Shipyard Release Target block to release to (e.g. default).
        dry_run: Plan only: show regions, quotas, image and revision; change nothing.
        image: Release this image reference instead of building the tag (empty: build).
        commit: Commit to build (empty: the commit the tag points at).
        tagged_at: When the tag was pushed, ISO 8601 or Unix seconds (the webhook passes the
            push's time); empty: the tag's date in the git source, else the release's start.
    """
    try:
        validate_release_tag(git_tag, pattern=configured_tag_pattern())
        if tagged_at:
            parse_given(tagged_at)
    except ValueError as exc:
        raise ReleaseError(str(exc)) from None
    resolved = resolve_target(target)
    with observed_release(resolved, git_tag):  # scope, release events, Cloud Logging
        if dry_run:
            return Release(resolved, git_tag, image or None, commit or None, tagged_at).run(
                dry_run=True
            )
        with release_slot(resolved.service, resolved.lock_timeout_s, resolved.slot_lease_s):
            result = Release(resolved, git_tag, image or None, commit or None, tagged_at).run(
                dry_run=False
            )
    # A rollback ends the run Failed-type `RolledBack` (a call raises ReleaseRolledBack, which
    # carries the result), a CPU fallback Completed-type `CPUFallback`; both name the reason.
    state = final_state(result)
    return result if state is None else cast(ReleaseResult, state)


def run_release(
    git_tag: str,
    target: TargetParam = "default",
    dry_run: bool = False,
    image: OptionalText = "",
    commit: OptionalText = "",
    tagged_at: OptionalText = "",
) -> ReleaseResult:
    """Run the release flow and return its `ReleaseResult` for every outcome, a rollback's
    included; only a release that stopped (tag, configuration, build) raises."""
    try:
        return release(
            git_tag, target, dry_run=dry_run, image=image, commit=commit, tagged_at=tagged_at
        )
    except ReleaseRolledBack as rolled_back:
        return rolled_back.result


class Release:
    """One run of the release flow: its decisions, in order."""

    def __init__(
        self,
        target: ReleaseTarget,
        git_tag: str,
        image: str | None,
        commit: str | None,
        tagged_at: str = "",
    ):
        self.target = target
        self.git_tag = git_tag
        self.commit = commit
        self.tagged_at = tagged_at
        self.ctx = RunContext(target, git_tag, image)
        self.steps = StepLog(target.retries, target.retry_delays())
        self.started = time.perf_counter()
        self._refused: set[str] = set()  # regions whose tag revision failed for quota before
        self.result = ReleaseResult(
            git_tag=git_tag,
            service=target.service,
            outcome="planned",
            primary_region=target.primary_region,
            image=image,
            started_at=dt.datetime.now(dt.UTC).isoformat(),
        )
        run = FlowRunContext.get()
        if run is not None and run.flow_run is not None:
            self.result.flow_run_id = str(run.flow_run.id)

    # ---- driver

    def run(self, *, dry_run: bool) -> ReleaseResult:
        self.result.dry_run = dry_run
        logger = get_run_logger()
        try:
            self._run(dry_run)
            if not dry_run:
                self._remove_refused_services()
        except BaseException as exc:
            self.result.reasons.append(f"{type(exc).__name__}: {exc}")
            self._finish(failed=True)
            raise
        self._finish(failed=False)
        if self.result.outcome in STATE_NAMES:
            logger.warning("%s", outcome_message(self.result))
        else:
            logger.info(
                "release %s of %s: %s (region %s, revision %s)",
                self.git_tag,
                self.target.service,
                self.result.outcome,
                self.result.region,
                self.result.revision,
            )
        return self.result

    def _run(self, dry_run: bool) -> None:
        ctx, steps, result = self.ctx, self.steps, self.result
        found_in = steps.run_per_region(
            "find-release", find_existing_step, self.target.regions, ctx
        )
        existing = [e for e in found_in.values() if e is not None]
        self._refused = {
            e.region for e in existing if e.state == "failed" and is_quota_message(e.message)
        }
        if not dry_run:  # refused before anything changes (a dry run changes nothing)
            steps.note("check-exposure", steps.run("check-exposure", check_exposure_step, ctx))
        serving = [e for e in existing if e.state == "succeeded" and e.percent == 100]
        if serving:
            found = serving[0]
            result.outcome = "planned" if dry_run else "released"
            result.noop = True
            result.region, result.revision, result.url = (
                found.region,
                found.revision or ctx.gpu_revision,
                found.uri,
            )
            result.outside_primary = found.region != self.target.primary_region
            result.reasons.append(f"{result.revision} already serves 100% in {found.region}")
            steps.skip("build", "the tag's revision already serves")
            verdict = canary_verdict(self.target.service, result.revision or ctx.gpu_revision)
            if verdict is not None:
                result.canary = CanaryFigures.model_validate(verdict)
            else:
                result.reasons.append("no recorded canary verdict for the serving revision")
            if not dry_run and (result.outside_primary or self._published_elsewhere(found.uri)):
                result.serving_url_variable = self.steps.run(
                    "publish-url",
                    publish_url_step,
                    self.target,
                    found.region,
                    result.revision,
                    found.uri,
                    self.git_tag,
                )
            if dry_run:
                result.plan = ReleasePlan(
                    image=ctx.image or "(already deployed)",
                    revision=ctx.gpu_revision,
                    cpu_revision=ctx.cpu_revision,
                    existing=existing,
                    note="nothing to do: the tag already serves",
                )
            return

        if dry_run:
            self._plan(existing)
            return

        result.tag_time = tag_time(
            steps, self.target, self.git_tag, self.tagged_at, result.started_at
        )
        self._ensure_image()
        resumable = [e for e in existing if e.state == "succeeded"]
        failed_regions = self._next_attempts(existing)
        deployed = None
        if resumable:
            region = resumable[0].region
            result.regions_tried[region] = "resumed the tag's existing revision"
            deployed = self._deploy(region)
        if deployed is None:
            try:
                deployed = self._deploy_somewhere(skip=failed_regions)
            except _Stop:
                return
        if deployed is None:
            self._cpu_path()
            return
        self._canary_and_traffic(deployed)

    def _next_attempts(self, existing: list[ExistingRevision]) -> set[str]:
        """Regions whose tag revision failed and stay skipped; where it failed for lack of
        quota (Google accepts the update and fails the revision), this run deploys a new
        attempt under a new name instead: the quota may have been granted since."""
        skipped = set()
        for e in existing:
            if e.revision and e.revision != self.ctx.gpu_revision:
                self.ctx.attempts[e.region] = e.revision
            if e.state != "failed":
                continue
            if is_quota_message(e.message) and not e.percent and e.attempt < MAX_ATTEMPTS:
                self.ctx.attempts[e.region] = attempt_name(self.ctx.gpu_revision, e.attempt + 1)
            else:
                skipped.add(e.region)
        return skipped

    # ---- steps

    def _ensure_image(self) -> None:
        ctx = self.ctx
        if ctx.image:
            self.steps.skip("base-image-pin", "image given")
            self.steps.skip("build", "image given")
            return
        pin = None
        if self.target.base_image:
            pin = self.steps.run("base-image-pin", pin_step, self.target.base_image)
        else:
            self.steps.skip("base-image-pin", "no base_image on the target")
        with self.steps.inline("build") as info:
            built = build_image(ctx, self.git_tag, self.commit, pin)
            figures = BuildFigures.of(built)
            ctx.image = figures.image if figures else str(built)
            info["detail"] = ctx.image
        self.result.image = ctx.image
        self.result.build = figures

    def _plan(self, existing: list[ExistingRevision]) -> None:
        ctx = self.ctx
        decision = decide_regions(ctx, self.steps, allow_requests=False)
        prefs = []
        if not decision.candidates and self.target.quota.request:
            prefs = list(
                preference_ids(
                    self.target.gpu_quota_id(),
                    [q.region for q in decision.quotas if q.why.startswith("GPU quota")],
                ).values()
            )
        self.result.plan = ReleasePlan(
            image=ctx.image or f"(built from {self.git_tag} at release time)",
            revision=ctx.gpu_revision,
            cpu_revision=ctx.cpu_revision,
            quotas=decision.quotas,
            candidates=decision.candidates,
            quota_preferences=prefs,
            existing=existing,
            note=decision.reason
            or f"would deploy {ctx.gpu_revision} to {decision.candidates[0]} as a 0% canary",
        )
        self.result.region = decision.candidates[0] if decision.candidates else None
        self.result.revision = ctx.gpu_revision
        self.result.outcome = "planned"

    def _deploy(self, region: str) -> RevisionDeploy | None:
        """Deploy to one region; None when the region refused for lack of quota."""
        try:
            deployed = self.steps.run(f"deploy:{region}", deploy_gpu_step, self.ctx, region)
        except QuotaDenied as exc:
            self.result.regions_tried[region] = f"quota: {exc.message}"
            self.steps.run(
                f"clear:{region}",
                clear_failed_step,
                self.ctx,
                region,
                self.ctx.gpu_revision_in(region),
            )
            return None
        self.result.regions_tried[region] = "deployed" + (" (reused)" if deployed.reused else "")
        return deployed

    def _remove_refused_services(self) -> None:
        """Regions that refused the GPU for quota (this run or a killed run of the tag) keep no
        service this tag's release created there, unless the release ends serving there
        (flows/region_deploy.py: remove_refused_service_step)."""
        tried = self.result.regions_tried
        refused = self._refused | {r for r, why in tried.items() if why.startswith("quota: ")}
        for region in sorted(refused - {self.result.region}):
            try:
                removed = self.steps.run(
                    f"remove:{region}", remove_refused_service_step, self.ctx, region
                )
            except Exception as exc:  # noqa: BLE001 - the release's outcome stands
                self.result.reasons.append(
                    f"could not delete the service this release created in {region} ({exc}); "
                    f"delete it: gcloud run services delete {self.target.service} "
                    f"--region {region}"
                )
                continue
            if removed:
                tried[region] = (
                    tried.get(region, "the tag's revision was refused here before")
                    + "; the service this release created here was deleted"
                )

    def _deploy_somewhere(self, skip: set[str]) -> RevisionDeploy | None:
        ctx, result = self.ctx, self.result
        for region in skip:
            result.regions_tried[region] = "the tag's revision failed here before"
        decision = decide_regions(ctx, self.steps, allow_requests=True)
        result.preferences = decision.preferences
        result.regions_considered = decision.decisions
        if decision.reason:
            result.reasons.append(decision.reason)
        tried = set(skip)
        candidates = decision.candidates
        while True:
            for region in candidates:
                if region in tried:
                    continue
                tried.add(region)
                try:
                    deployed = self._deploy(region)
                except DeployFailed as exc:
                    # Not a quota problem: the image or the template. Clean up and stop.
                    result.regions_tried[region] = f"failed: {exc.message}"
                    self._after_failed_deploy(region, exc)
                    raise _Stop() from exc
                if deployed is not None:
                    return deployed
            if decision.requested or not self.target.quota.request:
                return None
            untried = [r for r in self.target.regions if r not in tried]
            if not untried:
                return None
            prefs = self.steps.run_with(
                "quota-preferences", 0, [], quota_preferences_step, ctx, untried
            )
            decision.requested = True
            result.preferences = prefs
            log_preferences(prefs)
            result.regions_considered.update(
                region_decisions(
                    untried, [q for q in decision.quotas if q.region in untried], prefs
                )
            )
            candidates = [p.region for p in prefs if p.granted]
            if not candidates:
                result.reasons.append("no quota preference was granted within the budget")
                return None

    def _after_failed_deploy(self, region: str, exc: DeployFailed) -> None:
        self.steps.run(f"clear:{region}", clear_failed_step, self.ctx, region, exc.revision)
        outcome = self.steps.run("rollback", rollback_step, self.ctx, region, exc.revision)
        log_rollback(region, exc.revision, outcome.revision, outcome.detail)
        self._serving(outcome)
        self.result.outcome = "rolled_back"
        self.result.reasons.append(f"GPU deploy failed in {region}: {exc.message}")

    def _cpu_path(self) -> None:
        region = self.target.primary_region
        outcome = self.steps.run("cpu-path", cpu_path_step, self.ctx, region)
        self._serving(outcome)
        self.result.outcome = "cpu_fallback"
        self.result.reasons.append(
            f"no region could run the GPU revision; {outcome.revision} serves 100% in {region}"
        )

    def _canary_and_traffic(self, deployed: RevisionDeploy) -> None:
        ctx, result = self.ctx, self.result
        region = deployed.region
        if not deployed.tag_uri:
            raise ConfigurationError(f"Cloud Run published no canary URL in {region}")
        # The GPU quota counts running instances: free the serving GPU revision's if needed.
        handover = self.steps.run(
            f"gpu-handover:{region}", handover_step, ctx, region, deployed.revision
        )
        if handover is not None:
            self.steps.note(f"gpu-handover:{region}", handover.detail)
            result.reasons.append(handover.detail)
        try:
            with stage("canary", region=region, revision=deployed.revision, image=ctx.image) as ev:
                report = run_canary(ctx, self.steps, region, deployed.revision, deployed.tag_uri)
                ev["failed"] = None if report.passed else "; ".join(report.reasons)
        except BaseException:
            # The canary could not be judged: no traffic for it, no stale canary tag.
            self.steps.run(f"clear:{region}", clear_failed_step, ctx, region, deployed.revision)
            self._restore(handover, deployed.revision)
            raise
        result.canary = CanaryFigures.of(report)
        log_canary(report, self.target.canary)
        self._baseline_ms = report.baseline_ms
        if report.passed:
            # Persisted BEFORE the cutover: a re-run after a kill right here knows why it serves.
            record_verdict(self.target.service, deployed.revision, result.canary.model_dump())
            outcome = self.steps.run("cutover", cutover_step, ctx, region, deployed.revision)
            self._serving(outcome)
            result.outcome = "released"
            result.outside_primary = region != self.target.primary_region
            if result.outside_primary or self._published_elsewhere(outcome.url):
                result.serving_url_variable = self.steps.run(
                    "publish-url",
                    publish_url_step,
                    self.target,
                    region,
                    outcome.revision,
                    outcome.url,
                    self.git_tag,
                )
        else:
            self.steps.run(f"clear:{region}", clear_failed_step, ctx, region, deployed.revision)
            self._restore(handover, deployed.revision)
            outcome = self.steps.run("rollback", rollback_step, ctx, region, deployed.revision)
            log_rollback(region, deployed.revision, outcome.revision, outcome.detail)
            self._serving(outcome)
            result.outcome = "rolled_back"
            result.reasons.extend(f"canary: {r}" for r in report.reasons)

    def _restore(self, handover: Handover | None, failed: str) -> None:
        """After a failed canary: the traffic the GPU handover moved goes back."""
        if handover is not None:
            self.steps.run(
                f"gpu-handover-restore:{handover.region}", restore_step, self.ctx, handover, failed
            )

    def _published_elsewhere(self, url: str) -> bool:
        current = Variable.get(serving_url_variable(self.target.service), default=None)
        return current is not None and current != url

    def _serving(self, outcome: TrafficResult) -> None:
        self.result.region = outcome.region
        self.result.revision = outcome.revision
        self.result.url = outcome.url

    # ---- record and report

    def _finish(self, *, failed: bool) -> None:
        result = self.result
        result.steps = self.steps.steps
        result.seconds = round(time.perf_counter() - self.started, 3)
        if not result.dry_run and not failed:
            self._record()
            emit_event(
                event=f"shipyard.release.{result.outcome.replace('_', '-')}",
                resource={
                    "prefect.resource.id": f"shipyard.cloud-run.service.{result.service}",
                    "prefect.resource.name": result.service,
                },
                payload={
                    "git_tag": result.git_tag,
                    "outcome": result.outcome,
                    "region": result.region,
                    "revision": result.revision,
                    "url": result.url,
                    "noop": result.noop,
                },
            )
        record_release(result, failed)  # the service's ledger (shipyard report)
        try:
            publish_markdown(
                summary_markdown(result, failed),
                key=f"release-{result.service}",
                description=f"Release {result.git_tag} of {result.service}: "
                + ("failed" if failed else result.outcome),
            )
        except Exception:  # noqa: BLE001 - a report must not hide the release's own error
            if not failed:
                raise

    def _record(self) -> None:
        result = self.result
        previous = recorded_release(result.service) or {}
        measured = result.canary is not None and result.canary.baseline_source == "measured"
        baseline = getattr(self, "_baseline_ms", None) or previous.get("cpu_baseline_ms")
        baseline_at = (
            result.canary.judged_at
            if measured and result.canary is not None
            else previous.get("cpu_baseline_at")
        )
        template = (
            cpu_template_fingerprint(self.target) if measured else previous.get("cpu_template")
        )
        record = {
            "git_tag": result.git_tag,
            "outcome": result.outcome,
            "region": result.region,
            "revision": result.revision,
            "url": result.url,
            "image": result.image,
            "cpu_baseline_ms": baseline,
            "cpu_baseline_at": baseline_at,
            "cpu_template": template,
            "canary_p95_ms": result.canary.p95_ms if result.canary else None,
            "recorded_at": dt.datetime.now(dt.UTC).isoformat(),
            "tags": released_tags(previous, result),
            "previous": last_good(previous, result),
        }
        if result.noop and previous and previous.get("revision") == result.revision:
            # The same release again: keep what its first run knew (image, figures).
            record = {**previous, "recorded_at": record["recorded_at"]}
        elif result.outcome in STATE_NAMES:
            record = serving_and_attempted(record, previous, result)
        Variable.set(release_variable(result.service), record, overwrite=True)


def last_good(previous: dict[str, Any], result: ReleaseResult) -> dict[str, Any] | None:
    """The revision that served before this one (what `shipyard rollback` returns to): the
    record's serving revision when another one serves now, else what the record kept."""
    if previous.get("revision") and previous.get("revision") != result.revision:
        return {k: previous.get(k) for k in ("revision", "git_tag", "image", "region")}
    return previous.get("previous")


def released_tags(previous: dict[str, Any], result: ReleaseResult) -> dict[str, str]:
    """revision -> the git tag it was released from (the last 20): what `shipyard rollback`
    reports and records for a revision it returns to (revision labels hold a sanitized tag)."""
    tags = dict(previous.get("tags") or {})
    if result.outcome == "released" and result.revision:
        tags.pop(result.revision, None)
        tags[result.revision] = result.git_tag
    return dict(list(tags.items())[-20:])


class _Stop(Exception):
    """Internal: the GPU deploy failed and was rolled back; the release ends there."""


def summary_markdown(result: ReleaseResult, failed: bool) -> str:
    title = "FAILED" if failed else result.outcome.replace("_", " ").upper()
    lines = [
        f"# Release {result.git_tag} of `{result.service}`: **{title}**",
        "",
        f"- region: `{result.region or '-'}` (primary `{result.primary_region}`)"
        + (" — **GPU outside the primary region**" if result.outside_primary else ""),
        f"- revision: `{result.revision or '-'}`",
        f"- URL: {result.url or '-'}",
        f"- image: `{result.image or '-'}`",
        f"- took {result.seconds:.1f} s"
        + (" (dry run: nothing changed)" if result.dry_run else ""),
    ]
    if result.build:
        b = result.build
        lines.append(
            f"- build: {'reused (nothing built)' if b.reused else b.build_id}, CACHED "
            f"{b.cached_steps} / RUN {b.run_steps} (hit rate {b.hit_rate:.0%})"
        )
    if result.noop:
        lines.append("- the tag already served: nothing built, deployed or requested")
    if not failed and not result.dry_run:
        lines += how_to_return(result)
    if result.serving_url_variable:
        lines.append(f"- serving URL published as Variable `{result.serving_url_variable}`")
    if result.canary:
        c = result.canary
        lines += [
            "",
            "## Canary",
            f"{c.runs} runs, p50 {c.p50_ms} ms, p95 {c.p95_ms} ms, fallback used: "
            f"{c.fallback_used}, speed-up {c.speedup if c.speedup is not None else '-'} over "
            f"CPU baseline {c.baseline_ms} ms ({c.baseline_source}): "
            + ("passed" if c.passed else "failed"),
        ]
    if result.reasons:
        lines += ["", "## Reasons", *[f"- {r}" for r in result.reasons]]
    regions = {**result.regions_considered, **result.regions_tried}
    if regions:
        lines += ["", "## Regions", *[f"- `{r}`: {w}" for r, w in regions.items()]]
    if result.plan:
        lines += [
            "",
            "## Plan",
            f"- revision `{result.plan.revision}`, image `{result.plan.image}`",
            f"- candidates: {', '.join(result.plan.candidates) or 'none'}",
            f"- quota preferences it would file: {', '.join(result.plan.quota_preferences) or 'none'}",
            f"- {result.plan.note}",
            "",
            markdown_table([q.model_dump() for q in result.plan.quotas]),
        ]
    lines += [
        "",
        "## Steps",
        markdown_table(
            [s.model_dump() for s in result.steps],
            ["name", "state", "seconds", "attempts", "detail"],
        ),
    ]
    return "\n".join(lines)


resolve_annotations(release)  # for runs a runner serves (see flows/release_params.py)
