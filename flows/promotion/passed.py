"""`passed_in(target, git_tag)`: the release of the stage before `target` that a promotion may
take (its digest, its run), or `PromotionRefused` with the reason and the fix.

What "passed" means: the release's ledger row (flows/observe/ledger.py) in the previous target's
environment says `released` (its canary passed and it served 100%). The newest row of the tag
there that says something of the change decides: a later `rolled_back`, `rolled_back_by_hand`,
`cpu_fallback` or `failed` of the same tag refuses it; a `cancelled` or `failed_infrastructure`
re-run says nothing of the change and is passed over.

Decided: a digest that no longer serves in the previous stage (a later release replaced it there)
still passed: promotion takes what passed, not what serves now; only a verdict on the same tag
(a rollback, by the canary or by hand) takes the pass back.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import cast

from shipyard.blocks.release_target import ReleaseTarget
from shipyard.flows.observe.ledger import LedgerEntry, read_ledger
from shipyard.tasks.registry import parse_reference

__all__ = ["PassedRelease", "PromotionRefused", "load_target", "passed_in", "target_name"]

# Outcomes that judge the change; the others (a cancel, the infrastructure) say nothing of it.
VERDICTS = frozenset({"released", "rolled_back", "rolled_back_by_hand", "cpu_fallback", "failed"})


class PromotionRefused(ValueError):
    """A promotion that may not happen; the message is one line: the reason and the fix."""


@dataclass(frozen=True)
class PassedRelease:
    """A release that passed in the previous stage: what a promotion releases again."""

    git_tag: str
    image: str  # repository@sha256:...
    flow_run_id: str | None
    source: str = ""  # the previous stage's ReleaseTarget block name
    environment: str = ""  # the previous stage's environment
    finished_at: str = ""  # when it passed there
    commit: str = ""  # the commit it was built from (the next stage's ledger row keeps it)
    # When its tag was made, when known (push or git): the next stage's lead time starts there.
    tagged_at: str = ""

    @property
    def digest(self) -> str:
        return self.image.rsplit("@", 1)[1]


def target_name(target: ReleaseTarget) -> str:
    """The target's block name (a target built in Python without one: its service)."""
    return target._block_document_name or target.service


def load_target(name: str, field: str = "target") -> ReleaseTarget:
    """The ReleaseTarget block `name`, or PromotionRefused naming the field and the fix."""
    try:
        return cast(ReleaseTarget, ReleaseTarget.load(name))  # Block.load is typed as Block
    except ValueError as exc:
        if "Unable to find block document" not in str(exc):  # it exists but does not load
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            raise PromotionRefused(f"{field}={name!r}: {' '.join(lines[:3])}") from exc
        raise PromotionRefused(
            f"{field}={name!r}: no Shipyard Release Target block of that name; save one (the UI's "
            "Blocks page, or ReleaseTarget(...).save(name)) or give an existing block's name"
        ) from exc


def passed_in(target: ReleaseTarget, git_tag: str | None) -> PassedRelease:
    """The release of `git_tag` (None or "": the newest that passed) that passed in the stage
    `target` promotes from; raises PromotionRefused with the reason and the fix."""
    name = target_name(target)
    if not target.promotes_from:
        stage = target.environment or name
        raise PromotionRefused(
            f"{stage} is a first stage (ReleaseTarget {name!r} has no promotes_from): release it "
            f"from the git tag (shipyard release TAG --target {name}), or set promotes_from to "
            "the previous stage's block"
        )
    if target.promotes_from == name:
        raise PromotionRefused(
            f"ReleaseTarget {name!r}: promotes_from names the target itself: set it to the "
            "previous stage's block"
        )
    previous = load_target(target.promotes_from, "promotes_from")
    if not previous.environment:
        raise PromotionRefused(
            f"ReleaseTarget {target.promotes_from!r} (promotes_from of {name!r}) has no "
            "environment: give it one (e.g. staging), its ledger rows are told apart by it"
        )
    rows: list[LedgerEntry] = []
    for service in _pipeline_services(target, previous):
        rows += read_ledger(service)
    stage_rows = [
        r for r in rows if r.environment == previous.environment and r.service == previous.service
    ]
    if git_tag:
        return _tag_passed(target, previous, stage_rows, rows, git_tag)
    tags = list(dict.fromkeys(r.git_tag for r in reversed(stage_rows)))  # newest first
    newest: str | None = None
    for tag in tags:
        try:
            return _tag_passed(target, previous, stage_rows, rows, tag)
        except PromotionRefused as refused:
            newest = newest or str(refused)
    env = previous.environment
    detail = f" (newest: {newest})" if newest else ""
    raise PromotionRefused(
        f"no release has passed {env} yet{detail}: {_fix(previous, target.promotes_from, None)}"
    )


