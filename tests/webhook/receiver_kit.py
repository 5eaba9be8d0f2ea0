"""The receiver in-process (no uvicorn, no dispatcher): requests through httpx's ASGI
transport, or raw ASGI messages; the journal on disk is what a run would come from."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid
from pathlib import Path
from typing import Any

import httpx

SECRET = "whsec-input-tests-0123456789"
REPOSITORY = "acme/manga-translator"
URL = "http://receiver/webhook"


def make_receiver(tmp: Path, **overrides: Any):
    from shipyard.deployments.webhook.journal import Journal
    from shipyard.deployments.webhook.receiver import Receiver
    from shipyard.deployments.webhook.settings import WebhookSettings

    settings = WebhookSettings(repositories={REPOSITORY: "default"}, **overrides)
    return Receiver(settings, Journal(tmp / f"journal-{uuid.uuid4().hex[:8]}.db"))


def app_of(receiver) -> Any:
    from starlette.applications import Starlette
    from starlette.routing import Route

    return Starlette(routes=[Route("/webhook", receiver.handle, methods=["POST"])])


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def github_headers(
    body: bytes, event: str = "push", delivery: str | None = None, **extra: str
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": sign(body),
        **extra,
    }


def tag_push(tag: str, commit: str = "a" * 40, head_commit: bool = True, **fields: Any) -> dict:
    """A GitHub `push` of a new tag, the fields GitHub sends (abridged)."""
    payload = {
        "ref": f"refs/tags/{tag}",
        "before": "0" * 40,
        "after": commit,
        "created": True,
        "deleted": False,
        "forced": False,
        "base_ref": None,
        "compare": f"https://github.com/{REPOSITORY}/compare/{tag}",
        "commits": [],
        "head_commit": {"id": commit, "message": "release"} if head_commit else None,
        "repository": {"full_name": REPOSITORY, "name": "manga-translator"},
        "pusher": {"name": "octocat"},
        "sender": {"login": "octocat"},
    }
    payload.update(fields)
    return payload


def tag_create(tag: str) -> dict:
    return {
        "ref": tag,
        "ref_type": "tag",
        "master_branch": "main",
        "pusher_type": "user",
        "repository": {"full_name": REPOSITORY},
        "sender": {"login": "octocat"},
    }


def tag_delete(tag: str, before: str = "a" * 40) -> dict:
    return {
        **tag_push(tag, commit="0" * 40, head_commit=False),
        "before": before,
        "created": False,
        "deleted": True,
    }


def post(app: Any, body: Any, headers: dict[str, str], timeout: float = 10.0) -> httpx.Response:
    """One request; `body` may be bytes or an async iterator (chunked, no Content-Length)."""

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as client:
            async with asyncio.timeout(timeout):
                return await client.post("/webhook", content=body, headers=headers)

    return asyncio.run(send())


def send_json(app: Any, payload: Any, event: str = "push", **kw: Any) -> httpx.Response:
    body = json.dumps(payload).encode()
    return post(app, body, github_headers(body, event, **kw))


def journal_rows(receiver) -> list[dict]:
    import sqlite3

    with sqlite3.connect(receiver.journal.path) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM deliveries ORDER BY seq")]
