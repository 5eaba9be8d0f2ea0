"""What the stages of a release decide, and the `ReleaseResult` built from it.

Each stage of flows/release/run.py returns (or yields, one at a time, when it decides several
things in turn) one of the frozen values below. The run keeps them in the order they came, its
trail; `assemble` folds the trail into the `ReleaseResult` when the run ends. A run that fails
reports what its stages had decided before the error: the trail up to it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from prefect.context import FlowRunContext

from shipyard.flows.deploy.region_deploy import ExistingRevision
from shipyard.flows.release.result import (
    BuildFigures,
    CanaryFigures,
    Outcome,
    ReleasePlan,
    ReleaseResult,
)
from shipyard.flows.release.steps import Step
from shipyard.flows.release.tag_time import TagTime
from shipyard.flows.rollout.journal import StepRecord
from shipyard.tasks.quotas import PreferenceState


@dataclass(frozen=True)
class Opening:
    """What a release knows before its first stage: the result's fixed fields."""

    git_tag: str
    service: str
    primary_region: str
    image: str | None
    dry_run: bool
    started_at: str
    flow_run_id: str | None

    @classmethod
    def now(
        cls, git_tag: str, service: str, primary_region: str, image: str | None, dry_run: bool
    ) -> Opening:
        run = FlowRunContext.get()
        run_id = str(run.flow_run.id) if run is not None and run.flow_run is not None else None
        return cls(
            git_tag=git_tag,
            service=service,
            primary_region=primary_region,
            image=image,
            dry_run=dry_run,
            started_at=dt.datetime.now(dt.UTC).isoformat(),
            flow_run_id=run_id,
        )


@dataclass(frozen=True)
class Found:
    """The tag's revisions found in the target's regions (before anything changes)."""

    existing: tuple[ExistingRevision, ...]
    refused: frozenset[str]  # regions whose tag revision failed for quota before

    @property
    def serving(self) -> ExistingRevision | None:
        """The tag's revision that already serves 100% somewhere (the release is a no-op)."""
        return next((e for e in self.existing if e.state == "succeeded" and e.percent == 100), None)

    @property
    def resumable(self) -> list[ExistingRevision]:
        return [e for e in self.existing if e.state == "succeeded"]


@dataclass(frozen=True)
class AlreadyServing:
    """The tag's revision already serves 100%: nothing is built, deployed or requested."""

    outcome: Outcome
    region: str
    revision: str
    url: str
    outside_primary: bool


@dataclass(frozen=True)
class VerdictRead:
    """The persisted canary figures of the serving revision (None: none recorded)."""

    canary: CanaryFigures | None


@dataclass(frozen=True)
class UrlPublished:
    variable: str


@dataclass(frozen=True)
class Planned:
    """A dry run's plan; `revision` (with `region`) when it names what it would deploy."""

    plan: ReleasePlan
    region: str | None = None
    revision: str | None = None


@dataclass(frozen=True)
class TagTimed:
    tag_time: TagTime


@dataclass(frozen=True)
class ImageReady:
    """The image the release built (a given image keeps the opening's)."""

    image: str
    build: BuildFigures | None


@dataclass(frozen=True)
class Tried:
    """What happened in one region (a later value for the same region replaces it)."""

    region: str
    why: str


@dataclass(frozen=True)
class RegionsDecided:
    """The quota decision: candidates and skipped regions, and the preferences it read."""

    preferences: tuple[PreferenceState, ...]
    considered: dict[str, str]
    reason: str


@dataclass(frozen=True)
class PreferencesFiled:
    """Quota preferences filed and polled for the regions still untried."""

    preferences: tuple[PreferenceState, ...]
    considered: dict[str, str]


@dataclass(frozen=True)
class Reason:
    text: str


@dataclass(frozen=True)
class CanaryJudged:
    canary: CanaryFigures
    baseline_ms: float | None  # what the release record keeps for the next canary


@dataclass(frozen=True)
class StepDecided:
    """A rollout step's verdict or decision (flows/rollout/stage.py), in the order taken."""

    record: StepRecord


