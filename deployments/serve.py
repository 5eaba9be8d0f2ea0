"""`shipyard serve`: every deployment of prefect.yaml, served from one process (no worker).

prefect.yaml stays the one source of truth: each deployment there becomes
`flow.to_deployment(...)` with the same name, parameters, schedules, triggers
(`DeploymentEventTrigger`) and concurrency limit, and `prefect.aserve` runs them. Templating
follows `prefect deploy`: `{{ prefect.variables.* }}`, `{{ prefect.blocks.* }}` and `{{ $ENV }}`
are resolved now, while the trigger parameters keep their `{{ event.* }}` templates for the
trigger service to fill in from each event.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.deployments.runner import RunnerDeployment
    from prefect.events import DeploymentTriggerTypes, TriggerTypes
    from prefect.flows import Flow
    from prefect.schedules import Schedule

# A link to the repository's prefect.yaml in a checkout, a copy of it in the installed wheel
# (package data), so serving never depends on where the package was installed from.
PREFECT_YAML = Path(__file__).parent / "prefect.yaml"


class DeploymentSpecError(ValueError):
    """prefect.yaml says something this loader (or Prefect) cannot use."""


@dataclass
class DeploymentSpec:
    """One entry of `deployments:` in prefect.yaml, as written (before templating)."""

    name: str
    entrypoint: str
    parameters: dict[str, Any] = field(default_factory=dict)
    schedules: list[dict[str, Any]] = field(default_factory=list)
    triggers: list[dict[str, Any]] = field(default_factory=list)
    concurrency_limit: int | dict[str, Any] | None = None
    description: str | None = None
    tags: list[str] = field(default_factory=list)
    work_pool: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_yaml(cls, raw: dict[str, Any], index: int) -> DeploymentSpec:
        for key in ("name", "entrypoint"):
            if not raw.get(key):
                raise DeploymentSpecError(
                    f"prefect.yaml deployments[{index}].{key} is missing: every deployment "
                    "needs a name and an entrypoint (module.path.flow_function)"
                )
        return cls(
            name=raw["name"],
            entrypoint=raw["entrypoint"],
            parameters=dict(raw.get("parameters") or {}),
            schedules=list(raw.get("schedules") or []),
            triggers=list(raw.get("triggers") or []),
            concurrency_limit=raw.get("concurrency_limit"),
            description=raw.get("description"),
            tags=list(raw.get("tags") or []),
            work_pool=dict(raw.get("work_pool") or {}),
        )


def read_specs(path: Path = PREFECT_YAML) -> list[DeploymentSpec]:
    """The deployments of a prefect.yaml, in file order."""
    try:
        document = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise DeploymentSpecError(f"{path} not found: run from the repository root") from None
    raw = (document or {}).get("deployments") or []
    return [DeploymentSpec.from_yaml(entry, i) for i, entry in enumerate(raw)]


def schedule_of(config: dict[str, Any]) -> Schedule:
    """A prefect.yaml schedule entry as a `prefect.schedules` object."""
    from prefect.schedules import Cron, Interval, RRule

    common = {
        "timezone": config.get("timezone"),
        "active": config.get("active", True),
        "parameters": config.get("parameters") or {},
        "slug": config.get("slug"),
    }
    if config.get("cron"):
        return Cron(config["cron"], day_or=config.get("day_or", True), **common)
    if config.get("interval"):
        return Interval(config["interval"], anchor_date=config.get("anchor_date"), **common)
    if config.get("rrule"):
        return RRule(config["rrule"], **common)
    raise DeploymentSpecError(f"schedule {config!r}: give one of cron, interval or rrule")


def triggers_of(spec: DeploymentSpec) -> list[DeploymentTriggerTypes]:
    """Trigger entries as `DeploymentEventTrigger` objects (named as `prefect deploy` does)."""
    from prefect.events import DeploymentTriggerTypes
    from pydantic import TypeAdapter

    adapter: TypeAdapter[DeploymentTriggerTypes] = TypeAdapter(DeploymentTriggerTypes)
    out = []
    for i, trigger in enumerate(spec.triggers, start=1):
        trigger = dict(trigger)
        trigger.setdefault("name", f"{spec.name}__automation_{i}")
        out.append(adapter.validate_python(trigger))
    return out


def concurrency_of(value: int | dict[str, Any] | None) -> int | ConcurrencyLimitConfig | None:
    from prefect.client.schemas.objects import ConcurrencyLimitConfig

    if value is None or isinstance(value, int):
        return value
    return ConcurrencyLimitConfig(
        limit=value["limit"],
        collision_strategy=value.get("collision_strategy", "ENQUEUE"),
        **(
            {"grace_period_seconds": value["grace_period_seconds"]}
            if value.get("grace_period_seconds") is not None
            else {}
        ),
    )


async def resolve_templates(value: Any) -> Any:
    """What `prefect deploy` resolves at deploy time: blocks, variables, environment."""
    from prefect.utilities.templating import (
        apply_values,
        resolve_block_document_references,
        resolve_variables,
    )

    value = await resolve_block_document_references(value)
    value = await resolve_variables(value)
    return apply_values(value, dict(os.environ), remove_notset=False)


async def to_runner_deployment(
    spec: DeploymentSpec, flow: Flow[..., Any] | None = None
) -> RunnerDeployment:
    """The served twin of a prefect.yaml deployment. `flow` overrides the entrypoint's flow
    (the bench serves a stand-in under the same configuration)."""
    from prefect.flows import load_flow_from_entrypoint
    from prefect.types.entrypoint import EntrypointType

    if flow is None:
        flow = load_flow_from_entrypoint(spec.entrypoint, use_placeholder_flow=False)
    parameters = await resolve_templates(spec.parameters)
    schedules = [schedule_of(s) for s in await resolve_templates(spec.schedules)]
    triggers: list[DeploymentTriggerTypes | TriggerTypes] = [*triggers_of(spec)]
    deployment = await flow.ato_deployment(
        name=spec.name,
        parameters=parameters,
        schedules=schedules,
        triggers=triggers,
        concurrency_limit=concurrency_of(spec.concurrency_limit),
        description=spec.description,
        tags=spec.tags,
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    # A served deployment is offered to no work pool. `ato_deployment` leaves the field unset,
    # and RunnerDeployment's update sends only the fields set: a deployment that `prefect deploy`
    # put in `shipyard-process` kept that pool after `shipyard serve`, so a worker could take its
    # runs too. Set to None explicitly, the update carries `work_pool_name: null`, which the
    # server reads as "clear the work queue" (prefect/server/models/deployments.py
    # `update_deployment`: "work_pool_name was explicitly set to None - clear the work queue so
    # runs are no longer routed to a work pool (e.g. switching to serve)").
    deployment.work_pool_name = None
    return deployment


async def build_deployments(
    path: Path = PREFECT_YAML, names: list[str] | None = None
) -> list[RunnerDeployment]:
    specs = read_specs(path)
    if names:
        unknown = sorted(set(names) - {s.name for s in specs})
        if unknown:
            raise DeploymentSpecError(
                f"no deployment named {', '.join(unknown)} in {path}; "
                f"known: {', '.join(s.name for s in specs)}"
            )
        specs = [s for s in specs if s.name in names]
    return [await to_runner_deployment(spec) for spec in specs]


async def aserve_all(
    path: Path = PREFECT_YAML,
    names: list[str] | None = None,
    limit: int | None = None,
    query_seconds: float | None = None,
) -> None:
    """Serve the deployments of `path` until interrupted."""
    from prefect.flows import aserve

    deployments = await build_deployments(path, names)
    kwargs: dict[str, Any] = {}
    if query_seconds is not None:
        kwargs["query_seconds"] = query_seconds
    await aserve(*deployments, limit=limit, **kwargs)
