"""Progressive delivery bench (issue 22): a release in steps on the sandbox, the judge's speed,
and the false verdicts of whole releases.

Figures (JSON with --json):
- progressive_release_s: one release with three steps (10 % and 50 % baked 5 s each, then
  100 %), from its start to its end: the canary, the step updates, the bakes with the load
  generator on (40 requests/s), the cutover; the stable release before it is not counted;
- judge_ms: one step's analysis over 10,000 request-log entries (bench/judge.py);
- false_rollbacks: of 20 healthy releases in steps (each against the previous one), how many did
  not end released;
- missed_faults: of 20 faulty releases (10 whose new revision fails 5 % of its requests past
  its first 10, 10 whose answers take twice as long: sandbox/emulator/load_faults.py), how many
  were not rolled back by a step's judge.
The false-verdict releases use the emulator's in-process revisions (the same routing, request
logs and load faults as containers) and short bakes (one 50 % step baked up to 10 s at 60
requests/s; a fault ends it at the judge's first failures past failure_limit 1): `revisions`
says so in the output. The progressive release's load runs at 80 requests/s.
Goals: progressive release <= 60 s, judge <= 500 ms, 0 false rollbacks, 0 missed faults.
Exits 1 when a release did not complete (it raised) or a goal was missed.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

RUNS = 20
GOALS = {"progressive_release_s": 60.0, "judge_ms": 500.0, "false_rollbacks": 0, "missed_faults": 0}


def _rollout(steps: list[tuple[int, float]], rate: float = 40.0) -> Any:
    from shipyard.blocks.rollout_policy import (
        JudgePolicy,
        LoadGenerator,
        RolloutPolicy,
        RolloutStep,
    )

    return RolloutPolicy(
        steps=[RolloutStep(percent=p, bake_s=b) for p, b in steps],
        judge=JudgePolicy(
            min_samples=15, analysis_interval_s=1.0, failure_limit=1, latency_ratio_band=1.5
        ),
        # In flight: enough that the rate, not the answers' latency, sets the pace on a busy
        # machine (8 in flight at ~0.7 s p95 gave ~11 requests/s of the 60 asked).
        load=LoadGenerator(rate_per_s=rate, max_in_flight=32),
    )


def _target(service: str, rollout: Any) -> Any:
    from shipyard.deployments.demo.run import sandbox_target

    canary = sandbox_target().canary.model_copy(update={"min_speedup": None})
    return sandbox_target(service=service, regions=["europe-west1"], canary=canary, rollout=rollout)


def _release(target: Any, tag: str) -> tuple[float, Any]:
    from timed_release import timed_release

    return timed_release(tag, target)


def _stage(cloud: Any) -> None:
    from shipyard.deployments.demo.run import stage

    # Room for the GPUs of the revisions that may hold one: the stable one, the new one, and the
    # one before them (its `prior` tag keeps it addressable; with 2, every other release would
    # hand over to CPU and skip its steps). The faults only for the v2.0.* (errors) and v2.1.*
    # (slow) images: every v1 release is healthy.
    stage(
        cloud,
        "healthy",
        serving={"gpu_ms": 5, "cpu_ms": 50},
        default_region={"gpu": 3, "gpu_no_zonal_redundancy": 3},
        revision_faults=[
            {"fault": "errors_under_load", "image_contains": ":v2.0.", "rate": 0.05},
            {"fault": "slow_under_load", "image_contains": ":v2.1.", "factor": 2.0},
        ],
    )


def _measure(cloud: Any) -> dict[str, Any]:
    problems: list[str] = []
    _stage(cloud)
    # One release in three steps, 5 s bakes.
    target = _target("bench-progressive", _rollout([(10, 5.0), (50, 5.0)], rate=80.0))
    _release(target, "v1.0.0")
    seconds, result = _release(target, "v1.1.0")
    verdicts = [f"{s.percent}:{s.verdict}" for s in result.rollout_steps]
    if result.outcome != "released" or verdicts != ["10:pass", "50:pass", "100:pass"]:
        problems.append(f"the progressive release ended {result.outcome} {verdicts}")

    # False verdicts: short bakes, one step.
    short = _target("bench-verdicts", _rollout([(50, 10.0)], rate=60.0))
    _release(short, "v1.0.0")
    healthy: list[str] = []
    wrong: list[str] = []  # why a verdict was wrong: the first reason
    for i in range(RUNS):
        _, r = _release(short, f"v1.0.{i + 1}")
        healthy.append(r.outcome)
        if r.outcome != "released":
            wrong.append(f"v1.0.{i + 1}: {(r.reasons or ['-'])[0][:200]}")
    faulty: list[str] = []
    for i in range(RUNS):
        tag = f"v2.0.{i}" if i < RUNS // 2 else f"v2.1.{i}"
        _, r = _release(short, tag)
        step_failed = any(s.verdict == "fail" for s in r.rollout_steps)
        faulty.append(
            r.outcome if step_failed or r.outcome != "rolled_back" else "rolled_back:other"
        )
        if faulty[-1] != "rolled_back":
            wrong.append(f"{tag}: {r.outcome}: {(r.reasons or ['-'])[0][:200]}")
    return {
        "progressive_release_s": round(seconds, 3),
        "progressive_steps": verdicts,
        "false_rollbacks": sum(o != "released" for o in healthy),
        "missed_faults": sum(o != "rolled_back" for o in faulty),
        "healthy_outcomes": healthy,
        "faulty_outcomes": faulty,
        "wrong_verdicts": wrong,
        "problems": problems,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    logging.getLogger("prefect").setLevel(logging.ERROR)

    from bench.figures import print_figures
    from bench.judge import judge_ms
    from shipyard.deployments.demo.run import local_cloud, prefect_api

    started = time.perf_counter()
    try:
        with prefect_api(), local_cloud() as cloud:
            figures = _measure(cloud)
    except Exception as exc:  # noqa: BLE001 - a run that did not complete is the bench's answer
        print_figures({"error": f"{type(exc).__name__}: {exc}", "completed": False}, args.json)
        return 1
    figures["judge_ms"] = round(judge_ms(), 1)
    figures["revisions"] = (
        "in-process (the emulator's page service: same routing, request logs and load faults "
        "as containers); false-verdict releases: one 50% step baked up to 10 s at 60 "
        "requests/s"
    )
    figures["runs"] = {"healthy": RUNS, "faulty": RUNS}
    figures["goals"] = GOALS
    figures["within_goals"] = all(figures[k] <= v for k, v in GOALS.items())
    figures["bench_s"] = round(time.perf_counter() - started, 1)
    print_figures(figures, args.json)
    return 0 if figures["within_goals"] and not figures["problems"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
