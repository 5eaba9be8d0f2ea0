"""The warm engine (deployments/stack/warm_engine.py, warm_run.py, warm.py): flow runs of a real
`prefect worker start` process worker, forked from one pre-imported interpreter.

One set-up for the module: a real engine (`start_warm_engine`, tests/fleet on its PYTHONPATH,
`modules=["warm_flows"]`), one worker (`start_workers(..., command=warm_command())`: the pool is
created with that command) with SHIPYARD_WARM_ENGINE pointing at the engine, and a deployment of
tests/fleet/warm_flows.py's `probe` (each run writes what its process is to a file). The
engine's own environment differs from the workers' on purpose: its PREFECT_API_URL points at a
decoy socket that nobody may call, and it has variables of its own that no run may see.

Proven, in the file's order (the last test kills the worker, then stops the engine):
the engine refuses garbage on its socket and keeps serving; two runs at once are forked (ppid
the engine), with the job's environment, their own flow run ids, their logs in the API; a
failing run ends Failed and a SIGKILLed one Crashed (-9, as with a fresh process); a cancelled
run ends Cancelled and its process is gone; without an engine (none listening, or one that hangs
up before forking) a run completes in a fresh Python; a worker killed with its group takes its
forked run along, and a stopped engine its running children.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shlex
import signal
import socket
import struct
import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shipyard.deployments.stack.processes import start_time
from shipyard.deployments.stack.warm import (
    ENV_SOCKET,
    WarmEngine,
    start_warm_engine,
    stop_warm_engine,
    warm_command,
)
from shipyard.deployments.stack.warm_protocol import recv_request
from shipyard.deployments.stack.workers import start_workers, stop_workers
from shipyard.tasks.waiting import Deadline, NotYet, await_for, wait_for

pytestmark = pytest.mark.slow

FLEET_DIR = Path(__file__).resolve().parent
RUN_TIMEOUT_S = 180.0  # a machine at load 20 stretches a run's start
JOB_VAR = "job"  # WARM_TEST_VAR in the deployment's job_variables env (the workers': "worker")


@dataclass
class Warm:
    engine: WarmEngine
    worker: int
    home: Path
    pool: str
    deployment_id: Any
    run_env: dict[str, str]  # the workers' environment (what a run of theirs inherits)
    decoy: socket.socket  # listens where the engine's own PREFECT_API_URL points

    def decoy_calls(self) -> int:
        """Connections made to the engine's API URL so far (accepted and closed here)."""
        calls = 0
        while True:
            try:
                conn, _ = self.decoy.accept()
            except BlockingIOError:
                return calls
            conn.close()
            calls += 1

    def worker_log(self) -> str:
        (log,) = (self.home / "workers").glob("*.log")  # one worker; found by name when gone
        return log.read_text(errors="replace")


def _workers_env() -> dict[str, str]:
    """This session's PREFECT_* settings (its home, its server), INFO logs, tests/fleet on the
    path (the runs import warm_flows), and WARM_TEST_VAR=worker."""
    from prefect.settings import PREFECT_API_URL

    session = {
        k: v
        for k, v in os.environ.items()
        if k.startswith("PREFECT_") and not k.startswith("PREFECT_WORKER_")
    }
    path = os.pathsep.join(p for p in (str(FLEET_DIR), os.environ.get("PYTHONPATH")) if p)
    return session | {
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PREFECT_LOGGING_LEVEL": "INFO",
        "PYTHONPATH": path,
        "WARM_TEST_VAR": "worker",
    }


