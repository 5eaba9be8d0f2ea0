"""The local stack on PostgreSQL (deployments/stack/): the Prefect server really runs on it,
migrations are their own step, PostgreSQL stops by PID and keeps its data, and the
`shipyard stack up|status|down` CLI drives the whole thing as a user would.

One session stack (tests/fleet/stack_kit.py) serves the first tests; the CLI test starts its
own, under its own SHIPYARD_HOME, as a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import socket
import subprocess
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import stack_kit
from prefect import flow
from stack_kit import on_stack, session_stack

from shipyard.deployments.stack.postgres import grant_search, start_postgres
from shipyard.deployments.stack.processes import StackError, alive
from shipyard.deployments.stack.workers import ensure_pool

postgres_prefect = stack_kit.postgres_prefect  # the session's stack, as a fixture of this module
stack_home = stack_kit.stack_home
_cli = stack_kit.shipyard_cli


@pytest.fixture
def stack(postgres_prefect, tmp_path_factory, request) -> stack_kit.SessionStack:
    """The session's stack itself (its PostgreSQL and server handles)."""
    return session_stack(tmp_path_factory, request.config)


@flow(name="h1-stack-probe")
def _probe() -> None:
    """Never run: a flow run of it is only created, then read back from the database."""


def _plain_url(db_url: str) -> str:
    """asyncpg's own URL form (SQLAlchemy's names the driver: postgresql+asyncpg://)."""
    return db_url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _query(db_url: str, sql: str, *args: object) -> list[tuple[object, ...]]:
    import asyncpg

    conn = await asyncpg.connect(_plain_url(db_url), timeout=10)
    try:
        return [tuple(r) for r in await conn.fetch(sql, *args, timeout=10)]
    finally:
        await conn.close(timeout=10)


def test_server_runs_on_postgres_migrated_apart(postgres_prefect, stack):
    """The API answers; a flow run created through the client is a row of PostgreSQL's
    `flow_run` table; pg_trgm is installed; the schema was migrated by its own step (alembic's
    version row, the migration's log) and the server was told not to migrate (its environment);
    no SQLite database appeared; the password is in no log and in no repr."""
    from prefect.client.orchestration import get_client

    api_url, db_url = postgres_prefect
    assert "***" in repr(postgres_prefect) and db_url not in repr(postgres_prefect)
    assert httpx.get(f"{api_url}/health", timeout=10).status_code == 200

    with on_stack(api_url), get_client(sync_client=True) as client:
        run = client.create_flow_run(_probe, name=f"probe-{uuid.uuid4().hex[:8]}")
    rows = asyncio.run(
        _query(db_url, "SELECT name, state_type::text FROM flow_run WHERE id = $1", run.id)
    )
    assert run.state is not None
    assert rows == [(run.name, run.state.type.value)]
    extensions = asyncio.run(_query(db_url, "SELECT extname FROM pg_extension"))
    assert ("pg_trgm",) in extensions

    assert asyncio.run(_query(db_url, "SELECT version_num FROM alembic_version")) != []
    assert "Migrations succeeded" in (stack.server.home / "migrate.log").read_text()
    environ = Path(f"/proc/{stack.server.pid}/environ").read_bytes().split(b"\0")
    assert b"PREFECT_SERVER_DATABASE_MIGRATE_ON_START=false" in environ
    assert not (stack.server.home / "prefect.db").exists()

    password = urlsplit(db_url).password
    assert password and len(password) == 64
    logs = [stack.server.log, stack.server.home / "migrate.log", stack.root / "postgres.log"]
    for log in logs:
        assert password not in log.read_text(errors="replace"), log.name
    assert password not in repr(stack.postgres) + repr(stack.server)
    pw_file = stack.postgres.data_dir / "shipyard-prefect.password"
    assert pw_file.stat().st_mode & 0o777 == 0o600
    print(
        f"postgres start {stack.postgres_s} s, migrate {stack.migrate_s} s, "
        f"server start {stack.server.started_s} s"
    )


def test_postgres_stops_by_pid_and_keeps_its_data(stack):
    """A Variable set through the server survives PostgreSQL stopped by PID (the postmaster is
    gone) and started again on the same data directory (no second initdb); the server, still
    running, reads it back once PostgreSQL is back."""
    from prefect.variables import Variable

    api_url = stack.api_url
    name = f"h1_kept_{uuid.uuid4().hex[:8]}"
    with on_stack(api_url):
        Variable.set(name, "survives", overwrite=True)
    old = stack.postgres
    initdb_marker = (old.data_dir / "PG_VERSION").stat().st_mtime_ns

    restart_s = stack.restart_postgres()

    assert not alive(old.pid, old.started)
    assert stack.postgres.pid != old.pid and stack.postgres.port == old.port
    assert (old.data_dir / "PG_VERSION").stat().st_mtime_ns == initdb_marker
    with on_stack(api_url):
        assert Variable.get(name) == "survives"
    print(f"postgres restart {restart_s} s")


