"""The judge of one rollout step: the new revision against the stable one, same window.

`judge(requests, new, stable, policy, signatures)` reads the two revisions' requests (Cloud
Run's request log as a frame: tasks/request_logs.py) and returns pass | fail | inconclusive
with its reasons and figures. The rules, in the order they are applied, and why:

1. **Signatures fail outright.** A log line of the new revision that names a silent CPU
   fallback or an out-of-memory kill (the canary's signatures) is a failure whatever the
   figures say: a GPU image that answers 200 on the CPU is slow for every user, and its
   requests may still look fine in a short window. The first line is quoted.
2. **Too few requests is inconclusive, never a pass.** Each revision must have answered at
   least `policy.min_samples` requests in the window; fewer, and no test can tell a broken
   revision from a healthy one ("no values found" and a canary judged on three synthetic
   requests are the pitfalls Argo Rollouts' and Flagger's users report). The reason names the
   counts and the fix.
3. **Errors.** An error is a request Cloud Run answered with 5xx, or with 429: on Cloud Run a
   429 is the platform's own refusal, "If no instances become available during the 60 second
   window, the request fails with a 429 error code" (cloud.google.com/run/docs/
   about-instance-autoscaling), so a user was turned away exactly as by a 503 — a new revision
   that cannot scale to its share is worse, not busy. Other 4xx are the caller's mistakes and
   count as answered. The step fails when the new revision's error rate exceeds the stable
   one's by more than `policy.error_rate_band` (an effect-size band: a tiny real difference
   does not fail a release) AND Fisher's exact test on the 2x2 table (errors / answered, new /
   stable; one-sided, the new revision worse) gives p < `policy.alpha`. Fisher's test is exact
   for the small counts a 10 % step produces, where a chi-square approximation is not.
4. **Latency** of answered requests only (an error's latency is not the service's speed). The
   step fails when the p95 ratio new / stable exceeds `policy.latency_ratio_band` AND the
   Mann-Whitney U test (one-sided: the new revision's latencies stochastically greater;
   Kayenta's test for the same question) gives p < `policy.alpha`. Mann-Whitney makes no
   assumption on the shape of the latency distribution (long tails, several modes).
5. Otherwise **pass**; a significant difference inside its band is a pass with a note in the
   reasons, so a person sees it.

Both revisions are read over the same window, so a slow hour or a noisy neighbour affects
both; the comparison is relative, never against a fixed threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from shipyard.blocks.rollout_policy import JudgePolicy

Verdict = Literal["pass", "fail", "inconclusive"]

# The columns of the request frame the judge reads (tasks/request_logs.py writes them):
# revision (str), status (int), latency_s (float), timestamp (datetime64[ns, UTC]).
COLUMNS = ("revision", "status", "latency_s", "timestamp")

# 429: Cloud Run's "no available instance" refusal (module docstring, rule 3).
REFUSED = 429
QUOTE_CHARS = 200


@dataclass(frozen=True)
class Judgement:
    """A step's verdict, why, and the figures it rests on (JSON-able: events, artifacts)."""

    verdict: Verdict
    reasons: tuple[str, ...] = ()
    figures: dict[str, float | int | None] = field(default_factory=dict)


def is_error(status: np.ndarray) -> np.ndarray:
    """Which statuses count as errors: 5xx and Cloud Run's 429 (rule 3)."""
    errors: np.ndarray = (status >= 500) | (status == REFUSED)
    return errors


def _p(value: float) -> float:
    """A p-value to 3 significant figures (JSON-able; 0 stays 0)."""
    return float(f"{value:.3g}")


def _p_text(value: float) -> str:
    return f"{value:.2g}" if value >= 1e-3 else f"{value:.0e}"


def _pct(rate: float) -> str:
    return f"{rate * 100:.1f}%"


@dataclass(frozen=True)
class _Side:
    n: int
    errors: int
    latencies_ms: np.ndarray  # of the answered requests (not errors), NaN dropped

    @property
    def rate(self) -> float:
        return self.errors / self.n if self.n else 0.0

    def percentile(self, q: float) -> float | None:
        if not self.latencies_ms.size:
            return None
        return round(float(np.percentile(self.latencies_ms, q)), 1)


def _side(requests: pd.DataFrame, revision: str) -> _Side:
    rows = requests[requests["revision"] == revision]
    status = rows["status"].to_numpy(dtype=np.int64, na_value=0)
    errors = is_error(status)
    latency = rows["latency_s"].to_numpy(dtype=np.float64, na_value=np.nan)[~errors] * 1000.0
    return _Side(n=len(rows), errors=int(errors.sum()), latencies_ms=latency[~np.isnan(latency)])


