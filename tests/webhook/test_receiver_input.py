"""Hostile and real input to the receiver, in-process: every answer's status, the journal (the
only way to a run) and the log lines. No Prefect call is on this path."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
import uuid

import pytest
from receiver_kit import (
    REPOSITORY,
    app_of,
    github_headers,
    journal_rows,
    make_receiver,
    post,
    send_json,
    sign,
    tag_create,
    tag_delete,
    tag_push,
)

MiB = 1024 * 1024


@pytest.fixture
def receiver(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIPYARD_WEBHOOK_SECRET", "whsec-input-tests-0123456789")
    return make_receiver(tmp_path)


@pytest.fixture
def app(receiver):
    return app_of(receiver)


# ---------------------------------------------------------------- GitHub's real shapes


def test_push_of_a_tag_with_and_without_head_commit(app, receiver):
    with_head = send_json(app, tag_push("v1.0.0", commit="b" * 40))
    without = send_json(app, tag_push("v1.0.1", commit="c" * 40, head_commit=False))
    assert with_head.status_code == 202 and with_head.json()["status"] == "accepted"
    assert without.status_code == 202 and without.json()["status"] == "accepted"
    assert with_head.json()["target"] == "default"
    assert [r["commit_sha"] for r in journal_rows(receiver)] == ["b" * 40, "c" * 40]


def test_the_push_time_github_sends_is_journaled_and_emitted(app, receiver):
    # GitHub's push delivery: repository.pushed_at in Unix seconds (other events: ISO 8601).
    pushes = {
        "v1.0.0": 1770888600,
        "v1.0.1": "2026-02-12T10:30:00+01:00",
        "v1.0.2": None,
        "v1.0.3": "yesterday",
    }
    for i, (tag, pushed_at) in enumerate(pushes.items()):
        payload = tag_push(tag, commit=f"{i}" * 40)
        if pushed_at is not None:
            payload["repository"]["pushed_at"] = pushed_at
        assert send_json(app, payload).status_code == 202
    assert [r["tagged_at"] for r in journal_rows(receiver)] == [
        "2026-02-12T09:30:00+00:00",
        "2026-02-12T10:30:00+01:00",
        None,  # absent or not a time: the release reads the tag's date from git
        None,
    ]
    from shipyard.deployments.webhook.journal import (
        _row,  # how the dispatcher reads a journaled push
    )

    emitted = [_row(r).push.event()["payload"]["tagged_at"] for r in journal_rows(receiver)]
    assert emitted == ["2026-02-12T09:30:00+00:00", "2026-02-12T10:30:00+01:00", "", ""]


def test_a_journal_written_before_push_times_opens_and_records_them(tmp_path):
    import sqlite3

    from shipyard.deployments.webhook.journal import SCHEMA, Journal

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA.replace(",\n    tagged_at TEXT", ""))
        assert "tagged_at" not in {r[1] for r in db.execute("PRAGMA table_info(deliveries)")}
    journal = Journal(path)
    try:
        with sqlite3.connect(path) as db:
            assert "tagged_at" in {r[1] for r in db.execute("PRAGMA table_info(deliveries)")}
    finally:
        journal.close()


def test_form_encoded_payload_variant(app, receiver):
    payload = json.dumps(tag_push("v2.0.0", commit="d" * 40))
    body = urllib.parse.urlencode({"payload": payload}).encode()
    headers = github_headers(body, **{"Content-Type": "application/x-www-form-urlencoded"})
    response = post(app, body, headers)
    assert response.status_code == 202, response.text
    assert response.json()["commit"] == "d" * 40


def test_create_before_push_takes_the_push_commit(app, receiver):
    """GitHub may deliver `create` (no commit) before `push`: the create waits a bounded time
    for the push, which supersedes it; the release runs with the push's commit."""
    created = send_json(app, tag_create("v3.0.0"), "create")
    pushed = send_json(app, tag_push("v3.0.0", commit="e" * 40))
    assert created.json()["status"] == "accepted" and created.json()["commit"] is None
    assert pushed.json()["status"] == "accepted" and pushed.json()["commit"] == "e" * 40
    rows = journal_rows(receiver)
    assert [(r["commit_sha"], r["state"]) for r in rows] == [
        (None, "superseded"),
        ("e" * 40, "pending"),
    ]
    assert rows[0]["not_before"] - rows[0]["received_at"] == pytest.approx(
        receiver.settings.create_wait_s
    )


