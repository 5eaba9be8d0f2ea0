"""Answers never echo a header (README: "Answers never echo a header (the delivery id
included)"), the 4xx for a malformed header included; and the 503 limit counts requests, not
connections. In-process, raw ASGI messages: a client library would refuse the malformed headers
before sending them (uvicorn's h11 refuses some too; the app must not rely on it)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
from receiver_kit import app_of, github_headers, make_receiver, tag_push


@pytest.fixture
def receiver(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIPYARD_WEBHOOK_SECRET", "whsec-input-tests-0123456789")
    return make_receiver(tmp_path)


def _raw(app: Any, body: bytes, headers: list[tuple[str, str]]) -> tuple[int, bytes]:
    """One request as uvicorn would hand it over; (status, answer body)."""
    sent: list[dict] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/webhook",
        "raw_path": b"/webhook",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 5000),
        "root_path": "",
    }
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_4xx_for_malformed_headers_echo_none_of_them(receiver):
    app = app_of(receiver)
    body = json.dumps(tag_push("v1.0.0")).encode()
    marker = uuid.uuid4().hex
    base = github_headers(body)
    cases = {
        "X-GitHub-Delivery": (f"{marker}!<script>", 400),
        "Content-Length": (f"12{marker}", 400),
        "Content-Type": (f"text/{marker}", 415),
    }
    for header, (value, status) in cases.items():
        headers = [(k, v) for k, v in base.items() if k != header] + [(header, value)]
        if header != "Content-Length":
            headers.append(("Content-Length", str(len(body))))
        got, answer = _raw(app, body, headers)
        assert got == status, (header, got, answer)
        assert header.encode() in answer, answer  # the header is named ...
        assert marker.encode() not in answer, (header, answer)  # ... its value never echoed
    # GitLab's delivery id header too
    gitlab = [
        ("Content-Type", "application/json"),
        ("X-Gitlab-Event", "Tag Push Hook"),
        ("X-Gitlab-Token", "whsec-input-tests-0123456789"),
        ("X-Gitlab-Event-UUID", f"{marker} x"),
    ]
    got, answer = _raw(app, b'{"object_kind": "tag_push"}', gitlab)
    assert got == 400 and b"X-Gitlab-Event-UUID" in answer and marker.encode() not in answer


def test_requests_over_the_limit_get_503_and_the_limit_frees(receiver):
    """`InFlightLimit`: two requests whose bodies stall hold both places; a third is answered
    503 at once; once they ended (408), a delivery is accepted."""
    from shipyard.deployments.webhook.connections import InFlightLimit

    receiver.settings = type(receiver.settings)(
        repositories=receiver.settings.repositories, body_timeout_s=1.0
    )
    app = InFlightLimit(app_of(receiver), limit=2)
    body = json.dumps(tag_push("v2.0.0")).encode()

    async def scenario() -> list[int]:
        release = asyncio.Event()

        async def stalls():
            yield body[:10]
            await release.wait()

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as client:
            stalled = [
                asyncio.create_task(client.post("/webhook", content=stalls(), headers=h))
                for h in (github_headers(body), github_headers(body))
            ]
            while app.active < 2:
                await asyncio.sleep(0.01)
            third = await client.post("/webhook", content=body, headers=github_headers(body))
            answers = [third.status_code, third.headers.get("retry-after")]
            answers += [(await t).status_code for t in stalled]  # body deadline: 408
            release.set()
            later = await client.post("/webhook", content=body, headers=github_headers(body))
            return [*answers, later.status_code, app.active]

    third, retry_after, *rest = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert (third, retry_after) == (503, "1")
    assert rest == [408, 408, 202, 0]
