"""When the release's git tag was made: where DORA's lead time (tag to 100 %) starts.

In order: the time the release was given (the webhook passes the push's timestamp when GitHub
sends one, `repository.pushed_at`), else the tag's own date in the git source the build
fetches (an annotated tag's tagger date, a lightweight tag's commit date), else the release's
start, and then the ledger row says so (`tagged_at_source: release-start` and why): the lead
time of such a release is counted from its start, which is shorter than the truth.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal, cast

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from shipyard.blocks.build_settings import BuildSettings
from shipyard.blocks.release_target import ReleaseTarget
from shipyard.flows.release.steps import StepLog, note_attempt
from shipyard.tasks import git_source as git
from shipyard.tasks.errors import retry_condition_fn

__all__ = ["TagTime", "parse_given", "tag_time"]

TagTimeSource = Literal["push", "git-tag", "release-start"]


class TagTime(BaseModel):
    at: str  # ISO 8601, with its offset
    source: TagTimeSource
    note: str = ""  # why the release start stands in for the tag's time


def parse_given(value: str) -> dt.datetime:
    """An ISO 8601 time (a naive one is UTC) or Unix seconds, as webhooks send them."""
    text = value.strip()
    if text.replace(".", "", 1).isdigit():
        return dt.datetime.fromtimestamp(float(text), dt.UTC)
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"tagged_at={value!r} is not a time: give ISO 8601 (2026-02-12T09:30:00Z) or Unix "
            "seconds, or leave it empty to read the tag's date from the git source"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


@task(name="tag-time", cache_policy=NO_CACHE, persist_result=False)
def tag_time_step(settings_block: str | None, git_tag: str) -> str | None:
    """The tag's date in the build's git source (None: no git source is configured)."""
    note_attempt()
    settings = cast(BuildSettings, BuildSettings.load(settings_block)) if settings_block else None
    settings = settings or BuildSettings()
    if not settings.public_git_url():
        return None
    # The URL with its token (git_credentials_secret) only here, for git: its errors are redacted.
    return git.tag_time(settings.resolved_git_url(), git_tag).isoformat()


def tag_time(
    steps: StepLog, target: ReleaseTarget, git_tag: str, given: str, started_at: str
) -> TagTime:
    """The tag's time for the ledger; never fails the release (see the module docstring)."""
    if given:
        return TagTime(at=parse_given(given).isoformat(), source="push")
    with steps.inline("tag-time") as info:
        try:
            at = tag_time_step.with_options(
                retries=target.retries,
                retry_delay_seconds=target.retry_delays(),
                retry_condition_fn=retry_condition_fn,
            )(target.build_settings_block, git_tag)
        except Exception as exc:  # noqa: BLE001 - a missing date only weakens one figure
            at, why = None, git.redact_credentials(str(exc)).splitlines()[0][:300]
        else:
            why = "no git source (BuildSettings.git_url, SHIPYARD_GIT_URL) to read it from"
        info["detail"] = at or f"unknown, lead time counted from the release start: {why}"
    if at is None:
        return TagTime(at=started_at, source="release-start", note=f"tag date unknown: {why}")
    return TagTime(at=at, source="git-tag")
