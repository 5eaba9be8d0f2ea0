"""Who sent a delivery: the shared secret, GitHub's HMAC signature, GitLab's token.

The secret value lives only in `SecretSource`; nothing formats it into a message.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from typing import cast

from starlette.datastructures import Headers

from shipyard.deployments.webhook.parse import Reject

SECRET_ENV = "SHIPYARD_WEBHOOK_SECRET"  # noqa: S105 - an env var *name*
SECRET_BLOCK_ENV = "SHIPYARD_WEBHOOK_SECRET_BLOCK"  # noqa: S105 - an env var name, not a secret
DEFAULT_SECRET_BLOCK = "shipyard-webhook-secret"  # noqa: S105 - a block *name*


class SecretSource:
    """The shared secret: env SHIPYARD_WEBHOOK_SECRET, else the Prefect `Secret` block.

    Cached for `ttl_s` so a rotated block value is picked up without a restart.
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
            block = cast(Secret[str], await Secret.aload(self.block_name))
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


async def authenticate(headers: Headers, body: bytes, secret: SecretSource) -> str:
    """The provider (`github` | `gitlab`) of an authentic delivery; 401 otherwise."""
    github_event = headers.get("x-github-event")
    gitlab_event = headers.get("x-gitlab-event")
    signature = headers.get("x-hub-signature-256")
    token = headers.get("x-gitlab-token")
    if github_event is not None or (signature is not None and gitlab_event is None):
        if not signature:
            raise Reject(401, "X-Hub-Signature-256 header missing: set the webhook secret")
        if not github_signature_ok(await secret.get(), body, signature):
            raise Reject(401, "X-Hub-Signature-256 does not match the body and secret")
        return "github"
    if gitlab_event is not None or token is not None:
        if not token:
            raise Reject(401, "X-Gitlab-Token header missing: set the webhook secret token")
        if not gitlab_token_ok(await secret.get(), token):
            raise Reject(401, "X-Gitlab-Token does not match the secret")
        return "gitlab"
    raise Reject(401, "no X-Hub-Signature-256 or X-Gitlab-Token header")
