"""The figures of `shipyard report`: one pandas row per release, the DORA four per service.

Outcomes are the ledger's (flows/observe/ledger.py). Definitions (a re-run of a tag that already
served, `noop`, is not a change and is left out):
- changes: the releases that tried to change what serves: `released`, `rolled_back`, `failed`,
  `cpu_fallback`; a hand rollback (`rolled_back_by_hand`), a cancel (`cancelled`) and a release
  that could not reach what it runs on (`failed_infrastructure`) are counted apart, never as
  changes nor as their failures;
- deployment frequency: releases that reached 100% (`released`) per day of the window;
- lead time: from the tag (`tagged_at`: the push's time the webhook passed, else the tag's date
  in git, which for a lightweight tag is its commit's date) to 100% on the new revision (the
  release's end), median over `released`; a release whose tag time is unknown counts from its own
  start (`lead_time_from_release_start` says how many did); each row says where its lead time
  starts (`lead_time_source`);
- change failure rate: the changes that failed as changes (`CHANGE_FAILURES`: `rolled_back`,
  `failed`) over all changes;
- time to restore: from a change failure's end to the end of the service's next `released`,
  median over the failures that were followed by one;
and the field reports' own: `single_page_p95` (p95 over released canaries' p95, ms),
`cold_start_latency_p95` (p95 of the first canary request, ms), `remote_503_rate` (mean over
the changes whose canary ran of the fraction of its page requests, retries included, that the
service answered 503).

The JSON keeps raw numbers (seconds, fractions); the table and the html show every figure with
its unit through `figure_lines` and `human_duration`.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from shipyard.flows.observe.ledger import CHANGE_FAILURES, LedgerEntry

__all__ = [
    "CHANGES",
    "FAILURES",
    "OUTCOME_LABELS",
    "STAGES",
    "dora",
    "figure_lines",
    "human_duration",
    "lead_time_source",
    "outcome_label",
    "release_frame",
    "report_data",
]

FAILURES = tuple(sorted(CHANGE_FAILURES))
CHANGES = ("released", "rolled_back", "failed", "cpu_fallback")
# Outcomes in the order a reader meets them, with the words the table and the html use.
OUTCOME_LABELS = {
    "released": "released",
    "rolled_back": "rolled back (canary or step)",
    "failed": "failed (the change)",
    "cpu_fallback": "CPU fallback",
    "rolled_back_by_hand": "rolled back by hand",
    "cancelled": "cancelled",
    "failed_infrastructure": "failed (infrastructure unreachable)",
}
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
    "by",
    "region",
    "revision",
    "started_at",
    "finished_at",
    "tagged_at",
    "tagged_at_source",
    "tagged_at_note",
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
    "steps",
    "environment",
    "promoted_from",
    "digest",
)
# Where a lead time starts, in words (the ledger's `tagged_at_source`).
LEAD_TIME_SOURCES = {
    "push": "push time",
    "git-tag": "tag date in git",
    "commit-date": "commit date (lightweight tag)",
    "release-start": "release start (tag time unknown)",
}
LEAD_TIME_LEGEND = (
    "Lead time runs from the tag to 100% on the new revision. It starts at the push time the "
    "webhook passed (push time), else at the tag's date in git (tag date in git: an annotated "
    "tag's date; a lightweight tag has none, its commit's date stands in and the row says "
    "commit date), else at the release's own start (release start: the tag time is unknown and "
    "the figure is shorter than the truth)."
)


def lead_time_source(source: Any, note: Any = "") -> str:
    """The words for a row's lead time start (`tagged_at_source`, `tagged_at_note`)."""
    text = str(source or "release-start")
    if text == "git-tag" and "lightweight" in str(note or "").lower():
        text = "commit-date"
    return LEAD_TIME_SOURCES.get(text, text)


