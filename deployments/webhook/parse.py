"""Webhook requests -> what they ask for: reading the body, decoding it, GitHub / GitLab shapes.

Everything here is pure (no Prefect, no disk): a request body and its headers become a
`TagPush`, an `Ignored`, or a `Reject` with the status and a message naming the field, the
value (escaped and truncated: `shipyard.blocks.release_tag.shown`) and the fix.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import re
import uuid
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import ClientDisconnect, Request

from shipyard.blocks.release_tag import shown
from shipyard.deployments.fleet import RELEASE_DEPLOYMENT as ROUTE_DEFAULT
from shipyard.deployments.fleet import ROUTE_LABEL

EVENT_NAME = "shipyard.git.tag.pushed"
# Fixed namespace: the same delivery always maps to the same Prefect event id.
EVENT_NAMESPACE = uuid.UUID("6b0f3f0e-5d55-4a8c-9a55-3c1b2f7a9e10")
# GitHub: owner <= 39 and name <= 100 characters; GitLab paths nest groups, so leave room.
MAX_REPOSITORY = 255
MAX_REF = 255 + len("refs/tags/")
MAX_DELIVERY_ID = 128
_ZERO_SHA = re.compile(r"\A0+\Z")
_SHA = re.compile(r"\A[0-9a-f]{7,64}\Z")
_DELIVERY_ID = re.compile(r"\A[0-9A-Za-z._:-]{1,128}\Z")


class Reject(Exception):
    """An answer other than 202: the status and a message naming the field and the fix."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class TagPush:
    """A tag push, whatever the provider said it in."""

    provider: str  # github | gitlab
    delivery_id: str
    repository: str  # owner/name (GitLab: group/subgroup/name)
    tag: str
    commit: str | None  # None: a GitHub `create`, which carries no commit
    ref: str
    target: str = "default"  # the ReleaseTarget block the repository maps to
    attempt: int = 0  # > 0: re-emitted because Prefect reported the trigger action failed
    tagged_at: str | None = None  # when the push happened (ISO 8601), if the provider says

    @property
    def event_id(self) -> uuid.UUID:
        key = f"{self.provider}:{self.delivery_id}" + (f":{self.attempt}" if self.attempt else "")
        return uuid.uuid5(EVENT_NAMESPACE, key)

    def event(self, deployment: str = ROUTE_DEFAULT) -> dict[str, Any]:
        """The Prefect event, as `POST /api/events` takes it. `deployment`: the release
        deployment that should take it (`release-<target>` when the fleet has one, else
        `release`), as the resource label the release triggers match on, so one delivery makes
        one run (deployments/fleet.py)."""
        return {
            "id": str(self.event_id),
            "occurred": dt.datetime.now(dt.UTC).isoformat(),
            "event": EVENT_NAME,
            "resource": {
                "prefect.resource.id": f"shipyard.repo.{self.repository.lower()}",
                "prefect.resource.name": self.repository,
                "shipyard.git.provider": self.provider,
                ROUTE_LABEL: deployment,
            },
            "payload": {
                "tag": self.tag,
                # "" when the provider sent none: the trigger renders `{{ event.payload.commit }}`
                # as text, and a null would reach the release as the git ref "None".
                "commit": self.commit or "",
                "repository": self.repository,
                "target": self.target,
                "delivery_id": self.delivery_id,
                "provider": self.provider,
                "ref": self.ref,
                "tagged_at": self.tagged_at or "",  # the release's lead time starts here
                **({"attempt": self.attempt} if self.attempt else {}),
            },
        }


@dataclasses.dataclass(frozen=True)
class Ignored:
    """A well-formed, authentic delivery that asks for no release."""

    reason: str
    provider: str
    delivery_id: str
    repository: str | None = None
    deleted_tag: str | None = None  # the tag of a tag deletion


