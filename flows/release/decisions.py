"""One log line per decision a release takes, in its run log (and its Regions summary):

- each candidate region: kept, or skipped and why (e.g. "europe-west1 skipped: GPU quota 0 < 1,
  preference denied");
- each quota preference's state;
- the canary verdict with the thresholds it was judged against;
- the rollback, and to what.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import get_run_logger

if TYPE_CHECKING:
    from shipyard.blocks.canary_policy import CanaryPolicy
    from shipyard.flows.canary.stage import CanaryReport
    from shipyard.tasks.quotas import PreferenceState, RegionQuota


def region_decisions(
    regions: list[str], quotas: list[RegionQuota], preferences: list[PreferenceState]
) -> dict[str, str]:
    """region -> what the quota and the preferences decided, in the target's order."""
    by_region = {q.region: q for q in quotas}
    asked = {p.region: p for p in preferences}
    out: dict[str, str] = {}
    for region in regions:
        q = by_region.get(region)
        why = q.why if q is not None else "quota not read"
        pref = asked.get(region)
        if q is not None and q.fits:
            out[region] = f"candidate ({why})"
        elif pref is not None and pref.granted:
            out[region] = f"candidate ({why}, preference granted: {pref.granted_value})"
        elif pref is not None:
            out[region] = f"skipped: {why}, preference {pref.state}"
        else:
            out[region] = f"skipped: {why}"
    return out


def log_regions(decisions: dict[str, str]) -> None:
    logger = get_run_logger()
    for region, decision in decisions.items():
        if decision.startswith("skipped: "):
            logger.info("%s skipped: %s", region, decision.removeprefix("skipped: "))
        else:
            logger.info("%s: %s", region, decision)


def log_preferences(preferences: list[PreferenceState]) -> None:
    logger = get_run_logger()
    for p in preferences:
        logger.info(
            "quota preference %s in %s: %s (granted %s, %d polls%s)%s",
            p.preference_id,
            p.region,
            p.state,
            p.granted_value,
            p.polls,
            ", filed by this run" if p.created else "",
            f": {p.message}" if p.message else "",
        )


def canary_line(report: CanaryReport, policy: CanaryPolicy) -> str:
    """The verdict and every threshold it was judged against."""
    speedup = f"{report.speedup:.0%}" if report.speedup is not None else "-"
    minimum = f"{policy.min_speedup:.0%}" if policy.min_speedup is not None else "not checked"
    headers = ", ".join(f"{k}: {v}" for k, v in policy.required_headers.items()) or "none"
    limit = f"{policy.p95_limit_ms:g} ms" if policy.p95_limit_ms is not None else "not checked"
    samples = len(report.samples) or 1
    verdict = "PASSED" if report.passed else "FAILED"
    line = (
        f"canary of {report.revision} in {report.region}: {verdict}; {len(report.runs)} of "
        f"{policy.runs * samples} runs ({policy.method} {policy.path}, {policy.body.kind} body, "
        f"{samples} sample{'s' if samples != 1 else ''}), HTTP {policy.expected_status} "
        f"expected, required headers {headers}; p95 {report.p95_ms} ms (limit {limit}); "
        f"speed-up {speedup} over CPU baseline {report.baseline_ms} ms "
        f"({report.baseline_source}; minimum {minimum}); fallback used: {report.fallback_used}"
    )
    if report.reasons:
        line += "; reasons: " + "; ".join(report.reasons)
    return line


def log_canary(report: CanaryReport, policy: CanaryPolicy) -> None:
    (get_run_logger().info if report.passed else get_run_logger().warning)(
        "%s", canary_line(report, policy)
    )


def log_rollback(region: str, failed: str | None, serving: str, detail: str) -> None:
    get_run_logger().warning(
        "rolled back in %s: 100%% on %s (%s); %s keeps 0%%, untagged",
        region,
        serving,
        detail or "last good",
        failed or "the failed revision",
    )
