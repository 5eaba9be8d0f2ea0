"""One run of the release flow: its stages, composed in order.

Find the tag's revisions -> check exposure -> (no-op when the tag already serves) -> tag time
-> image (pin, build) -> deploy to a region with GPU quota (quota preferences when allowed)
-> GPU handover -> canary -> cutover | rollback, or the CPU path when no region has a GPU;
then the record, the `shipyard.release.*` event, the ledger and the summary artifact.

Each stage returns what it decided (flows/release/decided.py; the stages are
flows/release/stages.py and flows/release/deploy_stages.py); an early end (the no-op, a dry
run, a rollback, the CPU path) is a value the composition checks. The run keeps the decisions
in order and builds the `ReleaseResult` from them when it ends, failed or not.
The flow itself (parameters, slot, final state) is flows/release/flow.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from prefect import get_run_logger
from prefect.events import emit_event
from prefect.exceptions import Pause

from shipyard.blocks.release_target import ReleaseTarget
from shipyard.flows.deploy.exposure import check_exposure_step
from shipyard.flows.deploy.region_deploy import ExistingRevision, RevisionDeploy
from shipyard.flows.observe.ledger import record_release
from shipyard.flows.observe.status import publish_status
from shipyard.flows.release.context import RunContext
from shipyard.flows.release.decided import (
    Decision,
    Found,
    Opening,
    TagTimed,
    assemble,
    canary_baseline_ms,
    refused_regions,
)
from shipyard.flows.release.deploy_stages import (
    canary_and_traffic,
    cpu_path,
    deploy,
    remove_refused_services,
)
from shipyard.flows.release.outcome import STATE_NAMES, outcome_message
from shipyard.flows.release.record import (
    attempted_commit,
    remember_attempt,
    resumed_release,
    update_release_record,
)
from shipyard.flows.release.result import ReleaseResult
from shipyard.flows.release.stages import (
    already_serving,
    ensure_image,
    find_release,
    next_attempts,
    noop_plan,
    plan,
    publish_url,
    published_elsewhere,
    read_verdict,
)
from shipyard.flows.release.steps import StepLog
from shipyard.flows.release.summary import summary_markdown
from shipyard.flows.release.tag_time import tag_time
from shipyard.tasks.reports import publish_markdown


@dataclass(frozen=True)
class Release:
    """One release of `git_tag` to the target (`image`: release it instead of building)."""

    target: ReleaseTarget
    git_tag: str
    image: str | None
    commit: str | None
    tagged_at: str = ""

    def run(self, *, dry_run: bool) -> ReleaseResult:
        target = self.target
        ctx = RunContext(target, self.git_tag, self.image)
        steps = StepLog(target.retries, target.retry_delays())
        started = time.perf_counter()
        opening = Opening.now(
            self.git_tag, target.service, target.primary_region, self.image, dry_run
        )
        logger = get_run_logger()
        trail: list[Decision] = []
        try:
            for decided in _stages(ctx, steps, opening, self.commit, self.tagged_at):
                trail.append(decided)
            if not dry_run:
                so_far = assemble(opening, trail)
                for decided in remove_refused_services(
                    ctx, steps, refused_regions(trail), so_far.regions_tried, so_far.region
                ):
                    trail.append(decided)
        except BaseException as exc:
            if isinstance(exc, Pause):  # suspended at a rollout gate: its re-run finishes it
                raise
            _finish(ctx, steps, opening, trail, started, error=exc, commit=self.commit)
            raise
        result = _finish(ctx, steps, opening, trail, started, error=None, commit=self.commit)
        if result.outcome in STATE_NAMES:
            logger.warning("%s", outcome_message(result))
        else:
            logger.info(
                "release %s of %s: %s (region %s, revision %s)",
                self.git_tag,
                target.service,
                result.outcome,
                result.region,
                result.revision,
            )
        return result


def _stages(
    ctx: RunContext, steps: StepLog, opening: Opening, commit: str | None, tagged_at: str
) -> Iterator[Decision]:
    """The release's stages in order, each one's decisions as it takes them."""
    dry_run = opening.dry_run
    found = find_release(ctx, steps)
    yield found
    if not dry_run:  # refused before anything changes (a dry run changes nothing)
        steps.note("check-exposure", steps.run("check-exposure", check_exposure_step, ctx))
    if found.serving is not None:
        yield from _noop(ctx, steps, found, found.serving, dry_run=dry_run)
        return
    if dry_run:
        yield plan(ctx, steps, found)
        return
    timed = TagTimed(tag_time(steps, ctx.target, ctx.git_tag, tagged_at, opening.started_at))
    yield timed
    # Before the build and any deploy: a re-run after a kill records from it (record.py).
    remember_attempt(ctx.target.scope, assemble(opening, [timed]), ctx.image, None, commit)
    image = ensure_image(ctx, steps, commit)
    if image is not None:
        ctx.image = image.image  # what the deploy, canary and traffic steps deploy
        yield image
        remember_attempt(
            ctx.target.scope, assemble(opening, [timed]), ctx.image, image.build, commit
        )
    attempts, skip = next_attempts(ctx.gpu_revision, found.existing)
    ctx.attempts.update(attempts)
    deployed = yield from deploy(ctx, steps, found.existing, skip)
    if deployed is None:
        yield cpu_path(ctx, steps)
    elif isinstance(deployed, RevisionDeploy):
        yield from canary_and_traffic(ctx, steps, deployed)
    else:  # the deploy failed and was rolled back: the release ends there
        yield deployed


def _noop(
    ctx: RunContext, steps: StepLog, found: Found, serving: ExistingRevision, *, dry_run: bool
) -> Iterator[Decision]:
    """The tag's revision already serves 100%: report it (and its canary figures), publish its
    URL when another one is published; nothing is built, deployed or requested."""
    noop = already_serving(ctx, serving, dry_run=dry_run)
    yield noop
    steps.skip("build", "the tag's revision already serves")
    yield read_verdict(ctx.target.scope, noop.revision)
    if not dry_run and (noop.outside_primary or published_elsewhere(ctx.target.scope, serving.uri)):
        yield publish_url(ctx, steps, serving.region, noop.revision, serving.uri)
    if dry_run:
        yield noop_plan(ctx, found)


def cancel_requested(error: BaseException) -> bool:
    """The run is being stopped for a cancel: the interrupt Prefect's runner sends after telling
    the run's process, over its control channel, that the intent is "cancel" (Prefect 3.8.8,
    prefect/flow_engine.py `_termination_intent`)."""
    if isinstance(error, Exception):
        return False
    try:
        from prefect._internal.control_listener import get_intent
    except ImportError:  # another Prefect: the hook still records the cancel after this row
        return False
    return get_intent() == "cancel"


def _finish(
    ctx: RunContext,
    steps: StepLog,
    opening: Opening,
    trail: list[Decision],
    started: float,
    *,
    error: BaseException | None,
    commit: str | None,
) -> ReleaseResult:
    """The result of the decisions taken (`error`: what stopped the run); the record, the event,
    the ledger and the summary artifact. `commit`: the one given to the run (empty: the build's,
    or what a killed run of the tag remembered)."""
    failed = error is not None
    seconds = round(time.perf_counter() - started, 3)
    why = f"{type(error).__name__}: {error}" if error is not None else None
    result = assemble(opening, trail, steps.steps, seconds, why)
    completes = None  # the killed run of the tag whose release this run completes
    commit = commit or ""
    if not result.dry_run and not failed:
        result, completes = resumed_release(ctx.target.scope, result)
        if completes and not commit:
            commit = attempted_commit(ctx.target.scope, result.git_tag)
        update_release_record(ctx.target, result, canary_baseline_ms(trail), commit)
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
    if error is not None and cancel_requested(error):
        # Prefect's runner stops the process for a cancel, then runs the cancellation hook,
        # which records the run as `cancelled` (flows/release/cancelled.py): no `failed` here.
        return result
    # The service's ledger (shipyard report): a failed run is `failed` (the change) or
    # `failed_infrastructure` (Google, the sandbox or Prefect could not be reached).
    entry = record_release(result, failed, completes, error=error, commit=commit)
    outcome = entry.outcome if entry is not None else ("failed" if failed else result.outcome)
    if not result.dry_run:
        publish_status(ctx.target, f"release {result.git_tag}: {outcome}")
    summary = summary_markdown(result, failed)
    if outcome == "failed_infrastructure":
        summary = summary.replace(
            "**FAILED**",
            "**FAILED (infrastructure: Google, the sandbox or Prefect unreachable; "
            "not a failure of the change)**",
            1,
        )
    try:
        publish_markdown(
            summary,
            key=f"release-{ctx.target.scope}",
            description=f"Release {result.git_tag} of {result.service}: {outcome}",
        )
    except Exception:
        if not failed:  # a report must not hide the release's own error: raised only without one
            raise
    return result
