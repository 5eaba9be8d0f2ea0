"""What a release reports: the typed `ReleaseResult` a release run returns, and its parts.

`ReleaseResult` is the flow's return value (and a `ReleaseRolledBack`'s `.result`): the outcome,
where it serves, what was built, the canary's figures, the regions tried and why, the dry run's
plan and every step's row. The ledger, the summary artifact, the CLI and the tests read it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from shipyard.flows.canary.stage import CanaryReport
from shipyard.flows.deploy.region_deploy import ExistingRevision
from shipyard.flows.release.steps import Step
from shipyard.flows.release.tag_time import TagTime
from shipyard.flows.rollout.journal import StepRecord
from shipyard.tasks.quotas import PreferenceState, RegionQuota

Outcome = Literal["released", "rolled_back", "cpu_fallback", "planned"]


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
    """What the build step did (flows/build/flow.py's ReleaseImage, without its step rows)."""

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
    # The rollout's steps after the 0 % canary, each verdict and decision in order (empty: one
    # cutover). Named apart from `steps`, the release's own step rows.
    rollout_steps: list[StepRecord] = []
    started_at: str = ""
    tag_time: TagTime | None = None  # where the lead time starts (flows/release/tag_time.py)
    seconds: float = 0.0
    flow_run_id: str | None = None