def human_duration(seconds: Any) -> str:
    """Seconds as a person reads them: "45 s", "7 min", "2.3 h", "5.4 days" ("—": unknown)."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "—"
    s = float(seconds)
    if abs(s) < 10:
        return f"{s:.1f} s"
    if abs(s) < 90:
        return f"{s:.0f} s"
    if abs(s) < 90 * 60:
        return f"{s / 60:.0f} min"
    if abs(s) < 36 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def outcome_label(outcome: Any, by: Any = "") -> str:
    label = OUTCOME_LABELS.get(str(outcome), str(outcome))
    return f"{label} ({by})" if by else label


def _entry_row(e: LedgerEntry) -> dict[str, Any]:
    # getattr with a default: a field another ledger version lacks (`steps`, `by`) reads as empty.
    row: dict[str, Any] = {c: getattr(e, c, None) for c in COLUMNS}
    row["by"] = row["by"] or ""
    row["steps"] = row["steps"] or ""
    row["tagged_at_note"] = row["tagged_at_note"] or ""
    for name, seconds in e.stage_seconds.items():
        row[f"s_{name}"] = seconds
    return row


def release_frame(entries: Sequence[LedgerEntry]) -> pd.DataFrame:
    """One row per release, oldest first; `s_<stage>` columns hold seconds per stage;
    `lead_time_s` (released rows) and `lead_time_source` (words) say how long from the tag."""
    rows = [_entry_row(e) for e in entries]
    df = pd.DataFrame(rows, columns=list(COLUMNS)) if not rows else pd.DataFrame(rows)
    for col in ("started_at", "finished_at", "tagged_at"):
        df[col] = pd.to_datetime(df[col], utc=True, format="ISO8601")
    released = (df["outcome"] == "released") & ~df["noop"].astype(bool)
    lead = (df["finished_at"] - df["tagged_at"].fillna(df["started_at"])).dt.total_seconds()
    df["lead_time_s"] = lead.where(released)
    df["lead_time_source"] = [
        lead_time_source(None if pd.isna(t) else s, n)
        for t, s, n in zip(
            df["tagged_at"], df["tagged_at_source"], df["tagged_at_note"], strict=True
        )
    ]
    known = [f"s_{s}" for s in STAGES if f"s_{s}" in df.columns]
    other = sorted(c for c in df.columns if c.startswith("s_") and c not in known)
    columns = [*COLUMNS, "lead_time_s", "lead_time_source", *known, *other]
    return df[columns].sort_values(["started_at", "finished_at"])


def _median(series: pd.Series) -> float | None:
    values = series.dropna()
    return None if values.empty else round(float(values.median()), 3)


def _p95(series: pd.Series) -> float | None:
    values = series.dropna()
    return None if values.empty else round(float(values.quantile(0.95)), 3)


def _mean(series: pd.Series) -> float | None:
    values = series.dropna().astype("float64")
    return None if values.empty else round(float(values.mean()), 4)


def _restore_seconds(df: pd.DataFrame) -> pd.Series:
    """Per change failure: seconds until the end of the next released (NaN if none yet)."""
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
    """The four DORA figures and the field reports' three, for one service's releases; beside
    them what is not a change: hand rollbacks, cancels, infrastructure failures."""
    fresh = df[~df["noop"].astype(bool)]
    changes = fresh[fresh["outcome"].isin(CHANGES)]
    released = changes[changes["outcome"] == "released"]
    failures = changes[changes["outcome"].isin(FAILURES)]
    restore = _restore_seconds(changes)
    sources = released["lead_time_source"].value_counts()
    return {
        "changes": len(changes),
        "deployments": len(released),
        "failures": len(failures),
        "deployment_frequency_per_day": round(len(released) / window_days, 4),
        "lead_time_s": _median(released["lead_time_s"]),
        "lead_time_from_release_start": int(
            (released["tagged_at"].isna() | (released["tagged_at_source"] == "release-start")).sum()
        ),
        "lead_time_sources": {str(k): int(v) for k, v in sources.items()},
        "change_failure_rate": round(len(failures) / len(changes), 4) if len(changes) else None,
        "time_to_restore_s": _median(restore),
        "unrestored_failures": int(restore.isna().sum()),
        "single_page_p95": _p95(released["canary_p95_ms"].astype("float64")),
        "cold_start_latency_p95": _p95(released["canary_first_ms"].astype("float64")),
        "remote_503_rate": _mean(changes["remote_503_rate"]),
        "cpu_fallbacks": int((changes["outcome"] == "cpu_fallback").sum()),
        "rolled_back_by_hand": int((fresh["outcome"] == "rolled_back_by_hand").sum()),
        "cancelled": int((fresh["outcome"] == "cancelled").sum()),
        "failed_infrastructure": int((fresh["outcome"] == "failed_infrastructure").sum()),
    }


def _count(noun: str) -> Callable[[Any], str]:
    return lambda n: f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _percent(x: Any) -> str:
    return f"{100 * float(x):.1f} %" if float(x) < 0.1 else f"{100 * float(x):.0f} %"


def _per_day(x: Any) -> str:
    x = float(x)
    return f"{x:.2f} / day" if x >= 1 / 7 or x == 0 else f"{7 * x:.2f} / week"


def _sources(counts: Any) -> str:
    return "; ".join(f"{n} from {src}" for src, n in (counts or {}).items()) or "—"


# (key in dora(), what the table and the html call it, how its value is written)
FIGURES: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("changes", "changes (releases that tried to change what serves)", _count("change")),
    ("deployments", "deployments (reached 100%)", _count("release")),
    ("deployment_frequency_per_day", "deployment frequency", _per_day),
    ("lead_time_s", "lead time, tag to 100% (median)", human_duration),
    ("lead_time_sources", "lead time starts at", _sources),
    ("change_failure_rate", "change failure rate (rolled back, failed)", _percent),
    ("failures", "change failures", _count("failure")),
    ("time_to_restore_s", "time to restore (median)", human_duration),
    ("unrestored_failures", "failures not restored yet", _count("failure")),
    ("single_page_p95", "single page p95 (canary)", lambda v: f"{float(v):,.0f} ms"),
    (
        "cold_start_latency_p95",
        "cold start p95 (first canary request)",
        lambda v: f"{float(v):,.0f} ms",
    ),
    ("remote_503_rate", "503 answers to canary requests (mean)", _percent),
    ("cpu_fallbacks", "CPU fallbacks (no GPU anywhere)", _count("release")),
    ("rolled_back_by_hand", "rolled back by hand (not counted as changes)", _count("rollback")),
    ("cancelled", "cancelled (not counted as changes)", _count("release")),
    (
        "failed_infrastructure",
        "failed, infrastructure unreachable (not counted as changes)",
        _count("release"),
    ),
)


def figure_lines(figures: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(key, label, value with its unit) per figure, "—" where there is none yet."""
    out = []
    for key, label, fmt in FIGURES:
        value = figures.get(key)
        out.append((key, label, "—" if value is None or value == {} else fmt(value)))
    return out


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
        "lead_time_legend": LEAD_TIME_LEGEND,
        "services": services,
        "releases": releases,
        "chains": chain_rows(entries),
    }


