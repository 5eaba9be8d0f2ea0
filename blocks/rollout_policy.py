"""How a release moves traffic after its 0 % canary: steps, the judge, the load, the gate.

Google Cloud Deploy moves a Cloud Run service through canary phases (whole percentages, then
stable) with a verify after each and an optional approval; Argo Rollouts steps weights with
pauses and an AnalysisTemplate (failureLimit, inconclusive); Flagger steps by interval against
thresholds with a load tester; Kayenta judges canary against a baseline over the same window
(Mann-Whitney). A RolloutPolicy is those ideas as a release target's fields: no steps (the
default) keeps the one cutover to 100 % after the canary.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Literal

from pydantic import Field, model_validator

from shipyard.blocks.revision_templates import _Model


class RolloutStep(_Model):
    """One traffic step: the new revision's share, how long it bakes, and whether a person
    approves it first."""

    percent: int = Field(
        ge=1,
        le=100,
        title="Traffic (%)",
        description="Whole percent of the service's traffic the new revision gets in this step; "
        "100 ends the rollout",
    )
    bake_s: float = Field(
        default=300.0,
        ge=0,
        title="Bake (s)",
        description="How long the step holds its share while the judge reads both revisions' "
        "requests",
    )
    approval: bool = Field(
        default=False,
        title="Ask approval first",
        description="Suspend the release before this step until a person approves it (the "
        "Prefect UI's Resume form on the run page)",
    )


class JudgePolicy(_Model):
    """How the judge compares the new revision with the stable one over the same window."""

    min_samples: int = Field(
        default=50,
        ge=1,
        title="Minimum requests",
        description="Requests each revision must have answered in the step's window; fewer: the "
        "step is inconclusive, never a silent pass",
    )
    alpha: float = Field(
        default=0.01,
        gt=0,
        lt=1,
        title="Significance level",
        description="Level of both tests: Mann-Whitney U on latency, Fisher's exact test on the "
        "error counts (one-sided: the new revision worse)",
    )
    error_rate_band: float = Field(
        default=0.01,
        ge=0,
        le=1,
        title="Error-rate band",
        description="Largest rise of the error rate (new minus stable; 0.01 = 1 point) tolerated "
        "even when the test finds it significant",
    )
    latency_ratio_band: float = Field(
        default=1.25,
        ge=1,
        title="Latency band (p95 ratio)",
        description="Largest p95 latency ratio new/stable tolerated even when the test finds the "
        "new revision slower",
    )
    failure_limit: int = Field(
        default=0,
        ge=0,
        title="Failure limit",
        description="Failed interim analyses a step tolerates before it fails (Argo Rollouts' "
        "failureLimit); the analysis at the end of the bake decides the rest",
    )
    analysis_interval_s: float = Field(
        default=15.0,
        gt=0,
        title="Analysis interval (s)",
        description="How often the judge reads during a bake; a failure beyond the failure limit "
        "ends the step early",
    )


class LoadGenerator(_Model):
    """Requests Shipyard sends to the service URL during a bake, where real traffic is thin."""

    enabled: bool = Field(
        default=True,
        title="Generate load",
        description="Send the canary's samples to the service URL during each bake (the traffic "
        "split decides which revision answers); off: judge real traffic only",
    )
    rate_per_s: float = Field(
        default=10.0,
        gt=0,
        le=500,
        title="Requests per second",
        description="Rate of the generated requests",
    )
    max_in_flight: int = Field(
        default=8,
        ge=1,
        le=256,
        title="Requests in flight",
        description="At most this many generated requests wait for an answer at once",
    )


class RolloutPolicy(_Model):
    """Traffic in steps after the 0 % canary, each judged against the stable revision."""

    steps: list[RolloutStep] = Field(
        default=[],  # not a factory: the UI form shows a default only from the schema
        title="Steps",
        description="Traffic steps after the 0% canary, e.g. 10, 50, 100 with a bake each; empty: "
        "100% at once after the canary. A last step below 100 is followed by 100. The first "
        "release of a service skips the steps (nothing stable to compare with)",
    )
    judge: JudgePolicy = Field(
        default_factory=JudgePolicy,
        title="Judge",
        description="How each step's requests are compared with the stable revision's",
    )
    load: LoadGenerator = Field(
        default_factory=LoadGenerator,
        title="Load generator",
        description="Requests Shipyard sends during a bake when real traffic is thin",
    )
    on_inconclusive: Literal["ask", "rollback"] = Field(
        default="rollback",
        title="When inconclusive",
        description="ask: hold the step and suspend for a person's decision; rollback: return "
        "to the stable revision",
    )
    on_quota_short: Literal["ask", "rollback", "direct"] = Field(
        default="direct",
        title="When GPU quota is short",
        description="A step's instances (both revisions) do not fit the region's GPU quota. "
        "direct: skip the steps and cut over after the 0% canary (the GPU hand-over); ask: hold "
        "and suspend for a decision; rollback: return to the stable revision",
    )
    gate_timeout_s: float = Field(
        default=3600.0,
        ge=1,
        title="Approval timeout (s)",
        description="How long an approval gate waits for a person",
    )
    on_gate_timeout: Literal["reject", "approve"] = Field(
        default="reject",
        title="On approval timeout",
        description="What a gate nobody answered decides",
    )

    @model_validator(mode="after")
    def _increasing(self) -> RolloutPolicy:
        shares = [s.percent for s in self.steps]
        for before, after in pairwise(shares):
            if after <= before:
                raise ValueError(
                    f"steps: percentages must increase, got {shares}; e.g. [10, 50, 100]"
                )
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.steps)

    def planned_steps(self) -> list[RolloutStep]:
        """The steps with 100 % last (added, with no bake, when the list stops below it)."""
        steps = list(self.steps)
        if steps and steps[-1].percent < 100:
            steps.append(RolloutStep(percent=100, bake_s=0.0))
        return steps
