"""What a hand rollback leaves for people and for the report: its own summary artifact
(`rollback-<scope>`, ReleaseTarget.scope: what served, what serves now, why, by whom), a ledger row
(`rolled_back_by_hand`), and a new version of the release summary (`release-<scope>`) that
says the release it showed was rolled back by hand, when and to what.

The release summary of a service is one artifact key whose versions are its runs; a rollback
adds a version that starts with the rollback and keeps the rolled-back release's page below it,
so the Prefect UI's latest version of `release-<scope>` never says a tag is released while
another one serves.
"""

from __future__ import annotations

import datetime as dt
import getpass
import logging
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort
from prefect.context import FlowRunContext

from shipyard.flows.observe.ledger import LedgerEntry, write_entry
from shipyard.tasks.reports import artifact_key, publish_markdown

__all__ = ["latest_markdown", "mark_release_summary", "requested_by", "rollback_reported"]

logger = logging.getLogger("shipyard.rollback")


def requested_by(given: str = "") -> str:
    """Who asked: `given`, else the flow run's creator as Prefect knows it (Prefect Cloud names
    the user), else "Prefect UI / API" for a deployment's run (OSS Prefect knows no users),
    else the local account that ran the command."""
    if given.strip():
        return given.strip()
    ctx = FlowRunContext.get()
    run = ctx.flow_run if ctx is not None else None
    created_by = getattr(run, "created_by", None)
    if created_by is not None and getattr(created_by, "display_value", None):
        return str(created_by.display_value)
    if run is not None and run.deployment_id is not None:
        return "Prefect UI / API (deployment run)"
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no account name in a bare container
        return "unknown"


def latest_markdown(key: str) -> str | None:
    """The newest version of the markdown artifact `key`, if there is one."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[artifact_key(key)])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    data = found[0].data if found else None
    return data if isinstance(data, str) else None


def mark_release_summary(scope: str, banner: list[str], description: str) -> None:
    """A new version of `release-<scope>` (ReleaseTarget.scope): `banner` first, then the page
    it replaces."""
    key = f"release-{scope}"
    earlier = latest_markdown(key)
    page = [*banner]
    if earlier:
        page += ["", "---", "", "_The release page as it was:_", "", earlier]
    publish_markdown("\n".join(page), key=key, description=description)


def rollback_reported(
    result: Any,
    rolled_back: dict[str, Any],
    *,
    by: str,
    comment: str,
    started_at: dt.datetime,
    flow_run_id: str | None,
) -> LedgerEntry:
    """The rollback's summary, ledger row and release-summary version (`result`: the
    RollbackResult; `rolled_back`: the release record before it, what served)."""
    now = dt.datetime.now(dt.UTC)
    at = now.strftime("%Y-%m-%d %H:%M:%S UTC")
    was_tag = rolled_back.get("git_tag") or "-"
    to_tag = result.git_tag or "-"
    why = comment.strip() or "no reason given"
    scope = getattr(result, "scope", "") or result.service  # the keys: ReleaseTarget.scope
    lines = [
        f"# Rollback of `{result.service}`: **ROLLED BACK BY HAND**",
        "",
        f"- **served before**: revision `{result.previous or '-'}` (tag `{was_tag}`, image "
        f"`{rolled_back.get('image') or '-'}`)",
        f"- **serves now**: revision `{result.revision}` at 100% in `{result.region}` (tag "
        f"`{to_tag}`, image `{result.image or '-'}`)",
        f"- **why**: {why}",
        f"- **by**: {by}",
        f"- **when**: {at}",
        f"- URL: {result.url or '-'}",
        f"- to go forward again: release a tag, or `shipyard rollback {scope} --to {was_tag}`",
    ]
    publish_markdown(
        "\n".join(lines),
        key=f"rollback-{scope}",
        description=f"Rollback of {result.service} by hand: {was_tag} -> {to_tag}",
    )
    entry = LedgerEntry(
        service=result.service,
        # The release it rolled back (the change that stops serving); what serves now is in
        # region / revision / image, and the reason says where it went.
        git_tag=str(rolled_back.get("git_tag") or to_tag),
        commit=str(rolled_back.get("commit") or ""),
        outcome="rolled_back_by_hand",
        region=result.region,
        revision=result.revision,
        image=result.image,
        started_at=started_at.isoformat(),
        finished_at=now.isoformat(),
        tagged_at_note="a hand rollback: no lead time",
        seconds=round((now - started_at).total_seconds(), 3),
        rollback_reason=f"rolled back by hand to {to_tag} ({result.revision}): {why}"[:500],
        flow_run_id=flow_run_id,
        by=by,
    )
    write_entry(entry)
    mark_release_summary(
        scope,
        [
            f"# Release {was_tag} of `{result.service}`: **ROLLED BACK BY HAND**",
            "",
            f"Rolled back by hand at {at} to `{to_tag}` (revision `{result.revision}`, 100% in "
            f"`{result.region}`) by {by}: {why}.",
            f"Release {was_tag} (revision `{result.previous or '-'}`) no longer serves.",
        ],
        f"Release {was_tag} of {result.service}: rolled back by hand to {to_tag}",
    )
    return entry
