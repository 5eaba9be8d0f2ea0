"""Where a rollout in progress stands, for whoever must find it: the release itself when Prefect
re-runs it after a suspension (it skips the steps already judged), `promote` / `abort` (which run
to resume or to command), the status and the sweep of a dead run.

One Prefect Variable per service, `shipyard-rollout-<service>`, written at every step and
decision and removed when the rollout ends (released or rolled back).
"""

from __future__ import annotations

from typing import Any, Literal

from prefect.variables import Variable
from pydantic import BaseModel

from shipyard.blocks.names import sanitize_name

State = Literal["baking", "awaiting-approval", "ending"]


class StepRecord(BaseModel):
    """A step already taken: its share, the judge's verdict and figures, who decided a gate."""

    percent: int
    verdict: str  # pass | fail | inconclusive | approved | rejected | skipped
    figures: dict[str, Any] = {}
    reasons: list[str] = []
    decided_by: str = ""
    comment: str = ""
    started_at: str = ""
    ended_at: str = ""


class RolloutJournal(BaseModel):
    service: str
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


def journal_variable(service: str) -> str:
    return sanitize_name(f"shipyard-rollout-{service}", 255)


def read(service: str) -> RolloutJournal | None:
    value = Variable.get(journal_variable(service), default=None)
    if not isinstance(value, dict):
        return None
    try:
        return RolloutJournal.model_validate(value)
    except ValueError:
        return None


def write(journal: RolloutJournal) -> None:
    Variable.set(journal_variable(journal.service), journal.model_dump(mode="json"), overwrite=True)


def clear(service: str) -> None:
    Variable.unset(journal_variable(service))
