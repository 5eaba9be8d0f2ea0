"""The judge of one rollout step: the new revision against the stable one, same window.

INTERFACE STUB (filled in by the judge's owner): `judge(requests, new, stable, policy,
signatures)` -> `Judgement` with a verdict of pass | fail | inconclusive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd

from shipyard.blocks.rollout_policy import JudgePolicy

Verdict = Literal["pass", "fail", "inconclusive"]

# The columns of the request frame the judge reads (tasks/request_logs.py writes them):
# revision (str), status (int), latency_s (float), timestamp (datetime64[ns, UTC]).
COLUMNS = ("revision", "status", "latency_s", "timestamp")


@dataclass(frozen=True)
class Judgement:
    """A step's verdict, why, and the figures it rests on (JSON-able: events, artifacts)."""

    verdict: Verdict
    reasons: tuple[str, ...] = ()
    figures: dict[str, float | int | None] = field(default_factory=dict)


def judge(
    requests: pd.DataFrame,
    new: str,
    stable: str,
    policy: JudgePolicy,
    signatures: Sequence[str] = (),
) -> Judgement:
    """The verdict on `new` against `stable` from their requests (`signatures`: log lines of
    the new revision that fail it outright: a silent CPU fallback, an OOM)."""
    raise NotImplementedError
