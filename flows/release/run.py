"""One run of the release flow, step by step: `Release` takes the decisions, in order.

Find the tag's revisions -> check exposure -> (no-op when the tag already serves) -> tag time
-> image (pin, build) -> deploy to a region with GPU quota (quota preferences when allowed)
-> GPU handover -> canary -> cutover | rollback, or the CPU path when no region has a GPU;
then the record, the `shipyard.release.*` event, the ledger and the summary artifact.
The flow itself (parameters, slot, final state) is flows/release/flow.py.
"""

from __future__ import annotations

import datetime as dt
import time

from prefect import get_run_logger
from prefect.context import FlowRunContext
from prefect.events import emit_event
from prefect.variables import Variable

from shipyard.blocks.release_target import ReleaseTarget
from shipyard.flows.canary.stage import recorded_release, run_canary
from shipyard.flows.deploy.exposure import check_exposure_step
from shipyard.flows.deploy.gpu_handover import Handover, handover_step, restore_step
from shipyard.flows.deploy.quota import preference_ids
from shipyard.flows.deploy.region_choice import decide_regions, quota_preferences_step
from shipyard.flows.deploy.region_deploy import (
    ExistingRevision,
    RevisionDeploy,
    clear_failed_step,
    deploy_gpu_step,
    find_existing_step,
    remove_refused_service_step,
)
from shipyard.flows.deploy.traffic import (
    TrafficResult,
    cpu_path_step,
    cutover_step,
    publish_url_step,
    rollback_step,
    serving_url_variable,
)
from shipyard.flows.observe.ledger import record_release
from shipyard.flows.observe.stage_events import stage
from shipyard.flows.release.context import MAX_ATTEMPTS, RunContext, attempt_name
from shipyard.flows.release.decisions import (
    log_canary,
    log_preferences,
    log_rollback,
    region_decisions,
)
from shipyard.flows.release.hooks import canary_verdict, record_verdict
from shipyard.flows.release.image import build_image, pin_step
from shipyard.flows.release.outcome import STATE_NAMES, outcome_message
from shipyard.flows.release.record import update_release_record
from shipyard.flows.release.result import BuildFigures, CanaryFigures, ReleasePlan, ReleaseResult
from shipyard.flows.release.steps import StepLog
from shipyard.flows.release.summary import summary_markdown
from shipyard.flows.release.tag_time import tag_time
from shipyard.tasks.deploy_errors import (
    ConfigurationError,
    DeployFailed,
    ImageFault,
    QuotaDenied,
    is_image_fault,
    is_quota_message,
)
from shipyard.tasks.reports import publish_markdown


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
        self._image_failed: set[str] = set()  # regions where the image could not start
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
        broken = next((e for e in existing if _image_verdict(e)), None)
        if broken is not None and not resumable:
            # The tag's image could not start before: the same image fails in every region.
            result.regions_tried[broken.region] = "the tag's image could not start here before"
            fault = ImageFault(broken.region, broken.revision, broken.message)
            self._after_failed_deploy(broken.region, fault)
            return
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
        (flows/deploy/region_deploy.py: remove_refused_service_step)."""
        tried = self.result.regions_tried
        refused = self._refused | {r for r, why in tried.items() if why.startswith("quota: ")}
        refused |= self._image_failed  # a service created only for an image that cannot start
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
        """Roll back in the region. An image that cannot start (ImageFault) is a verdict on
        the image: no other region and no CPU baseline of that image is tried; traffic stays
        on the last good revision, wherever it serves."""
        image = isinstance(exc, ImageFault)
        self.steps.run(f"clear:{region}", clear_failed_step, self.ctx, region, exc.revision)
        outcome = self.steps.run(
            "rollback", rollback_step, self.ctx, region, exc.revision, image_failed=image
        )
        log_rollback(region, exc.revision, outcome.revision, outcome.detail)
        if outcome.revision:
            self._serving(outcome)
        else:  # nothing served in that region: the last release's revision serves elsewhere
            last = recorded_release(self.target.service) or {}
            self.result.region, self.result.revision, self.result.url = (
                last.get("region"),
                last.get("revision"),
                last.get("url"),
            )
        self.result.outcome = "rolled_back"
        if image:
            self._image_failed.add(region)
            self.result.reasons.append(
                f"GPU deploy failed in {region}: the image cannot start (no other region, no "
                f"CPU revision of it tried): {exc.message}"
            )
        else:
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
            update_release_record(self.target, result, getattr(self, "_baseline_ms", None))
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


def _image_verdict(existing: ExistingRevision) -> bool:
    """The tag's revision failed because its container could not start."""
    return existing.state == "failed" and is_image_fault(existing.message, set(existing.reasons))


class _Stop(Exception):
    """Internal: the GPU deploy failed and was rolled back; the release ends there."""