async def _deploy(
    pool: str, entrypoint: str = "warm_flows.probe", job_variables: dict[str, Any] | None = None
) -> Any:
    """A deployment of the probe on `pool` (start_workers created the pool, its command set)."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        flow_id = await client.create_flow_from_name("warm-probe")
        return await client.create_deployment(
            flow_id=flow_id,
            name=f"warm-probe-{uuid.uuid4().hex[:8]}",
            work_pool_name=pool,
            entrypoint=entrypoint,
            job_variables=job_variables or {"env": {"WARM_TEST_VAR": JOB_VAR}},
        )


async def _undeploy(deployment_id: Any) -> None:
    """The deployment and its runs: two were left Running on purpose (their processes killed),
    and a later module's sweep of this server must not find them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async with get_client() as client:
        of_ours = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        for run in await client.read_flow_runs(deployment_filter=of_ours):
            await client.delete_flow_run(run.id)
        await client.delete_deployment(deployment_id)


async def _delete_pool(pool: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        with contextlib.suppress(ObjectNotFound):  # the workers never started: no pool
            await client.delete_work_pool(pool)


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Warm]:
    from shipyard.deployments.stack.prefect_server import prefect_env

    home = tmp_path_factory.mktemp("warm")
    pool = f"warm-{uuid.uuid4().hex[:8]}"
    env = _workers_env()
    # The engine: the workers' environment, but a decoy API (a socket that only counts who
    # connects: nobody may), a variable of its own and its own WARM_TEST_VAR: none of them may
    # reach a run.
    decoy = socket.create_server(("127.0.0.1", 0))
    decoy.setblocking(False)
    engine_env = (
        prefect_env(home)
        | env
        | {
            "PREFECT_API_URL": f"http://127.0.0.1:{decoy.getsockname()[1]}/api",
            "WARM_TEST_VAR": "engine",
            "WARM_ENGINE_ONLY": "1",
        }
    )
    engine = start_warm_engine(home, engine_env, modules=["warm_flows"])
    workers: list[int] = []
    deployment_id = None
    try:
        run_env = env | {ENV_SOCKET: str(engine.socket)}
        workers = start_workers(
            pool,
            1,
            home=home,
            env=run_env,
            worker_type="process",
            query_seconds=1,
            prefetch_seconds=0,
            command=warm_command(),
        )
        deployment_id = asyncio.run(_deploy(pool))
        yield Warm(engine, workers[0], home, pool, deployment_id, run_env, decoy)
    finally:
        decoy.close()
        stop_workers(workers)
        stop_warm_engine(engine)
        if deployment_id is not None:
            asyncio.run(_undeploy(deployment_id))
        asyncio.run(_delete_pool(pool))


# ---------------------------------------------------------------- helpers


def _run(
    warm: Warm,
    out: Path,
    mode: str = "report",
    partner: Path | None = None,
    deployment_id: Any = None,
    **job: Any,
) -> Any:
    """A run of the probe (Scheduled now); `job`: the run's own job variables."""
    from prefect.client.orchestration import get_client

    async def create() -> Any:
        async with get_client() as client:
            run = await client.create_flow_run_from_deployment(
                deployment_id or warm.deployment_id,
                parameters={"out": str(out), "mode": mode, "partner": str(partner or "")},
                job_variables=job or None,
            )
            return run.id

    return asyncio.run(create())


def _final(run_id: Any, timeout: float = RUN_TIMEOUT_S) -> tuple[Any, list[Any]]:
    """The run once its state is final, and its states, oldest first."""
    from prefect.client.orchestration import get_client

    async def read() -> tuple[Any, list[Any]]:
        async with get_client() as client:

            async def final() -> Any:
                run = await client.read_flow_run(run_id)
                if not run.state or not run.state.is_final():
                    raise NotYet(run.state.name if run.state else "no state")
                return run

            run = await await_for(
                final,
                what=f"flow run {run_id} to end",
                first_delay_s=0.2,
                max_delay_s=1.0,
                deadline=Deadline(timeout),
                heartbeat_s=None,
            )
            states = await client.read_flow_run_states(run_id)
            return run, sorted(states, key=lambda s: s.timestamp)

    return asyncio.run(read())


