"""Start, stop and inspect the sandbox: the real registry plus the Google API emulator.

The running sandbox is described in $SHIPYARD_HOME/sandbox.json (default ~/.shipyard),
so `down` and `status` from another shell find what `up` started, by PID.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from sandbox.engine.daemon import (
    Engine,
    release_mounts,
    remove_containers,
    start_engine,
    unavailable_reason,
)
from sandbox.procs import pick_port, pid_alive, spawn, stop_pid, wait_for_port
from sandbox.registry import start_registry
from sandbox.scenario import load_scenario, resolve_scenario_path

ENDPOINT_ENV = "SHIPYARD_GOOGLE_ENDPOINT"
REGISTRY_ENV = "SHIPYARD_REGISTRY_URL"
# Fixed default ports of `shipyard sandbox up`, so a restart keeps every URL that blocks and
# variables hold (settings: SHIPYARD_SANDBOX_REGISTRY_PORT, SHIPYARD_SANDBOX_EMULATOR_PORT).
REGISTRY_PORT_ENV = "SHIPYARD_SANDBOX_REGISTRY_PORT"
EMULATOR_PORT_ENV = "SHIPYARD_SANDBOX_EMULATOR_PORT"
DEFAULT_REGISTRY_PORT = 47500
DEFAULT_EMULATOR_PORT = 47501


def default_ports() -> tuple[int, int]:
    """(registry, emulator) ports `sandbox up` asks for: the settings, else the fixed defaults."""

    def read(env: str, default: int) -> int:
        text = os.environ.get(env, "").strip()
        if not text:
            return default
        if not text.isdigit() or not 0 < int(text) < 65536:
            raise ValueError(f"{env}={text!r} is not a TCP port: give a number from 1 to 65535")
        return int(text)

    return read(REGISTRY_PORT_ENV, DEFAULT_REGISTRY_PORT), read(
        EMULATOR_PORT_ENV, DEFAULT_EMULATOR_PORT
    )


def shipyard_home() -> Path:
    return Path(os.environ.get("SHIPYARD_HOME", Path.home() / ".shipyard"))


@dataclass
class SandboxInfo:
    emulator_url: str
    registry_url: str
    registry_host: str
    scenario: str | None
    root: str
    pids: dict[str, int] = field(default_factory=dict)
    started_at: float = 0.0
    startup_s: float = 0.0
    docker_host: str | None = None  # the sandbox's Docker daemon; None: in-process stand-ins
    mode: str = "in-process"  # "containers" when builds and revisions run on the daemon
    mode_note: str = ""  # one line: why the sandbox runs in-process
    port_notes: list[str] = field(default_factory=list)  # a fixed port taken: where it went

    def env(self) -> dict[str, str]:
        """What a shell (or a test) sets to point Shipyard at this sandbox."""
        return {ENDPOINT_ENV: self.emulator_url, REGISTRY_ENV: self.registry_url}

    @contextmanager
    def env_applied(self) -> Iterator[None]:
        """Point this process at the sandbox (`env()` in os.environ) for the block, then put
        back what was there before (unset stays unset)."""
        saved = {key: os.environ.get(key) for key in self.env()}
        os.environ.update(self.env())
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def alive(self) -> dict[str, bool]:
        return {name: pid_alive(pid) for name, pid in self.pids.items()}

    def stop(self) -> list[str]:
        """Stop by PID: the emulator first, the Docker daemon last, its containers removed
        first (so it does not wait out each one's stop grace) and given time to stop
        containerd, so no shim outlives it."""
        stopped = []
        if self.docker_host and "dockerd" in self.pids and pid_alive(self.pids["dockerd"]):
            remove_containers(Engine(self.docker_host))
        order = sorted(self.pids.items(), key=lambda item: item[0] == "dockerd")
        for name, pid in order:
            if stop_pid(pid, timeout=30.0 if name == "dockerd" else 5.0):
                stopped.append(f"{name} (pid {pid})")
        if "dockerd" in self.pids:
            release_mounts(Path(self.root) / "engine")
        return stopped


def state_file(home: Path | None = None) -> Path:
    return (home or shipyard_home()) / "sandbox.json"


def read_info(home: Path | None = None) -> SandboxInfo | None:
    path = state_file(home)
    if not path.exists():
        return None
    return SandboxInfo(**json.loads(path.read_text()))


def start_sandbox(
    scenario: str | None = None,
    registry_url: str | None = None,
    root: Path | None = None,
    timeout: float = 60.0,
    engine: bool = False,
    registry_port: int | None = None,
    emulator_port: int | None = None,
) -> SandboxInfo:
    """Start the registry (unless a URL is given), the Docker daemon (`engine`, where it can
    start: else one line says why and the in-process stand-ins serve) and the emulator on
    loopback: on the ports asked for when they are free (else free ones, said in `port_notes`),
    on free ports when none is asked for (the tests)."""
    started = time.monotonic()
    if scenario is not None:
        # Validate here, so a bad file fails in the caller with the file/key message.
        scenario = str(resolve_scenario_path(scenario))
        load_scenario(scenario)
    root = root or (shipyard_home() / "sandbox")
    root.mkdir(parents=True, exist_ok=True)
    pids: dict[str, int] = {}
    notes: list[str] = []
    if registry_url is None:
        port, note = pick_port(registry_port, "registry")
        notes += [note] if note else []
        registry = start_registry(root / "registry", port=port, timeout=timeout)
        pids["registry"] = registry.pid
        registry_url = registry.url
    registry_host = httpx.URL(registry_url).netloc.decode()

    docker_host, mode_note = None, ""
    reason = unavailable_reason() if engine else "not asked for"
    if reason is None:
        try:
            daemon = start_engine(root / "engine", timeout=timeout)
            pids["dockerd"] = daemon.pid
            docker_host = daemon.host
        except RuntimeError as exc:
            reason = str(exc)
    if reason is not None:
        mode_note = f"no container engine ({reason}): builds and revisions run in-process"
        if engine:
            print(f"sandbox: {mode_note}", file=sys.stderr)

    port, note = pick_port(emulator_port, "emulator")
    notes += [note] if note else []
    args = [
        sys.executable,
        "-m",
        "sandbox.emulator",
        "--port",
        str(port),
        "--registry-url",
        registry_url,
        # What must outlive `down` / `up` (the Secret Manager entries `shipyard setup` added):
        # under the root, like the registry's data.
        "--state-dir",
        str(root / "emulator-state"),
    ]
    if scenario:
        args += ["--scenario", scenario]
    if docker_host:
        args += ["--docker-host", docker_host]
    proc = spawn(args, root / "emulator.log")
    pids["emulator"] = proc.pid
    try:
        wait_for_port("127.0.0.1", port, timeout, proc)
    except RuntimeError as exc:
        for pid in pids.values():
            stop_pid(pid)
        log = (root / "emulator.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"the emulator did not start: {exc}\n{log}") from None
    return SandboxInfo(
        emulator_url=f"http://127.0.0.1:{port}",
        registry_url=registry_url,
        registry_host=registry_host,
        scenario=scenario,
        root=str(root),
        pids=pids,
        started_at=time.time(),
        startup_s=round(time.monotonic() - started, 3),
        docker_host=docker_host,
        mode="containers" if docker_host else "in-process",
        mode_note=mode_note,
        port_notes=notes,
    )


def save_info(info: SandboxInfo, home: Path | None = None) -> Path:
    path = state_file(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(info), indent=2))
    return path


def stop_sandbox(home: Path | None = None) -> list[str]:
    info = read_info(home)
    if info is None:
        return []
    stopped = info.stop()
    state_file(home).unlink(missing_ok=True)
    return stopped
