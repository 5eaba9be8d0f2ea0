"""PostgreSQL from Debian's package, started and stopped by the project, by PID.

Like the sandbox's registry, it is a plain process of ours, not a system service: its own data
directory (`ROOT/postgres`, created by `initdb` on the first start and re-used by every later
one), its own free port on 127.0.0.1, its unix socket inside the data directory (never
/var/run/postgresql), its output in `ROOT/postgres.log`.

Who runs it: the server refuses to run as root ("root" execution of the PostgreSQL server is not
permitted), so as root it runs as the `postgres` OS user that Debian's package creates, and the
data directory is that user's. That user must be able to reach the data directory: a directory
on the way that denies it (root's home, /root, is 0700; so is pytest's /tmp/pytest-of-root)
gets one POSIX ACL entry, search permission (x) for the `postgres` user alone (`ls -l` then
shows a `+`, and the ACL's mask as the group's bits; the owning group keeps its own rights). A later `chmod` of such a directory narrows the ACL's
mask and so takes the entry's x away again (pytest chmods /tmp/pytest-of-root to 0700 at each
session's start): every start checks the mask too and widens it again.

The database: role `prefect` with a password generated once (32 random bytes, hex) and kept in
`ROOT/postgres/shipyard-prefect.password` (mode 0600; it is in no log, no message, no state
file: `Postgres.url` carries it, keep that out of logs too), database `prefect` owned by it, and
the `pg_trgm` extension, which Prefect needs ("Prefect uses the pg_trgm extension, so it must be
installed and enabled": https://docs.prefect.io/v3/concepts/server). Local socket connections are
`trust` (the socket is in the 0700 data directory: only its owner and root reach it), TCP ones
`scram-sha-256`.

Stopping: PostgreSQL's own signals (https://www.postgresql.org/docs/15/server-shutdown.html):
SIGTERM is its *smart* shutdown, which waits for every client to disconnect (a Prefect server
still connected would hold it forever); SIGINT is the *fast* shutdown (clients' transactions are
aborted, the data is checkpointed). So: SIGINT, then SIGQUIT (immediate: recovery from the WAL
on the next start) after a grace, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import signal
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from shipyard.deployments.stack.processes import (
    StackError,
    alive,
    choose_port,
    spawn,
    start_time,
    stop_pid,
    tail,
    wait_until,
)
from shipyard.tasks.waiting import NotYet

__all__ = ["Postgres", "database_password", "start_postgres", "stop_postgres"]

DATA_DIR = "postgres"
LOG_FILE = "postgres.log"
PASSWORD_FILE = "shipyard-prefect.password"  # noqa: S105 - the file's name, not a password
ROLE = "prefect"
DATABASE = "prefect"
SUPERUSER = "postgres"
OS_USER = "postgres"
STOP_GRACE_S = 30.0
BOOTSTRAP_TIMEOUT_S = 60.0
INSTALL_FIX = (
    "install Debian's PostgreSQL: `apt-get install -y postgresql` (or `make setup`, which does)"
)
# A unix socket's path is at most 107 bytes (sockaddr_un.sun_path is 108 with its NUL).
SOCKET_PATH_MAX = 107


@dataclass(frozen=True)
class Postgres:
    """A running PostgreSQL: its data directory, port on 127.0.0.1, postmaster PID (and that
    process's start time, so that a re-used PID is never signalled), and the SQLAlchemy URL
    (`postgresql+asyncpg://prefect:PASSWORD@127.0.0.1:PORT/prefect`) of the `prefect` database.
    The URL carries the password: never log it (`safe_url` is the loggable form)."""

    data_dir: Path
    port: int
    pid: int
    url: str
    started: int | None = None
    log: Path | None = None

    @property
    def safe_url(self) -> str:
        """The URL with the password masked."""
        return f"postgresql+asyncpg://{ROLE}:***@127.0.0.1:{self.port}/{DATABASE}"

    def __repr__(self) -> str:  # the dataclass's own repr would print the URL, password and all
        return f"Postgres(data_dir={self.data_dir!r}, port={self.port}, pid={self.pid})"


def bin_dir(data_dir: Path | None = None) -> Path:
    """PostgreSQL's programs from Debian's package (/usr/lib/postgresql/N/bin): the version that
    created `data_dir` (its PG_VERSION: a newer major cannot start it), else the newest."""
    try:
        made_by = (data_dir / "PG_VERSION").read_text().strip() if data_dir else ""
    except OSError:
        made_by = ""
    if made_by:
        wanted = Path("/usr/lib/postgresql", made_by, "bin")
        if not (wanted / "postgres").is_file():
            raise StackError(
                f"the data directory {data_dir} is PostgreSQL {made_by}'s and that version is not "
                f"installed: `apt-get install -y postgresql-{made_by}`, or move the directory "
                "away to start afresh"
            )
        return wanted
    found = sorted(
        (Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin") if Path(p, "initdb").is_file()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not found:
        raise StackError(
            f"PostgreSQL is not installed (no initdb under /usr/lib/postgresql/*/bin): {INSTALL_FIX}"
        )
    return found[-1]


def database_password(data_dir: Path) -> str:
    """The `prefect` role's password, generated on the first call and kept in a 0600 file."""
    path = data_dir / PASSWORD_FILE
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
    return path.read_text().strip()


def start_postgres(
    root: Path, port: int | None = None, timeout: float = 60, *, durable: bool = True
) -> Postgres:
    """Start PostgreSQL with its data directory at `root/postgres` (created by `initdb` the first
    time, re-used after), listening on 127.0.0.1:`port` (None: any free port); wait until it
    accepts connections (at most `timeout` s), then make sure the `prefect` role, database and
    the pg_trgm extension exist.

    `durable=False` turns off fsync, synchronous_commit and full_page_writes: a crash of the
    machine can then lose or corrupt the database. That is for throw-away databases (the tests,
    the bench), never a user's stack, which is why it is not the default.

    Raises StackError: the package is missing, the port is taken, the server did not start in
    time (with its log's tail), another PostgreSQL already runs on that data directory.
    """
    root = root.resolve()
    data_dir = root / DATA_DIR
    binaries = bin_dir(data_dir)
    account = _server_account()
    log = root / LOG_FILE
    socket_path = f"{data_dir}/.s.PGSQL.65535"
    if len(socket_path.encode()) > SOCKET_PATH_MAX:
        raise StackError(
            f"the PostgreSQL data directory {data_dir} is too deep for its unix socket "
            f"({len(socket_path.encode())} > {SOCKET_PATH_MAX} bytes): use a shorter "
            "SHIPYARD_HOME (or stack root)"
        )
    _refuse_running(data_dir)
    chosen = choose_port(port, "PostgreSQL")
    root.mkdir(parents=True, exist_ok=True)
    if account is not None:
        grant_search(root, account[0])
    if not (data_dir / "PG_VERSION").exists():
        _initdb(binaries, data_dir, log, account, durable)
    password = database_password(data_dir)
    args = [str(binaries / "postgres"), "-D", str(data_dir), "-p", str(chosen)]
    settings = {
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": str(data_dir),
        "logging_collector": "off",  # stderr: into our log file
    }
    if not durable:
        settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
    for name, value in settings.items():
        args += ["-c", f"{name}={value}"]
    proc = spawn(
        args,
        log,
        _clean_env(),
        user=account[0] if account else None,
        group=account[1] if account else None,
        cwd=data_dir,
    )
    try:
        wait_until(
            lambda: _ready(data_dir, proc.pid),
            what=f"PostgreSQL on 127.0.0.1:{chosen} (data directory {data_dir}, log {log})",
            timeout=timeout,
            proc=proc,
            log=log,
        )
        _bootstrap(binaries, data_dir, chosen, password)
    except BaseException:
        stop_pid(proc.pid, signals=((signal.SIGINT, 10.0), (signal.SIGQUIT, 5.0)))
        raise
    return Postgres(
        data_dir=data_dir,
        port=chosen,
        pid=proc.pid,
        url=f"postgresql+asyncpg://{ROLE}:{password}@127.0.0.1:{chosen}/{DATABASE}",
        started=start_time(proc.pid),
        log=log,
    )


def stop_postgres(pg: Postgres, grace: float = STOP_GRACE_S) -> None:
    """Stop it by PID: SIGINT (fast shutdown), SIGQUIT after `grace`, SIGKILL after 5 s more."""
    stop_postgres_pid(pg.pid, pg.started, grace)


def stop_postgres_pid(pid: int, started: int | None = None, grace: float = STOP_GRACE_S) -> bool:
    """`stop_postgres` for a postmaster known by PID (and start time) only; True if it ran."""
    return stop_pid(pid, started, signals=((signal.SIGINT, grace), (signal.SIGQUIT, 5.0)))


# ---------------------------------------------------------------- the pieces


def _server_account() -> tuple[int, int] | None:
    """(uid, gid) of the `postgres` OS user when we are root (the server refuses root), else
    None: the server runs as whoever we are."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(OS_USER)
    except KeyError:
        raise StackError(
            f"we run as root and PostgreSQL refuses root, but there is no `{OS_USER}` OS user "
            f"to run it as: {INSTALL_FIX} (the package creates the user)"
        ) from None
    return entry.pw_uid, entry.pw_gid


def _refuse_running(data_dir: Path) -> None:
    """Another postmaster that still runs on this data directory: say so (PostgreSQL itself
    would refuse too, with 'lock file "postmaster.pid" already exists')."""
    pid_file = data_dir / "postmaster.pid"
    try:
        first = pid_file.read_text().splitlines()[0]
    except (OSError, IndexError):
        return
    pid = int(first) if first.strip().isdigit() else 0
    if pid and alive(pid) and _command(pid) == "postgres":
        raise StackError(
            f"PostgreSQL already runs on {data_dir} (PID {pid}): stop it first "
            "(`shipyard stack down`, or `kill -INT` that PID)"
        )


def _command(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/comm").read_text().strip()
    return ""


def _clean_env() -> dict[str, str]:
    """The server's environment: nothing of ours (no PG* variable that would point it
    elsewhere, no PREFECT_* secret); a C.UTF-8 locale and a PATH."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