def _record(out: Path, timeout: float = RUN_TIMEOUT_S) -> dict[str, Any]:
    def written() -> dict[str, Any]:
        if not out.exists():
            raise NotYet(f"{out} not written yet")
        data: dict[str, Any] = json.loads(out.read_text())
        return data

    return wait_for(
        written,
        what=f"the probe to write {out}",
        first_delay_s=0.1,
        max_delay_s=0.5,
        deadline=Deadline(timeout),
        heartbeat_s=None,
    )


def _gone(pid: int, timeout: float = 30.0) -> bool:
    """The process has exited (a zombie counts as exited) within `timeout` s."""

    def exited() -> bool:
        if start_time(pid) is not None:
            raise NotYet(f"PID {pid} still runs")
        return True

    return wait_for(
        exited,
        what=f"PID {pid} to exit",
        first_delay_s=0.05,
        max_delay_s=0.5,
        deadline=Deadline(timeout),
        heartbeat_s=None,
    )


def _run_logs(run_id: Any, expect: str = "Finished in state") -> str:
    """The run's log messages in the API, once one holds `expect` (they are sent in batches,
    the last ones as the run's process exits)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    only_ours = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))

    async def read() -> str:
        async with get_client() as client:

            async def logs() -> str:
                text = "\n".join(x.message for x in await client.read_logs(only_ours))
                if expect not in text:
                    raise NotYet(text[-500:])
                return text

            return await await_for(
                logs,
                what=f"the logs of flow run {run_id}",
                first_delay_s=0.2,
                max_delay_s=1.0,
                deadline=Deadline(60),
                heartbeat_s=None,
            )

    return asyncio.run(read())


def _pending_to_running(states: list[Any]) -> float:
    kinds = [s.type.value for s in states]
    pending = states[kinds.index("PENDING")].timestamp
    running = states[kinds.index("RUNNING")].timestamp
    return float((running - pending).total_seconds())


def _failure(run: Any, states: list[Any], warm: Warm) -> str:
    return f"{[s.name for s in states]} {(run.state.message or '')[-800:]} | {warm.worker_log()[-3000:]}"


FIGURES: dict[str, list[float]] = {}


# ---------------------------------------------------------------- the engine's socket


def _request(
    path: Path, *chunks: bytes, fds: list[int] | None = None, half_close: bool = False
) -> bytes:
    """Send raw bytes to the engine (the first chunk with the descriptors `fds`, if any),
    optionally half-close, and return everything it answers until it closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        first, *rest = chunks
        if fds:
            socket.send_fds(sock, [first], fds)
        else:
            sock.sendall(first)
        for chunk in rest:
            sock.sendall(chunk)
        if half_close:  # (a client that closes its side is gone for the engine)
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while data := sock.recv(4096):
            answer += data
        return answer


def _framed(body: dict[str, Any] | bytes) -> tuple[bytes, bytes]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return struct.pack(">I", len(raw)), raw


