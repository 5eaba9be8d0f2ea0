"""The release's summary artifact: one markdown page per run (outcome, canary, regions, steps).

Published under the key `release-{service}` by `Release` when a run ends, failed runs included.
"""

from __future__ import annotations

from shipyard.flows.release.outcome import how_to_return
from shipyard.flows.release.result import ReleaseResult
from shipyard.flows.rollout.progress import STEP_COLUMNS, step_rows
from shipyard.tasks.reports import markdown_table


def summary_markdown(result: ReleaseResult, failed: bool) -> str:
    title = "FAILED" if failed else result.outcome.replace("_", " ").upper()
    lines = [
        f"# Release {result.git_tag} of `{result.service}`: **{title}**",
        "",
        f"- region: `{result.region or '-'}` (primary `{result.primary_region}`)"
        + (" — **GPU outside the primary region**" if result.outside_primary else ""),
        f"- revision: `{result.revision or '-'}`",
        f"- URL: {result.url or '-'}",
        f"- image: `{result.image or '-'}`",
        f"- took {result.seconds:.1f} s"
        + (" (dry run: nothing changed)" if result.dry_run else ""),
    ]
    if result.build:
        b = result.build
        lines.append(
            f"- build: {'reused (nothing built)' if b.reused else b.build_id}, CACHED "
            f"{b.cached_steps} / RUN {b.run_steps} (hit rate {b.hit_rate:.0%})"
        )
    if result.noop:
        lines.append("- the tag already served: nothing built, deployed or requested")
    if not failed and not result.dry_run:
        lines += how_to_return(result)
    if result.serving_url_variable:
        lines.append(f"- serving URL published as Variable `{result.serving_url_variable}`")
    if result.canary:
        c = result.canary
        lines += [
            "",
            "## Canary",
            f"{c.runs} runs, p50 {c.p50_ms} ms, p95 {c.p95_ms} ms, fallback used: "
            f"{c.fallback_used}, speed-up {c.speedup if c.speedup is not None else '-'} over "
            f"CPU baseline {c.baseline_ms} ms ({c.baseline_source}): "
            + ("passed" if c.passed else "failed"),
        ]
    if result.rollout_steps:
        lines += [
            "",
            "## Rollout steps",
            "Each step judged against the stable revision over the same window "
            "(flows/rollout/judge.py); gates and commands with who decided.",
            "",
            markdown_table(step_rows(result.rollout_steps), STEP_COLUMNS),
        ]
    if result.reasons:
        lines += ["", "## Reasons", *[f"- {r}" for r in result.reasons]]
    regions = {**result.regions_considered, **result.regions_tried}
    if regions:
        lines += ["", "## Regions", *[f"- `{r}`: {w}" for r, w in regions.items()]]
    if result.plan:
        lines += [
            "",
            "## Plan",
            f"- revision `{result.plan.revision}`, image `{result.plan.image}`",
            f"- candidates: {', '.join(result.plan.candidates) or 'none'}",
            f"- quota preferences it would file: {', '.join(result.plan.quota_preferences) or 'none'}",
            f"- {result.plan.note}",
            "",
            markdown_table([q.model_dump() for q in result.plan.quotas]),
        ]
    lines += [
        "",
        "## Steps",
        markdown_table(
            [s.model_dump() for s in result.steps],
            ["name", "state", "seconds", "attempts", "detail"],
        ),
    ]
    return "\n".join(lines)