def _initdb(
    binaries: Path, data_dir: Path, log: Path, account: tuple[int, int] | None, durable: bool
) -> None:
    """Create the cluster: superuser `postgres`, UTF8, local socket trust, TCP scram."""
    data_dir.mkdir(mode=0o700, exist_ok=True)
    if account is not None:
        os.chown(data_dir, *account)
    args = [
        str(binaries / "initdb"),
        "-D",
        str(data_dir),
        f"--username={SUPERUSER}",
        "--encoding=UTF8",
        "--locale=C.UTF-8",
        "--auth-local=trust",
        "--auth-host=scram-sha-256",
    ]
    if not durable:
        args.append("--no-sync")
    with open(log, "ab") as out:
        done = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_clean_env(),
            cwd=data_dir,
            user=account[0] if account else None,
            group=account[1] if account else None,
            extra_groups=[] if account else None,
            timeout=BOOTSTRAP_TIMEOUT_S,
            check=False,
        )
    if done.returncode != 0:
        raise StackError(
            f"initdb of {data_dir} failed with code {done.returncode}: {tail(log)} (remove the "
            "directory to start over)"
        )


def _ready(data_dir: Path, pid: int) -> bool:
    """The postmaster.pid our process wrote says `ready` (line 8, PM_STATUS, since PostgreSQL
    10): it accepts connections. Before that, NotYet."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except OSError:
        raise NotYet("no postmaster.pid yet") from None
    if not lines or lines[0].strip() != str(pid):
        raise NotYet("postmaster.pid is not our process's yet")
    status = lines[7].strip() if len(lines) > 7 else "starting"
    if status != "ready":
        raise NotYet(f"postmaster status {status!r}")
    return True


def _bootstrap(binaries: Path, data_dir: Path, port: int, password: str) -> None:
    """Role, database and extension, each only when missing (every start runs this). The SQL,
    password included, goes to psql on stdin: never on a command line, never in the log."""
    if not password.isalnum():  # it is hex: nothing to quote, nothing to inject
        raise StackError(f"the password file in {data_dir} is damaged: remove {PASSWORD_FILE}")
    sql = f"""
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN
    CREATE ROLE {ROLE} LOGIN PASSWORD '{password}';
  ELSE
    ALTER ROLE {ROLE} LOGIN PASSWORD '{password}';
  END IF;
