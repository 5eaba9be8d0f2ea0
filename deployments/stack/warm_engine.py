"""The warm engine: flow runs forked from one interpreter that has already imported Prefect's
engine and Shipyard's flows, instead of a fresh `python -m prefect.engine` per run.

Why: a process worker starts each flow run as a new Python. Importing `prefect.engine` and the
release flow (Prefect, prefect-gcp, the Google clients, pandas) costs that process about 2.8 CPU
seconds before the run does anything: more than the release itself on in-process revisions, and
on two cores the first limit on releases per minute and on how soon a due run is Running
(bench/scale.py). Forking a process that has imported all of it once costs milliseconds.

How (the way a "zygote" or gunicorn's `--preload` does it):

- `python -m shipyard.deployments.stack.warm_engine --socket PATH` imports the modules (Prefect's
  engine, every flow prefect.yaml deploys, `--module` more), freezes the garbage collector's view
  of them (gc.freeze: forked children then share those pages), and only then listens on the Unix
  socket PATH (mode 0600, in a 0700 directory). It runs no thread and no event loop: fork is safe.
- A process worker whose pool's command is `python -m shipyard.deployments.stack.warm_run` (see
  warm_run.py) connects per run; the engine forks. The child takes the client's environment,
  working directory (sys.path then begins with it and PYTHONPATH, as `python -m` there) and
  stdio, refreshes Prefect's settings and logging from that environment,
  and runs `prefect.engine` as `__main__`, exactly what `python -m prefect.engine` runs, then
  exits the normal way (atexit: logs and events are flushed). The engine reports its exit status
  to the client, which exits the same way.
- The run's process dies with its client (the connection closes: a worker killed with its runs)
  and with the engine (PR_SET_PDEATHSIG): nothing is left behind.

What it does not change: the run is the same code on the same Prefect; a settings variable in
the run's environment applies to it. Only module-level state computed at import comes from the
engine's environment (start the engine with the workers' environment, as `start_warm_engine`
does).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import importlib
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipyard.deployments.stack.warm_protocol import recv_request, send_reply

__all__ = ["FLOW_MODULES", "Job", "serve"]

# Prefect's engine and what `python -m prefect.engine` imports before it runs a flow.
ENGINE_MODULES = ("prefect.engine", "prefect.flow_engine", "prefect._internal.metrics")
# The modules of prefect.yaml's entrypoints (tests/configuration checks the list stays whole).
FLOW_MODULES = (
    "shipyard.flows.release.flow",
    "shipyard.flows.promotion.flow",
    "shipyard.flows.rollout.control",
    "shipyard.flows.deploy.rollback",
    "shipyard.flows.mirror.flow",
    "shipyard.flows.build.prewarm",
)
REQUEST_TIMEOUT_S = 5.0
ACCEPT_BACKOFF_S = 0.5
REFUSED_DRAIN = 1 << 20
PR_SET_PDEATHSIG = 1


@dataclass
class Job:
    """What a forked child runs: `python ARGV...` (argv[0] is "-m")."""

    argv: list[str]


def preload(modules: Iterable[str]) -> float:
    """Import the modules; returns the CPU seconds it took."""
    began = time.process_time()
    for name in modules:
        importlib.import_module(name)
    gc.collect()
    gc.freeze()
    return time.process_time() - began


def serve(path: Path) -> Job:
    """Serve requests on the socket `path` until SIGTERM (then exit). Returns only in a forked
    child, with the job the child is to run (its stdio, environment and directory already set)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old_umask)
    listener.listen(64)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, _stop)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(wake_r, selectors.EVENT_READ, "wake")
    by_pid: dict[int, socket.socket] = {}
    print(f"warm engine: ready on {path}", flush=True)
    try:
        while True:
            for key, _ in selector.select():
                if key.data == "accept":
                    try:
                        conn, _addr = listener.accept()
                    except OSError as exc:  # out of descriptors, say: the runs going keep going
                        print(f"warm engine: accept failed: {exc!r}", file=sys.stderr, flush=True)
                        time.sleep(ACCEPT_BACKOFF_S)  # the client waits; its connect times out
                        continue
                    job = _fork(conn, by_pid, selector)
                    if job is not None:  # this is the child now
                        for fd in (wake_r, wake_w):
                            os.close(fd)
                        listener.close()
                        return job
                elif key.data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 512)
                    _reap(by_pid, selector)
                else:  # a client's connection: readable means closed (clients send no more)
                    client = key.fileobj
                    assert isinstance(client, socket.socket)  # noqa: S101 (registered as one)
                    _client_gone(client, key.data, by_pid, selector)
    finally:
        with contextlib.suppress(FileNotFoundError):
            if os.getpid() == _ENGINE_PID[0]:
                path.unlink()


_ENGINE_PID = [os.getpid()]


