"""The receiver's journal: every authentic delivery, durably on disk before it is answered.

A SQLite file in WAL mode with `synchronous=FULL`: a 202 is sent only after the row is
committed and the WAL fsync'ed, so it survives a restart, a `kill -9` and a power cut. The
dispatcher (webhook_dispatch.py) then takes rows in order and hands them to Prefect in the
background, with retries; the answer never waits for Prefect.

Rows move `pending` (claims to take in Prefect) -> `emit` (claims held, event to emit) ->
`emitted` (event posted, watching what its trigger did) -> `done`; or end `duplicate`
(another delivery already released the tag, or this one was redelivered to another
receiver), `refused` (a replayed commit), `superseded` (a `create` whose `push` came), or
`failed` (Prefect refused it for good, logged).

Several receivers on one host may share one journal file (SQLite locks it; rows are leased
by one dispatcher at a time). Across hosts each has its own, and the claims in Prefect are
the shared truth (see webhook_claims.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from shipyard.deployments.webhook.parse import TagPush

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    body_digest TEXT NOT NULL,
    kind TEXT NOT NULL,
    provider TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    repository TEXT NOT NULL,
    repo_key TEXT NOT NULL,
    tag TEXT NOT NULL,
    commit_sha TEXT,
    ref TEXT NOT NULL,
    target TEXT NOT NULL,
    nonce TEXT NOT NULL,
    state TEXT NOT NULL,
    detail TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    event_attempt INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL,
    received_at REAL NOT NULL,
    emitted_at REAL,
    lease_owner TEXT,
    lease_until REAL,
    tagged_at TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_tag ON deliveries (repo_key, tag, seq);
CREATE INDEX IF NOT EXISTS deliveries_state ON deliveries (state, not_before);
CREATE INDEX IF NOT EXISTS deliveries_digest ON deliveries (body_digest);
"""
P = ParamSpec("P")
T = TypeVar("T")
ACTIVE = ("pending", "emit", "emitted", "done")
TERMINAL = ("done", "duplicate", "refused", "superseded", "failed")


@dataclasses.dataclass(frozen=True)
class Row:
    """One journal row, as the dispatcher works on it."""

    seq: int
    kind: str  # push | delete
    push: TagPush  # for a deletion: tag, repository and delivery; commit None
    body_digest: str
    nonce: str
    state: str
    attempts: int
    received_at: float

    @property
    def group(self) -> tuple[str, str]:
        return (self.push.repository.lower(), self.push.tag)


@dataclasses.dataclass(frozen=True)
class Recorded:
    """What the journal made of a delivery: the answer's status and the event it leads to."""

    status: str  # accepted | duplicate | deletion | redelivery | replay
    event_id: str | None = None
    detail: str = ""


