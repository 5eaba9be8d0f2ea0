"""Real HTTP to `shipyard webhook serve`, real events, the real `release` deployment trigger.

A run created by the trigger stays Scheduled (no worker): the tests assert on the runs and
their parameters, never on a release outcome. Events are consumed in order by the server,
so "no run for a bad request" is checked by sending a valid sentinel afterwards and waiting
for its run: anything the bad requests had emitted would have been turned into runs first.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import uuid

import httpx
import pytest
from prefect.client.orchestration import get_client
from trigger_hooks import (
    REPOSITORY,
    Delivery,
    github_create,
    github_push,
    gitlab_tag_push,
    journal_state,
    runs_of,
    sha,
    wait_for_runs,
)

from shipyard.deployments.webhook.parse import TagPush

pytestmark = pytest.mark.slow  # with test_deployments: ~40 s beyond the session server

_major = random.randint(100, 999)
_minor = itertools.count(1)


def new_tag() -> str:
    return f"v{_major}.{next(_minor)}.0"


def tag_is(tag: str):
    return lambda run: run.parameters.get("git_tag") == tag


async def _runs_for(deployment, tag: str, count: int = 1):
    async with get_client() as client:
        return await wait_for_runs(client, deployment.id, tag_is(tag), count)


async def _settle_with_sentinel(receiver, deployment, secret: str) -> None:
    """Send one more valid tag and wait for its run: everything emitted before is a run now."""
    tag = new_tag()
    assert receiver.send(Delivery(github_push(tag), secret=secret)).status_code == 202
    assert len(await _runs_for(deployment, tag)) == 1, f"sentinel {tag} made no run"


def test_signed_tag_push_creates_one_release_run(receiver, deployed, webhook_secret):
    release = deployed["release"]
    tag, commit = new_tag(), sha()
    delivery = Delivery(github_push(tag, commit=commit), secret=webhook_secret)

    response = receiver.send(delivery)

    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "accepted"
    assert body["tag"] == tag and body["commit"] == commit
    assert uuid.UUID(body["event_id"])
    assert webhook_secret not in response.text

    async def check():
        runs = await _runs_for(release, tag)
        assert len(runs) == 1, f"expected one release run for {tag}, got {len(runs)}"
        await _settle_with_sentinel(receiver, release, webhook_secret)
        async with get_client() as client:
            runs = await runs_of(client, release.id, tag_is(tag))
            event = await _event(client, body["event_id"])
        return runs, event

    runs, event = asyncio.run(check())
    assert len(runs) == 1, f"{tag} made {len(runs)} runs"
    run = runs[0]
    assert run.parameters["git_tag"] == tag
    assert run.parameters["commit"] == commit
    assert run.parameters["tagged_at"] == "2026-02-12T09:30:00+00:00"  # the push's time
    assert run.parameters["target"] == "default"
    assert run.parameters["dry_run"] is False
    assert run.state.type.value == "SCHEDULED"
    assert run.created_by is not None and run.created_by.type == "AUTOMATION"
    # The one event, as the receiver emitted it.
    assert event["event"] == "shipyard.git.tag.pushed"
    assert event["resource"]["prefect.resource.id"] == f"shipyard.repo.{REPOSITORY}"
    assert event["payload"] == {
        "tag": tag,
        "commit": commit,
        "repository": REPOSITORY,
        "target": "default",
        "delivery_id": delivery.delivery_id,
        "provider": "github",
        "ref": f"refs/tags/{tag}",
        "tagged_at": "2026-02-12T09:30:00+00:00",
    }
    assert webhook_secret not in json.dumps(event)


async def _event(client, event_id: str, timeout: float = 30.0) -> dict:
    """The persisted event (the persister writes in batches: poll with a deadline)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = await client.request(
            "POST", "/events/filter", json={"filter": {"id": {"id": [event_id]}}, "limit": 5}
        )
        events = response.json().get("events", [])
        if events:
            assert len(events) == 1
            return events[0]
        await asyncio.sleep(0.2)
    raise AssertionError(f"event {event_id} was never persisted")


def _oversized(secret: str) -> Delivery:
    payload = github_push(new_tag())
    payload["padding"] = "x" * (1024 * 1024)
    return Delivery(payload, secret=secret)


