"""Where a rollout in progress stands, for whoever must find it: the release itself when Prefect
re-runs it after a suspension (it skips the steps already judged), `promote` / `abort` (which run
to resume or to command), the status and the sweep of a dead run.

One Prefect Variable per service and environment, `shipyard-rollout-<scope>` (the journal's
`scope`: `ReleaseTarget.scope`, the service or `service-environment`), written at every step and
decision and removed when the rollout ends (released or rolled back).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from prefect.variables import Variable
from pydantic import BaseModel, model_validator

from shipyard.blocks.names import sanitize_name

State = Literal["baking", "awaiting-approval", "ending"]


Phase = Literal["quota", "gate", "bake", "decision"]


class StepRecord(BaseModel):
    """A step already taken: its share, the judge's verdict and figures, who decided a gate.

    `phase` says which part of the step it records, so that a re-run (Prefect re-runs a resumed
    deployment run from the start) replays what was decided and continues where it stopped:
    `quota` (the step's GPU check came out short), `gate` (the approval before the step), `bake`
    (the judge's verdict at the end of the bake), `decision` (a person's answer to an
    inconclusive or quota-short step)."""

    percent: int
    # pass | fail | inconclusive | approved | rejected | promoted | aborted | quota-short
    verdict: str
    phase: Phase = "bake"
    bake_s: float = 0.0
    figures: dict[str, Any] = {}
    reasons: list[str] = []
    decided_by: str = ""
    comment: str = ""
    started_at: str = ""
    ended_at: str = ""


class RolloutJournal(BaseModel):
    service: str
    # What the journal is keyed by (ReleaseTarget.scope); empty (a journal written before it
    # existed, or made without one): the service.
    scope: str = ""
    target: str  # the ReleaseTarget block's name ("" when the release was given the block)
    flow_run_id: str | None
    git_tag: str
    region: str
    new: str  # the new revision
    stable: str  # the revision that served 100 % before the rollout
    percent: int = 0  # the new revision's share now
    state: State = "baking"
    steps: list[StepRecord] = []
    canary: dict[str, Any] = {}  # the 0 % canary's figures (CanaryFigures), for a resumed run
    baseline_ms: float | None = None
    gate_key: str | None = None  # the pause key of the gate awaiting approval
    expiry_run_id: str | None = None  # the scheduled run that ends an unanswered gate
    # The service's `scaling` (run_v2.ServiceScaling as JSON) before the abort warmed the stable
    # revision: what the abort restores, even when a later run (the sweep) finishes it.
    scaling_before: str | None = None
    step_started_at: str = ""  # when the current step's traffic changed (the judge's window)
    waiting_since: str = ""  # when the gate awaiting approval began (the judge re-reads it)

    @model_validator(mode="after")
    def _scope_of_service(self) -> RolloutJournal:
        if not self.scope:
            self.scope = self.service
        return self

    def recorded(self, percent: int, phase: Phase) -> StepRecord | None:
        """The last record of `percent`'s `phase` (a re-run replays it instead of redoing it)."""
        return next(
            (r for r in reversed(self.steps) if r.percent == percent and r.phase == phase), None
        )


def compact_steps(records: list[StepRecord]) -> str:
    """'10:pass,50:approved by ana,50:pass,100:pass': verdicts and decisions (with who made
    them) for the ledger; the quota phase shows as its decision."""
    return ",".join(
        f"{r.percent}:{r.verdict}"
        + (f" by {r.decided_by}" if r.phase in ("gate", "decision") and r.decided_by else "")
        for r in records
    )


def journal_variable(scope: str) -> str:
    return sanitize_name(f"shipyard-rollout-{scope}", 255)


def read(scope: str) -> RolloutJournal | None:
    """The rollout in progress of `scope` (ReleaseTarget.scope), if any."""
    value = Variable.get(journal_variable(scope), default=None)
    if not isinstance(value, dict):
        return None
    try:
        return RolloutJournal.model_validate(value)
    except ValueError:
        return None


# Prefect Variables hold at most 5000 characters of JSON: figures are cut to what fits.
MAX_CHARS = 5000


def write(journal: RolloutJournal) -> None:
    """Store the journal; when its JSON would pass Prefect's limit, the oldest records lose
    their figures and reasons first (the verdicts, which a re-run replays, stay)."""
    body = journal.model_dump(mode="json")
    for record in body["steps"]:
        if len(json.dumps(body)) <= MAX_CHARS:
            break
        record["figures"], record["reasons"] = {}, [r[:120] for r in record["reasons"][:1]]
    if len(json.dumps(body)) > MAX_CHARS:
        body["canary"] = {k: body["canary"].get(k) for k in ("runs", "passed", "p95_ms")}
    Variable.set(journal_variable(journal.scope), body, overwrite=True)


def clear(scope: str) -> None:
    Variable.unset(journal_variable(scope))
