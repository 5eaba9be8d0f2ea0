"""The release ledger: each release's typed figures, one table artifact per release, under one
stable key per service (`ledger-SERVICE`), so the Prefect UI shows the service's release
history as the versions of that artifact, and `shipyard report` reads them back.

A ledger entry is written for every release that was not a dry run, failed ones included: the
change failure rate needs them, and so does telling the change's failures from the rest.

Outcomes (`OUTCOMES`, one per row):
- `released`: the new revision serves 100% (`noop`: the tag already served);
- `rolled_back`: the release's canary (or a rollout step, or the GPU deploy) failed it, traffic
  stayed on / went back to the last good revision;
- `cpu_fallback`: no region had a GPU, a CPU baseline revision serves;
- `rolled_back_by_hand`: a person ran `rollback` (flows/deploy/rollback.py);
- `cancelled`: a person cancelled the release run (flows/release/cancelled.py);
- `failed_infrastructure`: the release could not reach what it runs on (Google or the sandbox,
  the registry, the Prefect API): a transport error or a transient error whose retries ran out,
  as tasks/errors.py classifies them; nothing is known of the change;
- `failed`: the change itself failed (a build failure, an image fault, a bad configuration).

`CHANGE_FAILURES` are the outcomes DORA's change failure rate counts: a failure of the change.
Rows written before the split stay as they were (an old `failed` stays `failed`).
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import json
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from prefect.artifacts import create_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort
from prefect.utilities.asyncutils import run_coro_as_sync
from pydantic import BaseModel

from shipyard.flows.observe.stage_events import stage_of_step
from shipyard.flows.rollout.journal import compact_steps
from shipyard.tasks.errors import is_transient
from shipyard.tasks.image_lookup import LookupClient
from shipyard.tasks.registry import parse_reference
from shipyard.tasks.reports import artifact_key

__all__ = [
    "CHANGE_FAILURES",
    "OUTCOMES",
    "LedgerChain",
    "LedgerEntry",
    "entry_of",
    "failure_outcome",
    "image_digest",
    "ledger_chain",
    "ledger_key",
    "read_ledger",
    "record_release",
    "write_entry",
]

OUTCOMES = (
    "released",
    "rolled_back",
    "cpu_fallback",
    "rolled_back_by_hand",
    "cancelled",
    "failed_infrastructure",
    "failed",
)
# The failures of the change (DORA's change failure rate): what the change did, not what a person
# chose (a hand rollback, a cancel) nor what the infrastructure did (unreachable, out of retries).
CHANGE_FAILURES = frozenset({"rolled_back", "failed"})

PREFIX = "ledger"
PAGE = 200  # the API's largest page


class LedgerEntry(BaseModel):
    """One release, as the report needs it (flat: one row of the artifact's table)."""

    service: str
    git_tag: str
    commit: str = ""
    outcome: str  # one of OUTCOMES (see the module docstring)
    noop: bool = False
    region: str | None = None
    revision: str | None = None
    image: str | None = None
    started_at: str  # when the release started (the tag's webhook fires it)
    finished_at: str  # when traffic was settled (100% on the new or the kept revision)
    # When the tag was made, where the lead time starts (flows/release/tag_time.py): `push` (the
    # webhook's push time), `git-tag` (the tag's date in git) or `release-start` (unknown: the
    # release's start stands in, `tagged_at_note` says why; an entry without it counts the same).
    tagged_at: str | None = None
    tagged_at_source: str = "release-start"
    tagged_at_note: str = ""
    seconds: float = 0.0
    stage_seconds: dict[str, float] = {}
    retries: int = 0
    cache_hit_rate: float | None = None
    pull_bytes: int | None = None
    canary_p50_ms: float | None = None
    canary_p95_ms: float | None = None
    canary_first_ms: float | None = None
    speedup: float | None = None
    baseline_ms: float | None = None
    remote_503_rate: float | None = None
    rollback_reason: str = ""
    flow_run_id: str | None = None
    # The run killed past its cutover (no row of its own) whose release this row records: a
    # re-run that found the tag serving completes it (flows/release/record.py). Such a row is the
    # change, not a no-op, and carries the killed run's image, build and tag time.
    completes_run: str | None = None
    # The rollout's steps after the canary, "10:pass,50:approved by ana,50:pass,100:pass"
    # (flows/rollout/journal.py compact_steps; empty: one cutover).
    steps: str = ""
    # Who chose the outcome: the person behind a hand rollback or a cancel ("" for a release).
    by: str = ""
    # The pipeline of targets (flows/promotion/): the release's environment (ReleaseTarget.
    # environment; None: outside any pipeline) and target block, the release of the stage before
    # it that this one promoted ("digit-staging/<flow run id>"; "": built from the tag), and the
    # image's digest ("sha256:..."; resolved from the registry when the image was given by tag).
    environment: str | None = None
    target: str = ""
    promoted_from: str = ""
    digest: str | None = None


@dataclass(frozen=True)
class LedgerChain:
    """Where a release stands in the pipeline of targets, for its ledger row: its environment,
    its target block's name and the release it promotes ("block/flow-run-id", or "")."""

    environment: str | None = None
    target: str = ""
    promoted_from: str = ""


_CHAIN: contextvars.ContextVar[LedgerChain | None] = contextvars.ContextVar(
    "shipyard_ledger_chain", default=None
)


@contextmanager
def ledger_chain(chain: LedgerChain) -> Iterator[None]:
    """The rows written inside (a release's) carry `chain` (flows/release/flow.py sets it)."""
    token = _CHAIN.set(chain)
    try:
        yield
    finally:
        _CHAIN.reset(token)


def image_digest(image: str | None, timeout: float = 10.0) -> str | None:
    """The digest ("sha256:...") of an image reference: its own when pinned, else what the
    registry answers for its tag (one attempt, within `timeout`; None when it cannot say)."""
    if not image:
        return None
    try:
        ref = parse_reference(image, field="image")
    except ValueError:
        return None
    if ref.digest:
        return ref.digest

    async def ask() -> str | None:
        client = LookupClient(
            ref.registry, None, base_url=ref.base_url, max_attempts=1, timeout=timeout
        )
        async with client:
            return await client.manifest_digest(ref.repository, ref.reference)

    async def bounded() -> str | None:
        return await asyncio.wait_for(ask(), timeout)

    try:
        return run_coro_as_sync(bounded())
    except Exception as exc:  # noqa: BLE001 - the row is written without it; promotion refuses it
        logging.getLogger("shipyard.ledger").warning(
            "digest of %s not resolved: %s", image, type(exc).__name__
        )
        return None


def failure_outcome(error: BaseException | None) -> str:
    """`failed_infrastructure` when the release stopped because something it runs on could not
    be reached: the error, or an error it was raised from, is transient by tasks/errors.py (a
    transport error, a 5xx, a rate limit whose retries ran out); `failed` otherwise (the change
    or its configuration: a verdict, a 4xx, a build failure). An interrupt is not the change's
    either: Ctrl-C is `cancelled`, a terminated process `failed_infrastructure`."""
    if isinstance(error, KeyboardInterrupt):
        return "cancelled"  # Ctrl-C: a person stopped it
    if error is not None and not isinstance(error, Exception):
        return "failed_infrastructure"  # the process was stopped (SIGTERM, a drained node)
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen and len(seen) < 20:
        seen.add(id(current))
        if is_transient(current):
            return "failed_infrastructure"
        # google-api-core's RetryError keeps the last error as `cause`.
        cause = current.__cause__ or getattr(current, "cause", None)
        if cause is None and not current.__suppress_context__:
            cause = current.__context__
        current = cause if isinstance(cause, BaseException) else None
    return "failed"


def ledger_key(service: str) -> str:
    return artifact_key(PREFIX, service)


def entry_of(
    result: Any,
    *,
    failed: bool,
    finished_at: dt.datetime | None = None,
    completes: str | None = None,
    error: BaseException | None = None,
    commit: str = "",
) -> LedgerEntry:
    """The ledger entry of a ReleaseResult (flows/release/result.py); `completes`: the killed
    run whose release this run completed (its row counts as the change); `error`: what stopped
    a failed release (it decides `failed` or `failed_infrastructure`); `commit`: the commit
    released when no build says it (an image given with its commit, a killed run's)."""
    stage_seconds: dict[str, float] = {}
    retries = 0
    for step in result.steps:
        retries += max(0, step.attempts - 1)
        name, _, _ = stage_of_step(step.name)
        name = name or step.name
        stage_seconds[name] = round(stage_seconds.get(name, 0.0) + step.seconds, 3)
    build, canary = result.build, result.canary
    # The first canary request meets a cold instance: its step time is the cold-start figure.
    first = next((s for s in result.steps if s.name in ("canary-run-1", "canary-run")), None)
    outcome = failure_outcome(error) if failed else result.outcome
    tagged = result.tag_time
    reason = ""
    if outcome in ("rolled_back", "failed", "failed_infrastructure", "cpu_fallback"):
        reason = "; ".join(result.reasons)[:500]
    return LedgerEntry(
        service=result.service,
        git_tag=result.git_tag,
        commit=(build.commit if build else "") or commit,
        outcome=outcome,
        noop=result.noop and completes is None,
        region=result.region,
        revision=result.revision,
        image=result.image,
        started_at=result.started_at,
        finished_at=(finished_at or dt.datetime.now(dt.UTC)).isoformat(),
        tagged_at=tagged.at if tagged else None,
        tagged_at_source=tagged.source if tagged else "release-start",
        tagged_at_note=tagged.note if tagged else "",
        seconds=result.seconds,
        stage_seconds=stage_seconds,
        retries=retries,
        cache_hit_rate=build.hit_rate if build and not build.reused else None,
        pull_bytes=build.pull_bytes if build else None,
        canary_p50_ms=canary.p50_ms if canary else None,
        canary_p95_ms=canary.p95_ms if canary else None,
        canary_first_ms=round(first.seconds * 1000, 1) if first else None,
        speedup=canary.speedup if canary else None,
        baseline_ms=canary.baseline_ms if canary else None,
        remote_503_rate=canary.remote_503_rate if canary else None,
        rollback_reason=reason,
        flow_run_id=result.flow_run_id,
        completes_run=completes,
        steps=compact_steps(getattr(result, "rollout_steps", [])),
        **_chain_fields(result.image),
    )


def _chain_fields(image: str | None) -> dict[str, Any]:
    chain = _CHAIN.get() or LedgerChain()
    digest = None
    if image and "@sha256:" in image:
        digest = image.rsplit("@", 1)[1]
    return {
        "environment": chain.environment,
        "target": chain.target,
        "promoted_from": chain.promoted_from,
        "digest": digest,
    }


def write_entry(entry: LedgerEntry) -> None:
    """Add the entry to the service's ledger (a new version of artifact `ledger-SERVICE`); an
    entry written inside `ledger_chain` (a release, a hand rollback) without an environment gets
    the chain's environment and target."""
    chain = _CHAIN.get()
    if chain is not None and entry.environment is None and chain.environment:
        entry = entry.model_copy(
            update={"environment": chain.environment, "target": entry.target or chain.target}
        )
    create_table_artifact(
        table=[entry.model_dump(mode="json")],
        key=ledger_key(entry.service),
        description=f"Release {entry.git_tag} of {entry.service}: {entry.outcome}",
    )


def record_release(
    result: Any,
    failed: bool,
    completes: str | None = None,
    *,
    error: BaseException | None = None,
    commit: str = "",
) -> LedgerEntry | None:
    """Ledger entry of a finished release (not of a dry run). A failed release's entry must not
    hide the release's own error: then a ledger error is only logged."""
    if result.dry_run:
        return None
    try:
        entry = entry_of(result, failed=failed, completes=completes, error=error, commit=commit)
        if entry.digest is None and entry.image:  # given by tag: the digest it meant then
            entry.digest = image_digest(entry.image)
        write_entry(entry)
    except Exception as exc:  # re-raised below unless the release failed
        if not failed:
            raise
        logging.getLogger("shipyard.ledger").warning("ledger entry not written: %s", exc)
        return None
    return entry


def read_ledger(service: str | None = None, since: dt.datetime | None = None) -> list[LedgerEntry]:
    """Every ledger entry (of one service, started at or after `since`), oldest first."""
    key = (
        ArtifactFilterKey(any_=[ledger_key(service)])
        if service
        else ArtifactFilterKey(like_=f"{PREFIX}-")
    )
    entries: list[LedgerEntry] = []
    with get_client(sync_client=True) as client:
        offset = 0
        while True:
            page = client.read_artifacts(
                artifact_filter=ArtifactFilter(key=key),
                sort=ArtifactSort.CREATED_DESC,
                limit=PAGE,
                offset=offset,
            )
            entries.extend(_entries(a.data for a in page if a.key and a.key.startswith(PREFIX)))
            if len(page) < PAGE:
                break
            oldest = _started(entries[-1]) if entries else None
            if since is not None and oldest is not None and oldest < since:
                break  # newest first: everything further is older
            offset += PAGE
    if since is not None:
        entries = [e for e in entries if _started(e) >= since]
    entries.sort(key=lambda e: (e.started_at, e.finished_at))
    return entries


def _entries(datas: Iterable[Any]) -> Iterable[LedgerEntry]:
    for data in datas:
        rows = json.loads(data) if isinstance(data, str) else data
        for row in rows or []:
            try:
                yield LedgerEntry.model_validate(row)
            except ValueError:
                continue  # a foreign artifact under a ledger- key: not ours


def _started(entry: LedgerEntry) -> dt.datetime:
    when = dt.datetime.fromisoformat(entry.started_at)
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)
