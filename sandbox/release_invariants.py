"""Checks of DESIGN.md's invariants 1-3 over a traffic history (the sandbox records one).

Pure functions over the history entries of sandbox/invariants.py (`traffic`, `revisions`,
`time`, `seq`, `event`, `name`) and the release results; used by the tests, the demo
(`invariants_ok`) and the bench.

1. at every moment, 100% of a service's traffic is on Ready revisions (sandbox/invariants.py);
2. a new revision gets traffic only after its canary passed: every revision with traffic in
   any history entry is either a CPU baseline revision (`*-cpu`, the known-good template the
   design falls back to) or a revision whose canary passed *before* that entry (the entry's
   time is not earlier than the verdict, and the revision was seen at 0% with the `canary`
   tag in an earlier entry);
3. after a failed canary or GPU deploy, the final state has the failed revision at 0% and
   untagged, 100% on Ready revisions that are the last good or a CPU baseline, and no `canary`
   tag anywhere.

And a region that refused the GPU for quota keeps no service that the release created there
(one holding only the tag's revisions), unless the release ends serving in it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re

from sandbox.invariants import traffic_violations


def _when(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def passed_canaries(results) -> dict[str, dt.datetime]:
    """revision -> when its canary passed, from ReleaseResults (a no-op re-run after a crash
    reports the verdict its killed predecessor persisted before the cutover: it counts too)."""
    out: dict[str, dt.datetime] = {}
    for r in results:
        if r.canary is not None and r.canary.passed and r.outcome == "released":
            when = _when(r.canary.judged_at)
            out[r.revision] = min(when, out.get(r.revision, when))
    return out


def invariant_violations(
    history: list[dict], results, known_good: frozenset[str] | set[str] = frozenset()
) -> list[str]:
    """Invariants 1 and 2; `known_good`: revisions that served before any release (not new)."""
    problems = list(traffic_violations(history))
    passed = passed_canaries(results)
    canaried: set[tuple[str, str]] = set()
    for entry in history:
        service = entry["name"]
        for t in entry["traffic"]:
            rev = t["revision"]
            if t.get("tag") == "canary" and t["percent"] == 0:
                canaried.add((service, rev))
            if t["percent"] == 0 or rev.endswith("-cpu") or rev in known_good:
                continue
            where = f"#{entry['seq']} {entry['event']} of {service}"
            if rev not in passed:
                problems.append(f"{where}: {t['percent']}% on {rev}, whose canary never passed")
            elif _when(entry["time"]) < passed[rev]:
                problems.append(f"{where}: {t['percent']}% on {rev} before its canary passed")
            elif (service, rev) not in canaried:
                problems.append(f"{where}: {rev} got traffic without being a 0% canary first")
    return problems


def final_states(history: list[dict]) -> dict[str, dict]:
    """service full name -> its last history entry."""
    last: dict[str, dict] = {}
    for entry in history:
        last[entry["name"]] = entry
    return last


def stale_tags(history: list[dict], tag: str) -> list[str]:
    """Where the services' final states still carry `tag` (one a release puts on for itself:
    `canary`, or `baseline` while it measures the CPU baseline)."""
    return [
        f"{name}: {tag} tag on {t['revision']}"
        for name, entry in final_states(history).items()
        for t in entry["traffic"]
        if t.get("tag") == tag
    ]


def stale_canary_tags(history: list[dict]) -> list[str]:
    return stale_tags(history, "canary")


def failed_revision_problems(history: list[dict], failed: str, allowed: set[str]) -> list[str]:
    """Invariant 3 for `failed`: 0%, untagged; 100% on Ready revisions in `allowed`."""
    problems = stale_canary_tags(history)
    for name, entry in final_states(history).items():
        for t in entry["traffic"]:
            if t["revision"] == failed and (t["percent"] or t.get("tag")):
                problems.append(f"{name}: failed {failed} still has {t['percent']}% / {t['tag']}")
        serving = {t["revision"] for t in entry["traffic"] if t["percent"] > 0}
        touched = (
            failed in {t["revision"] for t in entry["traffic"]} or failed in entry["revisions"]
        )
        if touched and not serving <= allowed:
            problems.append(f"{name}: serves {serving}, expected within {allowed}")
    return problems


def all_violations(history: list[dict], results) -> list[str]:
    """Invariants 1 and 2 over the whole history, and no stale canary tag at the end; plus
    invariant 3 for every rolled-back release (its GPU revision at 0%, untagged) and no service
    a release created left in a region that refused it."""
    problems = invariant_violations(history, results) + stale_canary_tags(history)
    for r in results:
        problems += refused_region_leftovers(history, r)
        if r.outcome == "rolled_back" and r.canary is not None:
            failed = _gpu_revision(r)
            for name, entry in final_states(history).items():
                for t in entry["traffic"]:
                    if t["revision"] == failed and (t["percent"] or t.get("tag")):
                        problems.append(f"{name}: failed {failed} keeps {t['percent']}%/{t['tag']}")
    return problems


def refused_region_leftovers(history: list[dict], result) -> list[str]:
    """Services left in regions that refused the release's GPU for quota, holding nothing but
    the tag's revisions (so created by the release), where the release does not serve."""
    base = _gpu_revision(result)
    problems = []
    for region, why in result.regions_tried.items():
        if not why.startswith("quota: ") or region == result.region:
            continue
        for name, entry in final_states(history).items():
            revisions = set(entry["revisions"])
            if f"/locations/{region}/" not in name or not entry.get("exists", True):
                continue
            if revisions and all(r == base or r.startswith(base + "-") for r in revisions):
                problems.append(f"{name}: refused the GPU, still holds {sorted(revisions)}")
    return problems


def _gpu_revision(result) -> str:
    return release_revision_name(result.service, result.git_tag)


def _slug(text: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower())
    return re.sub(r"-{2,}", "-", name).strip("-")


def _name(text: str, limit: int) -> str:
    name = _slug(text)
    if not name or not name[0].isalpha():
        name = f"r-{name}".rstrip("-")
    return name[:limit].rstrip("-")


def release_revision_name(service: str, git_tag: str) -> str:
    """The name a release gives the revision it deploys for `git_tag`: `{service}-v1-2-3`.

    The pipeline's naming contract, restated here so the sandbox checks releases without
    importing the pipeline (tests/configuration/test_sandbox_agrees.py holds both to the same
    answers): lower-case [a-z0-9-], no double or trailing dash, starting with a letter; Cloud
    Run revision names are at most 63 characters, so a longer name keeps a cut tag and the
    first 6 hex digits of the full tag's sha256 (different tags stay apart).
    """
    name = _name(f"{service}-{_slug(git_tag)}", 1000)
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(git_tag.encode()).hexdigest()[:6]
    room = 63 - len(service) - len(digest) - 2
    return _name(f"{service}-{_slug(git_tag)[:room]}-{digest}", 63)


def serving(history: list[dict], region: str) -> dict[str, int]:
    """revision -> percent in the final state of the service in `region`."""
    for name, entry in final_states(history).items():
        if f"/locations/{region}/" in name:
            return {t["revision"]: t["percent"] for t in entry["traffic"] if t["percent"]}
    return {}
