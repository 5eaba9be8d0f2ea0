"""Start and stop the sandbox's own Docker daemon (`dockerd` from Debian's `docker.io`).

Own data root, exec root and socket under the sandbox root, so it never touches a system
daemon. `--iptables=false --bridge=none`: containers get no network of their own; builds and
revision containers use `--network host` (a build's RUN reaches the package registries the
host reaches; each revision listens on its own loopback $PORT). Storage driver overlay2 when
the kernel allows it, vfs otherwise (slow and disk-hungry, but works everywhere).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from sandbox.procs import spawn, stop_pid

DOCKERD = "dockerd"
# The client of the same package: it drives the daemon's embedded BuildKit (`DOCKER_BUILDKIT=1`)
# without the buildx plugin, which Debian 12 does not package.
DOCKER_CLI = "/usr/bin/docker"
STORAGE_DRIVERS = ("overlay2", "vfs")
ENGINE_ENV = "SHIPYARD_ENGINE"  # "off" keeps the in-process stand-ins


@dataclass(frozen=True)
class Engine:
    host: str  # unix:///…/docker.sock
    pid: int = 0  # 0: started by someone else (the emulator only knows the socket)
    storage_driver: str = ""
    data_root: str = ""

    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host, "DOCKER_BUILDKIT": "1"}


def unavailable_reason() -> str | None:
    """Why no daemon can start here (None: it can)."""
    if os.environ.get(ENGINE_ENV, "").lower() in ("off", "0", "false", "no"):
        return f"{ENGINE_ENV}=off"
    if os.geteuid() != 0:
        return "dockerd needs root and this process is not root"
    if shutil.which(DOCKERD) is None or not Path(DOCKER_CLI).exists():
        return "Debian's docker.io is not installed (apt-get install docker.io, or `make setup`)"
    return None


def docker(engine: Engine, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run the engine's docker CLI; output captured as text."""
    return subprocess.run(
        [DOCKER_CLI, *args],
        env=engine.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _wait_ready(engine: Engine, proc: subprocess.Popen, timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"dockerd exited with code {proc.returncode}"
        if docker(engine, "version", "--format", "{{.Server.Version}}", timeout=10).returncode == 0:
            return None
        time.sleep(0.2)
    return f"dockerd did not answer within {timeout:.0f} s"


def start_engine(root: Path, timeout: float = 30.0) -> Engine:
    """Start dockerd under `root` (overlay2, else vfs). Raises RuntimeError with the daemon's
    last log lines when neither driver starts."""
    root.mkdir(parents=True, exist_ok=True)
    sock = root / "docker.sock"
    problems = []
    for driver in STORAGE_DRIVERS:
        data_root = root / f"data-{driver}"
        args = [
            DOCKERD,
            "--iptables=false",
            "--bridge=none",
            f"--storage-driver={driver}",
            f"--data-root={data_root}",
            f"--exec-root={root / 'exec'}",
            f"--pidfile={root / 'dockerd.pid'}",
            f"--host=unix://{sock}",
        ]
        log = root / "dockerd.log"
        proc = spawn(args, log)
        engine = Engine(f"unix://{sock}", proc.pid, driver, str(data_root))
        problem = _wait_ready(engine, proc, timeout)
        if problem is None:
            # A kept data root (the demo's) may hold the containers of a run that died: none of
            # them runs any more, and their names would collide with the new instances'.
            remove_containers(engine)
            return engine
        stop_pid(proc.pid)
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        problems.append(f"{driver}: {problem}: {' | '.join(tail)}")
    raise RuntimeError("the sandbox's Docker daemon did not start: " + "; ".join(problems))


def remove_containers(engine: Engine) -> int:
    """Remove every container of the engine at once (SIGKILL, no grace): the sandbox's
    revision instances keep no state. dockerd's own shutdown would stop each one with its
    10 s grace first. Returns how many there were."""
    listed = docker(engine, "ps", "--all", "--quiet", timeout=30)
    ids = listed.stdout.split() if listed.returncode == 0 else []
    if ids:
        docker(engine, "rm", "--force", *ids, timeout=60)
    return len(ids)


def release_mounts(root: Path) -> list[str]:
    """Unmount what dockerd left mounted under `root` (its network namespace file, a data
    root mounted on itself), deepest first, so the directory can be removed."""
    prefix = str(root.resolve()) + "/"
    with open("/proc/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    return points
