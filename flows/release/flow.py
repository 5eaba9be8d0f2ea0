"""The release: base-image pin -> build -> GPU deploy -> canary -> cutover | rollback.

`release(git_tag, target, dry_run=False)` is one Prefect flow; every step is a Prefect task
inside it, retried on transient errors only (tasks/errors.py decides), timed, and its
attempts counted into the typed `ReleaseResult`. Only one release of a service (per environment)
runs at a time: the flow holds the global concurrency slot `shipyard-release-{scope}` (limit 1;
`ReleaseTarget.scope`: the service, or `service-environment`).

Outcomes:
- `released`: the GPU canary passed and has 100% (`noop=True` when the tag was already
  serving: nothing was built, deployed or requested again);
- `rolled_back`: the canary (or the GPU deploy) failed; traffic stays on / returns to the
  last good revision or the CPU baseline;
- `cpu_fallback`: no region could get a GPU; 100% on a Ready CPU revision in the primary region;
- `planned`: a dry run, nothing changed (regions and quotas it would use, image, revision).

A configuration error (bad template, missing secret block, a build failure) fails the flow
after writing the summary artifact.

This module is the flow's entry points: `release` (the Prefect flow, prefect.yaml's
`shipyard.flows.release.flow:release`) and `run_release`, with its parameters and target block. The run's
steps are flows/release/run.py (`Release`), its result flows/release/result.py, its summary
artifact flows/release/summary.py, the image it deploys flows/release/image.py and the record
it leaves flows/release/record.py; their public names are re-exported here.
"""

from __future__ import annotations

from typing import cast

from prefect import flow

from shipyard.blocks.release_tag import configured_tag_pattern, validate_release_tag
from shipyard.blocks.release_target import ReleaseTarget
from shipyard.flows.observe.ledger import LedgerChain, ledger_chain
from shipyard.flows.observe.undo_hooks import combined, undo_hooks
from shipyard.flows.promotion.chain import announce_passed, check_promoted_from
from shipyard.flows.release.hooks import abort_cleanup
from shipyard.flows.release.observe import observed_release, release_crashed
from shipyard.flows.release.outcome import ReleaseRolledBack, final_state
from shipyard.flows.release.params import OptionalText, TargetParam, resolve_annotations
from shipyard.flows.release.result import (
    BuildFigures,
    CanaryFigures,
    Outcome,
    ReleasePlan,
    ReleaseResult,
)
from shipyard.flows.release.run import Release
from shipyard.flows.release.slot import ReleaseError, ensure_slot, release_slot, slot_name
from shipyard.flows.release.summary import summary_markdown
from shipyard.flows.release.tag_time import parse_given
from shipyard.flows.rollout.stage import refuse_if_waiting

# A release that runs longer than this is stopped by Prefect (TimedOut): 3 h covers a cold
# build of a CUDA image, the quota budget and the canary with room to spare.
RELEASE_TIMEOUT_S = 3 * 3600

__all__ = [
    "BuildFigures",
    "CanaryFigures",
    "Outcome",
    "Release",
    "ReleaseError",
    "ReleasePlan",
    "ReleaseResult",
    "ReleaseRolledBack",
    "ensure_slot",
    "release",
    "resolve_target",
    "run_release",
    "slot_name",
    "summary_markdown",
]


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
    # Timed out (on_failure, TimedOut only), cancelled or crashed: abort_cleanup cancels the
    # tag's Cloud Build and takes the canary and baseline tags off; traffic stays on the last
    # good revision. Ordinary failures (a rollback, a stopped release) cleaned up themselves.
    **combined({"on_crashed": [release_crashed]}, undo_hooks(abort_cleanup)),
)
def release(
    git_tag: str,
    target: TargetParam = "default",
    dry_run: bool = False,
    image: OptionalText = "",
    commit: OptionalText = "",
    tagged_at: OptionalText = "",
    promoted_from: OptionalText = "",
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
        promoted_from: The release of the previous stage this one promotes, as
            "TARGET-BLOCK/FLOW-RUN-ID" (`shipyard promote-release` passes it with the image's
            digest); empty: a release from the git tag. Recorded in the ledger (the chain).
    """
    try:
        validate_release_tag(git_tag, pattern=configured_tag_pattern())
        if tagged_at:
            parse_given(tagged_at)
        check_promoted_from(promoted_from)
    except ValueError as exc:
        raise ReleaseError(str(exc)) from None
    resolved = resolve_target(target)
    chain = LedgerChain(
        environment=resolved.environment,
        target=target if isinstance(target, str) else (resolved._block_document_name or ""),
        promoted_from=promoted_from,
    )
    with (
        observed_release(resolved, git_tag),  # scope, release events, Cloud Logging
        ledger_chain(chain),  # the ledger row's environment, target and promoted_from
    ):
        if dry_run:
            return Release(resolved, git_tag, image or None, commit or None, tagged_at).run(
                dry_run=True
            )
        with release_slot(resolved.scope, resolved.lock_timeout_s, resolved.slot_lease_s):
            refuse_if_waiting(resolved, git_tag)  # a rollout suspended at a gate holds the service
            result = Release(resolved, git_tag, image or None, commit or None, tagged_at).run(
                dry_run=False
            )
        announce_passed(chain.target, resolved.environment, result)  # the next stage may promote
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
    promoted_from: OptionalText = "",
) -> ReleaseResult:
    """Run the release flow and return its `ReleaseResult` for every outcome, a rollback's
    included; only a release that stopped (tag, configuration, build) raises."""
    try:
        return release(
            git_tag,
            target,
            dry_run=dry_run,
            image=image,
            commit=commit,
            tagged_at=tagged_at,
            promoted_from=promoted_from,
        )
    except ReleaseRolledBack as rolled_back:
        return rolled_back.result


resolve_annotations(release)  # for runs a runner serves (see flows/release/params.py)