def _stop(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def _fork(
    conn: socket.socket, by_pid: dict[int, socket.socket], selector: selectors.BaseSelector
) -> Job | None:
    conn.settimeout(REQUEST_TIMEOUT_S)
    try:
        request, fds = recv_request(conn)
    except (OSError, ValueError) as exc:
        _refuse(conn, f"{type(exc).__name__}: {exc}")
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError as exc:
        # No process or memory left: this run starts fresh (the client falls back), and the
        # engine, with every run it forked, does not die of it.
        for fd in fds:
            os.close(fd)
        _refuse(conn, f"fork failed: {type(exc).__name__}: {exc}")
        return None
    if pid == 0:
        _ENGINE_PID[0] = -1
        try:
            return _become_child(request, fds, conn, by_pid, selector)
        except BaseException as exc:  # noqa: BLE001 (a child that cannot start must not return)
            with contextlib.suppress(BaseException):
                print(f"warm engine: the run's process could not start: {exc!r}", file=sys.stderr)
            os._exit(70)
    for fd in fds:
        os.close(fd)
    try:
        send_reply(conn, pid=pid)
    except OSError:  # the client has gone already: so must its run
        _kill(pid)
    conn.setblocking(False)
    by_pid[pid] = conn
    selector.register(conn, selectors.EVENT_READ, pid)
    return None


def _refuse(conn: socket.socket, error: str) -> None:
    """Answer {"error": ...} and close. What the client sent and we did not read is drained
    first (up to REFUSED_DRAIN bytes): closing a Unix socket with unread bytes resets the
    connection, and the client would get ECONNRESET instead of the answer."""
    with contextlib.suppress(OSError):
        send_reply(conn, error=error)
        conn.shutdown(socket.SHUT_WR)
        conn.setblocking(False)
        drained = 0
        while drained < REFUSED_DRAIN and (chunk := conn.recv(65536)):
            drained += len(chunk)
    conn.close()


def _become_child(
    request: dict[str, Any],
    fds: list[int],
    conn: socket.socket,
    by_pid: dict[int, socket.socket],
    selector: selectors.BaseSelector,
) -> Job:
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGCHLD, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    selector.close()
    for other in by_pid.values():
        other.close()
    conn.close()
    _die_with_parent()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(str(request.get("cwd") or "/"))
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in request["env"].items()})
    _run_sys_path(os.getcwd(), os.environ.get("PYTHONPATH", ""))
    return Job(argv=[str(a) for a in request["argv"]])


def _run_sys_path(cwd: str, pythonpath: str) -> None:
    """Begin sys.path the way `python -m` started in `cwd` with this PYTHONPATH begins it: the
    run's directory first (not the engine's: a module-path entrypoint relative to the job's
    working_dir is found, as in a fresh Python), then PYTHONPATH's entries. The rest is the
    engine's (what it imported from there stays imported)."""
    front = [cwd, *(p for p in pythonpath.split(os.pathsep) if p)]
    sys.path[:] = [*front, *(p for p in sys.path[1:] if p not in front)]


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when the engine exits."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the engine died before prctl took effect
        os._exit(70)


def _reap(by_pid: dict[int, socket.socket], selector: selectors.BaseSelector) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = by_pid.pop(pid, None)
        if conn is None:
            continue
        selector.unregister(conn)
        reply = (
            {"signal": os.WTERMSIG(status)}
            if os.WIFSIGNALED(status)
            else {"exit": os.waitstatus_to_exitcode(status)}
        )
        with contextlib.suppress(OSError):
            conn.setblocking(True)
            conn.settimeout(REQUEST_TIMEOUT_S)
            send_reply(conn, **reply)
        conn.close()


def _client_gone(
    conn: socket.socket,
    pid: int,
    by_pid: dict[int, socket.socket],
    selector: selectors.BaseSelector,
) -> None:
    """A client's connection became readable: it has closed (killed, most likely): the run's
    process must not outlive it. Its exit is reaped (and dropped) by `_reap`."""
    with contextlib.suppress(BlockingIOError, OSError):
        if conn.recv(1):
            return  # a client of ours sends nothing more: ignore stray bytes
    _kill(pid)
    selector.unregister(conn)
    by_pid.pop(pid, None)
    conn.close()


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def run_job(job: Job) -> None:
    """In the forked child: what `python -m prefect.engine ARGS` does, with Prefect's settings and
    logging taken again from this run's environment. Ends by SystemExit, or returns: the
    interpreter then exits the normal way."""
    import runpy

    import prefect.context
    import prefect.engine
    import prefect.logging.configuration

    prefect.context.refresh_global_settings_context()
    if _logging_env(os.environ) != _ENGINE_LOGGING_ENV[0]:
        # Only when the run's logging settings differ from the engine's: configuring logging
        # again re-reads every setting, ~12% of a warm run's CPU (measured with py-spy).
        prefect.logging.configuration.setup_logging(incremental=False)
    if job.argv[:2] != ["-m", "prefect.engine"]:
        raise SystemExit(f"warm engine: only `-m prefect.engine` runs here, not {job.argv!r}")
    sys.argv = [str(prefect.engine.__file__), *job.argv[2:]]
    # run_path, not run_module: the module is imported already (that is the point), and
    # run_module would warn so in every run's log.
    runpy.run_path(str(prefect.engine.__file__), run_name="__main__")


_ENGINE_LOGGING_ENV: list[dict[str, str]] = [{}]


def _logging_env(env: Any) -> dict[str, str]:
    """What Prefect's logging configuration is made of: PREFECT_LOGGING_*, and where the home and
    profile (logging.yml's default place, profile settings) are."""
    keys = ("PREFECT_HOME", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH")
    return {k: v for k, v in env.items() if k.startswith("PREFECT_LOGGING_") or k in keys}


def main(argv: list[str] | None = None) -> None:
    _ENGINE_LOGGING_ENV[0] = _logging_env(os.environ)
    parser = argparse.ArgumentParser(
        prog="python -m shipyard.deployments.stack.warm_engine",
        description="Fork flow runs from one pre-imported interpreter (see the module's doc).",
    )
    parser.add_argument("--socket", required=True, type=Path, help="the Unix socket to listen on")
    parser.add_argument(
        "--module",
        action="append",
        default=[],
        help="import this module too before serving (flows of your own; repeatable)",
    )
    options = parser.parse_args(argv)
    cpu = preload([*ENGINE_MODULES, *FLOW_MODULES, *options.module])
    print(f"warm engine: imports took {cpu:.2f} CPU s", flush=True)
    job = serve(options.socket)
    run_job(job)


if __name__ == "__main__":
    main()