BAD_REQUESTS = {
    # name: (builder(secret) -> Delivery, expected status)
    "missing signature": (lambda s: Delivery(github_push(new_tag()), secret=None), 401),
    "wrong signature": (lambda s: Delivery(github_push(new_tag()), secret=s + "-not"), 401),
    "gitlab wrong token": (
        lambda s: Delivery(gitlab_tag_push(new_tag()), "Tag Push Hook", "gitlab", secret="x"),
        401,
    ),
    "branch push": (lambda s: Delivery(github_push(branch="main"), secret=s), 202),
    "tag deletion": (lambda s: Delivery(github_push(new_tag(), deleted=True), secret=s), 202),
    "gitlab branch push": (
        lambda s: Delivery(
            {"object_kind": "push", "ref": "refs/heads/main"}, "Push Hook", "gitlab", secret=s
        ),
        202,
    ),
    "tag not semver": (lambda s: Delivery(github_push("nightly-2024"), secret=s), 422),
    "tag without patch": (lambda s: Delivery(github_push("v1.2"), secret=s), 422),
    "body above 1 MiB": (_oversized, 413),
    "form without payload field": (
        lambda s: Delivery(
            github_push(new_tag()), secret=s, content_type="application/x-www-form-urlencoded"
        ),
        400,
    ),
    "text content type": (
        lambda s: Delivery(github_push(new_tag()), secret=s, content_type="text/plain"),
        415,
    ),
    "malformed json": (lambda s: Delivery(None, secret=s, body=b'{"ref": "refs/tags/v1.'), 400),
    "json not an object": (lambda s: Delivery(["refs/tags/v1.2.3"], secret=s), 400),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_request_gets_its_status(receiver, webhook_secret, name):
    build, expected = BAD_REQUESTS[name]
    response = receiver.send(build(webhook_secret))
    assert response.status_code == expected, f"{name}: {response.status_code} {response.text}"
    body = response.json()
    assert body["status"] in {"rejected", "ignored"}, body
    assert body.get("detail"), body
    assert "event_id" not in body
    assert webhook_secret not in response.text


def test_streamed_body_above_limit_is_413_without_content_length(receiver, webhook_secret):
    """A chunked upload states no Content-Length: the receiver counts what it reads."""
    delivery = _oversized(webhook_secret)
    body, headers = delivery.request()

    def chunks():
        for i in range(0, len(body), 64 * 1024):
            yield body[i : i + 64 * 1024]

    response = httpx.post(receiver.url, content=chunks(), headers=headers, timeout=30)
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert response.status_code == 413, response.text


def test_bad_requests_create_no_run(receiver, deployed, webhook_secret):
    release = deployed["release"]

    async def count() -> int:
        async with get_client() as client:
            return len(await runs_of(client, release.id))

    before = asyncio.run(count())
    statuses = {
        name: receiver.send(build(webhook_secret)).status_code
        for name, (build, _) in BAD_REQUESTS.items()
    }
    assert statuses == {name: expected for name, (_, expected) in BAD_REQUESTS.items()}
    asyncio.run(_settle_with_sentinel(receiver, release, webhook_secret))
    assert asyncio.run(count()) == before + 1, "a bad request created a release run"


def test_redelivery_runs_once_on_any_receiver(receiver, block_receiver, deployed, webhook_secret):
    """The receiver that journaled a delivery answers its redelivery 409 at once; another
    receiver (own journal, its secret from the Secret block) accepts it into its journal,
    and its dispatcher finds the delivery's claim in Prefect taken: still one run."""
    release = deployed["release"]
    tag = new_tag()
    delivery = Delivery(github_push(tag), secret=webhook_secret)
    first = receiver.send(delivery)
    elsewhere = block_receiver.send(delivery)
    same_place = receiver.send(delivery)

    assert first.status_code == 202, first.text
    assert elsewhere.status_code == 202, elsewhere.text
    assert same_place.status_code == 409
    assert "already received" in same_place.json()["detail"]

    async def check():
        assert len(await _runs_for(release, tag)) == 1
        await _settle_with_sentinel(block_receiver, release, webhook_secret)
        async with get_client() as client:
            return await runs_of(client, release.id, tag_is(tag))

    assert len(asyncio.run(check())) == 1
    assert journal_state(block_receiver, delivery.delivery_id) == "duplicate"


def test_github_create_and_push_of_one_tag_make_one_run(receiver, deployed, webhook_secret):
    """GitHub sends both `create` and `push` for a new tag when both events are subscribed."""
    release = deployed["release"]
    tag, commit = new_tag(), sha()
    pushed = receiver.send(Delivery(github_push(tag, commit=commit), secret=webhook_secret))
    created = receiver.send(Delivery(github_create(tag), "create", secret=webhook_secret))
    assert pushed.status_code == 202 and pushed.json()["status"] == "accepted"
    assert created.status_code == 202 and created.json()["status"] == "duplicate"
    assert created.json()["event_id"] == pushed.json()["event_id"]

    async def check():
        await _runs_for(release, tag)
        await _settle_with_sentinel(receiver, release, webhook_secret)
        async with get_client() as client:
            return await runs_of(client, release.id, tag_is(tag))

    runs = asyncio.run(check())
    assert [r.parameters["commit"] for r in runs] == [commit]


def test_deleted_then_repushed_tag_releases_again(receiver, deployed, webhook_secret):
    release = deployed["release"]
    tag, first_commit, second_commit = new_tag(), sha(), sha()
    send = receiver.send
    assert (
        send(Delivery(github_push(tag, commit=first_commit), secret=webhook_secret)).json()[
            "status"
        ]
        == "accepted"
    )
    deleted = send(Delivery(github_push(tag, deleted=True), secret=webhook_secret))
    assert deleted.status_code == 202 and deleted.json()["status"] == "ignored"
    again = send(Delivery(github_push(tag, commit=second_commit), secret=webhook_secret))
    assert again.status_code == 202 and again.json()["status"] == "accepted", again.text

    runs = asyncio.run(_runs_for(release, tag, count=2))
    assert sorted(r.parameters["commit"] for r in runs) == sorted([first_commit, second_commit])


def test_gitlab_tag_push_creates_a_run(block_receiver, deployed, webhook_secret):
    release = deployed["release"]
    tag, commit = new_tag(), sha()
    response = block_receiver.send(
        Delivery(
            gitlab_tag_push(tag, commit=commit), "Tag Push Hook", "gitlab", secret=webhook_secret
        )
    )
    assert response.status_code == 202, response.text
    runs = asyncio.run(_runs_for(release, tag))
    assert len(runs) == 1
    assert runs[0].parameters["commit"] == commit


def test_failed_trigger_action_is_emitted_again(deployed, tmp_path):
    """Prefect does not retry a trigger action that failed on the server (it records
    `prefect.automation.action.failed`); the receiver's redrive emits the event again.

    The receiver's own journal and Redrive run in-process here; the failure record is posted
    as Prefect writes it, for an event that was never emitted, so no successful action can
    race it."""
    import datetime as dt

    from shipyard.deployments.webhook.dispatch import Dispatcher
    from shipyard.deployments.webhook.journal import Journal
    from shipyard.deployments.webhook.settings import WebhookSettings

    release = deployed["release"]
    tag, commit = new_tag(), sha()
    push = TagPush("github", str(uuid.uuid4()), REPOSITORY, tag, commit, f"refs/tags/{tag}")
    journal = Journal(tmp_path / "journal.db")
    assert journal.record(push, "push", sha(), 0).status == "accepted"
    (row,) = journal.lease_due()
    journal.settle(row.seq, "emitted")  # as if emitted: Prefect never saw it
    failure = {
        "id": str(uuid.uuid4()),
        "occurred": dt.datetime.now(dt.UTC).isoformat(),
        "event": "prefect.automation.action.failed",
        "resource": {"prefect.resource.id": f"prefect.automation.{uuid.uuid4()}"},
        "related": [
            {
                "prefect.resource.id": f"prefect.event.{push.event_id}",
                "prefect.resource.role": "triggering-event",
            }
        ],
        "payload": {"reason": "Unexpected status from 'run-deployment' action: 503"},
    }

    async def scenario():
        import time

        async with get_client() as client:
            dispatcher = Dispatcher(journal, WebhookSettings(), client)
            await client.request("POST", "/events", json=[failure])
            deadline = time.monotonic() + 30
            while journal.counts().get("emitted"):
                assert time.monotonic() < deadline, "the failure was never seen"
                await dispatcher.redrive.check()
                await asyncio.sleep(0.3)
            (again,) = journal.lease_due()
            assert again.push.attempt == 1 and again.push.event_id != push.event_id
            state, _ = await dispatcher.handle(again)
            assert state == "emitted"
            runs = await wait_for_runs(client, release.id, tag_is(tag), 1)
            return again.push, runs, await _event(client, str(again.push.event_id))

    again, runs, event = asyncio.run(scenario())
    assert len(runs) == 1 and runs[0].parameters["commit"] == commit
    assert event["payload"]["attempt"] == 1
    assert event["payload"]["delivery_id"] == push.delivery_id
    assert event["id"] == str(again.event_id) != str(push.event_id)


def test_ping_is_answered(receiver, webhook_secret):
    response = receiver.send(
        Delivery({"zen": "Keep it logically awesome."}, "ping", secret=webhook_secret)
    )
    assert response.status_code == 200
    assert response.json()["status"] == "pong"


def test_secret_never_reaches_the_logs(receivers, webhook_secret):
    logs = [receiver.log() for receiver in receivers]
    # Deliveries may all have reached one receiver: the check is vacuous only if none logged one.
    assert any("delivery " in log for log in logs), "no receiver logged a delivery"
    for log in logs:
        assert webhook_secret not in log