class Journal:
    """The journal file. Every method is synchronous; `call` runs one in a thread."""

    def __init__(self, path: Path, lease_s: float = 300.0):
        self.path = path
        self.lease_s = lease_s
        # Who holds a lease: this host and process. A lease of a process of this host that is
        # gone (killed) is free at once; one of another host's process waits for its expiry.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        columns = {r["name"] for r in self._db.execute("PRAGMA table_info(deliveries)")}
        if "tagged_at" not in columns:  # a journal written before pushes carried their time
            self._db.execute("ALTER TABLE deliveries ADD COLUMN tagged_at TEXT")

    async def call(self, method: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one of this journal's methods in a thread (SQLite calls block)."""
        return await asyncio.to_thread(method, *args, **kwargs)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _tx(self) -> _Transaction:
        return _Transaction(self._db, self._lock)

    # ------------------------------------------------------------ the request path

    def record(self, push: TagPush, kind: str, body_digest: str, create_wait_s: float) -> Recorded:
        """Journal one authentic delivery (committed and fsync'ed on return)."""
        now = time.time()
        with self._tx() as db:
            seen = db.execute(
                "SELECT event_attempt FROM deliveries WHERE key = ?", (_key(push),)
            ).fetchone()
            if seen is not None:
                return Recorded("redelivery", detail="this delivery was already received")
            replay = db.execute(
                "SELECT delivery_id FROM deliveries WHERE body_digest = ? LIMIT 1", (body_digest,)
            ).fetchone()
            if replay is not None:
                return Recorded("replay", detail="this signed body was already received (a replay)")
            state, not_before, recorded = "pending", now, None
            if kind == "push":
                latest = db.execute(
                    "SELECT seq, kind, commit_sha, state, provider, delivery_id FROM deliveries "
                    "WHERE repo_key = ? AND tag = ? AND state IN (?, ?, ?, ?) "
                    "ORDER BY seq DESC LIMIT 1",
                    (push.repository.lower(), push.tag, *ACTIVE),
                ).fetchone()
                if latest is not None and latest["kind"] == "push":
                    waiting_create = latest["commit_sha"] is None and latest["state"] == "pending"
                    if waiting_create and push.commit is not None:
                        db.execute(
                            "UPDATE deliveries SET state = 'superseded', detail = ? WHERE seq = ?",
                            ("the tag's push came with its commit", latest["seq"]),
                        )
                    else:
                        holder = TagPush(
                            latest["provider"], latest["delivery_id"], "", "", None, ""
                        )
                        state = "duplicate"
                        recorded = Recorded(
                            "duplicate",
                            str(holder.event_id),
                            "this tag already triggered a release; delete the tag and push "
                            "a new commit to release it again",
                        )
                if state == "pending" and push.commit is None:
                    not_before = now + create_wait_s
            db.execute(
                "INSERT INTO deliveries (key, body_digest, kind, provider, delivery_id, "
                "repository, repo_key, tag, commit_sha, ref, target, nonce, state, detail, "
                "not_before, received_at, tagged_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    _key(push),
                    body_digest,
                    kind,
                    push.provider,
                    push.delivery_id,
                    push.repository,
                    push.repository.lower(),
                    push.tag,
                    push.commit,
                    push.ref,
                    push.target,
                    uuid.uuid4().hex,
                    state,
                    recorded.detail if recorded else None,
                    not_before,
                    now,
                    push.tagged_at,
                ),
            )
        if recorded is not None:
            return recorded
        if kind == "delete":
            return Recorded("deletion")
        return Recorded("accepted", str(push.event_id))

    # ------------------------------------------------------------ the dispatcher

    def lease_due(self, limit: int = 200) -> list[Row]:
        """Rows to work on now (`pending` or `emit`, due), leased to this journal object.

        Rows come in journal order; a (repository, tag) whose earliest open row is not due
        yet (a `create` waiting for its push, a retry backing off) yields nothing, so the
        rows of one tag are always handled in the order they arrived."""
        now = time.time()
        with self._tx() as db:
            rows = db.execute(
                "SELECT * FROM deliveries WHERE state IN ('pending', 'emit') ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
            blocked: set[tuple[str, str]] = set()
            taken: list[Row] = []
            for r in rows:
                group = (r["repo_key"], r["tag"])
                if group in blocked:
                    continue
                blocked.add(group)  # one row per tag at a time, the earliest
                leased = r["lease_until"] is not None and r["lease_until"] > now
                if leased and r["lease_owner"] != self.owner:
                    leased = not _owner_gone(r["lease_owner"])
                if r["not_before"] > now or (leased and r["lease_owner"] != self.owner):
                    continue
                db.execute(
                    "UPDATE deliveries SET lease_owner = ?, lease_until = ? WHERE seq = ?",
                    (self.owner, now + self.lease_s, r["seq"]),
                )
                taken.append(_row(r))
        return taken

    def settle(self, seq: int, state: str, detail: str | None = None) -> None:
        fields = "state = ?, detail = ?, lease_owner = NULL, lease_until = NULL"
        if state == "emitted":
            fields += ", emitted_at = ?, attempts = 0"
            args: tuple[Any, ...] = (state, detail, time.time(), seq)
        else:
            args = (state, detail, seq)
        with self._tx() as db:
            db.execute(f"UPDATE deliveries SET {fields} WHERE seq = ?", args)  # noqa: S608 - fixed column names, values bound

    def retry_later(self, seq: int, delay_s: float, detail: str) -> int:
        with self._tx() as db:
            db.execute(
                "UPDATE deliveries SET attempts = attempts + 1, not_before = ?, detail = ?, "
                "lease_owner = NULL, lease_until = NULL WHERE seq = ?",
                (time.time() + delay_s, detail, seq),
            )
            row = db.execute("SELECT attempts FROM deliveries WHERE seq = ?", (seq,)).fetchone()
            return int(row[0])

    def emitted(self) -> list[tuple[Row, float]]:
        """Rows whose event is out and whose trigger outcome is not known yet."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT * FROM deliveries WHERE state = 'emitted' ORDER BY seq"
            ).fetchall()
        return [(_row(r), r["emitted_at"] or r["received_at"]) for r in rows]

    def emit_again(self, seq: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE deliveries SET state = 'emit', event_attempt = event_attempt + 1, "
                "not_before = ? WHERE seq = ?",
                (time.time(), seq),
            )

    def counts(self) -> dict[str, int]:
        with self._tx() as db:
            rows = db.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state").fetchall()
        return {r[0]: r[1] for r in rows}

    def forget_before(self, cutoff: float) -> int:
        """Drop finished rows received before `cutoff` (the claims in Prefect outlive them)."""
        marks = ", ".join("?" for _ in TERMINAL)
        with self._tx() as db:
            done = db.execute(
                f"DELETE FROM deliveries WHERE received_at < ? AND state IN ({marks})",  # noqa: S608 - only ? marks, values bound
                (cutoff, *TERMINAL),
            )
            return int(done.rowcount)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT under the process lock (one writer; readers never wait)."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock):
        self.db, self.lock = db, lock

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.lock.release()
            raise
        return self.db

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.db.execute("COMMIT" if kind is None else "ROLLBACK")
        finally:
            self.lock.release()


def _owner_gone(owner: str | None) -> bool:
    """True when `owner` (host:pid:nonce) is a process of this host that no longer runs."""
    host, _, rest = (owner or "").partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _key(push: TagPush) -> str:
    return f"{push.provider}:{push.delivery_id}"


def _row(r: sqlite3.Row) -> Row:
    push = TagPush(
        r["provider"],
        r["delivery_id"],
        r["repository"],
        r["tag"],
        r["commit_sha"],
        r["ref"],
        r["target"],
        r["event_attempt"],
        r["tagged_at"],
    )
    return Row(
        r["seq"],
        r["kind"],
        push,
        r["body_digest"],
        r["nonce"],
        r["state"],
        r["attempts"],
        r["received_at"],
    )
