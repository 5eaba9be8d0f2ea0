"""Cloud Run's request logs (`run.googleapis.com/requests`) of some revisions, as a DataFrame.

INTERFACE STUB (filled in by the judge's owner).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import pandas as pd


def read_requests(
    cloud: Any,
    project: str,
    service: str,
    region: str,
    revisions: Sequence[str],
    since: dt.datetime,
    until: dt.datetime | None = None,
) -> pd.DataFrame:
    """The requests the revisions answered in [since, until): columns revision, status,
    latency_s, timestamp (flows/rollout/judge.py COLUMNS). `cloud`: the target's GoogleCloud."""
    raise NotImplementedError
