"""The figures of `shipyard report`: one pandas row per release, the DORA four per service.

Definitions (a re-run of a tag that already served, `noop`, is not a change and is left out):
- deployment frequency: releases that reached 100% (`released`) per day of the window;
- lead time: from the tag (`tagged_at`: the push's time the webhook passed, else the tag's date
  in git) to 100% on the new revision (the release's end), median over `released`; a release
  whose tag time is unknown counts from its own start (`lead_time_from_release_start` says how
  many did);
- change failure rate: changes that did not reach 100% on the new GPU revision (`rolled_back`,
  `failed`, `cpu_fallback`) over all changes;
- time to restore: from a failed change's end to the end of the service's next `released`,
  median over the failures that were followed by one;
and the field reports' own: `single_page_p95` (p95 over released canaries' p95, ms),
`cold_start_latency_p95` (p95 of the first canary request, ms), `remote_503_rate` (mean over
the changes whose canary ran of the fraction of its page requests, retries included, that the
service answered 503).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from shipyard.flows.observe.ledger import LedgerEntry

__all__ = ["FAILURES", "STAGES", "dora", "release_frame", "report_data"]

FAILURES = ("rolled_back", "failed", "cpu_fallback")
CHANGES = ("released", *FAILURES)
# Stage columns, in pipeline order (others found in the ledger follow).
STAGES = (
    "base-image-pin",
    "build",
    "quota",
    "quota-preferences",
    "deploy",
    "canary",
    "cutover",
    "rollback",
    "publish",
    "cpu-fallback",
)
COLUMNS = (
    "service",
    "git_tag",
    "commit",
    "outcome",
    "noop",
    "region",
    "revision",
    "started_at",
    "finished_at",
    "tagged_at",
    "tagged_at_source",
    "seconds",
    "retries",
    "cache_hit_rate",
    "pull_bytes",
    "canary_p50_ms",
    "canary_p95_ms",
    "canary_first_ms",
    "speedup",
    "baseline_ms",
    "remote_503_rate",
    "rollback_reason",
)


def release_frame(entries: Sequence[LedgerEntry]) -> pd.DataFrame:
    """One row per release, oldest first; `s_<stage>` columns hold seconds per stage."""
    rows = []
    for e in entries:
        row: dict[str, Any] = {c: getattr(e, c) for c in COLUMNS}
        for name, seconds in e.stage_seconds.items():
            row[f"s_{name}"] = seconds
        rows.append(row)
    df = pd.DataFrame(rows, columns=list(COLUMNS)) if not rows else pd.DataFrame(rows)
    for col in ("started_at", "finished_at", "tagged_at"):
        df[col] = pd.to_datetime(df[col], utc=True, format="ISO8601")
    known = [f"s_{s}" for s in STAGES if f"s_{s}" in df.columns]
    other = sorted(c for c in df.columns if c.startswith("s_") and c not in known)
    return df[[*COLUMNS, *known, *other]].sort_values(["started_at", "finished_at"])


def _median(series: pd.Series) -> float | None:
    values = series.dropna()
    return None if values.empty else round(float(values.median()), 3)


def _p95(series: pd.Series) -> float | None:
    values = series.dropna()
    return None if values.empty else round(float(values.quantile(0.95)), 3)


def _restore_seconds(df: pd.DataFrame) -> pd.Series:
    """Per failed change: seconds until the end of the next released (NaN if none yet)."""
    released = np.sort(
        df.loc[df["outcome"] == "released", "finished_at"].to_numpy("datetime64[ns]")
    )
    ends = df.loc[df["outcome"].isin(FAILURES), "finished_at"].to_numpy("datetime64[ns]")
    nxt = np.searchsorted(released, ends, side="right")
    found = nxt < len(released)
    out = np.full(len(ends), np.nan)
    out[found] = (released[nxt[found]] - ends[found]) / np.timedelta64(1, "s")
    return pd.Series(out, dtype="float64")


def dora(df: pd.DataFrame, window_days: float) -> dict[str, Any]:
    """The four DORA figures and the field reports' three, for one service's releases."""
    changes = df[df["outcome"].isin(CHANGES) & ~df["noop"].astype(bool)]
    released = changes[changes["outcome"] == "released"]
    failures = changes[changes["outcome"].isin(FAILURES)]
    tagged = released["tagged_at"].fillna(released["started_at"])
    lead = (released["finished_at"] - tagged).dt.total_seconds()
    restore = _restore_seconds(changes)
    return {
        "changes": len(changes),
        "deployments": len(released),
        "failures": len(failures),
        "deployment_frequency_per_day": round(len(released) / window_days, 4),
        "lead_time_s": _median(lead),
        "lead_time_from_release_start": int(
            (released["tagged_at"].isna() | (released["tagged_at_source"] == "release-start")).sum()
        ),
        "change_failure_rate": round(len(failures) / len(changes), 4) if len(changes) else None,
        "time_to_restore_s": _median(restore),
        "unrestored_failures": int(restore.isna().sum()),
        "single_page_p95": _p95(released["canary_p95_ms"].astype("float64")),
        "cold_start_latency_p95": _p95(released["canary_first_ms"].astype("float64")),
        "remote_503_rate": _mean(changes["remote_503_rate"]),
    }


def _mean(series: pd.Series) -> float | None:
    values = series.dropna().astype("float64")
    return None if values.empty else round(float(values.mean()), 4)


def report_data(
    entries: Sequence[LedgerEntry], window_days: float, now: dt.datetime | None = None
) -> dict[str, Any]:
    """What every format shows: per release rows and per service figures (JSON-ready)."""
    now = now or dt.datetime.now(dt.UTC)
    df = release_frame(entries)
    services = {
        str(name): dora(group, window_days) for name, group in df.groupby("service", sort=True)
    }
    rows = df.assign(
        started_at=df["started_at"].map(pd.Timestamp.isoformat),
        finished_at=df["finished_at"].map(pd.Timestamp.isoformat),
        tagged_at=df["tagged_at"].map(lambda t: None if pd.isna(t) else t.isoformat()),
    )
    releases = json.loads(rows.to_json(orient="records", double_precision=6))
    return {
        "generated_at": now.isoformat(),
        "window_days": window_days,
        "services": services,
        "releases": releases,
    }
