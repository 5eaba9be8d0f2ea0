"""Revision instances as containers of the revision's image, with Cloud Run's contract.

One container per revision (`max_instance_count` 1 is what the pipeline deploys), started when
the revision is created, on the sandbox's Docker daemon:

- env: `PORT` (a free loopback port: `--network host`, the daemon has no bridge), `K_SERVICE`,
  `K_REVISION`, `K_CONFIGURATION`, the template's env and secret env (already resolved from
  the sandbox's Secret Manager stand-in by the caller);
- the memory limit enforced by the kernel (`--memory` = `--memory-swap` = the template's
  limit). A kill by the OOM killer is logged with Google's text and the instance is gone, so
  requests get a 503 (revisions_http.py);
- a startup TCP probe on `$PORT` (Google's default: 240 s; the sandbox uses the caller's
  timeout): a container that exits or never listens fails the revision with Google's message;
- stdout/stderr go to Cloud Logging as `run.googleapis.com/stdout|stderr` through `log`.

No GPU exists here: a GPU revision gets `NVIDIA_VISIBLE_DEVICES=all` and
`SHIPYARD_ACCELERATOR=nvidia-l4` in its env (what the NVIDIA runtime and the node selector
would tell it); everything else about the container is real.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sandbox.engine.daemon import DOCKER_CLI, Engine, docker
from sandbox.procs import free_port

Log = Callable[[str, str, str], None]  # (severity, text, stream: stdout, stderr or varlog%2Fsystem)

# Google's texts for an instance killed for memory (Cloud Run system log, then the exit).
OOM_MESSAGE = (
    "Memory limit of {limit} MiB exceeded with {used} MiB used. Consider increasing the memory "
    "limit, see https://cloud.google.com/run/docs/configuring/memory-limits"
)
SIGNAL_9_MESSAGE = "Container terminated on signal 9."


@dataclass
class Instance:
    container: str
    port: int
    memory_mib: int
    alive: bool = True
    oom_killed: bool = False
    stopping: bool = False  # the sandbox stops it (scale to zero, a delete): not a crash
    threads: list[threading.Thread] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class StartFailed(Exception):
    """The container exited or did not listen on $PORT in time (message: what happened)."""


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _pump(engine: Engine, container: str, stream: str, log: Log) -> threading.Thread:
    """Copy one of the container's streams into Cloud Logging, line by line."""
    args = [DOCKER_CLI, "logs", "--follow", container]
    out = subprocess.DEVNULL
    proc = subprocess.Popen(
        args,
        env=engine.env(),
        stdout=subprocess.PIPE if stream == "stdout" else out,
        stderr=subprocess.PIPE if stream == "stderr" else out,
        text=True,
    )
    pipe = proc.stdout if stream == "stdout" else proc.stderr

    def run() -> None:
        assert pipe is not None  # noqa: S101 - Popen was given a PIPE for this stream
        # A plain text line has no severity on Cloud Run, stdout or stderr alike: "Logs written
        # directly to stdout or stderr" have no "associated log level" (cloud.google.com/
        # functions/1stgendocs/monitoring/logging; Cloud Run's container logs, the same
        # agent). Calling every stderr line ERROR made a Python service's INFO lines (logging
        # writes to stderr) look like the error a failed canary cites.
        for line in pipe:
            log("DEFAULT", line.rstrip("\n"), stream)
        proc.wait()

    thread = threading.Thread(target=run, name=f"logs-{container[:12]}-{stream}", daemon=True)
    thread.start()
    return thread


def _watch(engine: Engine, instance: Instance, log: Log) -> threading.Thread:
    """Wait for the container's exit; an OOM kill is logged with Google's text."""

    def run() -> None:
        subprocess.run(
            [DOCKER_CLI, "wait", instance.container],
            env=engine.env(),
            capture_output=True,
            check=False,
        )
        state = docker(
            engine,
            "inspect",
            "--format",
            "{{.State.OOMKilled}} {{.State.ExitCode}}",
            instance.container,
        )
        oom, _, code = state.stdout.strip().partition(" ")
        instance.alive = False
        if instance.stopping:
            return
        if oom == "true" or code == "137":
            instance.oom_killed = oom == "true"
            if instance.oom_killed:
                # The kernel kills at the limit: usage at the kill is the limit.
                text = OOM_MESSAGE.format(limit=instance.memory_mib, used=instance.memory_mib)
                log("ERROR", text, "varlog%2Fsystem")
            log("ERROR", SIGNAL_9_MESSAGE, "varlog%2Fsystem")

    thread = threading.Thread(target=run, name=f"wait-{instance.container[:12]}", daemon=True)
    thread.start()
    return thread


def start_instance(
    engine: Engine,
    *,
    image: str,
    name: str,
    env: dict[str, str],
    memory_mib: int,
    log: Log,
    startup_timeout_s: float = 60.0,
    command: list[str] | None = None,
    arguments: list[str] | None = None,
) -> Instance:
    """Start the container and wait for $PORT. Raises StartFailed (the container is removed).

    `command` / `arguments`: the template container's `command` and `args`, Cloud Run's
    override of the image's ENTRYPOINT and CMD ("Entrypoint array. Not executed within a
    shell. The docker image's ENTRYPOINT is used if this is not provided." / "Arguments to the
    entrypoint. The docker image's CMD is used if this is not provided.", google/cloud/run/v2/
    k8s.min.proto, Container); `docker run --entrypoint` drops the image's CMD likewise. Their
    `$(VAR_NAME)` references are not expanded here (harsher than Google, never kinder)."""
    port = free_port()
    args = ["run", "--detach", "--network=host", f"--name={name}"]
    args += [f"--memory={memory_mib}m", f"--memory-swap={memory_mib}m"]
    for key, value in {**env, "PORT": str(port)}.items():
        args += ["--env", f"{key}={value}"]
    tail = list(arguments or [])
    if command:
        args += ["--entrypoint", command[0]]
        tail = [*command[1:], *tail]
    started = docker(engine, *args, image, *tail, timeout=300)
    if started.returncode != 0:
        raise StartFailed(f"the image {image} could not be started: {started.stderr.strip()}")
    container = started.stdout.strip()
    instance = Instance(container=container, port=port, memory_mib=memory_mib)
    instance.threads = [_pump(engine, container, s, log) for s in ("stdout", "stderr")]
    instance.threads.append(_watch(engine, instance, log))
    deadline = time.monotonic() + startup_timeout_s
    while time.monotonic() < deadline:
        if _listening(port):
            return instance
        if not instance.alive:
            break
        time.sleep(0.1)
    stop_instance(engine, instance)
    raise StartFailed("exited" if not instance.alive else "did not listen")


def stop_instance(engine: Engine, instance: Instance, grace_s: float = 0.0) -> None:
    """Remove the container (scale to zero, a deleted revision, the sandbox going down).

    With `grace_s`, as Cloud Run shuts an instance down: SIGTERM, then SIGKILL after the grace
    ("the container receives a SIGTERM signal indicating the start of a 10 second period before
    being shut down (with a SIGKILL signal)", cloud.google.com/run/docs/container-contract,
    Instance shutdown); without, killed at once."""
    instance.stopping = True
    if grace_s > 0:
        docker(engine, "stop", f"--time={round(grace_s)}", instance.container, timeout=grace_s + 60)
    docker(engine, "rm", "--force", instance.container, timeout=60)
    instance.alive = False
