"""ONE PostgreSQL + Prefect server per test session (per xdist worker), for the fleet tests and
the bench's smoke test.

Use it as a fixture: `import stack_kit` and `postgres_prefect = stack_kit.postgres_prefect` at
the test module's top level (that registers the fixture; an imported name used only as a test's
parameter would be ruff's F401/F811), then ask for `postgres_prefect`: it gives
`(api_url, db_url)` of the session's stack, started on first use (PostgreSQL from Debian's
package without fsync, `durable=False`: a throw-away database; migrations as their own step; the
server on it) and stopped by PID when the session ends. Every module that imports the fixture
gets the same stack (the stack is held here, not by the fixture, which pytest registers once per
importing module); to have one for the whole suite, the modules must share an xdist group.

The session's own Prefect server (tests/conftest.py, `prefect_test_harness`, SQLite) stays the
process-wide PREFECT_API_URL: talk to the stack with `on_stack(api_url)` (tests/api_switch_kit.py:
settings and Prefect's event and log senders restored on exit) or hand `api_url` to a subprocess's environment
(workers: `start_workers(pool, n, home=..., env={"PREFECT_API_URL": api_url, ...})`).

`stack_home` (a fixture: register it as `stack_home = stack_kit.stack_home`) and `shipyard_cli`
serve the tests that start a stack of their own through `shipyard stack up`, as a user does.

The database password is registered with the secrets scan (tests/secrets_scan_kit.py), and the
stack's Prefect home (server, migration and worker logs) is one of the folders it reads at the
end of the session.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

import pytest
import secrets_scan_kit

from shipyard.deployments.stack.postgres import Postgres, start_postgres, stop_postgres
from shipyard.deployments.stack.prefect_server import (
    StackServer,
    migrate,
    start_server,
    stop_server,
)

__all__ = [
    "TOKEN_BLOCK",
    "SessionStack",
    "StackUrls",
    "on_stack",
    "postgres_prefect",
    "save_canary_token",
    "session_stack",
]

# The canary's token block, by the name tests/conftest.py's `internal_token` gives it on the
# session's own server (make_target's targets name it).
TOKEN_BLOCK = "shipyard-test-internal-token"


@dataclass
class SessionStack:
    """The session's PostgreSQL and Prefect server (and the seconds each step took)."""

    root: Path
    postgres: Postgres
    server: StackServer
    migrate_s: float
    postgres_s: float

    @property
    def api_url(self) -> str:
        return self.server.api_url

    @property
    def db_url(self) -> str:
        return self.postgres.url

    def restart_postgres(self) -> float:
        """Stop PostgreSQL by PID and start it again on the same data directory and port (the
        server's URL stays valid; its pool pre-pings, so it reconnects); returns the seconds the
        start took."""
        import time

        port = self.postgres.port
        stop_postgres(self.postgres)
        began = time.perf_counter()
        self.postgres = start_postgres(self.root, port, durable=False)
        return round(time.perf_counter() - began, 2)

    def close(self) -> None:
        try:
            stop_server(self.server)
            stop_postgres(self.postgres)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


class StackUrls(NamedTuple):
    """(api_url, db_url): unpacks like a tuple; its repr (in a failed test's traceback) masks
    the database password."""

    api_url: str
    db_url: str

    def __repr__(self) -> str:
        masked = re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", self.db_url)
        return f"StackUrls(api_url={self.api_url!r}, db_url={masked!r})"


_STACK: SessionStack | None = None


def session_stack(tmp_path_factory: pytest.TempPathFactory, config: pytest.Config) -> SessionStack:
    """The session's stack, started on the first call (stopped at the session's end)."""
    global _STACK
    if _STACK is None:
        import time

        # Not under tmp_path_factory: each pytest session that starts chmods /tmp/pytest-of-root
        # back to 0700, taking away the search permission PostgreSQL's OS user was given (see
        # deployments/stack/postgres.py) while another session's PostgreSQL may be starting.
        root = Path(tempfile.mkdtemp(prefix="shipyard-pg-stack-"))
        began = time.perf_counter()
        pg = start_postgres(root, durable=False)
        postgres_s = round(time.perf_counter() - began, 2)
        try:
            secrets_scan_kit.remember("stack database password", urlsplit(pg.url).password or "")
            migrate_s = migrate(pg.url, root / "prefect")
            server = start_server(pg.url, root / "prefect")
        except BaseException:
            stop_postgres(pg)
            raise
        _STACK = SessionStack(root, pg, server, migrate_s, postgres_s)
        secrets_scan_kit.remember_folder(root / "prefect")
        config.add_cleanup(_close)
    return _STACK


def _close() -> None:
    global _STACK
    if _STACK is not None:
        _STACK.close()
        _STACK = None


@pytest.fixture(scope="session")
def postgres_prefect(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[StackUrls]:
    """(api_url, db_url) of the session's PostgreSQL-backed Prefect server (see the module
    docstring). db_url carries the password: never print it."""
    stack = session_stack(tmp_path_factory, request.config)
    yield StackUrls(stack.api_url, stack.db_url)


@contextmanager
def on_stack(api_url: str) -> Iterator[None]:
    """Prefect's client talks to `api_url` inside the block (the session's server after)."""
    from api_switch_kit import pointed_at

    with pointed_at(api_url):
        yield


def save_canary_token(internal_token: str) -> None:
    """The canary's token as a Secret block on the server this process talks to (inside
    `on_stack`): a release there of a target made by make_target reads it."""
    from prefect.blocks.system import Secret

    Secret(value=internal_token).save(TOKEN_BLOCK, overwrite=True)


@pytest.fixture
def stack_home() -> Iterator[Path]:
    """A SHIPYARD_HOME of its own, short and not under /tmp/pytest-of-root (PostgreSQL's socket
    path has a length limit, and its user must reach the directory: see session_stack)."""
    home = Path(tempfile.mkdtemp(prefix="shipyard-stack-cli-"))
    yield home
    shutil.rmtree(home, ignore_errors=True)


def shipyard_cli(
    home: Path, *args: str, timeout: float = 240, pythonpath: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`shipyard ARGS` as a user runs it, with SHIPYARD_HOME=`home` and no PREFECT_API_URL of
    the session's; `pythonpath`: one more folder on the path of what it starts (a worker's runs
    that import a test module)."""
    shipyard = Path(sys.executable).with_name("shipyard")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_URL")}
    env["SHIPYARD_HOME"] = str(home)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(pythonpath), os.environ.get("PYTHONPATH")) if p
        )
    return subprocess.run(
        [str(shipyard), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