def test_the_engine_refuses_garbage_and_keeps_serving(warm, tmp_path):
    path = warm.engine.socket
    with open(os.devnull, "rb") as null:
        stdio = [null.fileno()] * 3
        # Junk without descriptors: refused with a reason.
        answer = json.loads(_request(path, b"hello, engine\n"))
        assert "bad request header" in answer["error"], answer
        # A header that promises 100 bytes, then 10 and the end: refused (or dropped).
        cut = _request(path, struct.pack(">I", 100), b'{"v": 1, "', fds=stdio, half_close=True)
        assert cut == b"" or "mid-request" in json.loads(cut)["error"], cut
        # Another protocol version; not JSON; JSON but no argv: refused, nothing forked.
        for body in (
            {"v": 99, "argv": [], "env": {}},
            b"\xff not json",
            {"v": 1, "env": {}},
        ):
            answer = json.loads(_request(path, *_framed(body), fds=stdio))
            assert set(answer) == {"error"}, (body, answer)
        # Over the size limit: refused from the header alone.
        answer = json.loads(_request(path, struct.pack(">I", 64 * 1024 * 1024), fds=stdio))
        assert "over" in answer["error"], answer
    # Connected and closed at once, having sent nothing.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
    # Out of descriptors: a connection it cannot accept is said in its log, and it keeps
    # serving once descriptors are back. The limit bounds the numbers of *new* descriptors only
    # (those it holds stay valid), so a soft limit of 0 leaves it none to accept with, whatever
    # it still holds or is about to close. (A limit of "the lowest free number", measured while
    # it still held the connection above, let that number be re-used once it closed it: CI.)
    pid, log = warm.engine.pid, warm.engine.log
    said = log.read_text().count("accept failed")

    def said_it() -> bool:
        if log.read_text().count("accept failed") <= said:
            raise NotYet("nothing said yet")
        return True

    limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    try:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (0, limits[1]))
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(path))  # queued by the kernel; accept() fails EMFILE
            wait_for(
                said_it,
                what="the engine to say accept failed",
                first_delay_s=0.1,
                max_delay_s=0.5,
                deadline=Deadline(30),
                heartbeat_s=None,
            )
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
    assert start_time(pid) is not None
    # Still serving: a well-formed request is forked; its child refuses any command but
    # `-m prefect.engine` (on the stderr it was handed, exit 1) and the engine relays the exit.
    err = tmp_path / "child.err"
    request = {
        "v": 1,
        "argv": ["-m", "http.server"],
        "env": {"PREFECT_HOME": str(warm.home / "refused")},
        "cwd": str(tmp_path),
    }
    with open(os.devnull, "rb") as null, open(err, "wb") as stderr:
        fds = [null.fileno(), stderr.fileno(), stderr.fileno()]
        replies = [json.loads(x) for x in _request(path, *_framed(request), fds=fds).splitlines()]
    assert len(replies) == 2 and set(replies[0]) == {"pid"}, replies
    assert replies[1] == {"exit": 1}, replies
    assert "only `-m prefect.engine` runs here" in err.read_text(), err.read_text()
    assert start_time(warm.engine.pid) is not None  # the engine is up


# ---------------------------------------------------------------- runs through the worker


def test_runs_are_forked_from_the_engine_two_at_once(warm, tmp_path):
    from prefect.client.orchestration import get_client

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    # Each ends only once the other has written its file: both complete only side by side.
    outs = {_run(warm, a, partner=b): a, _run(warm, b, partner=a): b}
    records = {}
    for run_id, out in outs.items():
        run, states = _final(run_id)
        assert run.state.type.value == "COMPLETED", _failure(run, states, warm)
        record = records[run_id] = json.loads(out.read_text())
        # Forked from the engine, with warm_flows imported there (module state is the engine's).
        assert record["ppid"] == warm.engine.pid, (record, warm.engine)
        assert record["imported_by"] == warm.engine.pid, record
        # The run's environment is the job's (the deployment's env over the worker's), none of
        # the engine's; its flow run id is its own; its directory the worker's for the run.
        assert record["var"] == JOB_VAR, record
        assert record["engine_only"] is None, record
        assert record["flow_run_id"] == str(run_id), record
        assert record["cwd"].endswith("prefect") and record["cwd"] != os.getcwd(), record
        assert record["sys_path"][0] == record["cwd"], record  # as `python -m` there would
        FIGURES.setdefault("forked: Pending->Running s", []).append(_pending_to_running(states))
        FIGURES.setdefault("forked: CPU s before the flow's body", []).append(record["cpu_s"])
    assert len({r["pid"] for r in records.values()}) == 2, records
    # Their Prefect settings are the run's: nothing called the engine's PREFECT_API_URL.
    assert {r["api_url"] for r in records.values()} == {warm.run_env["PREFECT_API_URL"]}
    assert warm.decoy_calls() == 0
    # Their logs reached the API (Prefect's logging in the child, flushed as the process ended).
    for run_id, record in records.items():
        assert f"warm-probe: report in process {record['pid']}" in _run_logs(run_id)
    assert "no warm engine" not in warm.worker_log()

    async def pool_command() -> Any:
        async with get_client() as client:
            pool = await client.read_work_pool(warm.pool)
        return pool.base_job_template["variables"]["properties"]["command"]["default"]

    assert asyncio.run(pool_command()) == warm_command()


