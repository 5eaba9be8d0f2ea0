"""The git-tag webhook receiver: GitHub / GitLab tag pushes -> one Prefect event.

Open-source Prefect has no incoming webhooks (that is Prefect Cloud), so this small ASGI app
(Starlette, run by uvicorn: `shipyard webhook serve`) does what a Cloud webhook would: it turns
a signed tag push into one `shipyard.git.tag.pushed` event. The `release` deployment's
trigger in prefect.yaml turns that event into a flow run; the receiver never starts a flow.

The answer does not wait for Prefect: a delivery is verified, checked and written to the
receiver's journal on disk (webhook_journal.py, fsync'ed), then answered; the dispatcher
(webhook_dispatch.py) takes the claims in Prefect and emits the event in the background, with
retries. Modules: webhook_parse (bodies, payload shapes), webhook_signature (secret, HMAC),
webhook_settings (settings, repository allow-list), webhook_journal, webhook_claims
(deduplication shared by every receiver), webhook_dispatch.

Answers (JSON bodies; never an echo of a header or of the secret):

    200  GitHub's ping
    202  `accepted` + `event_id`: journaled, its event will be emitted; `duplicate`: the tag
         already triggered a release (`event_id` of that one); `ignored`: a branch push, a
         tag deletion, another event type
    400  malformed or deeply nested JSON, not UTF-8, missing fields, a bad delivery id
    401  missing or wrong `X-Hub-Signature-256` (GitHub) / `X-Gitlab-Token` (GitLab)
    403  a repository that is not on the allow-list (webhook_settings.py)
    408  the body did not arrive within `body_timeout_s`
    409  this receiver journaled this delivery id, or this signed body, before
    413  a body above the limit (1 MiB): by Content-Length and by the bytes actually streamed
    415  a content type other than application/json or GitHub's form encoding
    422  a tag that is not a release tag (blocks/release_tag.py), a too-long field
    503  the secret is not configured, the journal cannot be written, or more than
         `max_connections` requests at once (connections.py: stalled senders do not count)
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from shipyard.blocks.release_tag import TAG_PATTERN_ENV, shown, validate_release_tag
from shipyard.deployments.webhook.connections import InFlightLimit, protocol_class
from shipyard.deployments.webhook.dispatch import Dispatcher, clean_forever
from shipyard.deployments.webhook.journal import Journal
from shipyard.deployments.webhook.parse import (
    EVENT_NAME,
    Ignored,
    Reject,
    TagPush,
    decode_payload,
    delivery_id,
    media_type,
    parse_github,
    parse_gitlab,
    read_body,
    unsupported_media_type,
)
from shipyard.deployments.webhook.settings import REPOS_ENV, WebhookSettings
from shipyard.deployments.webhook.signature import SecretSource, authenticate

__all__ = ["EVENT_NAME", "Receiver", "TagPush", "WebhookSettings", "create_app", "serve"]

logger = logging.getLogger("shipyard.webhook")
_MEDIA = ("application/json", "application/x-www-form-urlencoded")


class Receiver:
    """One request in order: type, size, authenticity, shape, allow-list, tag rule, journal."""

    def __init__(self, settings: WebhookSettings, journal: Journal | None = None):
        self.settings = settings
        self.pattern = settings.compiled_pattern()
        self.secret = SecretSource(settings.secret_block, settings.secret_ttl_s)
        self.journal = journal or Journal(settings.journal_path())
        self.dispatcher: Dispatcher | None = None

    async def handle(self, request: Request) -> JSONResponse:
        try:
            status, body = await self._handle(request)
        except Reject as exc:
            status, body = exc.status, {"status": "rejected", "detail": exc.detail}
        except Exception as exc:  # noqa: BLE001 - one line, the type only
            logger.error("delivery: receiver error %s", type(exc).__name__)
            status = 503
            body = {"status": "error", "detail": f"receiver error ({type(exc).__name__})"}
        header = request.headers.get("x-github-delivery") or request.headers.get(
            "x-gitlab-event-uuid"
        )
        logger.info(
            "delivery %s -> %s %s %s",
            shown(header or "-", 64),
            status,
            body.get("status"),
            shown(body.get("detail") or body.get("event_id") or "", 200),
        )
        return JSONResponse(body, status_code=status)

    async def _handle(self, request: Request) -> tuple[int, dict[str, Any]]:
        headers = request.headers
        content_type = headers.get("content-type")
        if media_type(content_type) not in _MEDIA:
            raise unsupported_media_type(content_type)
        body = await read_body(request, self.settings.max_body, self.settings.body_timeout_s)
        provider = await authenticate(headers, body, self.secret)
        payload = decode_payload(body, content_type)
        if provider == "github":
            delivery = delivery_id(headers.get("x-github-delivery"), "X-GitHub-Delivery")
            event = headers.get("x-github-event") or ""
            if event == "ping":
                return 200, {"status": "pong"}
            parsed = parse_github(event, delivery, payload)
        else:
            delivery = delivery_id(headers.get("x-gitlab-event-uuid"), "X-Gitlab-Event-UUID")
            parsed = parse_gitlab(headers.get("x-gitlab-event") or "", delivery, payload)

        repository = parsed.repository
        target = self.settings.target_of(repository) if repository else None
        if repository is not None and target is None:
            raise Reject(
                403,
                f"repository {shown(repository)} is not on the allow-list: add it with its "
                f"release target (--repo owner/name=target, {REPOS_ENV} or --repos-file)",
            )
        if isinstance(parsed, Ignored):
            if parsed.deleted_tag is None or not self._is_release_tag(parsed.deleted_tag):
                return 202, {"status": "ignored", "detail": parsed.reason}
            push = TagPush(
                parsed.provider,
                delivery,
                str(repository),
                parsed.deleted_tag,
                None,
                f"refs/tags/{parsed.deleted_tag}",
                str(target),
            )
            return await self._journal(push, "delete", body)
        try:
            validate_release_tag(parsed.tag, field="tag", pattern=self.pattern)
        except ValueError as exc:
            raise Reject(422, f"{exc} (set {TAG_PATTERN_ENV} to release other tags)") from None
        return await self._journal(dataclasses.replace(parsed, target=str(target)), "push", body)

    def _is_release_tag(self, tag: str) -> bool:
        try:
            validate_release_tag(tag, pattern=self.pattern)
        except ValueError:
            return False
        return True

    async def _journal(self, push: TagPush, kind: str, body: bytes) -> tuple[int, dict[str, Any]]:
        digest = hashlib.sha256(body).hexdigest()
        try:
            recorded = await self.journal.call(
                self.journal.record, push, kind, digest, self.settings.create_wait_s
            )
        except Exception as exc:  # noqa: BLE001 - the disk: nothing recorded, redeliver
            logger.error("journal: cannot record a delivery (%s)", type(exc).__name__)
            raise Reject(503, "the receiver cannot record deliveries now: redeliver") from None
        if recorded.status in ("redelivery", "replay"):
            raise Reject(409, recorded.detail)
        if self.dispatcher is not None:
            self.dispatcher.wake()
        if recorded.status == "deletion":
            return 202, {"status": "ignored", "detail": "tag deleted"}
        if recorded.status == "duplicate":
            return 202, {
                "status": "duplicate",
                "detail": recorded.detail,
                "event_id": recorded.event_id,
            }
        return 202, {
            "status": "accepted",
            "event_id": recorded.event_id,
            "event": EVENT_NAME,
            "tag": push.tag,
            "commit": push.commit,
            "repository": push.repository,
            "target": push.target,
        }


def create_app(settings: WebhookSettings | None = None) -> Starlette:
    """The ASGI app (uvicorn: `uvicorn --factory shipyard.deployments.webhook.receiver:create_app`)."""
    receiver = Receiver(settings or WebhookSettings.from_env())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            dispatcher = Dispatcher(receiver.journal, receiver.settings, client)
            receiver.dispatcher = dispatcher
            tasks = [
                asyncio.create_task(dispatcher.run_forever()),
                asyncio.create_task(dispatcher.redrive.run_forever()),
                asyncio.create_task(clean_forever(dispatcher)),
            ]
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()
                receiver.dispatcher = None

    async def webhook(request: Request) -> JSONResponse:
        return await receiver.handle(request)

    async def health(request: Request) -> JSONResponse:
        counts = await receiver.journal.call(receiver.journal.counts)
        backlog = counts.get("pending", 0) + counts.get("emit", 0)
        return JSONResponse({"status": "ok", "backlog": backlog, "journal": counts})

    app = Starlette(
        routes=[
            Route("/webhook", webhook, methods=["POST"]),
            Route("/", webhook, methods=["POST"]),
            Route("/healthz", health, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.add_middleware(InFlightLimit, limit=receiver.settings.max_connections)
    return app


def serve(settings: WebhookSettings, host: str, port: int, log_level: str = "info") -> None:
    """Run the receiver under uvicorn with bounded connections and header/body deadlines
    (deployments/webhook/connections.py): connections still sending their headers are capped
    per client and in all, the oldest shed first, and do not count toward the 503 limit."""
    import uvicorn

    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        log_level=log_level,
        http=protocol_class(
            settings.header_timeout_s, settings.max_pending_per_client, settings.max_pending
        ),
        limit_concurrency=None,  # counts stalled connections too: InFlightLimit instead
        timeout_keep_alive=5,
        access_log=False,  # one line per delivery is ours, with the header escaped
    )
    uvicorn.Server(config).run()
