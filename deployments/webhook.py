"""The git-tag webhook receiver: GitHub / GitLab tag pushes -> one Prefect event.

Open-source Prefect has no incoming webhooks (that is Prefect Cloud), so this small ASGI app
(Starlette, run by uvicorn: `shipyard webhook serve`) does what a Cloud webhook would: it turns
a signed tag push into one `shipyard.git.tag.pushed` event (`POST /api/events`). The
`release` deployment's trigger in prefect.yaml turns that event into a flow run; the receiver
itself never starts a flow.

Answers (JSON bodies, never an echo of a header or the secret):

    202  a release tag: the event was emitted (`event_id`); or a push to ignore
         (branch push, tag deletion, another event type, a second delivery for the same tag)
    400  malformed JSON, missing fields or a missing delivery id
    401  missing or wrong `X-Hub-Signature-256` (GitHub) / `X-Gitlab-Token` (GitLab)
    409  the delivery id was seen before (a redelivery)
    413  a body above the limit (1 MiB): by Content-Length and by the bytes actually streamed
    415  a content type other than application/json
    422  a tag that is not a release tag (blocks/release_tag.py: `vMAJOR.MINOR.PATCH`, ASCII
         digits, whole string, at most 128 characters)
    503  the secret is not configured, or the Prefect API cannot be reached

Seen deliveries are claimed in Prefect itself, as Variables created with a unique name
(`shipyard-webhook-delivery-...`): creation is atomic on the server (a second create answers
409), so it survives a restart of the receiver and holds across several receivers behind a
load balancer, with no local state. The event id is derived from the delivery id (uuid5), so
even a delivery that slipped past the claim would carry the same event id, which Prefect's
trigger service drops as already seen. GitHub sends both a `create` and a `push` delivery for
one new tag when both events are subscribed; a second claim, per repository and tag, makes
that one event. A tag deletion releases the tag claim, so a deleted and re-pushed tag
releases again.

Prefect consumes the event whether or not the trigger's action succeeds, and does not retry
an action that failed on the server; `Redrive` follows each emitted event to its
`prefect.automation.action.executed` / `.failed` record and emits it again after a failure.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from blocks.release_tag import RELEASE_TAG_PATTERN, compile_tag_pattern, validate_release_tag

EVENT_NAME = "shipyard.git.tag.pushed"
DEFAULT_TAG_PATTERN = RELEASE_TAG_PATTERN
DEFAULT_SECRET_BLOCK = "shipyard-webhook-secret"  # noqa: S105 - a block *name*
DEFAULT_MAX_BODY = 1024 * 1024
SECRET_ENV = "SHIPYARD_WEBHOOK_SECRET"  # noqa: S105 - an env var *name*
SECRET_BLOCK_ENV = "SHIPYARD_WEBHOOK_SECRET_BLOCK"  # noqa: S105
TAG_PATTERN_ENV = "SHIPYARD_RELEASE_TAG_PATTERN"
CLAIM_TAG = "shipyard-webhook"
# Fixed namespace: the same delivery always maps to the same Prefect event id.
EVENT_NAMESPACE = uuid.UUID("6b0f3f0e-5d55-4a8c-9a55-3c1b2f7a9e10")
_ZERO_SHA = re.compile(r"^0+$")
_SAFE_ID = re.compile(r"^[a-z0-9-]{1,120}$")

logger = logging.getLogger("shipyard.webhook")


class Reject(Exception):
    """An answer other than 202: the status and a message naming the field and the fix."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class WebhookSettings:
    """Receiver configuration. `from_env()` reads the SHIPYARD_* variables."""

    secret_block: str = DEFAULT_SECRET_BLOCK
    tag_pattern: str = DEFAULT_TAG_PATTERN
    max_body: int = DEFAULT_MAX_BODY
    secret_ttl_s: float = 60.0
    # Redrive: how often to ask Prefect what became of emitted events, how long to keep
    # asking, and how many times an event whose trigger action failed is emitted again.
    confirm_every_s: float = 10.0
    confirm_for_s: float = 3600.0
    max_attempts: int = 3

    @classmethod
    def from_env(cls, **overrides: Any) -> WebhookSettings:
        values: dict[str, Any] = {
            "secret_block": os.environ.get(SECRET_BLOCK_ENV) or DEFAULT_SECRET_BLOCK,
            "tag_pattern": os.environ.get(TAG_PATTERN_ENV) or DEFAULT_TAG_PATTERN,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def compiled_pattern(self) -> re.Pattern[str]:
        """The release-tag pattern, ASCII-only, applied to the whole tag (`fullmatch`)."""
        return compile_tag_pattern(
            self.tag_pattern, field=f"tag pattern ({TAG_PATTERN_ENV} or --tag-pattern)"
        )


@dataclasses.dataclass(frozen=True)
class TagPush:
    """A tag push, whatever the provider said it in."""

    provider: str  # github | gitlab
    delivery_id: str
    repository: str  # owner/name (GitLab: group/subgroup/name)
    tag: str
    commit: str | None
    ref: str
    attempt: int = 0  # > 0: re-emitted because Prefect reported the trigger action failed

    @property
    def event_id(self) -> uuid.UUID:
        key = f"{self.provider}:{self.delivery_id}" + (f":{self.attempt}" if self.attempt else "")
        return uuid.uuid5(EVENT_NAMESPACE, key)

    def event(self) -> dict[str, Any]:
        """The Prefect event, as `POST /api/events` takes it."""
        return {
            "id": str(self.event_id),
            "occurred": _utc_now(),
            "event": EVENT_NAME,
            "resource": {
                "prefect.resource.id": f"shipyard.repo.{self.repository.lower()}",
                "prefect.resource.name": self.repository,
                "shipyard.git.provider": self.provider,
            },
            "payload": {
                "tag": self.tag,
                "commit": self.commit,
                "repository": self.repository,
                "delivery_id": self.delivery_id,
                "provider": self.provider,
                "ref": self.ref,
                **({"attempt": self.attempt} if self.attempt else {}),
            },
        }


@dataclasses.dataclass(frozen=True)
class Ignored:
    """A well-formed, authentic delivery that asks for no release."""

    reason: str
    provider: str
    delivery_id: str
    deleted_tag: tuple[str, str] | None = None  # (repository, tag) of a tag deletion


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


# ---------------------------------------------------------------- the secret


class SecretSource:
    """The shared secret: env SHIPYARD_WEBHOOK_SECRET, else the Prefect `Secret` block.

    Cached for `ttl_s` so a rotated block value is picked up without a restart. The value
    lives only here; nothing formats it into a message.
    """

    def __init__(self, block_name: str, ttl_s: float):
        self.block_name = block_name
        self.ttl_s = ttl_s
        self._value: bytes | None = None
        self._loaded_at = 0.0

    async def get(self) -> bytes:
        env_value = os.environ.get(SECRET_ENV)
        if env_value:
            return env_value.encode()
        if self._value is not None and time.monotonic() - self._loaded_at < self.ttl_s:
            return self._value
        from prefect.blocks.system import Secret

        try:
            block = cast(Secret, await Secret.aload(self.block_name))
        except ValueError:
            raise Reject(
                503,
                f"webhook secret not configured: set {SECRET_ENV} or create the Prefect Secret "
                f"block {self.block_name!r} (or name another one with {SECRET_BLOCK_ENV})",
            ) from None
        value = block.get()
        if not isinstance(value, str) or not value:
            raise Reject(
                503, f"the Prefect Secret block {self.block_name!r} holds no string secret"
            )
        self._value, self._loaded_at = value.encode(), time.monotonic()
        return self._value


def github_signature_ok(secret: bytes, body: bytes, header: str | None) -> bool:
    """`X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`, compared in constant time."""
    if not header:
        return False
    expected = b"sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest().encode()
    return hmac.compare_digest(expected, header.encode("latin-1", "replace"))


def gitlab_token_ok(secret: bytes, header: str | None) -> bool:
    """`X-Gitlab-Token` is the secret itself; digests are compared so length leaks nothing."""
    if not header:
        return False
    given = hashlib.sha256(header.encode("latin-1", "replace")).digest()
    return hmac.compare_digest(hashlib.sha256(secret).digest(), given)


# ---------------------------------------------------------------- payloads


def _field(payload: dict[str, Any], *path: str) -> Any:
    value: Any = payload
    for key in path:
        if not isinstance(value, dict) or key not in value:
            raise Reject(400, f"payload field {'.'.join(path)!r} missing")
        value = value[key]
    return value


def _str_field(payload: dict[str, Any], *path: str) -> str:
    value = _field(payload, *path)
    if not isinstance(value, str) or not value:
        raise Reject(400, f"payload field {'.'.join(path)!r} must be a non-empty string")
    return value


def _commit(value: Any) -> str | None:
    if not isinstance(value, str) or not value or _ZERO_SHA.match(value):
        return None
    return value


def parse_github(event: str, delivery: str, payload: dict[str, Any]) -> TagPush | Ignored:
    if event == "push":
        ref = _str_field(payload, "ref")
        repository = _str_field(payload, "repository", "full_name")
        if not ref.startswith("refs/tags/"):
            return Ignored(f"not a tag: push to {ref}", "github", delivery)
        tag = ref.removeprefix("refs/tags/")
        if payload.get("deleted") is True:
            return Ignored(f"tag {tag} deleted", "github", delivery, (repository, tag))
        return TagPush("github", delivery, repository, tag, _commit(payload.get("after")), ref)
    if event == "create":
        ref_type = payload.get("ref_type")
        ref = _str_field(payload, "ref")
        repository = _str_field(payload, "repository", "full_name")
        if ref_type != "tag":
            return Ignored(f"not a tag: created {ref_type} {ref}", "github", delivery)
        # `create` carries no commit; the release resolves the tag itself.
        return TagPush("github", delivery, repository, ref, None, f"refs/tags/{ref}")
    if event == "delete" and payload.get("ref_type") == "tag":
        repository = _str_field(payload, "repository", "full_name")
        tag = _str_field(payload, "ref")
        return Ignored(f"tag {tag} deleted", "github", delivery, (repository, tag))
    return Ignored(f"event {event!r} is not a tag push", "github", delivery)


def parse_gitlab(event: str, delivery: str, payload: dict[str, Any]) -> TagPush | Ignored:
    kind = payload.get("object_kind")
    if event != "Tag Push Hook" and kind != "tag_push":
        return Ignored(f"event {event!r} is not a tag push", "gitlab", delivery)
    ref = _str_field(payload, "ref")
    repository = _str_field(payload, "project", "path_with_namespace")
    tag = ref.removeprefix("refs/tags/")
    commit = _commit(payload.get("checkout_sha")) or _commit(payload.get("after"))
    if commit is None:  # GitLab says a deletion with after = 000…0 and checkout_sha null
        return Ignored(f"tag {tag} deleted", "gitlab", delivery, (repository, tag))
    return TagPush("gitlab", delivery, repository, tag, commit, ref)


# ---------------------------------------------------------------- claims in Prefect


def _claim_name(kind: str, *parts: str) -> str:
    """A Variable name ([a-z0-9_-], <= 255): readable when the id is safe, else hashed."""
    joined = ":".join(parts).lower()
    if kind == "delivery" and _SAFE_ID.match(parts[-1].lower()):
        return f"shipyard-webhook-delivery-{parts[0]}-{parts[-1].lower()}"
    return f"shipyard-webhook-{kind}-{hashlib.sha256(joined.encode()).hexdigest()[:40]}"


class Claims:
    """Seen deliveries and triggered tags, as Prefect Variables (atomic create-if-absent)."""

    def __init__(self, client: Any):
        self.client = client

    async def claim(self, name: str, value: dict[str, Any]) -> dict[str, Any] | None:
        """Create the claim; None if we got it, else the holder's recorded value."""
        from prefect.client.schemas.actions import VariableCreate
        from prefect.exceptions import ObjectAlreadyExists

        # The client retries a write that timed out or got a 503; if the first attempt had
        # landed, the retry finds our own claim: the nonce tells it from someone else's.
        nonce = uuid.uuid4().hex
        try:
            await self.client.create_variable(
                VariableCreate(name=name, value={**value, "claim": nonce}, tags=[CLAIM_TAG])
            )
            return None
        except ObjectAlreadyExists:
            held = await self.client.read_variable_by_name(name)
            record = dict(held.value) if held is not None and isinstance(held.value, dict) else {}
            return None if record.get("claim") == nonce else record

    async def release(self, name: str) -> bool:
        from prefect.exceptions import ObjectNotFound

        try:
            await self.client.delete_variable_by_name(name)
            return True
        except ObjectNotFound:
            return False


# ---------------------------------------------------------------- the app


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise Reject(400, "Content-Length header is not a number") from None
        if size > limit:
            raise Reject(413, f"body of {size} bytes is above the {limit}-byte limit")
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise Reject(413, f"body is above the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _content_type_ok(value: str | None) -> bool:
    return (value or "").split(";", 1)[0].strip().lower() == "application/json"


class Receiver:
    """One request in order: type, size, authenticity, shape, release rule, claims, event."""

    def __init__(self, settings: WebhookSettings):
        self.settings = settings
        self.pattern = settings.compiled_pattern()
        self.secret = SecretSource(settings.secret_block, settings.secret_ttl_s)
        self.client: Any = None
        self.redrive = Redrive(self, settings)

    async def handle(self, request: Request) -> JSONResponse:
        delivery = (
            request.headers.get("x-github-delivery")
            or request.headers.get("x-gitlab-event-uuid")
            or "-"
        )
        try:
            status, body = await self._handle(request)
        except Reject as exc:
            status, body = exc.status, {"status": "rejected", "detail": exc.detail}
        except Exception as exc:  # noqa: BLE001 - answer 503, log the type only
            logger.exception("delivery %s: unexpected %s", delivery, type(exc).__name__)
            status = 503
            body = {"status": "error", "detail": f"receiver error ({type(exc).__name__})"}
        body.setdefault("delivery_id", delivery)
        logger.info(
            "delivery %s -> %s %s %s",
            delivery,
            status,
            body.get("status"),
            body.get("detail") or body.get("event_id") or "",
        )
        return JSONResponse(body, status_code=status)

    async def _handle(self, request: Request) -> tuple[int, dict[str, Any]]:
        headers = request.headers
        if not _content_type_ok(headers.get("content-type")):
            raise Reject(
                415,
                f"content type {headers.get('content-type') or '(none)'!r} is not accepted: "
                "set the webhook's content type to application/json",
            )
        body = await _read_body(request, self.settings.max_body)

        github_event = headers.get("x-github-event")
        gitlab_event = headers.get("x-gitlab-event")
        signature = headers.get("x-hub-signature-256")
        token = headers.get("x-gitlab-token")
        if github_event is not None or (signature is not None and gitlab_event is None):
            provider = "github"
            if not signature:
                raise Reject(401, "X-Hub-Signature-256 header missing: set the webhook secret")
            if not github_signature_ok(await self.secret.get(), body, signature):
                raise Reject(401, "X-Hub-Signature-256 does not match the body and secret")
        elif gitlab_event is not None or token is not None:
            provider = "gitlab"
            if not token:
                raise Reject(401, "X-Gitlab-Token header missing: set the webhook secret token")
            if not gitlab_token_ok(await self.secret.get(), token):
                raise Reject(401, "X-Gitlab-Token does not match the secret")
        else:
            raise Reject(401, "no X-Hub-Signature-256 or X-Gitlab-Token header")

        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise Reject(400, f"body is not valid JSON ({exc.__class__.__name__})") from None
        if not isinstance(payload, dict):
            raise Reject(400, "body must be a JSON object")

        if provider == "github":
            delivery = headers.get("x-github-delivery")
            if not delivery:
                raise Reject(400, "X-GitHub-Delivery header missing")
            if github_event == "ping":
                return 200, {"status": "pong", "delivery_id": delivery}
            parsed = parse_github(github_event or "", delivery, payload)
        else:
            delivery = headers.get("x-gitlab-event-uuid")
            if not delivery:
                raise Reject(400, "X-Gitlab-Event-UUID header missing")
            parsed = parse_gitlab(gitlab_event or "", delivery, payload)

        if isinstance(parsed, Ignored):
            if parsed.deleted_tag is not None:
                await Claims(self.client).release(_claim_name("tag", *parsed.deleted_tag))
            return 202, {"status": "ignored", "detail": parsed.reason}
        try:
            validate_release_tag(parsed.tag, field="tag", pattern=self.pattern)
        except ValueError as exc:
            raise Reject(422, f"{exc} (set {TAG_PATTERN_ENV} to release other tags)") from None
        return await self._emit_once(parsed)

    async def _emit_once(self, push: TagPush) -> tuple[int, dict[str, Any]]:
        claims = Claims(self.client)
        record = {
            "delivery_id": push.delivery_id,
            "provider": push.provider,
            "event_id": str(push.event_id),
            "repository": push.repository,
            "tag": push.tag,
            "commit": push.commit,
            "received_at": _utc_now(),
        }
        delivery_claim = _claim_name("delivery", push.provider, push.delivery_id)
        held = await claims.claim(delivery_claim, record)
        if held is not None:
            raise Reject(
                409,
                f"delivery {push.delivery_id} was already received"
                + (f" (event {held['event_id']})" if held.get("event_id") else ""),
            )
        tag_claim = _claim_name("tag", push.repository, push.tag)
        held = await claims.claim(tag_claim, record)
        if held is not None:
            return 202, {
                "status": "duplicate",
                "detail": f"tag {push.tag} of {push.repository} already triggered a release "
                f"(delivery {held.get('delivery_id')}); delete the tag to release it again",
                "event_id": held.get("event_id"),
            }
        try:
            await self.emit(push)
        except Exception:
            # Nothing was emitted: forget both claims so a redelivery can succeed.
            for name in (tag_claim, delivery_claim):
                try:
                    await claims.release(name)
                except Exception:  # noqa: BLE001 - the API is down; the original error wins
                    logger.warning("could not release claim %s", name)
            raise
        self.redrive.watch(push)
        return 202, {
            "status": "accepted",
            "event_id": str(push.event_id),
            "event": EVENT_NAME,
            "tag": push.tag,
            "commit": push.commit,
            "repository": push.repository,
        }

    async def emit(self, push: TagPush) -> None:
        await self.client.request("POST", "/events", json=[push.event()])


ACTION_EXECUTED = "prefect.automation.action.executed"
ACTION_FAILED = "prefect.automation.action.failed"


class Redrive:
    """Follows each emitted event until Prefect says what its trigger action did.

    Prefect does not retry a trigger action that failed on the server (e.g. `database is
    locked` on a busy SQLite server): the event is consumed, no run is created, and Prefect
    records `prefect.automation.action.failed` with the event as `triggering-event`. A failed
    action created no run, so emitting the event again (a new id, same payload, `attempt`
    counted) is safe; `prefect.automation.action.executed` ends the watch. One query per
    `confirm_every_s` covers every pending event. Pending events live in this process only:
    a receiver restarted meanwhile stops watching them (the failure stays visible in Prefect).
    """

    def __init__(self, receiver: Receiver, settings: WebhookSettings):
        self.receiver = receiver
        self.settings = settings
        self.pending: dict[str, tuple[TagPush, float]] = {}

    def watch(self, push: TagPush) -> None:
        self.pending[str(push.event_id)] = (push, time.monotonic())

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.confirm_every_s)
            if not self.pending:
                continue
            try:
                await self.check()
            except Exception as exc:  # noqa: BLE001 - try again next round
                logger.warning("redrive: cannot read outcomes (%s)", type(exc).__name__)

    async def outcomes(self, event_ids: list[str]) -> dict[str, set[str]]:
        """{event id: names of the action outcome events that name it as triggering-event}."""
        from prefect.events.filters import (
            EventFilter,
            EventNameFilter,
            EventOccurredFilter,
            EventRelatedFilter,
        )

        oldest = min(self.pending[e][1] for e in event_ids)
        since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=time.monotonic() - oldest + 120)
        found: dict[str, set[str]] = {}
        for start in range(0, len(event_ids), 50):
            chunk = event_ids[start : start + 50]
            page = await self.receiver.client.read_events(
                filter=EventFilter(
                    event=EventNameFilter(name=[ACTION_EXECUTED, ACTION_FAILED]),
                    related=EventRelatedFilter(id=[f"prefect.event.{e}" for e in chunk]),
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
                page = await self.receiver.client.read_events_page(page.next_page)
        return found

    async def check(self) -> None:
        ids = list(self.pending)
        outcomes = await self.outcomes(ids)
        now = time.monotonic()
        for event_id in ids:
            push, since = self.pending[event_id]
            got = outcomes.get(event_id, set())
            if ACTION_EXECUTED in got:
                del self.pending[event_id]
            elif ACTION_FAILED in got:
                del self.pending[event_id]
                if push.attempt + 1 >= self.settings.max_attempts:
                    logger.error(
                        "delivery %s: trigger action failed %d times for %s; giving up "
                        "(run the release by hand)",
                        push.delivery_id,
                        push.attempt + 1,
                        push.tag,
                    )
                    continue
                again = dataclasses.replace(push, attempt=push.attempt + 1)
                await self.receiver.emit(again)
                self.watch(again)
                logger.warning(
                    "delivery %s: trigger action failed for event %s; emitted again as %s",
                    push.delivery_id,
                    event_id,
                    again.event_id,
                )
            elif now - since > self.settings.confirm_for_s:
                del self.pending[event_id]
                logger.warning(
                    "delivery %s: no trigger reported on event %s within %.0f s",
                    push.delivery_id,
                    event_id,
                    self.settings.confirm_for_s,
                )


async def _health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def create_app(settings: WebhookSettings | None = None) -> Starlette:
    """The ASGI app (uvicorn: `uvicorn --factory deployments.webhook:create_app`)."""
    receiver = Receiver(settings or WebhookSettings.from_env())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            receiver.client = client
            watcher = asyncio.create_task(receiver.redrive.run_forever())
            try:
                yield
            finally:
                watcher.cancel()
                receiver.client = None

    async def webhook(request: Request) -> JSONResponse:
        return await receiver.handle(request)

    return Starlette(
        routes=[
            Route("/webhook", webhook, methods=["POST"]),
            Route("/", webhook, methods=["POST"]),
            Route("/healthz", _health, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