def test_postgres_errors_name_the_fix(stack, stack_home):
    """One line naming what is wrong and the fix: a port already taken, a second PostgreSQL on
    a data directory that has one running, a start that outlasts its timeout (with the log's
    tail; the process it started is stopped), workers of one type on a pool of another."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StackError, match=rf"port {port} for the PostgreSQL is taken.*--port"):
            start_postgres(stack_home / "taken", port)
    with pytest.raises(StackError, match=r"already runs on .*\(PID \d+\): stop it first"):
        start_postgres(stack.root)
    with pytest.raises(StackError, match=r"not within 0\.01 s.*\|") as slow:
        start_postgres(stack_home / "slow", timeout=0.01, durable=False)
    pid_file = stack_home / "slow" / "postgres" / "postmaster.pid"
    assert not pid_file.exists() or not alive(int(pid_file.read_text().split()[0]))
    assert "shipyard-prefect" not in str(slow.value)

    pool = f"h1-process-{uuid.uuid4().hex[:6]}"
    assert ensure_pool(stack.api_url, pool, "process") == "process"  # created
    assert ensure_pool(stack.api_url, pool, None) == "process"  # found
    with pytest.raises(StackError, match=rf"--pool '{pool}' is a process work pool, not docker"):
        ensure_pool(stack.api_url, pool, "docker")


def test_postgres_user_reaches_a_private_directory(stack_home):
    """A 0700 directory on the way to a data directory gets search permission for the `postgres`
    OS user alone, and gets it back after a `chmod 0700` narrowed the ACL's mask (what pytest
    does to /tmp/pytest-of-root at each session's start)."""
    private = stack_home / "private"
    private.mkdir(mode=0o700)
    inner = private / "inner"
    inner.mkdir()
    uid = pwd.getpwnam("postgres").pw_uid

    def reaches() -> bool:
        done = subprocess.run(["test", "-x", str(inner)], user=uid, timeout=10, check=False)
        return done.returncode == 0

    assert not reaches()
    grant_search(inner, uid)
    assert reaches()
    os.chmod(private, 0o700)
    assert not reaches()
    grant_search(inner, uid)
    assert reaches()
    assert private.stat().st_mode & 0o007 == 0  # others still have nothing


@pytest.mark.slow
def test_stack_cli_up_status_down(stack_home):
    """`shipyard stack up --database postgres --workers 1` starts PostgreSQL, the server, the
    warm engine and a worker that outlive the command, prints the PREFECT_API_URL to export, and
    points the process pool's command at the warm engine's client; `status` says all run; a
    second `up` is refused; `down` stops every PID and `status` then says there is no stack; the
    database password is in nothing it printed or wrote to its state file."""
    home = stack_home
    up = _cli(home, "stack", "up", "--database", "postgres", "--workers", "1", "--port", "0")
    assert up.returncode == 0, up.stdout + up.stderr
    state = home / "stack" / "stack.json"
    parts = {p["name"]: p for p in json.loads(state.read_text())["parts"]}
    try:
        assert set(parts) == {"postgres", "server", "warm", "worker-1"}
        api_url = json.loads(state.read_text())["api_url"]
        pool = httpx.get(f"{api_url}/work_pools/shipyard-process", timeout=10).json()
        command = pool["base_job_template"]["variables"]["properties"]["command"]["default"]
        assert command.endswith("-m shipyard.deployments.stack.warm_run"), command
        assert f"export PREFECT_API_URL={api_url}" in up.stdout
        assert all(alive(p["pid"], p["started"]) for p in parts.values())
        assert httpx.get(f"{api_url}/health", timeout=10).status_code == 200

        status = _cli(home, "stack", "status", timeout=60)
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.count(" running ") == 4 and "answers" in status.stdout

        again = _cli(home, "stack", "up", timeout=60)
        assert again.returncode == 2 and "already runs" in again.stderr

        password = (home / "stack" / "postgres" / "shipyard-prefect.password").read_text()
        for text in (up.stdout, up.stderr, status.stdout, state.read_text()):
            assert password.strip() not in text
    finally:
        down = _cli(home, "stack", "down", timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not any(alive(p["pid"], p["started"]) for p in parts.values())
    assert all(f"{name} (" in down.stdout for name in ("postgres", "warm", "worker-1"))
    after = _cli(home, "stack", "status", timeout=60)
    assert after.returncode == 1 and "no stack" in after.stdout
    assert (home / "stack" / "postgres" / "PG_VERSION").exists()  # the data stays
