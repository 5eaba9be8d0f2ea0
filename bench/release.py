"""Release bench: full sandbox releases, the no-op re-release, and the quota decision.

Figures (JSON with --json):
- release_s: median of 5 full releases on the sandbox's default story (europe-west1 quota 0
  and denied, us-central1 granted after two polls, canary, cutover), zero service latency,
  Prefect server and sandbox start excluded; each release is a fresh service (fresh quota
  preferences, CPU baseline measured... except the speed-up check, off: with zero latency GPU
  and CPU answer alike);
- noop_release_s: median of the same tags released again (nothing to do);
- quota_decision_ms: median of 5 quota decisions over the 5 Cloud Run L4 regions (earlier runs:
  6 regions, before a target refused non-GPU ones) with every Cloud Quotas call taking 200 ms
  (the dry run's `quota` step), and the peer: the same figures read region by region, quota by
  quota (sequential_quota_reads_ms), with their ratio.
Targets (issue 5): release <= 10 s, no-op <= 3 s, quota decision <= 400 ms.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

from shipyard.blocks.gpu_regions import CLOUD_RUN_GPU_REGIONS

# Every region where Cloud Run offers L4 GPUs (a target refuses any other region).
GPU_REGIONS = list(CLOUD_RUN_GPU_REGIONS["nvidia-l4"])
RUNS = 5


def _full_releases(cloud) -> tuple[list[float], list[float], list[str]]:
    from timed_release import timed_release, zero_latency_target

    release_s, noop_s, outcomes = [], [], []
    for i in range(RUNS):
        target = zero_latency_target(cloud, "default", f"bench-release-{i}")
        tag = f"v1.0.{i}"
        seconds, result = timed_release(tag, target)
        release_s.append(seconds)
        outcomes.append(result.outcome)
        seconds, again = timed_release(tag, target)
        noop_s.append(seconds)
        outcomes.append("noop" if again.noop else again.outcome)
    return release_s, noop_s, outcomes


def _quota_decisions(cloud) -> tuple[list[float], int]:
    from shipyard.deployments.demo.run import DEMO_IMAGE, sandbox_target, stage
    from shipyard.flows.release.flow import release

    stage(cloud, "default", apis={"quotas": {"latency_ms": 200}})
    target = sandbox_target(service="bench-quota", regions=GPU_REGIONS)
    figures = []
    before = cloud.admin.calls().get("quotas.list_quota_infos", 0)
    for i in range(RUNS):
        result = release(f"v2.0.{i}", target, dry_run=True, image=f"{DEMO_IMAGE}:v2")
        step = next(s for s in result.steps if s.name == "quota")
        figures.append(step.seconds * 1000)
    calls = cloud.admin.calls().get("quotas.list_quota_infos", 0) - before
    return figures, calls // RUNS


def _sequential_peer(cloud) -> float:
    """The naive way: each region, each quota id, one GET after another."""
    from shipyard.blocks.cloud import GoogleCloud
    from shipyard.blocks.release_target import CPU_QUOTA_ID, GPU_QUOTA_IDS, MEMORY_QUOTA_ID

    client = GoogleCloud().quotas_client()
    project = GoogleCloud().resolved_project()
    ids = [GPU_QUOTA_IDS[("nvidia-l4", False)], CPU_QUOTA_ID, MEMORY_QUOTA_ID]
    started = time.perf_counter()
    for _region in GPU_REGIONS:
        for quota_id in ids:
            client.get_quota_info(
                name=f"projects/{project}/locations/global/services/run.googleapis.com/"
                f"quotaInfos/{quota_id}",
                retry=None,
            )
    return (time.perf_counter() - started) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    logging.getLogger("prefect").setLevel(logging.ERROR)

    from bench.figures import print_figures
    from shipyard.deployments.demo.run import local_cloud, prefect_api

    with prefect_api(), local_cloud() as cloud:
        release_s, noop_s, outcomes = _full_releases(cloud)
        quota_ms, calls_per_decision = _quota_decisions(cloud)
        peer_ms = _sequential_peer(cloud)

    release_median = statistics.median(release_s)
    noop_median = statistics.median(noop_s)
    quota_median = statistics.median(quota_ms)
    figures = {
        "release_s": round(release_median, 3),
        "noop_release_s": round(noop_median, 3),
        "quota_decision_ms": round(quota_median, 1),
        "runs": RUNS,
        "release_runs_s": [round(x, 3) for x in release_s],
        "noop_runs_s": [round(x, 3) for x in noop_s],
        "quota_decision_runs_ms": [round(x, 1) for x in quota_ms],
        "quota_list_calls_per_decision": calls_per_decision,
        "sequential_quota_reads_ms": round(peer_ms, 1),
        "quota_decision_vs_sequential": round(quota_median / peer_ms, 3),
        "noop_vs_release": round(noop_median / release_median, 3),
        "outcomes": outcomes,
        "targets": {"release_s": 10, "noop_release_s": 3, "quota_decision_ms": 400},
        "within_targets": release_median <= 10 and noop_median <= 3 and quota_median <= 400,
    }
    print_figures(figures, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
