"""The webhook rows of the fault matrix (bench/faults.py): the real receiver process
(`shipyard webhook serve`) against the bench's Prefect server, with the faults a tag push meets
on its way in. Expected outcome of every case: each tag pushed ends as exactly one
`shipyard.git.tag.pushed` event in Prefect (0 lost, 0 twice), whatever happened in between.

- duplicate delivery: GitHub redelivers the same delivery (same id) and the same signed body
  under a new id: 409 / duplicate, one event;
- Prefect API down while deliveries arrive: every delivery is still answered 202 from the
  journal; a receiver started later on the same journal hands them all to Prefect, once;
- receiver killed (SIGKILL) mid-burst: restarted on its journal, the sender redelivers what got
  no answer (same delivery ids); every tag once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from sandbox.procs import free_port, spawn, stop_pid, wait_for_port

SECRET = "whsec-fault-matrix-0123456789"
REPOSITORY = "acme/fault-matrix"


def _delivery(tag: str, delivery: str | None = None) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(
        {
            "ref": f"refs/tags/{tag}",
            "before": "0" * 40,
            "after": hashlib.sha1(tag.encode(), usedforsecurity=False).hexdigest(),
            "created": True,
            "deleted": False,
            "head_commit": {
                "id": hashlib.sha1(tag.encode(), usedforsecurity=False).hexdigest(),
                "message": "release",
            },
            "repository": {"full_name": REPOSITORY},
        }
    ).encode()
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return body, {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": signature,
    }


class _Receiver:
    def __init__(self, workdir: Path, journal: Path, api_url: str):
        self.port = free_port()
        self.proc = spawn(
            [
                str(Path(sys.executable).with_name("shipyard")),
                *("webhook", "serve", "--port", str(self.port), "--journal", str(journal)),
                *("--repo", f"{REPOSITORY}=default"),
            ],
            workdir / f"receiver-{self.port}.log",
            env={"PREFECT_API_URL": api_url, "SHIPYARD_WEBHOOK_SECRET": SECRET},
        )
        wait_for_port("127.0.0.1", self.port, 120, proc=self.proc)

    def post(self, body: bytes, headers: dict[str, str]) -> int | None:
        try:
            url = f"http://127.0.0.1:{self.port}/webhook"
            return httpx.post(url, content=body, headers=headers, timeout=30).status_code
        except httpx.HTTPError:
            return None  # no answer: the sender redelivers

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        stop_pid(self.proc.pid)


def _events(api_url: str, tags: set[str], since: str, timeout: float = 90.0) -> Counter:
    """tag -> how many tag-pushed events Prefect holds for it since `since` (waits until every
    tag has one, then a little more: a second emission would show up late)."""

    def count() -> Counter:
        body = {
            "filter": {
                "event": {"name": ["shipyard.git.tag.pushed"]},
                "occurred": {"since": since},
            },
            "limit": 50,
        }
        answer = httpx.post(f"{api_url}/events/filter", json=body, timeout=30)
        answer.raise_for_status()
        found = answer.json()["events"]
        return Counter(e["payload"]["tag"] for e in found if e["payload"].get("tag") in tags)

    deadline = time.monotonic() + timeout
    while set(count()) < tags and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(2)
    return count()


def _since() -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)).isoformat()


def _row(case: str, tags: set[str], seen: Counter, detail: str) -> dict[str, Any]:
    lost = sorted(t for t in tags if seen[t] == 0)
    twice = sorted(t for t in tags if seen[t] > 1)
    return {
        "id": f"webhook:{case}",
        "expect": "each tag once",
        "got": "each tag once" if not lost and not twice else f"lost {lost}, twice {twice}",
        "passed": not lost and not twice,
        "violations": [],
        "duplicates": [f"{t} emitted {seen[t]} times" for t in twice],
        "slot_held": False,
        "lost": len(lost),
        "detail": detail,
    }


def duplicate_delivery(workdir: Path, api_url: str) -> dict[str, Any]:
    since = _since()
    receiver = _Receiver(workdir, workdir / "dup.db", api_url)
    try:
        body, headers = _delivery("v7.1.0")
        first = receiver.post(body, headers)
        again = receiver.post(body, headers)  # GitHub's "Redeliver": the same delivery id
        new_id = receiver.post(body, {**headers, "X-GitHub-Delivery": str(uuid.uuid4())})
        seen = _events(api_url, {"v7.1.0"}, since)
    finally:
        receiver.stop()
    row = _row("duplicate delivery", {"v7.1.0"}, seen, f"answers {first}, {again}, {new_id}")
    if (first, again) != (202, 409) or new_id not in (202, 409):
        row["passed"], row["got"] = False, f"answers {first}, {again}, {new_id}"
    return row


def prefect_down(workdir: Path, api_url: str) -> dict[str, Any]:
    journal = workdir / "down.db"
    since = _since()
    dead_api = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    tags = {f"v7.2.{i}" for i in range(5)}
    receiver = _Receiver(workdir, journal, dead_api)
    try:
        answers = [receiver.post(*_delivery(t)) for t in sorted(tags)]
    finally:
        receiver.kill()
    later = _Receiver(workdir, journal, api_url)  # Prefect is back: the journal hands over
    try:
        seen = _events(api_url, tags, since)
    finally:
        later.stop()
    row = _row("Prefect API down while deliveries arrive", tags, seen, f"answers {answers}")
    if any(a != 202 for a in answers):
        row["passed"], row["got"] = False, f"answers {answers} while Prefect was down"
    return row


def killed_mid_burst(workdir: Path, api_url: str, events: int = 20) -> dict[str, Any]:
    journal = workdir / "burst.db"
    since = _since()
    tags = {f"v7.3.{i}" for i in range(events)}
    deliveries = {t: _delivery(t) for t in sorted(tags)}
    receiver = _Receiver(workdir, journal, api_url)
    answered: dict[str, int | None] = {}
    lock = threading.Lock()
    try:

        def send(tag: str) -> None:
            with lock:  # SIGKILL once half the deliveries were answered
                half_answered = len([a for a in answered.values() if a]) >= events // 2
                if half_answered and receiver.proc.poll() is None:
                    receiver.kill()
            answered[tag] = receiver.post(*deliveries[tag])

        with ThreadPoolExecutor(max_workers=5) as pool:
            list(pool.map(send, sorted(tags)))
    finally:
        if receiver.proc.poll() is None:
            receiver.kill()
    restarted = _Receiver(workdir, journal, api_url)
    try:
        unanswered = [t for t, a in answered.items() if a not in (202, 409)]
        for tag in unanswered:  # GitHub redelivers the same delivery
            restarted.post(*deliveries[tag])
        seen = _events(api_url, tags, since)
    finally:
        restarted.stop()
    return _row("receiver killed mid-burst", tags, seen, f"{len(unanswered)} redelivered")


def webhook_cases(workdir: Path, api_url: str) -> list[dict[str, Any]]:
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in (duplicate_delivery, prefect_down, killed_mid_burst):
        try:
            rows.append(case(workdir, api_url.rstrip("/")))
        except Exception as exc:  # noqa: BLE001 - a broken case is a failed row, not a lost bench
            name = case.__name__.replace("_", " ")
            rows.append({**_row(name, set(), Counter(), ""), "passed": False, "got": repr(exc)})
    return rows
