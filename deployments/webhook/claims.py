"""The claims every receiver shares: Prefect Variables created with a unique name.

Creating a Variable whose name exists fails atomically on the server (409), so whichever
receiver creates a name first holds it; this is what keeps deduplication exact across
receivers on different hosts, each with its own journal. A claim's value records who took
it (`claim`: the journal row's nonce, so a retried create after a crash or a lost answer
recognises its own claim) and when it expires (`expires`: the cleaner deletes it then).

    delivery  provider + delivery id          once per delivery id
    body      sha256 of the signed body       once per signed body: a captured delivery
                                              replayed under a fresh delivery id (the id
                                              is an unsigned header) is still a duplicate
    tag       repository + tag                the tag has triggered a release; a tag
                                              deletion removes it
    commit    repository + tag + commit       this commit of this tag was released once:
                                              a re-release after a deletion needs a commit
                                              never released under that tag, so replaying
                                              an old deletion and an old push releases
                                              nothing
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
from typing import Any

CLAIM_TAG = "shipyard-webhook"
_SAFE_ID = re.compile(r"\A[a-z0-9-]{1,120}\Z")

logger = logging.getLogger("shipyard.webhook")


def claim_name(kind: str, *parts: str) -> str:
    """A Variable name ([a-z0-9_-], <= 255): readable when the id is safe, else hashed."""
    if kind == "delivery" and _SAFE_ID.match(parts[-1].lower()):
        return f"shipyard-webhook-delivery-{parts[0]}-{parts[-1].lower()}"
    joined = "\x00".join(parts).lower() if kind != "body" else parts[0]
    return f"shipyard-webhook-{kind}-{hashlib.sha256(joined.encode()).hexdigest()[:40]}"


def expires_at(seconds: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)).isoformat()


class Claims:
    """Create-if-absent, release, and expiry of claim Variables."""

    def __init__(self, client: Any):
        self.client = client

    async def claim(
        self, name: str, nonce: str, value: dict[str, Any], keep_s: float
    ) -> dict[str, Any] | None:
        """Create the claim; None if it is ours (now or from an earlier attempt of the same
        journal row), else the holder's recorded value."""
        from prefect.client.schemas.actions import VariableCreate
        from prefect.exceptions import ObjectAlreadyExists

        record = {**value, "claim": nonce, "expires": expires_at(keep_s)}
        try:
            await self.client.create_variable(
                VariableCreate(name=name, value=record, tags=[CLAIM_TAG])
            )
            return None
        except ObjectAlreadyExists:
            held = await self.client.read_variable_by_name(name)
            if held is None:  # deleted in between (a deletion, or expired): try once more
                return await self.claim(name, nonce, value, keep_s)
            got = dict(held.value) if isinstance(held.value, dict) else {}
            return None if got.get("claim") == nonce else got

    async def release(self, name: str, nonce: str | None = None) -> bool:
        """Delete a claim (only if it is `nonce`'s, when given)."""
        from prefect.exceptions import ObjectNotFound

        if nonce is not None:
            held = await self.client.read_variable_by_name(name)
            if held is None or not isinstance(held.value, dict):
                return False
            if held.value.get("claim") != nonce:
                return False
        try:
            await self.client.delete_variable_by_name(name)
            return True
        except ObjectNotFound:
            return False

    async def clean_expired(self, page: int = 200, budget: int = 5000) -> int:
        """Delete claim Variables past their `expires` (and delivery claims without one, from
        older versions of the receiver). Returns how many."""
        now = dt.datetime.now(dt.UTC)
        deleted = offset = 0
        while offset < budget:
            response = await self.client.request(
                "POST",
                "/variables/filter",
                json={
                    "variables": {"tags": {"all_": [CLAIM_TAG]}},
                    "sort": "NAME_ASC",
                    "offset": offset,
                    "limit": page,
                },
            )
            found = response.json()
            if not found:
                break
            kept = 0
            for variable in found:
                value = variable.get("value")
                stamp = value.get("expires") if isinstance(value, dict) else None
                try:
                    expired = dt.datetime.fromisoformat(str(stamp)) < now
                except ValueError:
                    # Written before claims expired: one per delivery forever; drop those.
                    expired = variable["name"].startswith("shipyard-webhook-delivery-")
                if expired and await self.release(variable["name"]):
                    deleted += 1
                else:
                    kept += 1
            offset += kept
            if len(found) < page:
                break
        if deleted:
            logger.info("claims: %d expired claim variables deleted", deleted)
        return deleted
