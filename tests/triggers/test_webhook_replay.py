"""Deduplication that must hold across receivers, through the real dispatcher and trigger:
a replayed deletion cannot re-arm a tag, an old commit is never released twice for a tag, a
`create` before its `push` runs once with the push's commit, claims expire."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from prefect.client.orchestration import get_client
from test_webhook_trigger import _runs_for, _settle_with_sentinel, new_tag, tag_is
from trigger_hooks import Delivery, github_create, github_push, journal_state, runs_of, sha

pytestmark = pytest.mark.slow


def _runs(release, tag):
    async def read():
        async with get_client() as client:
            return await runs_of(client, release.id, tag_is(tag))

    return asyncio.run(read())


def test_replayed_deletion_and_old_commit_release_nothing(
    receiver, block_receiver, deployed, webhook_secret
):
    release = deployed["release"]
    tag, first, second = new_tag(), sha(), sha()
    push_first = Delivery(github_push(tag, commit=first), secret=webhook_secret)
    deletion = Delivery(github_push(tag, deleted=True), secret=webhook_secret)
    assert receiver.send(push_first).json()["status"] == "accepted"
    asyncio.run(_runs_for(release, tag))
    assert receiver.send(deletion).status_code == 202
    assert journal_state(receiver, deletion.delivery_id) == "done"

    # A deleted tag pushed again at a new commit releases again.
    push_second = Delivery(github_push(tag, commit=second), secret=webhook_secret)
    assert receiver.send(push_second).json()["status"] == "accepted"
    assert len(asyncio.run(_runs_for(release, tag, count=2))) == 2

    # An attacker replays the captured deletion and first push under fresh delivery ids, on
    # the other receiver (its own journal: only the claims in Prefect know them).
    for captured in (deletion, push_first):
        replay = Delivery(captured.payload, secret=webhook_secret, body=captured.request()[0])
        assert block_receiver.send(replay).status_code == 202
        assert journal_state(block_receiver, replay.delivery_id) == "duplicate"
    # A different deletion (signed, e.g. a later real one) followed by a push of an old
    # commit: the commit was released for this tag before, so nothing runs.
    later_deletion = Delivery(github_push(tag, deleted=True), secret=webhook_secret)
    assert block_receiver.send(later_deletion).status_code == 202
    assert journal_state(block_receiver, later_deletion.delivery_id) == "done"
    old_push = {**github_push(tag, commit=first), "pusher": {"name": "someone-else"}}
    old_commit = Delivery(old_push, secret=webhook_secret)  # not the captured bytes
    assert block_receiver.send(old_commit).status_code == 202
    assert journal_state(block_receiver, old_commit.delivery_id) == "refused"

    asyncio.run(_settle_with_sentinel(block_receiver, release, webhook_secret))
    runs = _runs(release, tag)
    assert sorted(r.parameters["commit"] for r in runs) == sorted([first, second])


def test_create_before_push_runs_once_with_the_commit(receiver, deployed, webhook_secret):
    release = deployed["release"]
    tag, commit = new_tag(), sha()
    created = receiver.send(Delivery(github_create(tag), "create", secret=webhook_secret))
    pushed = receiver.send(Delivery(github_push(tag, commit=commit), secret=webhook_secret))
    assert created.json()["status"] == pushed.json()["status"] == "accepted"
    runs = asyncio.run(_runs_for(release, tag))
    asyncio.run(_settle_with_sentinel(receiver, release, webhook_secret))
    runs = _runs(release, tag)
    assert [r.parameters["commit"] for r in runs] == [commit]


def test_claims_expire_and_are_cleaned(deployed):
    from shipyard.deployments.webhook.claims import Claims, claim_name

    async def scenario():
        async with get_client() as client:
            claims = Claims(client)
            old = claim_name("delivery", "github", f"old-{uuid.uuid4()}")
            fresh = claim_name("delivery", "github", f"fresh-{uuid.uuid4()}")
            assert await claims.claim(old, "n1", {}, keep_s=-1) is None
            assert await claims.claim(fresh, "n2", {}, keep_s=3600) is None
            assert await claims.clean_expired() >= 1
            return (
                await client.read_variable_by_name(old),
                await client.read_variable_by_name(fresh),
            )

    old, fresh = asyncio.run(scenario())
    assert old is None
    assert fresh is not None and fresh.value["claim"] == "n2"
