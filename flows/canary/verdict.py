"""The canary's verdict: every run's problems (the same failure of several runs said once, with
what was sent and what came back), the latency and speed-up figures, the log signatures found,
and, for a failed canary, the first error lines of the revision's own logs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import pandas as pd

from shipyard.blocks.canary_policy import CanaryPolicy


class JudgedRun(Protocol):
    """What the verdict reads of a canary run (flows/canary/stage.py's CanaryRun)."""

    run: int
    sample: str
    status: int | None
    expected_status: int
    ms: float | None
    problems: list[str]
    exchange: str


def run_numbers(numbers: Sequence[int]) -> str:
    """'run 2', 'runs 1-3', 'runs 1, 3'."""
    ordered = sorted(set(numbers))
    if len(ordered) == 1:
        return f"run {ordered[0]}"
    if ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"runs {ordered[0]}-{ordered[-1]}"
    return "runs " + ", ".join(str(n) for n in ordered)


def run_reasons(runs: Sequence[JudgedRun], named: bool) -> list[str]:
    """One reason per distinct failure of a sample, naming the runs that had it, with what was
    sent and what came back (the first failing run's exchange)."""
    groups: dict[tuple[str, str], tuple[list[int], str]] = {}
    for r in runs:
        if not r.problems:
            continue
        key = (r.sample, "; ".join(r.problems))
        numbers, _ = groups.setdefault(key, ([], r.exchange))
        numbers.append(r.run)
    out = []
    for (sample, problems), (numbers, exchange) in groups.items():
        which = run_numbers(numbers) + (f" ({sample})" if named and sample else "")
        out.append(f"{which}: {problems}" + (f"; {exchange}" if exchange else ""))
    return out


def figures_and_reasons(
    policy: CanaryPolicy,
    runs: Sequence[JudgedRun],
    baseline_ms: float | None,
    first_sample: str,
) -> tuple[list[str], dict[str, float | None]]:
    """(reasons, {p50_ms, p95_ms, speedup}) over the runs that answered as expected; the
    speed-up compares the first sample's median with the CPU baseline (measured with it)."""
    reasons: list[str] = []
    ok = [r for r in runs if r.status == r.expected_status and r.ms]
    times = pd.Series([r.ms for r in ok])
    figures: dict[str, float | None] = {"p50_ms": None, "p95_ms": None, "speedup": None}
    if times.empty:
        return reasons, figures
    figures["p50_ms"] = round(float(times.median()), 1)
    p95 = figures["p95_ms"] = round(float(times.quantile(0.95)), 1)
    if policy.p95_limit_ms is not None and p95 > policy.p95_limit_ms:
        reasons.append(f"p95 {p95:.0f} ms > limit {policy.p95_limit_ms:.0f} ms")
    first = pd.Series([r.ms for r in ok if r.sample == first_sample])
    if baseline_ms and not first.empty:
        speedup = 1 - float(first.median()) / baseline_ms
        figures["speedup"] = round(speedup, 3)
        if policy.min_speedup is not None and speedup < policy.min_speedup:
            reasons.append(
                f"speed-up {speedup:.0%} over the CPU baseline ({baseline_ms:.0f} ms) "
                f"< {policy.min_speedup:.0%}"
            )
    return reasons, figures


def error_lines_reason(revision: str, lines: Sequence[str], found: int, cited: str) -> str | None:
    """'revision logs of REV (2 error entries): line | line', without the lines a log
    signature already cited (`cited`: those reasons, joined); None when nothing is left."""
    # A signature's reason quotes an entry's first line (up to 160 characters): a line it
    # quoted is not said twice, a traceback's exception (after " … ") still is.
    fresh = [line for line in lines if " … " in line or line[:80] not in cited]
    if not fresh:
        return None
    entries = f"{found} error entr{'y' if found == 1 else 'ies'}"
    return f"revision logs of {revision} ({entries}): " + " | ".join(fresh)


def filter_reason(where: str) -> str:
    """The reason that says where to see every error line of the revision."""
    return f"every error line of the revision: Cloud Logging filter {where}"