END $$;
SELECT 'CREATE DATABASE {DATABASE} OWNER {ROLE}'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{DATABASE}')\\gexec
\\connect {DATABASE}
CREATE EXTENSION IF NOT EXISTS pg_trgm;
"""  # noqa: S608 - identifiers are constants, the password is hex: nothing to inject
    args = [
        str(binaries / "psql"),
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        str(data_dir),
        "-p",
        str(port),
        "-U",
        SUPERUSER,
        "-d",
        "postgres",
    ]
    done = subprocess.run(
        args,
        input=sql.encode(),
        capture_output=True,
        env=_clean_env(),
        timeout=BOOTSTRAP_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        error = done.stderr.decode(errors="replace").replace(password, "***").strip()
        raise StackError(f"creating the {ROLE} role and database failed: {error}")


# ---------------------------------------------------------------- reaching the data directory

# POSIX ACLs as the kernel stores them in the `system.posix_acl_access` extended attribute
# (include/uapi/linux/posix_acl_xattr.h, include/uapi/linux/posix_acl.h): a 4-byte version (2),
# then entries of (tag u16, perm u16, id u32), little-endian, sorted by tag then id.
_ACL_XATTR = "system.posix_acl_access"
_ACL_VERSION = 2
_USER_OBJ, _USER, _GROUP_OBJ, _GROUP, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_NO_ID = 0xFFFFFFFF
_SEARCH = 0o1


def grant_search(path: Path, uid: int) -> None:
    """Every directory from / down to `path` lets `uid` search it (x): where neither its mode
    nor its ACL does, one ACL entry `user:UID:--x` is added (and the mask widened by x)."""
    for directory in [*reversed(path.parents), path]:
        info = directory.stat()
        if info.st_uid == uid or info.st_mode & _SEARCH:
            continue
        try:
            _add_acl_search(directory, uid, info.st_mode)
        except OSError as exc:
            raise StackError(
                f"the `{OS_USER}` OS user cannot reach {path}: {directory} denies it search "
                f"permission and an ACL entry could not be added ({exc.strerror}): "
                f"`chmod o+x {directory}`, or put SHIPYARD_HOME (the stack root) elsewhere"
            ) from None


def _add_acl_search(directory: Path, uid: int, mode: int) -> None:
    try:
        raw = os.getxattr(directory, _ACL_XATTR)
    except OSError:
        raw = b""
    entries: dict[tuple[int, int], int] = {}
    if len(raw) >= 4 and struct.unpack_from("<I", raw)[0] == _ACL_VERSION:
        for offset in range(4, len(raw) - 7, 8):
            tag, perm, ident = struct.unpack_from("<HHI", raw, offset)
            entries[(tag, ident)] = perm
    else:  # no ACL yet: the mode is the minimal ACL
        entries = {
            (_USER_OBJ, _NO_ID): (mode >> 6) & 7,
            (_GROUP_OBJ, _NO_ID): (mode >> 3) & 7,
            (_OTHER, _NO_ID): mode & 7,
        }
    mask = entries.get((_MASK, _NO_ID))
    if entries.get((_USER, uid), 0) & _SEARCH and mask is not None and mask & _SEARCH:
        return  # granted, and not masked out (a chmod g-x since sets the mask to nothing)
    entries[(_USER, uid)] = entries.get((_USER, uid), 0) | _SEARCH
    if mask is not None:  # an ACL with a mask already: widen it by x only
        entries[(_MASK, _NO_ID)] = mask | _SEARCH
    else:  # the mask a named entry needs: the union of the group class (nothing narrows)
        mask = _SEARCH
        for (tag, _), perm in entries.items():
            if tag in (_USER, _GROUP_OBJ, _GROUP):
                mask |= perm
        entries[(_MASK, _NO_ID)] = mask
    packed = struct.pack("<I", _ACL_VERSION) + b"".join(
        struct.pack("<HHI", tag, perm, ident) for (tag, ident), perm in sorted(entries.items())
    )
    os.setxattr(directory, _ACL_XATTR, packed)
