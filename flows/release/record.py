"""What a release remembers of its service: the release record (a Prefect Variable).

The record holds what serves now, the CPU baseline the next canary compares against (and the
CPU template it was measured on), the tag each revision was released from and the last good
revision: what `shipyard rollback` returns to and what a re-run of the same tag keeps.

A run killed past its cutover (SIGKILL: no hook runs) leaves the tag serving and nothing
recorded; its re-run is a no-op that built nothing and measured nothing. So that the record and
the ledger still say what was released, a run remembers its attempt (the Variable
`shipyard-attempt-{scope}`, per ReleaseTarget.scope: the tag's time, then the image and the
build's figures and commit) before it builds and deploys; `resumed_release` completes a later
run of the same tag from it (and names the killed run), and `update_release_record` forgets it
once recorded. The CPU baseline comes from the canary verdict the killed run persisted before its
cutover.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect.variables import Variable

from shipyard.blocks.names import sanitize_name
from shipyard.blocks.release_target import ReleaseTarget, cpu_template_fingerprint
from shipyard.flows.canary.stage import recorded_release, release_variable
from shipyard.flows.observe.variables import set_variable
from shipyard.flows.release.outcome import STATE_NAMES, serving_and_attempted
from shipyard.flows.release.result import BuildFigures, ReleaseResult
from shipyard.flows.release.tag_time import TagTime


def update_release_record(
    target: ReleaseTarget, result: ReleaseResult, baseline_ms: float | None, commit: str = ""
) -> None:
    """Write the service's release record (the Variable `recorded_release` reads) after a run
    that changed something: what serves, the CPU baseline the next canary compares against,
    the tags released and the last good revision (`commit`: the commit released when no build
    says it: given with the image, or remembered by a killed run of the tag)."""
    previous = recorded_release(target.scope) or {}
    measured = result.canary is not None and result.canary.baseline_source == "measured"
    # A no-op re-run measured nothing: the verdict its killed predecessor persisted did.
    judged = result.canary.baseline_ms if result.canary is not None and measured else None
    baseline = baseline_ms or judged or previous.get("cpu_baseline_ms")
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
        "commit": (result.build.commit if result.build else "")
        or commit
        or previous_commit(previous, result),
        "tagged_at": result.tag_time.at if result.tag_time else None,
        "cpu_baseline_ms": baseline,
        "cpu_baseline_at": baseline_at,
        "cpu_template": template,
        "canary_p95_ms": result.canary.p95_ms if result.canary else None,
        "recorded_at": dt.datetime.now(dt.UTC).isoformat(),
        "tags": released_tags(previous, result),
        # CPU revisions that passed the canary's answer checks (flows/canary/cpu_check.py).
        "checked": previous.get("checked") or {},
        "previous": last_good(previous, result),
    }
    if result.noop and previous and previous.get("revision") == result.revision:
        # The same release again: keep what its first run knew (image, figures).
        record = {**previous, "recorded_at": record["recorded_at"]}
    elif result.outcome in STATE_NAMES:
        record = serving_and_attempted(record, previous, result)
        # The commit and tag time are the serving revision's, not the failed attempt's.
        same = previous.get("revision") == result.revision
        record["commit"] = previous.get("commit", "") if same else ""
        record["tagged_at"] = previous.get("tagged_at") if same else None
    set_variable(release_variable(target.scope), record)
    attempt = remembered_attempt(target.scope)
    if attempt is not None and attempt.get("git_tag") == result.git_tag:
        Variable.unset(attempt_variable(target.scope))


def previous_commit(previous: dict[str, Any], result: ReleaseResult) -> str:
    """The commit of a revision the record already names (a no-op keeps it), else ""."""
    same = previous.get("revision") == result.revision and previous.get("git_tag") == result.git_tag
    return str(previous.get("commit") or "") if same else ""


def attempt_variable(scope: str) -> str:
    """The attempt a run of `scope` (ReleaseTarget.scope) remembers (see the module docstring)."""
    return sanitize_name(f"shipyard-attempt-{scope}", 255)


def remembered_attempt(scope: str) -> dict[str, Any] | None:
    value = Variable.get(attempt_variable(scope), default=None)
    return value if isinstance(value, dict) else None


def attempted_commit(scope: str, git_tag: str) -> str:
    """The commit an earlier run of `git_tag` remembered (given to it with its image), else ""."""
    attempt = remembered_attempt(scope)
    if attempt is None or attempt.get("git_tag") != git_tag:
        return ""
    return str(attempt.get("commit") or "")


def remember_attempt(
    scope: str,
    result_so_far: ReleaseResult,
    image: str | None,
    build: BuildFigures | None,
    commit: str | None = None,
) -> None:
    """What this run releases, once its tag's time and then its image are known, before it
    deploys anything: a re-run after a kill completes its record and ledger row from it (see the
    module docstring). What an earlier run of the tag remembered is kept where it knew more: the
    better tag time, and its run id (the run whose release a later run completes)."""
    tag_time = result_so_far.tag_time
    earlier = remembered_attempt(scope)
    run_id = result_so_far.flow_run_id
    if earlier is not None and earlier.get("git_tag") == result_so_far.git_tag:
        image = image or earlier.get("image")
        if build is None and earlier.get("build"):
            build = BuildFigures.model_validate(earlier["build"])
        if earlier.get("tag_time"):
            tag_time = better_tag_time(tag_time, TagTime.model_validate(earlier["tag_time"]))
        run_id = earlier.get("flow_run_id") or run_id
        commit = commit or earlier.get("commit")
    set_variable(
        attempt_variable(scope),
        {
            "git_tag": result_so_far.git_tag,
            "image": image,
            "build": build.model_dump(mode="json") if build else None,
            "tag_time": tag_time.model_dump() if tag_time else None,
            "flow_run_id": run_id,
            "commit": commit or (build.commit if build else None),
        },
    )


_SOURCE_RANK = {"push": 2, "git-tag": 1, "release-start": 0}


def better_tag_time(a: TagTime | None, b: TagTime | None) -> TagTime | None:
    """The tag time closer to the truth: the push's over the tag's date in git over a release's
    start; of two release starts, the earlier (the first run of the tag started then)."""
    if a is None or b is None:
        return a or b
    rank_a, rank_b = _SOURCE_RANK.get(a.source, 0), _SOURCE_RANK.get(b.source, 0)
    if rank_a != rank_b:
        return a if rank_a > rank_b else b
    if a.source == "release-start":
        return min(a, b, key=lambda t: dt.datetime.fromisoformat(t.at))
    return a


def resumed_release(scope: str, result: ReleaseResult) -> tuple[ReleaseResult, str | None]:
    """`result` completed from the attempt an earlier (killed) run of the same tag remembered:
    the image and the build it knew and this run did not (a no-op), and the better tag time (a
    push time given to it, not to this run). Returns the result and the flow run id
    of the earlier run when it was completed from it, else (result, None). `scope`: the
    target's ReleaseTarget.scope (what the attempt is remembered under)."""
    attempt = remembered_attempt(scope)
    if (
        attempt is None
        or attempt.get("git_tag") != result.git_tag
        or not attempt.get("flow_run_id")
        or attempt.get("flow_run_id") == result.flow_run_id
    ):
        return result, None
    done = result.model_copy(deep=True)
    if not done.image and attempt.get("image"):
        done.image = str(attempt["image"])
    if done.build is None and attempt.get("build"):
        done.build = BuildFigures.model_validate(attempt["build"])
    earlier = TagTime.model_validate(attempt["tag_time"]) if attempt.get("tag_time") else None
    done.tag_time = better_tag_time(done.tag_time, earlier)
    return done, str(attempt["flow_run_id"])


def last_good(previous: dict[str, Any], result: ReleaseResult) -> dict[str, Any] | None:
    """The revision that served before this one (what `shipyard rollback` returns to): the
    record's serving revision when another one serves now, else what the record kept.
    Last good means tested: a revision that passed a canary (the record's released tags) or one
    a person rolled back to, or a CPU revision that passed the canary's answer checks before a
    GPU hand-over; never a CPU baseline that only started a new service."""
    served = previous.get("revision")
    tested = (
        served in (previous.get("tags") or {})
        or served in (previous.get("checked") or {})
        or previous.get("outcome") == "rolled_back_by_hand"
    )
    if served and served != result.revision and tested:
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
