"""A prefect-docker work pool whose flow runs start in containers from the worker image.

`ensure_docker_pool` writes the pool's base job template (prefect-docker's own default, with
Shipyard's defaults filled in): the worker image, already on the daemon (no pull), the host's
network (the Prefect API, the sandbox's emulator and registry listen on loopback; with
`network_mode: host` prefect-docker also leaves a loopback PREFECT_API_URL as it is),
containers removed when they end, and the environment flows read (the SHIPYARD_* settings of
blocks/cloud.py, blocks/build_settings.py and blocks/release_tag.py, taken from this process's
environment when set) plus flow-run heartbeats. The worker passes PREFECT_API_URL itself.

A worker that dies with its container leaves its flow run Running: nobody is left to report the
crash. Prefect's answer is heartbeats and an automation ("How to detect and respond to zombie
flows", docs.prefect.io/v3/advanced/detect-zombie-flows): the run emits
`prefect.flow-run.heartbeat` every PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds (30 at least), and a
proactive trigger that sees none of the expected events within a window marks the run Crashed.
`ensure_crash_detection` creates that automation; the next release of the service then finds its
slot's holder final (flows/release/slot.py) and frees the slot at once.
"""

from __future__ import annotations

import copy
import os
from datetime import timedelta
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.exceptions import ObjectNotFound

POOL_TYPE = "docker"
# The settings flows read from the environment (grep os.environ in flows/ tasks/ blocks/).
FLOW_ENV = (
    "SHIPYARD_GOOGLE_ENDPOINT",
    "SHIPYARD_GCP_PROJECT",
    "SHIPYARD_REGISTRY_URL",
    "SHIPYARD_IMAGE_REPOSITORY",
    "SHIPYARD_BASE_REPOSITORY",
    "SHIPYARD_GIT_URL",
    "SHIPYARD_RELEASE_TAG_PATTERN",
)
HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
# Prefect's least (settings/models/flows.py: ge=30); its docs pair it with a 90 s window.
HEARTBEAT_S = 30
IMAGE_PREFECT_HOME = "/home/shipyard/.prefect"  # deployments/worker/Dockerfile: USER shipyard
CRASH_AUTOMATION = "shipyard-crash-zombie-flow-runs"
# The events after which a run is no longer expected to beat: its final states, and a pause
# (an approval gate suspends the release: no process, no heartbeat, not a crash).
_SETTLED = ("Completed", "Failed", "Cancelled", "Crashed", "Paused", "Suspended", "Scheduled")


def flow_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a flow-run container gets: FLOW_ENV from this process when set, the
    heartbeat, the image's PREFECT_HOME, then `env` over them."""
    out = {name: os.environ[name] for name in FLOW_ENV if os.environ.get(name)}
    out[HEARTBEAT_ENV] = str(HEARTBEAT_S)
    # The image's own (a worker hands its settings, its PREFECT_HOME among them, to the runs).
    out["PREFECT_HOME"] = IMAGE_PREFECT_HOME
    out.update(env or {})
    return out


def docker_job_template(
    image: str,
    *,
    env: dict[str, str] | None = None,
    volumes: list[str] | None = None,
    network_mode: str = "host",
) -> dict[str, Any]:
    """prefect-docker's default base job template with Shipyard's defaults (module docstring)."""
    from prefect_docker.worker import DockerWorker

    template: dict[str, Any] = copy.deepcopy(DockerWorker.get_default_base_job_template())
    props = template["variables"]["properties"]
    defaults: dict[str, Any] = {
        "image": image,
        "image_pull_policy": "Never",
        "network_mode": network_mode,
        "auto_remove": True,
        "env": flow_environment(env),
        "volumes": list(volumes or []),
    }
    for key, value in defaults.items():
        if key not in props:
            raise RuntimeError(
                f"prefect-docker's job template has no variable {key!r}: this Shipyard expects "
                "prefect-docker 0.7 (pyproject: prefect-docker>=0.7.4,<0.8)"
            )
        props[key]["default"] = value
    return template


def ensure_docker_pool(
    name: str,
    image: str,
    *,
    env: dict[str, str] | None = None,
    volumes: list[str] | None = None,
    network_mode: str = "host",
    concurrency_limit: int | None = None,
) -> None:
    """Create (or update) the work pool `name` of type `docker` whose base job template
    defaults to `image`, `network_mode`, the image already on the daemon (no pull),
    auto_remove, and `env` merged over the environment flows read. An existing pool of another
    type is refused (its runs would start elsewhere). `concurrency_limit` None keeps the pool's."""
    template = docker_job_template(image, env=env, volumes=volumes, network_mode=network_mode)
    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(
                    name=name,
                    type=POOL_TYPE,
                    base_job_template=template,
                    concurrency_limit=concurrency_limit,
                    description="Shipyard flow runs in containers from its worker image",
                )
            )
            return
        if pool.type != POOL_TYPE:
            raise ValueError(
                f"work pool {name!r} exists with type {pool.type!r}, not {POOL_TYPE!r}: give "
                "another pool name, or delete it (`prefect work-pool delete "
                f"{name}`) and run again"
            )
        update = WorkPoolUpdate(base_job_template=template)
        if concurrency_limit is not None:
            update = WorkPoolUpdate(base_job_template=template, concurrency_limit=concurrency_limit)
        client.update_work_pool(name, update)


def ensure_crash_detection(within_s: float = 90.0) -> str:
    """The automation that marks a flow run Crashed when its heartbeats stop for `within_s`
    (module docstring); created once, updated after. Returns its id."""
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    if within_s <= HEARTBEAT_S:
        raise ValueError(
            f"within_s={within_s}: it must exceed the heartbeat ({HEARTBEAT_S} s), else a live "
            "run is marked Crashed between two beats; give 2-3 heartbeats (60-90)"
        )
    # Prefect's "Crash zombie flows" automation (docs.prefect.io/v3/advanced/detect-zombie-flows),
    # with a pause among the settled events (see _SETTLED).
    automation = AutomationCore(
        name=CRASH_AUTOMATION,
        description=(
            f"A flow run whose heartbeats ({HEARTBEAT_ENV}={HEARTBEAT_S}) stopped for "
            f"{within_s:.0f} s while it ran is marked Crashed (its worker or container died)."
        ),
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *(f"prefect.flow-run.{s}" for s in _SETTLED)},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within_s),
        ),
        actions=[
            ChangeFlowRunState(
                name="Crashed",
                state=StateType.CRASHED,
                message=f"no heartbeat for {within_s:.0f} s: its worker or container died",
                force=False,
            )
        ],
    )
    with get_client(sync_client=True) as client:
        existing = client.read_automations_by_name(CRASH_AUTOMATION)
        if existing:
            client.update_automation(existing[0].id, automation)
            return str(existing[0].id)
        return str(client.create_automation(automation))
