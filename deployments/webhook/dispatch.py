"""From the journal to Prefect, in the background: claims, the event, and what became of it.

For each journal row, in order per tag (webhook_journal.py), with retries that never give up
on a transient error (exponential backoff up to `retry_max_s`):

- a push: claim its delivery id, its signed body, the tag, then the tag's commit
  (webhook_claims.py); all ours -> emit `shipyard.git.tag.pushed` (the event id is derived
  from the delivery id, so an emission retried after a crash is the same event, which
  Prefect's trigger service counts once);
- a deletion: claim its delivery id and signed body (once), then remove the tag's claim.

`Redrive` follows each emitted event until Prefect records what its trigger action did:
Prefect does not retry an action that failed on the server (e.g. `database is locked` on a
busy SQLite server), it records `prefect.automation.action.failed` with the event as
`triggering-event`; a failed action created no run, so the event is emitted again (new id,
same payload, `attempt` counted). Pending outcomes are journal rows, so a restarted
receiver keeps watching them.

`Routes` names, in the event's resource label `shipyard.deployment`, the release deployment that
takes it: `release-<target>` when the fleet has one (`shipyard fleet deploy`), else `release`.
Each release trigger matches only its own label, so one delivery makes exactly one run.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from typing import Any

from shipyard.blocks.release_tag import shown
from shipyard.deployments.fleet import RELEASE_DEPLOYMENT, full_name, release_deployment_name
from shipyard.deployments.webhook.claims import Claims, claim_name
from shipyard.deployments.webhook.journal import Journal, Row
from shipyard.deployments.webhook.settings import WebhookSettings

ACTION_EXECUTED = "prefect.automation.action.executed"
ACTION_FAILED = "prefect.automation.action.failed"

logger = logging.getLogger("shipyard.webhook")


class Permanent(Exception):
    """Prefect refused a request for good (a 4xx other than 408/409/429)."""


def _permanent(exc: BaseException) -> bool:
    from prefect.exceptions import PrefectHTTPStatusError

    if isinstance(exc, PrefectHTTPStatusError):
        code = exc.response.status_code
        return 400 <= code < 500 and code not in (408, 409, 429)
    return isinstance(exc, Permanent)


class Routes:
    """target -> the release deployment that takes its deliveries, looked up through the Prefect
    API and cached for `ttl_s` (a fleet deployed or removed is followed within that time).

    Off the accept path: only the dispatcher asks, in the background. One lookup per target at
    a time (the others wait for its answer), each within `timeout_s`. A lookup that fails keeps
    the last answer while there is one; with none, it raises and the row is retried (never
    routed to `release` by guess: if `release-<target>` exists, `release` would run the target
    outside its queue)."""

    def __init__(self, client: Any, ttl_s: float = 30.0, timeout_s: float = 5.0):
        self.client = client
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._cache: dict[str, tuple[str, float]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def deployment_for(self, target: str) -> str:
        cached = self._cache.get(target)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        async with self._locks.setdefault(target, asyncio.Lock()):
            cached = self._cache.get(target)
            if cached is not None and cached[1] > time.monotonic():
                return cached[0]
            try:
                found = await self._lookup(target)
            except Exception as exc:  # re-raised below when there is no last answer to keep
                if cached is None:
                    raise
                logger.warning(
                    "routing: cannot look up the deployment of target %s (%s); keeping %s",
                    shown(target),
                    type(exc).__name__,
                    cached[0],
                )
                found = cached[0]
            self._cache[target] = (found, time.monotonic() + self.ttl_s)
            return found

    async def _lookup(self, target: str) -> str:
        from prefect.exceptions import ObjectNotFound

        try:
            async with asyncio.timeout(self.timeout_s):
                await self.client.read_deployment_by_name(full_name(target))
        except ObjectNotFound:
            return RELEASE_DEPLOYMENT
        return release_deployment_name(target)


class Dispatcher:
    """Drains the journal into Prefect; `wake()` after a new row for a prompt start."""

    def __init__(self, journal: Journal, settings: WebhookSettings, client: Any):
        self.journal = journal
        self.settings = settings
        self.client = client
        self.claims = Claims(client)
        self.routes = Routes(client)
        self.redrive = Redrive(self)
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(settings.dispatch_parallel)

    def wake(self) -> None:
        self._wake.set()

    async def run_forever(self) -> None:
        while True:
            self._wake.clear()
            try:
                rows = await self.journal.call(self.journal.lease_due)
            except Exception as exc:  # noqa: BLE001 - the disk; try again
                logger.error("journal: cannot read (%s)", type(exc).__name__)
                rows = []
            if rows:
                await asyncio.gather(*(self._one(row) for row in rows))
                continue  # the next row of each tag may be due now
            with contextlib.suppress(TimeoutError):  # no wake-up: look at the journal again
                await asyncio.wait_for(self._wake.wait(), timeout=0.5)

    async def _one(self, row: Row) -> None:
        async with self._slots:
            try:
                state, detail = await self.handle(row)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified, logged in one line
                reason = f"{type(exc).__name__}: {shown(str(exc), 120)}"
                if _permanent(exc):
                    await self.journal.call(self.journal.settle, row.seq, "failed", reason)
                    logger.error(
                        "delivery %s: Prefect refused it (%s); release %s by hand",
                        shown(row.push.delivery_id),
                        reason,
                        shown(row.push.tag),
                    )
                    return
                delay = min(
                    self.settings.retry_max_s, self.settings.retry_first_s * 2**row.attempts
                )
                await self.journal.call(self.journal.retry_later, row.seq, delay, reason)
                logger.warning(
                    "delivery %s: Prefect call failed (%s); retrying in %.1f s",
                    shown(row.push.delivery_id),
                    type(exc).__name__,
                    delay,
                )
                return
        await self.journal.call(self.journal.settle, row.seq, state, detail)
        logger.info(
            "delivery %s -> %s %s%s",
            shown(row.push.delivery_id),
            state,
            shown(row.push.tag),
            f" ({detail})" if detail else "",
        )

    async def handle(self, row: Row) -> tuple[str, str | None]:
        """(final state, detail) of one row; raises on a failed Prefect call (retried)."""
        push, s = row.push, self.settings
        record = {
            "delivery_id": push.delivery_id,
            "provider": push.provider,
            "event_id": str(push.event_id),
            "repository": push.repository,
            "tag": push.tag,
            "commit": push.commit,
            "kind": row.kind,
        }
        if row.state == "pending":
            for name in (
                claim_name("delivery", push.provider, push.delivery_id),
                claim_name("body", row.body_digest),
            ):
                held = await self.claims.claim(name, row.nonce, record, s.delivery_retention_s)
                if held is not None:
                    return "duplicate", "received before, by this or another receiver"
            tag_claim = claim_name("tag", push.repository, push.tag)
            if row.kind == "delete":
                await self.claims.release(tag_claim)
                return "done", "tag deleted: a push of a new commit releases it again"
            held = await self.claims.claim(tag_claim, row.nonce, record, s.tag_retention_s)
            if held is not None:
                return (
                    "duplicate",
                    f"the tag already triggered a release (commit {held.get('commit')})",
                )
            commit_claim = claim_name("commit", push.repository, push.tag, push.commit or "create")
            held = await self.claims.claim(commit_claim, row.nonce, record, s.tag_retention_s)
            if held is not None:
                await self.claims.release(tag_claim, row.nonce)
                return "refused", (
                    "this commit of the tag was released before: a re-release needs a new commit"
                )
            await self.journal.call(self.journal.settle, row.seq, "emit")
        deployment = await self.routes.deployment_for(push.target)
        await self.client.request("POST", "/events", json=[push.event(deployment)])
        return "emitted", None if deployment == RELEASE_DEPLOYMENT else f"to {deployment}"


class Redrive:
    """Follows emitted events (journal rows in `emitted`) to their trigger's outcome."""

    def __init__(self, dispatcher: Dispatcher):
        self.dispatcher = dispatcher
        self.settings = dispatcher.settings

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.confirm_every_s)
            try:
                await self.check()
            except Exception as exc:  # noqa: BLE001 - try again next round
                logger.warning("redrive: cannot read outcomes (%s)", type(exc).__name__)

    async def outcomes(self, watched: list[tuple[Row, float]]) -> dict[str, set[str]]:
        """{event id: names of the action outcome events that name it as triggering-event}."""
        from prefect.events.filters import (
            EventFilter,
            EventNameFilter,
            EventOccurredFilter,
            EventRelatedFilter,
        )

        client = self.dispatcher.client
        oldest = min(at for _, at in watched)
        since = dt.datetime.fromtimestamp(oldest - 120, dt.UTC)
        ids = [str(row.push.event_id) for row, _ in watched]
        found: dict[str, set[str]] = {}
        for start in range(0, len(ids), 50):
            page = await client.read_events(
                filter=EventFilter(
                    event=EventNameFilter(name=[ACTION_EXECUTED, ACTION_FAILED]),
                    related=EventRelatedFilter(
                        id=[f"prefect.event.{e}" for e in ids[start : start + 50]]
                    ),
                    occurred=EventOccurredFilter.model_validate({"since": since}),
                ),
                limit=50,
            )
            while True:
                for event in page.events:
                    for related in event.related:
                        if related.role == "triggering-event":
                            event_id = related.id.removeprefix("prefect.event.")
                            found.setdefault(event_id, set()).add(event.event)
                if not page.next_page:
                    break
                page = await client.read_events_page(page.next_page)
        return found

    async def check(self) -> None:
        journal = self.dispatcher.journal
        watched = await journal.call(journal.emitted)
        if not watched:
            return
        outcomes = await self.outcomes(watched)
        now = time.time()
        for row, since in watched:
            push = row.push
            got = outcomes.get(str(push.event_id), set())
            if ACTION_EXECUTED in got:
                await journal.call(journal.settle, row.seq, "done")
            elif ACTION_FAILED in got:
                if push.attempt + 1 >= self.settings.max_attempts:
                    await journal.call(journal.settle, row.seq, "failed", "trigger action failed")
                    logger.error(
                        "delivery %s: trigger action failed %d times for %s; giving up "
                        "(run the release by hand)",
                        shown(push.delivery_id),
                        push.attempt + 1,
                        shown(push.tag),
                    )
                    continue
                await journal.call(journal.emit_again, row.seq)
                self.dispatcher.wake()
                logger.warning(
                    "delivery %s: trigger action failed for event %s; emitting it again",
                    shown(push.delivery_id),
                    push.event_id,
                )
            elif now - since > self.settings.confirm_for_s:
                await journal.call(journal.settle, row.seq, "done", "no trigger outcome reported")
                logger.warning(
                    "delivery %s: no trigger reported on event %s within %.0f s",
                    shown(push.delivery_id),
                    push.event_id,
                    self.settings.confirm_for_s,
                )


async def clean_forever(dispatcher: Dispatcher) -> None:
    """Expired claim Variables and old finished journal rows, at start and then hourly."""
    settings = dispatcher.settings
    while True:
        try:
            await dispatcher.claims.clean_expired()
            await dispatcher.journal.call(
                dispatcher.journal.forget_before, time.time() - settings.delivery_retention_s
            )
        except Exception as exc:  # noqa: BLE001 - next round
            logger.warning("cleanup: %s", type(exc).__name__)
        await asyncio.sleep(settings.cleanup_every_s)
