"""The emulator's revisions as containers (sandbox/engine/containers.py) when a daemon runs.

`start_revision_container` is awaited where a revision comes to life (run_revisions.py): the
`docker run` and the startup probe (up to the probe window, 240 s by default) run in a thread,
so the emulator keeps answering every API meanwhile, as Google does while a revision
reconciles; the state is read before and written after, on the event loop. The instance lives
in `state.stores["containers"]`, which revisions_http.py forwards requests to. A sandbox reset
or a deleted revision removes the containers.

Two things differ from Google, both harsher, never kinder:
- memory: each container gets the template's limit, at most $SHIPYARD_ENGINE_MEMORY_MIB (default
  1024 MiB): a 2-core machine shared by a team cannot give every L4 revision its 16 GiB. An OOM
  kill is logged with the limit the container really had (the next request replaces the killed
  container, as Google starts a new instance: run_autoscaling.running_instance);
- the scenario's revision faults (sandbox/scenario.py) reach the container as the env
  `PAGE_FAULTS` (merged with the template's own), the way a bad release's configuration would
  carry them; the sample service (examples/page-service) acts on it, the emulator never does
  (except the faults that show only under load: the router's, sandbox/emulator/load_faults.py).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

from sandbox.emulator.logging_api import container_line
from sandbox.emulator.run_resources import Revision, write_revision_log
from sandbox.emulator.run_templates import parse_memory_gib, startup_probe, template_limits
from sandbox.engine.containers import Instance, StartFailed, start_instance, stop_instance
from sandbox.engine.daemon import Engine
from sandbox.scenario import LOAD_FAULTS, RevisionFault

MEMORY_CAP_ENV = "SHIPYARD_ENGINE_MEMORY_MIB"
DEFAULT_MEMORY_CAP_MIB = 1024


def memory_cap_mib() -> int:
    return int(os.environ.get(MEMORY_CAP_ENV) or DEFAULT_MEMORY_CAP_MIB)


def faults_env(rev: Revision) -> str:
    """`PAGE_FAULTS` for the container: the template's own, then the scenario's faults."""
    own = [f for f in rev.env.get("PAGE_FAULTS", "").split(",") if f.strip()]
    # The load faults are the router's (sandbox/emulator/load_faults.py), not the app's.
    app_faults = [f for f in rev.faults if f.fault not in LOAD_FAULTS]
    return ",".join([*own, *(f"{f.fault}:{_argument(f)}" for f in app_faults)])


def _argument(fault: RevisionFault) -> str:
    """A fault's argument in `PAGE_FAULTS`: the module, the seconds, or the request count."""
    if fault.fault == "missing_dependency":
        return str(fault.module)
    if fault.fault == "slow_start":
        return f"{fault.start_s:g}"
    return str(fault.requests)


class ContainerStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.instances: dict[str, Instance] = {}
        self.removals: set[asyncio.Task] = set()  # `docker rm`s under way (kept referenced)

    def remove(self, revision: str) -> None:
        """Take the revision's container out of service and remove it: on the event loop, in
        a thread (the emulator answers meanwhile); elsewhere, before returning."""
        instance = self.instances.pop(revision, None)
        if instance is None:
            return
        instance.stopping = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            stop_instance(self.engine, instance)
            return
        task = loop.create_task(asyncio.to_thread(stop_instance, self.engine, instance))
        self.removals.add(task)
        task.add_done_callback(self.removals.discard)

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


def running_container_store(state: Any) -> ContainerStore:
    """The container store of a sandbox that runs revisions as containers (its callers are
    reached only then: a sandbox without a Docker daemon never starts an instance)."""
    store = container_store(state)
    if store is None:
        raise RuntimeError("the sandbox runs no containers (no Docker daemon): no instance")
    return store


async def start_revision_container(state: Any, rev: Revision, wanted: Callable[[], bool]) -> bool:
    """Start the revision's container; False when it exited or never listened on $PORT, or
    the start itself failed (a docker error: its line goes to the revision's log, so a caller
    never sees an exception: a creation never leaves its revision reconciling, a cold start
    answers 503, never 500).

    Runs on the event loop; the start itself (`docker run`, the probe) in a thread that touches
    nothing of `state` but its Cloud Logging store (`write_log` takes a lock). A container that
    started for a revision no longer `wanted` (deleted, or the sandbox reset, meanwhile) is
    removed at once."""
    store = running_container_store(state)
    try:
        arguments = _start_arguments(state, rev)
        instance = await asyncio.to_thread(start_instance, store.engine, **arguments)
        if not wanted():
            await asyncio.to_thread(stop_instance, store.engine, instance)
            return False
    except StartFailed:
        return False
    except Exception as exc:  # noqa: BLE001 - a failed start of any kind is False, logged
        write_revision_log(state, rev, "ERROR", f"sandbox: the container did not start: {exc!r}")
        return False
    store.instances[rev.name] = instance
    state.calls["run.container_started"] += 1
    return True


def _start_arguments(state: Any, rev: Revision) -> dict[str, Any]:
    """`start_instance`'s keyword arguments for the revision: image, name, env with Cloud
    Run's contract, memory, log sink and the startup probe's window."""
    container = (rev.template.get("containers") or [{}])[0]
    memory = parse_memory_gib(template_limits(rev.template).get("memory") or "512Mi")
    memory_mib = min(memory_cap_mib(), max(6, int(memory * 1024)))
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
    if faults := faults_env(rev):
        env["PAGE_FAULTS"] = faults
    # The sample service's simulated model time (GPU fast, CPU slow), unless the template sets it.
    serving = state.scenario.serving
    env.setdefault("PAGE_SIMULATED_GPU_MS", str(serving.gpu_ms))
    env.setdefault("PAGE_SIMULATED_CPU_MS", str(serving.cpu_ms))

    def log(severity: str, text: str, stream: str) -> None:
        if stream in ("stdout", "stderr"):  # the container's own line, as Cloud Run stores it
            severity, line, payload = container_line(text)
            write_revision_log(state, rev, severity, line, stream=stream, json_payload=payload)
            return
        write_revision_log(state, rev, severity, text, stream=stream)

    return {
        "image": container.get("image", ""),
        "name": f"rev-{rev.short}-{rev.uid[:8]}",
        "env": env,
        "memory_mib": memory_mib,
        "log": log,
        "startup_timeout_s": startup_probe(rev.template).window_s,
        "command": container.get("command") or None,
        "arguments": container.get("args") or None,
    }
