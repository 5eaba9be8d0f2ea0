"""The demo's Prefect API: the configured one, or a local `prefect server start` of its own.

When no Prefect API is configured, the demo starts a server the way a user would: the venv's
`prefect server start --host 127.0.0.1 --port P` in a subprocess with its own PREFECT_HOME (a
temporary directory, so a fresh database: the runs' flow runs, blocks and variables never carry
over into the next run), no analytics and no UI (the server lives only as long as the run). It
waits on `GET /api/health` with a deadline and stops the process by PID (SIGTERM, then SIGKILL
after a grace).

Measured (the server alone, launch to healthy): a fresh home 13-15 s idle, 19-26 s at load ~8;
a kept home with its database 9-10 s idle, 14-15 s at load ~8 (migrations and block-type
registration already done). The demo starts
fresh: the start runs beside the root filesystem and the sandbox, and a kept database would
carry the previous run's Variables (the canary baseline, the build's previous image, the release
slot's holder) and artifacts into the next run, which would then not be the same demo.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from subprocess import DEVNULL, STDOUT, Popen, TimeoutExpired

import httpx

SERVER_LOG = "server.log"
STOP_GRACE_S = 10.0
DELIVERY_TIMEOUT_S = 10.0
# How often the server writes received events to its database (Prefect's default: 5 s): the
# teardown waits until its own last event is readable, so a short interval is a short wait.
EVENT_FLUSH_INTERVAL_S = 0.5


class PrefectServerError(RuntimeError):
    """The demo's own Prefect server did not start (the message carries its log's tail)."""


@dataclass
class PrefectServer:
    """A Prefect API that may still be starting: `wait()` before the first call to it."""

    url: str
    _starting: threading.Thread | None = None
    _failed: list[BaseException] = field(default_factory=list)
    started_s: float = 0.0  # launch to healthy
    waited_s: float = 0.0  # of which the caller spent in wait()

    def wait(self) -> str:
        if self._starting is not None:
            waiting = time.perf_counter()
            self._starting.join()
            self._starting = None
            self.waited_s = round(time.perf_counter() - waiting, 2)
        if self._failed:
            raise self._failed[0]
        return self.url


@contextmanager
def prefect_api(startup_timeout: float = 90.0) -> Iterator[str]:
    """The configured Prefect API, or a temporary local server for the duration of the block."""
    with prefect_server(startup_timeout) as server:
        yield server.wait()


@contextmanager
def prefect_server(startup_timeout: float = 90.0) -> Iterator[PrefectServer]:
    """The configured Prefect API, or a local server started in the background: its process
    imports, creates its tables and registers the block types while the caller goes on;
    `wait()` blocks until it answers. Torn down in order: the run's logs and events are
    delivered, then the server is stopped and its home removed."""
    import prefect.settings as ps

    configured = ps.get_current_settings().api.url
    if configured:
        yield PrefectServer(str(configured))
        return
    with ExitStack() as stack:
        home = Path(tempfile.mkdtemp(prefix="shipyard-demo-prefect-"))
        stack.callback(shutil.rmtree, home, True)
        port = _free_port()
        url = f"http://127.0.0.1:{port}/api"
        launched = time.perf_counter()
        with open(home / SERVER_LOG, "ab") as log:  # the child keeps its own descriptor
            proc = Popen(
                [prefect_command(), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                stdin=DEVNULL,
                stdout=log,
                stderr=STDOUT,
                env={**os.environ, **server_env(home)},
                start_new_session=True,  # a Ctrl-C reaches the demo, which stops it in order
            )
        handle = PrefectServer(url)
        handle._starting = threading.Thread(
            target=_await_health,
            args=(handle, proc, home / SERVER_LOG, launched, startup_timeout),
            daemon=True,
        )
        handle._starting.start()
        stack.callback(_join_quietly, handle)  # after the stop below: it ends the health wait
        stack.callback(stop, proc)
        stack.enter_context(
            ps.temporary_settings(updates={ps.PREFECT_API_URL: url, ps.PREFECT_HOME: str(home)})
        )
        stack.callback(_deliver_if_up, handle)  # runs first: logs and events reach the server
        yield handle


def _free_port() -> int:
    """A free TCP port on loopback (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def prefect_command() -> str:
    """The `prefect` command of the Python running Shipyard (its venv's bin/)."""
    command = Path(sys.executable).with_name("prefect")
    if not command.is_file():
        raise PrefectServerError(
            f"no `prefect` command beside {sys.executable}: install Shipyard's dependencies "
            "(`make setup`), or point PREFECT_API_URL at a running Prefect server"
        )
    return str(command)


def server_env(home: Path) -> dict[str, str]:
    """The server's settings: its own home and database, no telemetry, no UI; it inherits
    nothing that would point it elsewhere (a configured database URL, say)."""
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": str(EVENT_FLUSH_INTERVAL_S),
        "PREFECT_API_URL": "",
    }