def test_push_then_create_is_one_release(app, receiver):
    pushed = send_json(app, tag_push("v3.1.0", commit="f" * 40))
    created = send_json(app, tag_create("v3.1.0"), "create")
    assert created.json()["status"] == "duplicate"
    assert created.json()["event_id"] == pushed.json()["event_id"]


def test_replayed_body_under_a_fresh_delivery_id_is_refused(app, receiver):
    """The delivery id is an unsigned header: a captured deletion or push sent again under a
    new id is the same signed body."""
    deletion = json.dumps(tag_delete("v4.0.0")).encode()
    push = json.dumps(tag_push("v4.0.0", commit="1" * 40)).encode()
    assert post(app, push, github_headers(push)).status_code == 202
    assert post(app, deletion, github_headers(deletion)).json()["status"] == "ignored"
    replayed_deletion = post(app, deletion, github_headers(deletion))
    replayed_push = post(app, push, github_headers(push))
    assert replayed_deletion.status_code == 409, replayed_deletion.text
    assert replayed_push.status_code == 409
    assert "replay" in replayed_push.json()["detail"]
    assert [r["kind"] for r in journal_rows(receiver)] == ["push", "delete"]


def test_redelivery_same_id_is_409(app):
    body = json.dumps(tag_push("v4.1.0")).encode()
    headers = github_headers(body)
    assert post(app, body, headers).status_code == 202
    again = post(app, body, headers)
    assert again.status_code == 409
    assert headers["X-GitHub-Delivery"] not in again.text  # the header is never echoed


# ---------------------------------------------------------------- what must be refused

BAD_TAGS = {
    "shell metacharacters": "v1.0.0;curl${IFS}x|sh",
    "command substitution": "v1.0.$(id)",
    "full-width digits": "v１.２.３",  # noqa: RUF001 - look-alike digits are the input under test
    "arabic-indic digits": "v١.٢.٣",  # noqa: RUF001 - look-alike digits are the input under test
    "right-to-left override": "v1.0.0\u202e",
    "trailing newline": "v1.0.0\n",
    "forged log line": "v1.0.0\n2026-01-01 shipyard.webhook delivery x -> 202 accepted",
    "10,000 characters": "v1.0." + "9" * 10_000,
    "nul byte": "v1.0.0\x00",
}


@pytest.mark.parametrize("name", list(BAD_TAGS))
def test_bad_tags_are_422_escaped_and_never_journaled(name, app, receiver, caplog):
    tag = BAD_TAGS[name]
    caplog.set_level(logging.INFO, logger="shipyard.webhook")
    response = send_json(app, tag_push(tag))
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "tag" in detail and len(detail) < 600
    assert not any(c in detail for c in "\n\r\x00\u202e")
    assert journal_rows(receiver) == []
    lines = [r.getMessage() for r in caplog.records if r.name == "shipyard.webhook"]
    assert lines and not any(c in line for line in lines for c in "\n\r\u202e")


def test_body_of_exactly_one_mib_is_read_one_more_byte_is_413(app, receiver):
    payload = tag_push("v5.0.0")
    payload["padding"] = ""
    base = len(json.dumps(payload).encode())
    payload["padding"] = "x" * (MiB - base)
    body = json.dumps(payload).encode()
    assert len(body) == MiB
    assert post(app, body, github_headers(body)).status_code == 202
    payload["padding"] += "x"
    bigger = json.dumps(payload).encode()
    assert len(bigger) == MiB + 1
    assert post(app, bigger, github_headers(bigger)).status_code == 413


def _chunks(body: bytes, size: int = 65536):
    async def gen():
        for i in range(0, len(body), size):
            yield body[i : i + size]

    return gen()


def test_chunked_bodies_without_length(app, receiver):
    small = json.dumps(tag_push("v5.1.0")).encode()
    response = post(app, _chunks(small, 7), github_headers(small))
    assert response.request.headers.get("content-length") is None
    assert response.status_code == 202, response.text
    big = b'{"pad": "' + b"x" * MiB + b'"}'
    assert post(app, _chunks(big), github_headers(big)).status_code == 413


@pytest.mark.parametrize(
    "name, body, status",
    [
        ("invalid utf-8", b'{"ref": "refs/tags/v1.0.0\xff\xfe"}', 400),
        ("deep json", b"[" * 100_000 + b"]" * 100_000, 400),
        ("deep objects", b'{"a":' * 50_000 + b"1" + b"}" * 50_000, 400),
        ("truncated json", b'{"ref": "refs/tags/v1.', 400),
        ("not an object", b'["refs/tags/v1.0.0"]', 400),
        ("missing ref", b'{"repository": {"full_name": "acme/manga-translator"}}', 400),
    ],
)
def test_permanent_input_errors_are_4xx_not_503(name, body, status, app, receiver):
    response = post(app, body, github_headers(body))
    assert response.status_code == status, f"{name}: {response.status_code} {response.text}"
    assert journal_rows(receiver) == []


