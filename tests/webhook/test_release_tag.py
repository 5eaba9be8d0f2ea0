"""The one release-tag rule (blocks/release_tag.py), as the receiver applies it."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import uuid

import httpx
import pytest

from shipyard.blocks.release_tag import (
    RELEASE_TAG_MAX_LENGTH,
    compile_tag_pattern,
    validate_release_tag,
)

GOOD = ["v1.0.0", "v10.20.30", "v0.0.1"]
BAD = [
    "v８.４.０",  # noqa: RUF001 - full-width digits: look-alike digits are the input under test
    "v٨.٤.٠",  # noqa: RUF001 - Arabic-Indic digits: look-alike digits are the input under test
    "v1.0.0\n",  # `$` would match before the newline
    "v1.0.0\r",
    "\nv1.0.0",
    "v1.0.0;rm -rf /",
    "v1.0.0$(id)",
    "\u202ev1.0.0",  # right-to-left override
    "v1.0",
    "",
    "v" + "1" * 10_000 + ".0.0",
]


@pytest.mark.parametrize("tag", GOOD)
def test_release_tags_pass(tag):
    assert validate_release_tag(tag) == tag


@pytest.mark.parametrize("tag", BAD)
def test_look_alike_and_hostile_tags_are_refused_naming_the_field(tag):
    with pytest.raises(ValueError) as caught:
        validate_release_tag(tag)
    message = str(caught.value)
    assert message.startswith("git_tag ")
    assert "e.g. 'v1.4.0'" in message or "use a tag like" in message
    assert "\n" not in message and "\u202e" not in message
    assert len(message) < 400  # the value is truncated, not echoed whole


def test_length_limit_is_checked_before_the_pattern():
    tag = "v1.0." + "0" * RELEASE_TAG_MAX_LENGTH
    with pytest.raises(ValueError, match="longer than 128"):
        validate_release_tag(tag)


def test_custom_pattern_is_ascii_and_whole_string():
    pattern = compile_tag_pattern(r"release-\d+")
    assert validate_release_tag("release-12", pattern=pattern) == "release-12"
    for tag in ["release-１２", "release-12\n", "xrelease-12", "release-12x"]:  # noqa: RUF001 - look-alike digits are the input under test
        with pytest.raises(ValueError):
            validate_release_tag(tag, pattern=pattern)
    with pytest.raises(ValueError, match="tag pattern '\\(' is not a valid regular expression"):
        compile_tag_pattern("(")


def _signed(secret: str, tag: str) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(
        {
            "ref": f"refs/tags/{tag}",
            "after": "a" * 40,
            "deleted": False,
            "repository": {"full_name": "acme/manga-translator"},
        }
    ).encode()
    mac = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return body, {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": f"sha256={mac}",
    }


@pytest.mark.parametrize("tag", ["v８.４.０", "v1.0.0\n", "v٨.٤.٠"])  # noqa: RUF001 - look-alike digits are the input under test
def test_receiver_answers_422_to_look_alike_tags(tag, monkeypatch):
    from shipyard.deployments.webhook.receiver import WebhookSettings, create_app

    monkeypatch.setenv("SHIPYARD_WEBHOOK_SECRET", "s3cret-for-tag-test")
    monkeypatch.setenv("SHIPYARD_WEBHOOK_REPOS", "acme/manga-translator=default")
    app = create_app(WebhookSettings.from_env())

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as client:
            body, headers = _signed("s3cret-for-tag-test", tag)
            return await client.post("/webhook", content=body, headers=headers)

    response = asyncio.run(send())
    assert response.status_code == 422, response.text
    assert "tag" in response.json()["detail"]