def stop(proc: Popen[bytes], grace: float = STOP_GRACE_S) -> None:
    """Stop the server by its PID: SIGTERM (uvicorn shuts down cleanly), SIGKILL after `grace`."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except TimeoutExpired:
        proc.kill()
        proc.wait()


def _await_health(
    handle: PrefectServer,
    proc: Popen[bytes],
    log: Path,
    launched: float,
    timeout: float,
) -> None:
    """Poll `GET /health` until it answers 200 (then record the launch-to-healthy seconds);
    a process that exits or a deadline that passes first is the failure wait() raises."""
    deadline = launched + timeout
    with httpx.Client(timeout=2.0) as client:
        while time.perf_counter() < deadline:
            if proc.poll() is not None:
                handle._failed.append(
                    PrefectServerError(
                        f"`prefect server start` exited with code {proc.returncode} before "
                        f"answering: {_tail(log)}"
                    )
                )
                return
            try:
                if client.get(f"{handle.url}/health").status_code == 200:
                    handle.started_s = round(time.perf_counter() - launched, 2)
                    return
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.2)
    handle._failed.append(
        PrefectServerError(
            f"the Prefect server did not answer {handle.url}/health within {timeout:.0f} s: "
            f"{_tail(log)}"
        )
    )


def _tail(log: Path, lines: int = 5) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no server log)"
    return " | ".join(text[-lines:]) or "(empty server log)"


def _join_quietly(handle: PrefectServer) -> None:
    """Let the health wait end (the server is stopped by now); a failure there was either
    raised by wait() already or the run failed before it needed the server."""
    if handle._starting is not None:
        handle._starting.join()
        handle._starting = None


def _deliver_if_up(handle: PrefectServer) -> None:
    if handle._starting is None and not handle._failed:
        deliver()


def deliver(timeout: float = DELIVERY_TIMEOUT_S) -> bool:
    """Make sure this process's logs and events reached the configured server before it stops.

    Logs: the API log handler's `flush()` (the standard `logging.Handler` call) sends what is
    queued. Events (Prefect's own task-run state events, the release's `emit_event`s) are sent
    in order by one background worker, which drains by itself only at interpreter exit, when
    the demo's server is gone. So emit one last event of our own and wait until the server
    returns it from its events API (`read_events`): everything emitted before it has arrived.
    False: not within `timeout` (the run's records on a server about to go: nothing fails)."""
    from prefect.client.orchestration import get_client
    from prefect.events import emit_event
    from prefect.events.filters import EventFilter, EventIDFilter, EventOccurredFilter
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    marker = emit_event(
        event="shipyard.demo.teardown",
        resource={"prefect.resource.id": f"shipyard.demo.{uuid.uuid4()}"},
    )
    if marker is None:  # events are off for this API: nothing was queued either
        return True
    window = EventOccurredFilter(  # the default window ends when the filter is made
        since=marker.occurred - timedelta(minutes=1), until=marker.occurred + timedelta(minutes=10)
    )
    marked = EventFilter(id=EventIDFilter(id=[marker.id]), occurred=window)
    deadline = time.perf_counter() + timeout
    with get_client(sync_client=True) as client:
        while time.perf_counter() < deadline:
            try:
                if client.read_events(filter=marked, limit=1).events:
                    return True
            except httpx.HTTPError:
                pass  # the server is busy or restarting its services: ask again
            time.sleep(0.1)
    return False
