"""What `shipyard demo` keeps between runs, under $SHIPYARD_HOME/demo, so a second run is warm.

Kept (worth minutes on a loaded machine):
- `sandbox/registry`: the registry's storage: the seeded upstream, the mirrored base, the
  prewarmed cache tiers (`cache-<tier>` with their fingerprints) and the built images.
- `sandbox/engine`: the Docker daemon's data root: its images and BuildKit's build cache, and
  what dockerd knows it already pushed (so no unchanged layer is compressed and pushed again).
- `ports.json`: the registry's port, asked for again next time: image references and dockerd's
  record of pushed layers name the registry by host:port.

Fresh at every run: the emulator's state (the scenario is reset), the Prefect server and its
database (deployments/demo/prefect_server.py: a new home each run, so no flow run, block or
variable of an earlier run is seen) and the emulator's revision containers.
`shipyard demo --fresh` throws all of it away first.
"""

from __future__ import annotations

import fcntl
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DemoState:
    root: Path

    @property
    def sandbox_root(self) -> Path:
        return self.root / "sandbox"

    @property
    def legacy_prefect_home(self) -> Path:
        """Where earlier versions kept a template Prefect database (no longer used)."""
        return self.root / "prefect"

    @property
    def ports_file(self) -> Path:
        return self.root / "ports.json"

    def registry_port(self) -> int | None:
        """The port the registry had last time (None: first run)."""
        try:
            return int(json.loads(self.ports_file.read_text())["registry"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def remember_registry_port(self, port: int) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.ports_file.write_text(json.dumps({"registry": port}))

    def found(self) -> dict[str, bool]:
        """What a run starting now finds kept (before the sandbox starts)."""
        blobs = self.sandbox_root / "registry" / "data" / "docker" / "registry" / "v2" / "blobs"
        engine = self.sandbox_root / "engine"
        return {
            "registry": blobs.is_dir() and any(blobs.iterdir()),
            "engine": any(engine.glob("data-*/image")),
        }

    def drop_legacy(self) -> None:
        """Remove what earlier versions kept and this one no longer reads."""
        shutil.rmtree(self.legacy_prefect_home, ignore_errors=True)


class DemoStateBusy(RuntimeError):
    """Another demo holds the kept state."""


@contextmanager
def holding(state: DemoState) -> Iterator[None]:
    """Hold the kept state for one run: a second demo over the same $SHIPYARD_HOME would start
    a second registry and Docker daemon over the same directories."""
    lock_path = state.root.with_name(state.root.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DemoStateBusy(
                f"another `shipyard demo` is running over {state.root}: wait for it to finish, "
                "or give this one its own SHIPYARD_HOME"
            ) from None
        yield


def demo_state(home: Path | None = None) -> DemoState:
    from sandbox.manager import shipyard_home

    return DemoState((home or shipyard_home()) / "demo")


def forget(state: DemoState) -> bool:
    """Throw the kept state away (`shipyard demo --fresh`). True if there was any."""
    from sandbox.engine.daemon import release_mounts

    if not state.root.exists():
        return False
    release_mounts(state.root)  # a daemon that died may have left its mounts
    shutil.rmtree(state.root)
    return True
