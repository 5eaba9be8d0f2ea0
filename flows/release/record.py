"""What a release remembers of its service: the release record (a Prefect Variable).

The record holds what serves now, the CPU baseline the next canary compares against (and the
CPU template it was measured on), the tag each revision was released from and the last good
revision: what `shipyard rollback` returns to and what a re-run of the same tag keeps.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from shipyard.blocks.release_target import ReleaseTarget, cpu_template_fingerprint
from shipyard.flows.canary.stage import recorded_release, release_variable
from shipyard.flows.observe.variables import set_variable
from shipyard.flows.release.outcome import STATE_NAMES, serving_and_attempted
from shipyard.flows.release.result import ReleaseResult


def update_release_record(
    target: ReleaseTarget, result: ReleaseResult, baseline_ms: float | None
) -> None:
    """Write the service's release record (the Variable `recorded_release` reads) after a run
    that changed something: what serves, the CPU baseline the next canary compares against,
    the tags released and the last good revision."""
    previous = recorded_release(result.service) or {}
    measured = result.canary is not None and result.canary.baseline_source == "measured"
    baseline = baseline_ms or previous.get("cpu_baseline_ms")
    baseline_at = (
        result.canary.judged_at
        if measured and result.canary is not None
        else previous.get("cpu_baseline_at")
    )
    template = cpu_template_fingerprint(target) if measured else previous.get("cpu_template")
    record = {
        "git_tag": result.git_tag,
        "outcome": result.outcome,
        "region": result.region,
        "revision": result.revision,
        "url": result.url,
        "image": result.image,
        "cpu_baseline_ms": baseline,
        "cpu_baseline_at": baseline_at,
        "cpu_template": template,
        "canary_p95_ms": result.canary.p95_ms if result.canary else None,
        "recorded_at": dt.datetime.now(dt.UTC).isoformat(),
        "tags": released_tags(previous, result),
        "previous": last_good(previous, result),
    }
    if result.noop and previous and previous.get("revision") == result.revision:
        # The same release again: keep what its first run knew (image, figures).
        record = {**previous, "recorded_at": record["recorded_at"]}
    elif result.outcome in STATE_NAMES:
        record = serving_and_attempted(record, previous, result)
    set_variable(release_variable(result.service), record)


def last_good(previous: dict[str, Any], result: ReleaseResult) -> dict[str, Any] | None:
    """The revision that served before this one (what `shipyard rollback` returns to): the
    record's serving revision when another one serves now, else what the record kept."""
    if previous.get("revision") and previous.get("revision") != result.revision:
        return {k: previous.get(k) for k in ("revision", "git_tag", "image", "region")}
    return previous.get("previous")


def released_tags(previous: dict[str, Any], result: ReleaseResult) -> dict[str, str]:
    """revision -> the git tag it was released from (the last 20): what `shipyard rollback`
    reports and records for a revision it returns to (revision labels hold a sanitized tag)."""
    tags = dict(previous.get("tags") or {})
    if result.outcome == "released" and result.revision:
        tags.pop(result.revision, None)
        tags[result.revision] = result.git_tag
    return dict(list(tags.items())[-20:])
