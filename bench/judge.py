"""The rollout judge (flows/rollout/judge.py): its speed and its false verdicts.

- `judge_ms`: one step's analysis over 10,000 request-log entries (half each revision), median
  of 5 runs; goal <= 500 ms. `bench/progressive.py` imports `judge_ms()`.
- `false_fails`: of 200 healthy pairs (both revisions from the same latency distribution, the
  same 0.5 % error rate), how many the judge failed; goal 0.
- `missed_errors`: of 200 pairs whose new revision fails 5 % of requests (stable 0.5 %), how
  many it did not fail; `missed_slow`: of 200 whose new revision is 2x slower (p95 twice the
  stable one's), how many it did not fail; goal 0 each.
- `inconclusive_thin`: of 200 pairs with 20 requests on the new revision (min_samples 50), how
  many were inconclusive; goal all of them (a thin step is never a silent pass).

Each pair is one 10 % step of a service under ~10 requests/s for 5 minutes: 300 requests on the
new revision, 2,700 on the stable one; latencies lognormal (median 120 ms, sigma 0.35, the
shape of a page-inference service's answers); seeded, so the counts are the same every run.
Exits 1 when what it measures did not happen (`problems`): a goal missed, or a judgement that
never ran.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import pandas as pd

from bench.figures import print_figures
from shipyard.blocks.rollout_policy import JudgePolicy
from shipyard.flows.rollout.judge import judge

NEW, STABLE = "pages-v2", "pages-v1"
GOAL_MS = 500.0
PAIRS = 200
BASE_ERROR_RATE = 0.005


def request_frame(
    rng: np.random.Generator,
    n_new: int,
    n_stable: int,
    *,
    error_rate_new: float = BASE_ERROR_RATE,
    slower: float = 1.0,
) -> pd.DataFrame:
    """Synthetic request-log rows of one step (the columns of tasks/request_logs.py)."""

    def side(revision: str, n: int, rate: float, scale: float) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "revision": revision,
                "status": np.where(rng.random(n) < rate, 503, 200).astype("int64"),
                "latency_s": rng.lognormal(np.log(0.12), 0.35, n) * scale,
                "timestamp": pd.Timestamp("2026-01-05T10:00:00Z"),
            }
        )

    return pd.concat(
        [
            side(NEW, n_new, error_rate_new, slower),
            side(STABLE, n_stable, BASE_ERROR_RATE, 1.0),
        ],
        ignore_index=True,
    )


def judge_ms(rows: int = 10000, runs: int = 5) -> float:
    """Median milliseconds of one judgement over `rows` request-log entries."""
    frame = request_frame(np.random.default_rng(1), rows // 2, rows - rows // 2)
    policy = JudgePolicy()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        judge(frame, NEW, STABLE, policy)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def verdicts(kind: str, pairs: int, seed: int) -> dict[str, int]:
    """How many of `pairs` synthetic steps of `kind` got each verdict."""
    rng = np.random.default_rng(seed)
    policy = JudgePolicy()
    counts = {"pass": 0, "fail": 0, "inconclusive": 0}
    for _ in range(pairs):
        if kind == "healthy":
            frame = request_frame(rng, 300, 2700)
        elif kind == "errors":
            frame = request_frame(rng, 300, 2700, error_rate_new=0.05)
        elif kind == "slow":
            frame = request_frame(rng, 300, 2700, slower=2.0)
        else:  # thin: the generator off, real traffic scarce
            frame = request_frame(rng, 20, 180)
        counts[judge(frame, NEW, STABLE, policy).verdict] += 1
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--pairs", type=int, default=PAIRS)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    ms = judge_ms(args.rows, args.runs)
    healthy = verdicts("healthy", args.pairs, 11)
    errors = verdicts("errors", args.pairs, 12)
    slow = verdicts("slow", args.pairs, 13)
    thin = verdicts("thin", args.pairs, 14)
    figures: dict[str, object] = {
        "judge_ms": round(ms, 2),
        "rows": args.rows,
        "runs": args.runs,
        "pairs": args.pairs,
        "false_fails": healthy["fail"],
        "healthy_inconclusive": healthy["inconclusive"],
        "missed_errors": errors["pass"] + errors["inconclusive"],
        "missed_slow": slow["pass"] + slow["inconclusive"],
        "inconclusive_thin": thin["inconclusive"],
        "goal_judge_ms": GOAL_MS,
    }
    problems = []
    if ms > GOAL_MS:
        problems.append(f"judge_ms {ms:.1f} > {GOAL_MS:g}")
    if sum(healthy.values()) + sum(errors.values()) + sum(slow.values()) != 3 * args.pairs:
        problems.append("not every pair was judged")
    if healthy["fail"] or healthy["inconclusive"]:
        problems.append(f"healthy pairs judged {healthy}")
    if figures["missed_errors"] or figures["missed_slow"]:
        problems.append(f"faults missed: errors {errors}, slow {slow}")
    if thin["inconclusive"] != args.pairs:
        problems.append(f"thin pairs judged {thin}: each should be inconclusive")
    figures["problems"] = problems
    print_figures(figures, args.json)
    if problems:
        sys.exit(1)  # what it measures did not happen


if __name__ == "__main__":
    main()
