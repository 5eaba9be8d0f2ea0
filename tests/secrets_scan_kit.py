"""The secrets scan: every place a secret could land, searched for the known secret values.

Where: the Prefect API of this session's server (every log, artifact, event, flow- and task-run
state message and parameters, variable), every row of its SQLite database (the file itself:
this covers every state a run went through, not only its last), the sandbox's Cloud Logging
entries and files. What: the values `remember` was given (the session's internal token, the
webhook secrets, registry passwords, ... each test that makes one registers it).

tests/release/test_secrets_scan.py uses it right after a release, a mirror and webhook
deliveries it makes; tests/conftest.py runs it once more at the end of each session, so that
under `-n 2` each xdist worker (its own Prefect server and sandbox) scans every run it held.
A hit names the secret (its kind, never its value) and where it was found.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# value -> what, of every secret a test of this session made; read by the end-of-session scan.
_KNOWN: dict[str, str] = {}
# Folders whose files the end-of-session scan reads (the session sandbox's root).
_FOLDERS: list[Path] = []
# Cloud Logging entries of the session sandbox, taken before it stopped.
_SANDBOX_LOGS: list[dict[str, Any]] = []


def remember(what: str, value: str) -> str:
    """Register a secret value for the end-of-session scan; returns the value."""
    _KNOWN.setdefault(value, what)
    return value


def remember_folder(path: Path) -> None:
    _FOLDERS.append(Path(path))


def remember_sandbox_logs(entries: Iterable[dict[str, Any]]) -> None:
    _SANDBOX_LOGS.extend(entries)


def known() -> dict[str, str]:
    """{what: value} of the registered secrets (each value once)."""
    out: dict[str, str] = {}
    for value, what in _KNOWN.items():
        label, n = what, 2
        while label in out:
            label, n = f"{what} ({n})", n + 1
        out[label] = value
    return out


@dataclass
class Haystacks:
    """Texts by kind, each with where it came from (a run id, an artifact key, a path)."""

    texts: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    def add(self, kind: str, items: Iterable[tuple[str, str]]) -> None:
        self.texts.setdefault(kind, []).extend(items)

    def of(self, kind: str) -> list[str]:
        return [text for _, text in self.texts.get(kind, [])]

    def hits(self, needles: dict[str, str]) -> list[str]:
        """'<what> in <kind> (<where>)' for every needle found; never the value itself."""
        found = []
        for what, needle in needles.items():
            for kind, items in self.texts.items():
                places = [where for where, text in items if needle in text]
                if places:
                    shown = ", ".join(places[:5]) + (" ..." if len(places) > 5 else "")
                    found.append(f"{what} in {kind} ({len(places)}: {shown})")
        contents = {}
        for path in self.files:
            try:
                contents[path] = path.read_bytes()
            except OSError:  # a file removed meanwhile (a log rotated, a tmp file)
                continue
        for what, needle in needles.items():
            found += [f"{what} in {p}" for p, data in contents.items() if needle.encode() in data]
        return found


def _all_pages(read: Callable[[int, int], list[Any]], limit: int = 200) -> list[Any]:
    out: list[Any] = []
    offset = 0
    while True:
        page = read(limit, offset)
        out += page
        if len(page) < limit:
            return out
        offset += limit


def _await_events(since: Any, timeout: float = 60.0) -> None:
    """The server persists events in batches, after it has answered: on a busy machine a scan
    right after a run can find none yet. Wait (at most `timeout` s) until one since `since` is
    readable; the scan then reads them all."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventOccurredFilter

    from shipyard.tasks.errors import WaitExpired
    from shipyard.tasks.waiting import Deadline, NotYet, wait_for

    def some() -> bool:
        with get_client(sync_client=True) as client:
            page = client.read_events(EventFilter(occurred=EventOccurredFilter(since=since)), 1)
        if not page.events:
            raise NotYet("no event persisted yet")
        return True

    with contextlib.suppress(WaitExpired):  # none at all: the caller's own check says so
        wait_for(
            some,
            what="an event to be persisted",
            first_delay_s=0.2,
            max_delay_s=2.0,
            deadline=Deadline(timeout),
            heartbeat_s=None,
        )


def prefect_texts(haystacks: Haystacks, since: Any = None) -> None:
    """Everything this session's Prefect API holds that a secret could reach (events since
    `since`, default: all of them)."""
    import datetime as dt

    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventOccurredFilter
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    since = since or dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    _await_events(since)
    with get_client(sync_client=True) as client:
        logs = _all_pages(lambda n, o: client.read_logs(limit=n, offset=o))
        artifacts = _all_pages(lambda n, o: client.read_artifacts(limit=n, offset=o))
        flow_runs = _all_pages(lambda n, o: client.read_flow_runs(limit=n, offset=o))
        task_runs = _all_pages(lambda n, o: client.read_task_runs(limit=n, offset=o))
        page = client.read_events(EventFilter(occurred=EventOccurredFilter(since=since)), 50)
        events = list(page.events)
        while page.next_page:
            page = client.read_events_page(page.next_page)
            events += page.events
        variables = client.read_variables()
    haystacks.add("logs", ((f"log of run {log.flow_run_id}", log.message) for log in logs))
    haystacks.add(
        "artifacts",
        ((f"artifact {a.key or a.id}", f"{a.key} {a.data} {a.description}") for a in artifacts),
    )
    haystacks.add("events", ((f"event {e.event} {e.id}", e.model_dump_json()) for e in events))
    haystacks.add(
        "flow runs",
        (
            (
                f"flow run {r.id}",
                f"{r.name} {r.state.message if r.state else ''} "
                f"{json.dumps(r.parameters, default=str)}",
            )
            for r in flow_runs
        ),
    )
    haystacks.add(
        "task runs",
        ((f"task run {r.id}", f"{r.name} {r.state.message if r.state else ''}") for r in task_runs),
    )
    haystacks.add(
        "variables",
        ((f"variable {v.name}", f"{v.name} {json.dumps(v.value, default=str)}") for v in variables),
    )


def database_files() -> list[Path]:
    """The session server's SQLite database and its journal files."""
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    url = PREFECT_SERVER_DATABASE_CONNECTION_URL.value()
    assert url and url.startswith("sqlite"), f"the test server is not on SQLite: {url}"
    db = Path(url.split(":///", 1)[1])
    return [p for p in (db, Path(f"{db}-wal"), Path(f"{db}-journal")) if p.exists()]


def folder_files(root: Path) -> list[Path]:
    """The files under a sandbox root but SQLite files (`*.db`: the scan never read those)."""
    return [p for p in Path(root).rglob("*") if p.is_file() and p.suffix != ".db"]


def session_scan() -> list[str]:
    """The end-of-session scan of everything this session's server and sandbox hold, for the
    registered secrets; the hits (empty: none, or nothing registered)."""
    needles = known()
    if not needles:
        return []
    haystacks = Haystacks()
    prefect_texts(haystacks)
    haystacks.add("cloud logging", (("sandbox entry", json.dumps(e)) for e in _SANDBOX_LOGS))
    haystacks.files = database_files()
    for folder in _FOLDERS:
        haystacks.files += folder_files(folder)
    return haystacks.hits(needles)