def test_too_long_repository_and_delivery_id(app, receiver):
    long_repo = send_json(app, tag_push("v6.0.0", repository={"full_name": "a/" + "b" * 300}))
    assert long_repo.status_code == 422
    assert "repository.full_name" in long_repo.json()["detail"]
    body = json.dumps(tag_push("v6.0.1")).encode()
    long_id = post(app, body, github_headers(body, delivery="d" * 500))
    assert long_id.status_code == 400
    assert "X-GitHub-Delivery" in long_id.json()["detail"]
    assert "d" * 100 not in long_id.text
    assert journal_rows(receiver) == []


def test_repository_not_on_the_allow_list_is_403(app, receiver):
    for payload in (
        tag_push("v7.0.0", repository={"full_name": "acme/other"}),
        tag_push("v7.0.0", ref="refs/heads/main", repository={"full_name": "evil/x"}),
    ):
        response = send_json(app, payload)
        assert response.status_code == 403, response.text
        assert "allow-list" in response.json()["detail"]
    assert journal_rows(receiver) == []


def test_allow_list_maps_each_repository_to_its_target(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIPYARD_WEBHOOK_SECRET", "whsec-input-tests-0123456789")
    file = tmp_path / "repos.yaml"
    file.write_text(f"repositories:\n  {REPOSITORY.upper()}: prod-translator\n")
    from shipyard.deployments.webhook.settings import WebhookSettings

    settings = WebhookSettings.from_env(repos_file=str(file))
    assert settings.target_of(REPOSITORY) == "prod-translator"
    receiver = make_receiver(tmp_path, journal=None)
    receiver.settings = settings
    response = send_json(app_of(receiver), tag_push("v7.1.0"))
    assert response.json()["target"] == "prod-translator"
    with pytest.raises(ValueError, match="target 'Prod_X' of acme/x is not a ReleaseTarget"):
        WebhookSettings.from_env(repos=["acme/x=Prod_X"])
    with pytest.raises(ValueError, match="entry 'acme/x' has no target"):
        WebhookSettings.from_env(repos=["acme/x"])


def test_stalled_body_is_408(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIPYARD_WEBHOOK_SECRET", "whsec-input-tests-0123456789")
    receiver = make_receiver(tmp_path, body_timeout_s=0.2)
    body = json.dumps(tag_push("v8.0.0")).encode()

    async def stalls():
        yield body[:10]
        await asyncio.Event().wait()  # never sends the rest

    response = post(app_of(receiver), stalls(), github_headers(body))
    assert response.status_code == 408
    assert journal_rows(receiver) == []


def test_disconnect_mid_body_logs_one_line_without_traceback(receiver, caplog):
    """A sender that goes away mid-body: one log line, no traceback, nothing journaled."""
    caplog.set_level(logging.INFO)
    body = json.dumps(tag_push("v8.1.0")).encode()
    headers = github_headers(body)
    messages = [
        {"type": "http.request", "body": body[:20], "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict] = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/webhook",
        "raw_path": b"/webhook",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 5000),
        "root_path": "",
    }
    asyncio.run(app_of(receiver)(scope, receive, send))
    records = [r for r in caplog.records if r.name == "shipyard.webhook"]
    assert len(records) == 1 and "disconnected" in records[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)
    assert journal_rows(receiver) == []


def test_unsigned_and_wrongly_signed_are_401_and_not_journaled(app, receiver):
    body = json.dumps(tag_push("v9.0.0")).encode()
    unsigned = {k: v for k, v in github_headers(body).items() if k != "X-Hub-Signature-256"}
    wrong = {**github_headers(body), "X-Hub-Signature-256": sign(body, "not-the-secret")}
    assert post(app, body, unsigned).status_code == 401
    assert post(app, body, wrong).status_code == 401
    assert journal_rows(receiver) == []


def test_answers_never_echo_the_delivery_header(app):
    marker = f"echo-{uuid.uuid4().hex}"
    for payload in (tag_push("v9.1.0"), tag_push("bad tag")):
        body = json.dumps(payload).encode()
        response = post(app, body, github_headers(body, delivery=marker))
        assert marker not in response.text
