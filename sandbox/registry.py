"""Start the real CNCF distribution registry (`docker-registry serve CONFIG`) on loopback."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from sandbox.procs import free_port, spawn, stop_pid, wait_for_port

APT_HINT = (
    "the distribution registry binary `docker-registry` is not installed: "
    "run `apt-get install -y docker-registry`, or pass --registry-url URL to use an existing registry"
)


class RegistryBinaryMissing(RuntimeError):
    """Raised when `docker-registry` is not on PATH."""


@dataclass
class RegistryProcess:
    url: str  # http://127.0.0.1:PORT
    host: str  # 127.0.0.1:PORT, as used in image references
    port: int
    pid: int
    root: Path
    username: str | None = None
    password: str | None = None
    popen: subprocess.Popen | None = None

    def stop(self) -> None:
        stop_pid(self.pid)
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=5)


def registry_binary() -> str:
    path = shutil.which("docker-registry") or (
        "/usr/bin/docker-registry" if Path("/usr/bin/docker-registry").exists() else None
    )
    if not path:
        raise RegistryBinaryMissing(APT_HINT)
    return path


def write_config(
    root: Path, port: int, htpasswd_file: Path | None = None, extra_auth: dict | None = None
) -> Path:
    """Write our own registry config (the Debian default turns htpasswd on)."""
    config: dict = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(root / "data")},
            "delete": {"enabled": True},
            "cache": {"blobdescriptor": "inmemory"},
        },
        "http": {"addr": f"127.0.0.1:{port}", "headers": {"X-Content-Type-Options": ["nosniff"]}},
    }
    if htpasswd_file is not None:
        config["auth"] = {"htpasswd": {"realm": "shipyard-sandbox", "path": str(htpasswd_file)}}
    elif extra_auth:
        config["auth"] = extra_auth
    path = root / "config.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def write_htpasswd(path: Path, username: str, password: str) -> None:
    """bcrypt htpasswd entry, the only hash the distribution registry accepts."""
    import bcrypt

    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    path.write_text(f"{username}:{hashed}\n")


def start_registry(
    root: Path,
    port: int | None = None,
    htpasswd: tuple[str, str] | None = None,
    extra_auth: dict | None = None,
    timeout: float = 10.0,
) -> RegistryProcess:
    """Start a registry storing under root; returns once it accepts connections."""
    binary = registry_binary()
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    htpasswd_file = None
    if htpasswd:
        htpasswd_file = root / "htpasswd"
        write_htpasswd(htpasswd_file, *htpasswd)
    config = write_config(root, port, htpasswd_file, extra_auth)
    proc = spawn([binary, "serve", str(config)], root / "registry.log")
    try:
        wait_for_port("127.0.0.1", port, timeout, proc)
    except RuntimeError as exc:
        stop_pid(proc.pid)
        log = (root / "registry.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{exc}; registry log:\n{log}") from exc
    return RegistryProcess(
        url=f"http://127.0.0.1:{port}",
        host=f"127.0.0.1:{port}",
        port=port,
        pid=proc.pid,
        root=root,
        username=htpasswd[0] if htpasswd else None,
        password=htpasswd[1] if htpasswd else None,
        popen=proc,
    )