# ---------------------------------------------------------------- the body


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The body, at most `limit` bytes (by Content-Length and by what is streamed), within
    `timeout_s`: a sender that stalls gets 408 and frees its connection."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit() or len(declared) > 12:  # its value is not echoed
            raise Reject(
                400,
                f"Content-Length header is not a byte count ({len(declared)} characters, not "
                "1 to 12 digits): send the body's length in bytes, or no Content-Length",
            )
        if int(declared) > limit:
            raise Reject(413, f"body of {int(declared)} bytes is above the {limit}-byte limit")
    chunks: list[bytes] = []
    received = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise Reject(413, f"body is above the {limit}-byte limit")
                chunks.append(chunk)
    except TimeoutError:
        raise Reject(
            408, f"body not received within {timeout_s:.0f} s ({received} bytes read)"
        ) from None
    except ClientDisconnect:
        raise Reject(499, f"sender disconnected after {received} bytes") from None
    return b"".join(chunks)


def unsupported_media_type(content_type: str | None) -> Reject:
    """415, naming the header but not its value (answers never echo a header)."""
    what = "missing" if not content_type else "neither application/json nor form-encoded"
    return Reject(
        415,
        f"Content-Type header is {what}: set the webhook's content type to application/json",
    )


def media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def decode_payload(body: bytes, content_type: str | None) -> dict[str, Any]:
    """The JSON object of a delivery: `application/json`, or GitHub's form-encoded variant
    (`application/x-www-form-urlencoded`, the JSON in the `payload` field)."""
    kind = media_type(content_type)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Reject(400, f"body is not UTF-8 (byte {exc.start}): send JSON in UTF-8") from None
    if kind == "application/x-www-form-urlencoded":
        fields = parse_qs(text, keep_blank_values=True, max_num_fields=64)
        if len(fields.get("payload", [])) != 1:
            raise Reject(
                400,
                "form-encoded body has no single `payload` field: set the webhook's content "
                "type to application/json",
            )
        text = fields["payload"][0]
    elif kind != "application/json":
        raise unsupported_media_type(content_type)
    try:
        payload = json.loads(text)
    except RecursionError:  # deeply nested arrays/objects: permanent, not a server fault
        raise Reject(400, "body nests JSON too deeply to be a webhook payload") from None
    except ValueError as exc:  # JSONDecodeError included
        raise Reject(400, f"body is not valid JSON ({exc.__class__.__name__})") from None
    if not isinstance(payload, dict):
        raise Reject(400, "body must be a JSON object")
    return payload


def delivery_id(value: str | None, header: str) -> str:
    if not value:
        raise Reject(400, f"{header} header missing")
    if not _DELIVERY_ID.match(value):  # its value is not echoed: it is the sender's
        raise Reject(
            400,
            f"{header} header is not a delivery id ({len(value)} characters; letters, digits, "
            f". _ : - only, at most {MAX_DELIVERY_ID})",
        )
    return value


# ---------------------------------------------------------------- payload fields


def _field(payload: dict[str, Any], *path: str) -> Any:
    value: Any = payload
    for key in path:
        if not isinstance(value, dict) or key not in value:
            raise Reject(400, f"payload field {'.'.join(path)!r} missing")
        value = value[key]
    return value


def _str_field(payload: dict[str, Any], *path: str, limit: int) -> str:
    value = _field(payload, *path)
    name = ".".join(path)
    if not isinstance(value, str) or not value:
        raise Reject(400, f"payload field {name!r} must be a non-empty string")
    if len(value) > limit:
        raise Reject(422, f"payload field {name!r} {shown(value)} is longer than {limit}")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise Reject(422, f"payload field {name!r} {shown(value)} holds control characters")
    return value


def _repository(payload: dict[str, Any], *path: str) -> str:
    return _str_field(payload, *path, limit=MAX_REPOSITORY)


def commit_of(value: Any) -> str | None:
    """A commit sha, or None for a missing one or the all-zero sha of a deletion."""
    if not isinstance(value, str) or not value or _ZERO_SHA.match(value):
        return None
    if not _SHA.match(value):
        raise Reject(422, f"commit {shown(value)} is not a hexadecimal git sha")
    return value