def _at(iso: str) -> str:
    when = dt.datetime.fromisoformat(iso)
    when = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC).strftime("%m-%d %H:%M")


def chain_rows(entries: Sequence[LedgerEntry]) -> list[dict[str, Any]]:
    """One row per release built from its tag that went through a pipeline of environments:
    each stage it passed with when (UTC), e.g. "staging 05-02 10:02 -> production 05-02 10:20",
    and whether every stage released the same digest. A stage's release that promotes another
    names it (`promoted_from`: "BLOCK/FLOW-RUN-ID"); oldest first."""
    passed = [e for e in entries if e.outcome == "released" and not e.noop and e.environment]
    by_source: dict[str, list[LedgerEntry]] = {}
    for e in passed:
        if e.promoted_from:
            by_source.setdefault(e.promoted_from, []).append(e)
    rows = []
    for origin in passed:
        if origin.promoted_from:
            continue
        chain, frontier = [origin], [origin]
        while frontier:  # breadth first: a stage may promote to several next ones
            here = frontier.pop(0)
            nxt = by_source.get(f"{here.target}/{here.flow_run_id}", []) if here.target else []
            chain += nxt
            frontier += nxt
        if len(chain) < 2:
            continue
        digests = {e.digest for e in chain}
        rows.append(
            {
                "service": origin.service,
                "git_tag": origin.git_tag,
                "chain": " -> ".join(f"{e.environment} {_at(e.finished_at)}" for e in chain),
                "digest": (origin.digest or "-")[:19],
                "same_digest": len(digests) == 1 and None not in digests,
            }
        )
    return rows


def chain_lines(data: dict[str, Any]) -> list[str]:
    """The chains as text lines for the table format (empty without any)."""
    chains = data.get("chains") or []
    if not chains:
        return []
    lines = ["", "Promotions (one digest through the environments)"]
    for c in chains:
        same = "same digest" if c["same_digest"] else "DIGEST DIFFERS"
        lines.append(f"  {c['service']} {c['git_tag']}: {c['chain']} ({same} {c['digest']})")
    return lines