def test_a_forked_run_imports_from_its_working_dir_and_pythonpath(warm, tmp_path):
    """As in a fresh `python -m prefect.engine`: sys.path begins with the run's directory (the
    job's working_dir), then its PYTHONPATH. Here the entrypoint's module is in the working dir,
    and it imports the flow from a module on the run's PYTHONPATH only (neither is the engine's)."""
    work, extra = tmp_path / "work", tmp_path / "extra"
    work.mkdir()
    extra.mkdir()
    (work / "warm_local.py").write_text("from warm_extra import probe\n")
    (extra / "warm_extra.py").write_text("from warm_flows import probe\n")
    pythonpath = os.pathsep.join([str(FLEET_DIR), str(extra)])
    job_variables = {
        "working_dir": str(work),
        "env": {"WARM_TEST_VAR": JOB_VAR, "PYTHONPATH": pythonpath},
    }
    deployment_id = asyncio.run(_deploy(warm.pool, "warm_local.probe", job_variables))
    try:
        out = tmp_path / "local.json"
        run, states = _final(_run(warm, out, deployment_id=deployment_id))
    finally:
        asyncio.run(_undeploy(deployment_id))
    assert run.state.type.value == "COMPLETED", _failure(run, states, warm)
    record = json.loads(out.read_text())
    assert record["ppid"] == warm.engine.pid, record
    assert record["sys_path"][:3] == [str(work), str(FLEET_DIR), str(extra)], record


def test_a_failed_and_a_killed_run_end_as_with_a_fresh_process(warm, tmp_path):
    raised, killed = tmp_path / "raise.json", tmp_path / "kill.json"
    raise_id, kill_id = _run(warm, raised, "raise"), _run(warm, killed, "kill")
    run, states = _final(raise_id)
    assert run.state.type.value == "FAILED", _failure(run, states, warm)
    assert "raised on purpose" in (run.state.message or "") + warm.worker_log()
    run, states = _final(kill_id)
    # The forked process died of SIGKILL; the client died the same way, so the worker saw a
    # process killed by signal 9 (status -9) and reported the run Crashed.
    assert run.state.type.value == "CRASHED", _failure(run, states, warm)
    message = run.state.message or ""
    assert "status code: -9" in message and "SIGKILL" in message, message
    for out in (raised, killed):
        assert json.loads(out.read_text())["ppid"] == warm.engine.pid