@dataclass(frozen=True)
class Ended:
    """Where the release ends: what serves now (after a cutover, rollback or CPU fallback)."""

    outcome: Outcome
    region: str | None
    revision: str | None
    url: str | None
    reasons: tuple[str, ...] = ()
    outside_primary: bool | None = None  # decided by a cutover only
    image_failed: str | None = None  # the region where the tag's image could not start


Decision = (
    Found
    | AlreadyServing
    | VerdictRead
    | UrlPublished
    | Planned
    | TagTimed
    | ImageReady
    | Tried
    | RegionsDecided
    | PreferencesFiled
    | Reason
    | CanaryJudged
    | StepDecided
    | Ended
)


def assemble(
    opening: Opening,
    trail: Iterable[Decision],
    steps: Sequence[Step] = (),
    seconds: float = 0.0,
    error: str | None = None,
) -> ReleaseResult:
    """The `ReleaseResult` of the decisions in `trail`, in order (`error`: why the run failed)."""
    result = ReleaseResult(
        git_tag=opening.git_tag,
        service=opening.service,
        outcome="planned",
        primary_region=opening.primary_region,
        image=opening.image,
        dry_run=opening.dry_run,
        started_at=opening.started_at,
        flow_run_id=opening.flow_run_id,
    )
    for decided in trail:
        _fold(result, decided)
    if error is not None:
        result.reasons.append(error)
    result.steps = list(steps)
    result.seconds = seconds
    return result


def _fold(result: ReleaseResult, decided: Decision) -> None:
    match decided:
        case AlreadyServing():
            result.outcome, result.noop = decided.outcome, True
            result.region, result.revision, result.url = (
                decided.region,
                decided.revision,
                decided.url,
            )
            result.outside_primary = decided.outside_primary
            result.reasons.append(f"{decided.revision} already serves 100% in {decided.region}")
        case VerdictRead(canary=None):
            result.reasons.append("no recorded canary verdict for the serving revision")
        case VerdictRead():
            result.canary = decided.canary
        case UrlPublished():
            result.serving_url_variable = decided.variable
        case Planned():
            result.plan = decided.plan
            if decided.revision is not None:
                result.region, result.revision = decided.region, decided.revision
                result.outcome = "planned"
        case TagTimed():
            result.tag_time = decided.tag_time
        case ImageReady():
            result.image, result.build = decided.image, decided.build
        case Tried():
            result.regions_tried[decided.region] = decided.why
        case RegionsDecided():
            result.preferences = list(decided.preferences)
            result.regions_considered = dict(decided.considered)
            if decided.reason:
                result.reasons.append(decided.reason)
        case PreferencesFiled():
            result.preferences = list(decided.preferences)
            result.regions_considered.update(decided.considered)
        case Reason():
            result.reasons.append(decided.text)
        case CanaryJudged():
            result.canary = decided.canary
        case StepDecided():
            result.rollout_steps.append(decided.record)
        case Ended():
            result.region, result.revision, result.url = (
                decided.region,
                decided.revision,
                decided.url,
            )
            result.outcome = decided.outcome
            if decided.outside_primary is not None:
                result.outside_primary = decided.outside_primary
            result.reasons.extend(decided.reasons)
        case Found():
            pass  # what was found shows through the decisions taken on it


def refused_regions(trail: Iterable[Decision]) -> set[str]:
    """Regions refused before this run (for quota) or where the tag's image could not start."""
    refused: set[str] = set()
    for decided in trail:
        if isinstance(decided, Found):
            refused |= decided.refused
        elif isinstance(decided, Ended) and decided.image_failed:
            refused.add(decided.image_failed)
    return refused


def canary_baseline_ms(trail: Iterable[Decision]) -> float | None:
    """The CPU baseline this run's canary measured or used (None: no canary ran)."""
    judged = [d for d in trail if isinstance(d, CanaryJudged)]
    return judged[-1].baseline_ms if judged else None