def _check_frame(requests: pd.DataFrame, new: str, stable: str) -> None:
    missing = [c for c in COLUMNS if c not in requests.columns]
    if missing:
        raise ValueError(
            f"requests: the frame lacks column(s) {', '.join(missing)} (has "
            f"{', '.join(map(str, requests.columns)) or 'none'}); read it with "
            "shipyard.tasks.request_logs.read_requests, whose columns are flows/rollout/judge.py "
            "COLUMNS"
        )
    if not new or not stable or new == stable:
        raise ValueError(
            f"new={new!r}, stable={stable!r}: the judge compares two different revisions; pass "
            "the new revision's name and the stable one's"
        )


def judge(
    requests: pd.DataFrame,
    new: str,
    stable: str,
    policy: JudgePolicy,
    signatures: Sequence[str] = (),
) -> Judgement:
    """The verdict on `new` against `stable` from their requests (`signatures`: log lines of
    the new revision that fail it outright: a silent CPU fallback, an OOM). Rules: the module
    docstring."""
    _check_frame(requests, new, stable)
    a, b = _side(requests, new), _side(requests, stable)
    figures: dict[str, float | int | None] = {
        "n_new": a.n,
        "n_stable": b.n,
        "errors_new": a.errors,
        "errors_stable": b.errors,
        "error_rate_new": round(a.rate, 4),
        "error_rate_stable": round(b.rate, 4),
        "error_p": None,
        "p50_new_ms": a.percentile(50),
        "p95_new_ms": a.percentile(95),
        "p50_stable_ms": b.percentile(50),
        "p95_stable_ms": b.percentile(95),
        "latency_ratio": None,
        "latency_p": None,
    }
    p95_new, p95_stable = figures["p95_new_ms"], figures["p95_stable_ms"]
    if p95_new is not None and p95_stable is not None:
        # A stable p95 of 0 ms (a clock's resolution) is taken as 1 µs: a ratio, never inf.
        figures["latency_ratio"] = round(float(p95_new) / max(float(p95_stable), 1e-3), 3)

    if signatures:
        line = " ".join(str(signatures[0]).split())[:QUOTE_CHARS]
        more = f" (and {len(signatures) - 1} more)" if len(signatures) > 1 else ""
        return Judgement("fail", (f"the new revision logged {line!r}{more}",), figures)

    if a.n < policy.min_samples or b.n < policy.min_samples:
        return Judgement(
            "inconclusive",
            (
                f"new answered {a.n} requests, stable {b.n}; min_samples {policy.min_samples}: "
                "too few to judge (turn the load generator on, raise its rate or the step's "
                "bake, or lower judge.min_samples)",
            ),
            figures,
        )

    # scipy loads in seconds: imported when a step is judged, not with every CLI command.
    from scipy.stats import fisher_exact, mannwhitneyu

    fails: list[str] = []
    notes: list[str] = []  # significant differences inside their band
    summary: list[str] = []  # every comparison, for a pass

    # Errors: Fisher's exact test, one-sided (the new revision worse).
    table = [[a.errors, a.n - a.errors], [b.errors, b.n - b.errors]]
    error_p = float(fisher_exact(table, alternative="greater").pvalue)
    figures["error_p"] = _p(error_p)
    errors_text = (
        f"errors {_pct(a.rate)} vs {_pct(b.rate)} (Fisher p={_p_text(error_p)}, band "
        f"{policy.error_rate_band * 100:.1f} pt)"
    )
    summary.append(errors_text)
    if error_p < policy.alpha:
        if a.rate - b.rate > policy.error_rate_band:
            fails.append(errors_text)
        else:
            notes.append(f"{errors_text}: significant but within the band")

    # Latency of answered requests: Mann-Whitney U, one-sided (the new revision slower).
    ratio = figures["latency_ratio"]
    if a.latencies_ms.size >= 2 and b.latencies_ms.size >= 2 and ratio is not None:
        latency_p = float(
            mannwhitneyu(a.latencies_ms, b.latencies_ms, alternative="greater").pvalue
        )
        figures["latency_p"] = _p(latency_p)
        latency_text = (
            f"p95 {p95_new:g} ms vs {p95_stable:g} ms, x{float(ratio):.2f} (Mann-Whitney "
            f"p={_p_text(latency_p)}, band x{policy.latency_ratio_band:g})"
        )
        summary.append(latency_text)
        if latency_p < policy.alpha:
            if float(ratio) > policy.latency_ratio_band:
                fails.append(latency_text)
            else:
                notes.append(f"{latency_text}: significant but within the band")
    else:
        summary.append(
            f"latency not compared: answered requests new {a.latencies_ms.size}, stable "
            f"{b.latencies_ms.size}"
        )

    if fails:
        return Judgement("fail", (*fails, *notes), figures)
    return Judgement("pass", tuple(notes or summary), figures)
