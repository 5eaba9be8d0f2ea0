"""The emulator's revisions as containers (sandbox/engine/containers.py) when a daemon runs.

`start_revision_container` is called where a revision comes to life (run_revisions.py); the
instance lives in `state.stores["containers"]`, which revisions_http.py forwards requests to.
A sandbox reset or a deleted revision removes the containers.
"""

from __future__ import annotations

from typing import Any

from sandbox.emulator.run_resources import Revision, write_revision_log
from sandbox.emulator.run_templates import parse_memory_gib, template_limits
from sandbox.engine.containers import Instance, StartFailed, start_instance, stop_instance
from sandbox.engine.daemon import Engine

STARTUP_TIMEOUT_S = 60.0


class ContainerStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.instances: dict[str, Instance] = {}

    def remove(self, revision: str) -> None:
        instance = self.instances.pop(revision, None)
        if instance is not None:
            stop_instance(self.engine, instance)

    def reset(self) -> None:
        for name in list(self.instances):
            self.remove(name)


def container_store(state: Any) -> ContainerStore | None:
    if not state.docker_host:
        return None
    store = state.stores.get("containers")
    if store is None:
        store = state.stores["containers"] = ContainerStore(Engine(state.docker_host))
    return store


def start_revision_container(state: Any, rev: Revision) -> bool:
    """Start the revision's container; False when it exited or never listened on $PORT."""
    store = container_store(state)
    assert store is not None
    container = (rev.template.get("containers") or [{}])[0]
    memory = parse_memory_gib(template_limits(rev.template).get("memory") or "512Mi")
    service = rev.service.rsplit("/", 1)[-1]
    env = {
        **rev.env,
        "K_SERVICE": service,
        "K_REVISION": rev.short,
        "K_CONFIGURATION": service,
    }
    if rev.device == "gpu":  # no GPU here: the revision is told it has the one it asked for
        accelerator = rev.template.get("nodeSelector", {}).get("accelerator", "nvidia-l4")
        env.update(NVIDIA_VISIBLE_DEVICES="all", SHIPYARD_ACCELERATOR=accelerator)
    # The sample service's simulated model time (GPU fast, CPU slow), unless the template sets it.
    serving = state.scenario.serving
    env.setdefault("PAGE_SIMULATED_GPU_MS", str(serving.gpu_ms))
    env.setdefault("PAGE_SIMULATED_CPU_MS", str(serving.cpu_ms))

    def log(severity: str, text: str, stream: str) -> None:
        write_revision_log(state, rev, severity, text, stream=stream)

    try:
        instance = start_instance(
            store.engine,
            image=container.get("image", ""),
            name=f"rev-{rev.short}-{rev.uid[:8]}",
            env=env,
            memory_mib=max(6, int(memory * 1024)),
            log=log,
            startup_timeout_s=STARTUP_TIMEOUT_S,
        )
    except StartFailed:
        return False
    store.instances[rev.name] = instance
    state.calls["run.container_started"] += 1
    return True