def _cancel(run_id: Any) -> None:
    """What the UI's Cancel does: propose Cancelling."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    async def cancel() -> None:
        async with get_client() as client:
            await client.set_flow_run_state(run_id, Cancelling())

    asyncio.run(cancel())


def test_a_cancelled_run_ends_cancelled_and_its_process_is_gone(warm, tmp_path):
    out = tmp_path / "sleep.json"
    run_id = _run(warm, out, "sleep")
    record = _record(out)
    assert record["ppid"] == warm.engine.pid, record
    _cancel(run_id)
    run, states = _final(run_id)
    assert run.state.type.value == "CANCELLED", _failure(run, states, warm)
    assert _gone(record["pid"])  # the forked process, reached by the client's SIGTERM
    client_pid = int(str(run.infrastructure_pid).rsplit(":", 1)[-1])
    assert client_pid != record["pid"]
    assert _gone(client_pid)  # and the worker's own process of the run, warm_run


@contextmanager
def _engine_that_hangs_up(path: Path) -> Iterator[list[int]]:
    """A socket at `path` that reads each request whole (warm_protocol.recv_request) and closes
    without an answer: an engine that died between a request and its fork. Yields the count of
    requests it took."""
    taken: list[int] = []
    stop = threading.Event()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(4)
        listener.settimeout(0.2)

        def serve() -> None:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.settimeout(10)
                    _request, fds = recv_request(conn)
                    for fd in fds:
                        os.close(fd)
                    taken.append(1)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield taken
        finally:
            stop.set()
            thread.join(timeout=10)


def test_without_an_engine_the_run_starts_a_fresh_python(warm, tmp_path):
    """Nobody listens at the socket; or an engine takes the request and hangs up before it
    forks: either way the run starts in a fresh Python (the run's env replaces the deployment's).
    """
    nobody, hangs_up = tmp_path / "nobody.sock", tmp_path / "hangs-up.sock"
    outs = {}
    with _engine_that_hangs_up(hangs_up) as taken:
        for name, sock in (("nobody", nobody), ("hangs-up", hangs_up)):
            out = tmp_path / f"{name}.json"
            job_env = {"WARM_TEST_VAR": JOB_VAR, ENV_SOCKET: str(sock)}
            outs[_run(warm, out, env=job_env)] = out
        finals = {run_id: _final(run_id) for run_id in outs}
    assert taken == [1]
    for run_id, (run, states) in finals.items():
        assert run.state.type.value == "COMPLETED", _failure(run, states, warm)
        record = json.loads(outs[run_id].read_text())
        # warm_run became `python -m prefect.engine` (exec): the worker's child, which imported
        # the flow itself.
        assert record["ppid"] == warm.worker, (record, warm.worker)
        assert record["imported_by"] == record["pid"] != warm.engine.pid, record
        assert record["var"] == JOB_VAR and record["flow_run_id"] == str(run_id), record
        assert record["sys_path"][0] == record["cwd"], record
        FIGURES.setdefault("fresh: Pending->Running s", []).append(_pending_to_running(states))
        FIGURES.setdefault("fresh: CPU s before the flow's body", []).append(record["cpu_s"])
    log = warm.worker_log()
    assert f"shipyard warm_run: no warm engine at {nobody}" in log
    assert f"shipyard warm_run: the warm engine at {hangs_up} closed before it started" in log


def test_nothing_is_left_behind(warm, tmp_path):
    """Last: it kills the worker, then stops the engine."""
    # The worker killed with its process group (SIGKILL, as stop_workers ends one that does not
    # stop): the client dies with it, the engine sees its connection close and kills the run.
    out = tmp_path / "orphan.json"
    _run(warm, out, "sleep")
    record = _record(out)
    assert record["ppid"] == warm.engine.pid, record
    os.killpg(warm.worker, signal.SIGKILL)
    assert _gone(record["pid"]), record
    assert start_time(warm.engine.pid) is not None  # the engine itself serves on

    # The engine stopped while a run is going: its forked process dies with it
    # (PR_SET_PDEATHSIG), and the client says so and exits 1. The client started by hand, as a
    # worker would (the worker is gone).
    out = tmp_path / "engine-stopped.json"
    run_id = _run(warm, out, "sleep")
    client_log = tmp_path / "warm_run.log"
    with open(client_log, "wb") as log:
        client = subprocess.Popen(
            shlex.split(warm_command()),
            env=warm.run_env | {"PREFECT__FLOW_RUN_ID": str(run_id)},
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        record = _record(out)
        assert record["ppid"] == warm.engine.pid, record
        stop_warm_engine(warm.engine)
        assert _gone(record["pid"]), record
        assert client.wait(timeout=30) == 1, client_log.read_text()
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(timeout=10)
    assert "went away during the run" in client_log.read_text(), client_log.read_text()
    assert not warm.engine.socket.exists()
    print("\nwarm engine figures:", json.dumps(FIGURES))