def _tag_passed(
    target: ReleaseTarget,
    previous: ReleaseTarget,
    stage_rows: list[LedgerEntry],
    rows: list[LedgerEntry],
    git_tag: str,
) -> PassedRelease:
    source = target.promotes_from or ""
    env = previous.environment or source
    of_tag = [r for r in stage_rows if r.git_tag == git_tag]
    if not of_tag:
        elsewhere = sorted(
            {
                r.environment
                for r in rows
                if r.git_tag == git_tag
                and r.outcome == "released"
                and r.environment
                and r.environment not in (previous.environment, target.environment)
            }
        )
        if elsewhere:
            raise PromotionRefused(
                f"{git_tag} passed {', '.join(elsewhere)}, not {env}: promote it to {env} first "
                f"({_fix(previous, source, git_tag)})"
            )
        raise PromotionRefused(
            f"{git_tag} was never released in {env} (ReleaseTarget {source!r}): "
            f"{_fix(previous, source, git_tag)}, then promote it"
        )
    judged = [r for r in of_tag if r.outcome in VERDICTS]
    last = (judged or of_tag)[-1]
    if last.outcome != "released":
        reason = f": {last.rollback_reason[:160]}" if last.rollback_reason else ""
        raise PromotionRefused(
            f"{git_tag} did not pass {env}: its release there ended {last.outcome} at "
            f"{_when(last.finished_at)}{reason}; fix it and release a new tag in {env} "
            f"({_fix(previous, source, None)})"
        )
    if not last.digest or not last.image:
        raise PromotionRefused(
            f"{git_tag} passed {env} but its ledger row holds no image digest (image "
            f"{last.image or '-'}): release {git_tag} in {env} again by digest "
            f"(shipyard release {git_tag} --target {source} --image REPOSITORY@sha256:...), "
            "then promote it"
        )
    repository = parse_reference(last.image, field="image").repo_name
    return PassedRelease(
        git_tag=git_tag,
        image=f"{repository}@{last.digest}",
        flow_run_id=last.flow_run_id,
        source=source,
        environment=previous.environment or "",
        finished_at=last.finished_at,
        commit=last.commit,
        tagged_at=(last.tagged_at or "") if last.tagged_at_source != "release-start" else "",
    )


def _pipeline_services(target: ReleaseTarget, previous: ReleaseTarget) -> list[str]:
    """The services of the target, the previous stage and the stages before it (their ledgers
    tell a skipped stage: a tag that passed an earlier stage but not the previous one)."""
    services = [target.service, previous.service]
    seen = {target_name(target), target.promotes_from}
    stage = previous
    while stage.promotes_from and stage.promotes_from not in seen and len(seen) < 12:
        seen.add(stage.promotes_from)
        try:
            stage = load_target(stage.promotes_from, "promotes_from")
        except PromotionRefused:
            break  # an earlier stage that is gone: its ledger cannot be read by its block
        services.append(stage.service)
    return list(dict.fromkeys(services))


def _fix(previous: ReleaseTarget, source: str, git_tag: str | None) -> str:
    tag = git_tag or "TAG"
    if previous.promotes_from:  # the previous stage takes promotions itself
        return f"shipyard promote-release {source} --tag {tag}"
    return f"shipyard release {tag} --target {source}"


def _when(iso: str) -> str:
    try:
        when = dt.datetime.fromisoformat(iso)
    except ValueError:
        return iso
    when = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
