"""Fuzzing the receiver (hypothesis): no input without a valid signature is ever journaled
(the journal is the only way to a run), nothing gets a 500 or logs a traceback, and every
answer comes within a bound."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from receiver_kit import SECRET, app_of, journal_rows, make_receiver, sign, tag_create, tag_push

from shipyard.blocks.release_tag import RELEASE_TAG_PATTERN

ANSWER_BOUND_S = 5.0
KNOWN = {200, 202, 400, 401, 403, 408, 409, 413, 415, 422, 503}
FUZZ = settings(
    max_examples=120,
    deadline=5000,  # 2 busy cores: hypothesis' own bound stays below ANSWER_BOUND_S
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)

header_text = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"),
    max_size=80,
)
tags = st.one_of(
    st.text(max_size=40),
    st.from_regex(r"v[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}", fullmatch=True),
    st.sampled_from(["v１.２.３", "v1.0.0\n", "v1.0.0;rm -rf /", "\u202ev1.0.0", "v" + "1" * 500]),  # noqa: RUF001 - look-alike digits are the input under test
)
shapes = st.one_of(
    tags.map(lambda t: tag_push(t)),
    tags.map(lambda t: tag_push(t, head_commit=False)),
    tags.map(tag_create),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=20,
    ),
)
bodies = st.one_of(
    st.binary(max_size=2048),
    shapes.map(lambda p: json.dumps(p).encode()),
    st.just(b"[" * 5000),  # deeper than json recurses
)
content_types = st.sampled_from(
    ["application/json", "application/x-www-form-urlencoded", "text/plain", "", "APPLICATION/JSON"]
)


@pytest.fixture
def receiver(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIPYARD_WEBHOOK_SECRET", SECRET)
    return make_receiver(tmp_path)


async def _send(app, body: bytes, headers: dict[str, str]) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as client:
        async with asyncio.timeout(ANSWER_BOUND_S):
            raw = {k: v.encode("latin-1") for k, v in headers.items()}  # any byte a sender may
            return await client.post("/webhook", content=body, headers=raw)


class _Tracebacks(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.bad: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or "Traceback" in record.getMessage():
            self.bad.append(record.getMessage())


@pytest.fixture
def tracebacks():
    handler = _Tracebacks()
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)


@FUZZ
@given(
    body=bodies,
    content_type=content_types,
    event=st.sampled_from(["push", "create", "delete", "ping", "Tag Push Hook"]) | header_text,
    delivery=header_text,
    signature=st.none() | header_text | st.text("0123456789abcdef", min_size=64, max_size=64),
    gitlab_token=st.none() | header_text,
    provider=st.sampled_from(["github", "gitlab"]),
)
def test_unsigned_input_never_reaches_the_journal(
    receiver, tracebacks, body, content_type, event, delivery, signature, gitlab_token, provider
):
    headers = {"Content-Type": content_type}
    if provider == "github":
        headers.update({"X-GitHub-Event": event, "X-GitHub-Delivery": delivery})
        if signature is not None:
            headers["X-Hub-Signature-256"] = (
                signature if not re.fullmatch("[0-9a-f]{64}", signature) else f"sha256={signature}"
            )
    else:
        headers.update({"X-Gitlab-Event": event, "X-Gitlab-Event-UUID": delivery})
        if gitlab_token is not None and gitlab_token != SECRET:
            headers["X-Gitlab-Token"] = gitlab_token
    response = asyncio.run(_send(app_of(receiver), body, headers))
    assert response.status_code in KNOWN - {200, 202, 503}, response.text
    assert journal_rows(receiver) == []
    assert tracebacks.bad == []


@FUZZ
@given(payload=shapes, event=st.sampled_from(["push", "create", "delete", "ping", "watch"]))
def test_signed_input_is_answered_and_only_release_tags_are_journaled(
    receiver, tracebacks, payload, event
):
    body = json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": "fuzz-" + str(len(journal_rows(receiver))) + "-" + event,
        "X-Hub-Signature-256": sign(body),
    }
    response = asyncio.run(_send(app_of(receiver), body, headers))
    assert response.status_code in KNOWN - {503}, response.text
    assert tracebacks.bad == []
    if response.status_code == 202 and response.json()["status"] == "accepted":
        assert re.fullmatch(RELEASE_TAG_PATTERN, response.json()["tag"], re.ASCII)
    for row in journal_rows(receiver):
        assert re.fullmatch(RELEASE_TAG_PATTERN, row["tag"], re.ASCII), row["tag"]