def tag_commit(payload: dict[str, Any]) -> str | None:
    """The commit a GitHub tag push points at: `head_commit.id`, else `after`.

    For an annotated tag `after` is the sha of the tag object, not of a commit; GitHub's docs
    for the push event: "head_commit: For pushes where `after` is or points to a commit object,
    an expanded representation of that commit. For pushes where `after` refers to an annotated
    tag object, an expanded representation of the commit pointed to by the annotated tag."
    (docs.github.com/en/webhooks/webhook-events-and-payloads#push, added by github/docs
    962a67f "document the undocumented pieces of the push webhook", 2021-10-01; the same day's
    changelog "The push webhook payload provides a consistent head_commit on tag creation").
    Others met it in real deliveries: openSUSE/open-build-service#13500 ("`:after` ... contains
    the sha of the tag itself ... the commit sha the tag is refering to ... is part of
    `:head_commit => :id`"), buildbuddy-io/buildbuddy#12752. Without `head_commit`, `after` is
    passed on and the release peels it (tasks/git_source.py `verify_tag`)."""
    head = payload.get("head_commit")
    if isinstance(head, dict):
        commit = commit_of(head.get("id"))
        if commit is not None:
            return commit
    return commit_of(payload.get("after"))


def pushed_at(payload: dict[str, Any]) -> str | None:
    """When GitHub received the push: `repository.pushed_at`, which a `push` delivery sends as
    Unix seconds (other events send ISO 8601; GitHub keeps the difference on purpose:
    isaacs/github#1534, XAMPPRocky/octocrab#445). None when absent or not a time: the release
    then reads the tag's date from git (flows/release/tag_time.py), so this never rejects a delivery."""
    repository = payload.get("repository")
    value = repository.get("pushed_at") if isinstance(repository, dict) else None
    try:
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return dt.datetime.fromtimestamp(value, dt.UTC).isoformat()
        if isinstance(value, str) and value:
            when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).isoformat()
    except (ValueError, OverflowError, OSError):
        return None
    return None


def parse_github(event: str, delivery: str, payload: dict[str, Any]) -> TagPush | Ignored:
    if event == "push":
        ref = _str_field(payload, "ref", limit=MAX_REF)
        repository = _repository(payload, "repository", "full_name")
        if not ref.startswith("refs/tags/"):
            return Ignored("not a tag push", "github", delivery, repository)
        tag = ref.removeprefix("refs/tags/")
        if payload.get("deleted") is True:
            return Ignored("tag deleted", "github", delivery, repository, tag)
        return TagPush(
            "github",
            delivery,
            repository,
            tag,
            tag_commit(payload),
            ref,
            tagged_at=pushed_at(payload),
        )
    if event == "create":
        ref = _str_field(payload, "ref", limit=MAX_REF)
        repository = _repository(payload, "repository", "full_name")
        if payload.get("ref_type") != "tag":
            return Ignored("not a tag creation", "github", delivery, repository)
        # `create` carries no commit: the receiver waits a bounded time for the push.
        return TagPush("github", delivery, repository, ref, None, f"refs/tags/{ref}")
    if event == "delete" and payload.get("ref_type") == "tag":
        repository = _repository(payload, "repository", "full_name")
        tag = _str_field(payload, "ref", limit=MAX_REF)
        return Ignored("tag deleted", "github", delivery, repository, tag)
    return Ignored("not a tag push event", "github", delivery)


def parse_gitlab(event: str, delivery: str, payload: dict[str, Any]) -> TagPush | Ignored:
    kind = payload.get("object_kind")
    if event != "Tag Push Hook" and kind != "tag_push":
        return Ignored("not a tag push event", "gitlab", delivery)
    ref = _str_field(payload, "ref", limit=MAX_REF)
    repository = _repository(payload, "project", "path_with_namespace")
    tag = ref.removeprefix("refs/tags/")
    commit = commit_of(payload.get("checkout_sha")) or commit_of(payload.get("after"))
    if commit is None:  # GitLab says a deletion with after = 000…0 and checkout_sha null
        return Ignored("tag deleted", "gitlab", delivery, repository, tag)
    return TagPush("gitlab", delivery, repository, tag, commit, ref)
