"""A fleet of release targets: one `release-<target>` deployment per ReleaseTarget block, each in
its own work queue with a concurrency limit of 1; the work pool's limit is the global one.

Why queues and not deployment limits. The generic `release` deployment of prefect.yaml holds a
deployment-wide `concurrency_limit: 1` (ENQUEUE): right for one service, but for a fleet it
serialises every service, and a waiting run is bounced to `AwaitingConcurrencySlot` by the
server's orchestration rule and retried in 30 s waves (issue 25 measured 36 bounces for 9 runs).
A work queue's concurrency limit works one step earlier: the worker's poll
(prefect/server/database/query_components.py `get_scheduled_flow_runs_from_work_queues`) offers
a queue at most `concurrency_limit - (its Pending/Running/Cancelling runs)` runs, so a run
waiting for its target stays plain `Scheduled`, holds no worker and no infrastructure, and is
offered at the next poll after the slot frees. The work pool's `concurrency_limit` bounds the
whole fleet the same way (the poll's `worker_limit`): it is sized to the GPU quota
(`gpu_global_limit`). The queue's limit is not atomic across workers: two workers that poll
at the same instant can each take a run of one queue (bench/scale.py saw it with three workers
under load: two Pending runs of one target, and 19 Pending runs in a pool limited to 6). So each
per-target deployment also keeps a deployment concurrency limit of 1 (ENQUEUE), checked by the
server when a run goes Pending, before any infrastructure starts: the race's loser is turned
back to Scheduled (due again after the server's slot wait: 2 s on `shipyard stack`, 30 s by
Prefect's default); without a race it never fires. The release flow's own slot
(flows/release/slot.py) stays the guard for runs that reach it another way (a manual run of
`release`). The pool's limit has no such guard: the hard bound on runs at once is the workers'
`--limit` times their number.

The per-target deployments are built from prefect.yaml's `release` entry (deployments/serve.py):
same entrypoint, description, tags, parameters with `target` fixed to the block, the race guard
above as its deployment concurrency limit, and a trigger that matches only the events the webhook routed to it (the
event's resource label `shipyard.deployment: release-<target>`; deployments/webhook/dispatch.py).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import difflib
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient

    from shipyard.deployments.serve import DeploymentSpec

RELEASE_FLOW = "release"  # the release flow's name (flows/release/flow.py `@flow(name=...)`)
RELEASE_DEPLOYMENT = "release"  # prefect.yaml's generic release deployment
ROUTE_LABEL = "shipyard.deployment"  # the event resource label the release triggers match on
TARGET_BLOCK_SLUG = "shipyard-release-target"
QUEUE_LIMIT = 1  # one release per target (service, or service-environment) at a time
DEFAULT_TIMEOUT_S = 120.0
TARGETS_PAGE = 200  # block documents per read (the server's most: PREFECT_API_DEFAULT_LIMIT)
TARGETS_SHOWN = 20  # known targets a refusal names; it says how many more


class FleetError(ValueError):
    """A fleet request that cannot be carried out: names the field, the value and the fix."""


def release_deployment_name(target: str) -> str:
    """`release-<target>`: the deployment that releases only the ReleaseTarget block `target`."""
    if not target or not target.strip():
        raise FleetError("target: empty; give a ReleaseTarget block name, e.g. digit-staging")
    return f"{RELEASE_DEPLOYMENT}-{target}"


def queue_name(target: str) -> str:
    """The work queue of `target`'s release deployment (concurrency limit 1): the deployment's
    name, so the UI's queue list reads like the deployment list."""
    return release_deployment_name(target)


def full_name(target: str) -> str:
    """`release/release-<target>`: what `read_deployment_by_name` and `prefect deployment run` take."""
    return f"{RELEASE_FLOW}/{release_deployment_name(target)}"


# ---------------------------------------------------------------- the deployments


def routed_triggers(spec: DeploymentSpec, deployment: str, target: str) -> list[dict[str, Any]]:
    """The release spec's triggers, each matching only events routed to `deployment` (the
    resource label `shipyard.deployment`), with `target` fixed to the block: an event's own
    `payload.target` cannot send a run of `release-a` to target b."""
    out = []
    for trigger in spec.triggers:
        trigger = copy.deepcopy(trigger)
        match = dict(trigger.get("match") or {})
        match[ROUTE_LABEL] = deployment
        trigger["match"] = match
        if isinstance(trigger.get("parameters"), dict) and "target" in trigger["parameters"]:
            trigger["parameters"]["target"] = target
        trigger.pop("name", None)  # named after the deployment (serve.triggers_of)
        out.append(trigger)
    return out


def target_spec(release: DeploymentSpec, target: str) -> DeploymentSpec:
    """prefect.yaml's `release` entry made into `release-<target>`."""
    name = release_deployment_name(target)
    description = (release.description or "").rstrip()
    description += (
        f" This deployment releases only target {target!r}, one run at a time (its work queue "
        f"{queue_name(target)!r} has a concurrency limit of 1; `shipyard fleet show`)."
    )
    return dataclasses.replace(
        release,
        name=name,
        parameters={**release.parameters, "target": target},
        triggers=routed_triggers(release, name, target),
        # The guard for the one race the queue's limit leaves: two workers polling at the same
        # instant each take a run of the queue (the poll's row locks skip each other's rows and
        # each sees the slot free). The server's deployment limit is atomic: the loser goes back to
        # Scheduled (AwaitingConcurrencySlot) before any infrastructure starts, instead of holding
        # a worker and a container while the flow waits for its service's slot.
        concurrency_limit={"limit": 1, "collision_strategy": "ENQUEUE"},
        description=description.strip(),
    )


def _release_spec() -> DeploymentSpec:
    from shipyard.deployments.serve import PREFECT_YAML, read_specs

    for spec in read_specs(PREFECT_YAML):
        if spec.name == RELEASE_DEPLOYMENT:
            return spec
    raise FleetError(
        f"{PREFECT_YAML}: no deployment named {RELEASE_DEPLOYMENT!r}; the fleet's deployments "
        "are built from it: restore it from the repository's prefect.yaml"
    )


async def _known_targets(client: PrefectClient, page_size: int = TARGETS_PAGE) -> list[str]:
    """Every named ReleaseTarget block, sorted, read page by page.

    Through `POST /block_documents/filter` (offset, limit, sorted by name on the server), not
    `read_block_documents_by_type`: Prefect 3.8's `GET /block_types/slug/{slug}/block_documents`
    ignores offset and limit (it answers everything at once), so paging it would never end, and
    a server that honoured a `limit` there would cut the list off. A page that brings nothing new
    ends the reading too (a server ignoring `offset` would repeat the first page)."""
    names: list[str] = []
    seen: set[str] = set()
    offset = 0
    while True:
        response = await client.request(
            "POST",
            "/block_documents/filter",
            json={
                "block_types": {"slug": {"any_": [TARGET_BLOCK_SLUG]}},
                "block_documents": {"is_anonymous": {"eq_": False}},
                "include_secrets": False,
                "sort": "NAME_ASC",
                "offset": offset,
                "limit": page_size,
            },
        )
        response.raise_for_status()
        documents = response.json()
        new = [str(d["name"]) for d in documents if d.get("name") and d["name"] not in seen]
        names += new
        seen.update(new)
        if len(documents) < page_size or not new:
            return sorted(names)
        offset += len(documents)


def known_targets_text(
    known: Sequence[str], missing: Sequence[str], shown: int = TARGETS_SHOWN
) -> str:
    """The known targets for a refusal: at most `shown` names (the ones closest to a missing
    name first, then the rest by name) and how many more there are."""
    close: list[str] = []
    for name in missing:
        close += [
            c for c in difflib.get_close_matches(name, known, n=3, cutoff=0.6) if c not in close
        ]
    ordered = close + [k for k in known if k not in close]
    text = ", ".join(ordered[:shown]) or "none"
    if len(ordered) > shown:
        text += f" and {len(ordered) - shown} more (`prefect block ls` lists them all)"
    return text


async def _target_exists(client: PrefectClient, name: str) -> bool:
    from prefect.exceptions import ObjectNotFound

    try:
        await client.read_block_document_by_name(name, TARGET_BLOCK_SLUG, include_secrets=False)
    except ObjectNotFound:
        return False
    return True


async def _check_targets(client: PrefectClient, targets: Sequence[str]) -> None:
    if not targets:
        raise FleetError(
            "targets: none given; name the ReleaseTarget blocks to deploy, e.g. "
            "`shipyard fleet deploy digit-staging digit-production --pool shipyard-process`"
        )
    seen: set[str] = set()
    for target in targets:
        release_deployment_name(target)  # not empty
        if target in seen:
            raise FleetError(f"targets: {target!r} is given twice; name each target once")
        seen.add(target)
    missing = [t for t in targets if not await _target_exists(client, t)]
    if missing:
        known = await _known_targets(client)
        raise FleetError(
            f"targets: no ReleaseTarget block named {', '.join(repr(t) for t in missing)}; "
            f"known: {known_targets_text(known, missing)}. Save one first (`shipyard init`, or "
            "ReleaseTarget(...).save(name)), or name an existing block"
        )
    await _check_scopes(targets)


async def _check_scopes(targets: Sequence[str]) -> None:
    """Two targets of one scope (the same service, and the same environment or none) would share
    one release slot and overwrite each other's records (release record, serving URL, rollout
    journal: all keyed by scope): refused, with both names and the fix."""
    from shipyard.blocks.release_target import ReleaseTarget

    by_scope: dict[str, str] = {}
    for target in targets:
        block: ReleaseTarget = await ReleaseTarget.aload(target)
        other = by_scope.setdefault(block.scope, target)
        if other != target:
            where = f"environment {block.environment!r}" if block.environment else "no environment"
            raise FleetError(
                f"targets: {other!r} and {target!r} both release service {block.service!r} with "
                f"{where}: they would share one release slot and one set of records (scope "
                f"{block.scope!r}). Give each its own `environment` (e.g. production-eu and "
                "production-us), or deploy one of them"
            )


async def _check_pool(client: PrefectClient, pool: str) -> None:
    from prefect.exceptions import ObjectNotFound

    if not pool:
        raise FleetError("pool: empty; give the work pool the workers poll, e.g. shipyard-process")
    try:
        await client.read_work_pool(pool)
    except ObjectNotFound:
        raise FleetError(
            f"pool: no work pool named {pool!r}; create it first (`prefect work-pool create "
            f"{pool} --type process`, or `shipyard stack up`) or name an existing one"
        ) from None


async def ensure_queue(client: PrefectClient, pool: str, name: str, limit: int) -> None:
    """The work queue `name` in `pool` with concurrency limit `limit` (created or updated)."""
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    try:
        queue = await client.read_work_queue_by_name(name, work_pool_name=pool)
    except ObjectNotFound:
        try:
            await client.create_work_queue(
                name,
                work_pool_name=pool,
                concurrency_limit=limit,
                description=f"Releases of one target, {limit} at a time (shipyard fleet)",
            )
            return
        except ObjectAlreadyExists:  # created meanwhile by another `fleet deploy`
            queue = await client.read_work_queue_by_name(name, work_pool_name=pool)
    if queue.concurrency_limit != limit:
        await client.update_work_queue(queue.id, concurrency_limit=limit)


async def _job_variables(release: DeploymentSpec, pool: str) -> dict[str, Any]:
    """prefect.yaml's job variables for the release, when `pool` is the pool they are written
    for; another pool (e.g. `shipyard stack`'s Docker pool) keeps its own defaults."""
    from shipyard.deployments.serve import resolve_templates

    if release.work_pool.get("name") != pool:
        return {}
    return dict(await resolve_templates(release.work_pool.get("job_variables") or {}))


async def adeploy_fleet(
    targets: Sequence[str],
    pool: str,
    global_limit: int | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> list[str]:
    """Per-target release deployments in `pool`, each in its work queue `release-<target>`
    with a concurrency limit of 1, and the pool's concurrency limit set to `global_limit`
    (None: `gpu_global_limit(targets)`). Returns the deployment names `release/release-<target>`.

    Idempotent: a second call updates the deployments, queues and limit in place (a deployment
    is found by name, its triggers replaced), never duplicates them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolUpdate

    from shipyard.deployments.serve import to_runner_deployment

    if global_limit is not None and global_limit < 1:
        raise FleetError(
            f"global_limit: {global_limit} runs no release at all; give at least 1 (the GPUs "
            "the fleet may hold at once), or leave it out to size it to the GPU quota"
        )
    async with asyncio.timeout(timeout):
        async with get_client() as client:
            await _check_pool(client, pool)
            await _check_targets(client, targets)
        if global_limit is None:
            global_limit = await agpu_global_limit(targets)
        release = _release_spec()
        job_variables = await _job_variables(release, pool)
        names = []
        async with get_client() as client:
            for target in targets:
                await ensure_queue(client, pool, queue_name(target), QUEUE_LIMIT)
                deployment = await to_runner_deployment(target_spec(release, target))
                deployment.work_pool_name = pool
                deployment.work_queue_name = queue_name(target)
                deployment.job_variables = dict(job_variables)
                await deployment.aapply()
                names.append(full_name(target))
            await client.update_work_pool(pool, WorkPoolUpdate(concurrency_limit=global_limit))
    return names


def deploy_fleet(
    targets: Sequence[str],
    pool: str,
    global_limit: int | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> list[str]:
    """`adeploy_fleet` for synchronous callers (the CLI, scripts)."""
    from prefect.utilities.asyncutils import run_coro_as_sync

    names = run_coro_as_sync(adeploy_fleet(targets, pool, global_limit, timeout=timeout))
    assert names is not None  # noqa: S101 - run_coro_as_sync is typed Optional; it returns ours
    return names


# ---------------------------------------------------------------- the global limit


@dataclasses.dataclass(frozen=True)
class QuotaShare:
    """One GPU quota the fleet draws on: a project, a region, a quota variant."""

    project: str
    region: str
    zonal_redundancy: bool
    gpus: float  # math.inf: unlimited


def gpu_quotas(targets: Sequence[str], timeout: float | None = None) -> list[QuotaShare]:
    """The GPU quota of each distinct (project, primary region, quota variant) of the targets,
    read with Cloud Quotas through each target's cloud block (tasks/quotas.py, one list call per
    distinct project; the same read as the release's region choice). Two targets in one region
    share its quota: it is counted once."""
    from typing import cast

    from shipyard.blocks.release_target import ReleaseTarget
    from shipyard.tasks.quotas import read_region_capacity

    shares: dict[tuple[str, str, bool], QuotaShare] = {}
    for name in targets:
        try:
            target = cast(ReleaseTarget, ReleaseTarget.load(name))  # Block.load: typed as Block
        except ValueError as exc:
            raise FleetError(
                f"targets: ReleaseTarget block {name!r} does not load ({exc}); fix or re-save it"
            ) from None
        project, region = target.resolved_project(), target.primary_region
        key = (project, region, target.gpu_zonal_redundancy)
        if key in shares:
            continue
        quotas = read_region_capacity.fn(
            target.google(),
            [region],
            zonal_redundancy_disabled=not target.gpu_zonal_redundancy,
            project=project,
            timeout=timeout,
        )
        gpus = quotas[region].gpu
        shares[key] = QuotaShare(project, region, target.gpu_zonal_redundancy, gpus or 0.0)
    return list(shares.values())


def gpu_global_limit(targets: Sequence[str], timeout: float | None = None) -> int:
    """The fleet's global limit: the sum, over the targets' distinct primary regions, of the
    Cloud Quotas GPU value for their GPU variant (each release holds at most one GPU instance of
    its own while it deploys and canaries). Unlimited quota: one slot per target (more could
    never run: each target's queue holds one). At least 1: a project with no GPU quota still
    releases (each release falls back region by region, then to its CPU baseline), one at a
    time. The pool's limit counts every run of the pool: a prewarm or mirror run there takes a
    slot too."""
    shares = gpu_quotas(targets, timeout)
    total = sum(s.gpus for s in shares)
    if math.isinf(total):
        return max(1, len(targets))
    return max(1, int(total))


async def agpu_global_limit(targets: Sequence[str], timeout: float | None = None) -> int:
    """`gpu_global_limit` off the event loop (block loads and Google calls are synchronous)."""
    return await asyncio.to_thread(gpu_global_limit, targets, timeout)


# ---------------------------------------------------------------- what the fleet looks like


@dataclasses.dataclass(frozen=True)
class TargetRow:
    """One release deployment of the fleet, as `shipyard fleet show` prints it."""

    deployment: str  # release-<target>, or `release` (any target)
    target: str  # the fixed target parameter ("" for `release`: each run names its own)
    pool: str | None  # None: offered to no work pool (served by `shipyard serve`)
    queue: str | None
    queue_limit: int | None  # None: no queue limit
    deployment_limit: int | None  # the deployment's own concurrency limit (the generic one's 1)
    waiting: int  # Scheduled (incl. Late and AwaitingConcurrencySlot) and Pending
    running: int  # Running and Cancelling


@dataclasses.dataclass(frozen=True)
class FleetStatus:
    rows: list[TargetRow]
    pool_limits: dict[str, int | None]  # pool -> its concurrency limit (None: unlimited)


async def _count(client: PrefectClient, deployment_id: Any, states: list[str]) -> int:
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    return await client.count_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType(s) for s in states])
            )
        ),
    )


async def afleet_status(timeout: float = DEFAULT_TIMEOUT_S) -> FleetStatus:
    """Every release deployment (the per-target ones and the generic `release`), its queue and
    limit, its runs waiting and running; the limits of the pools they are in."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.exceptions import ObjectNotFound

    rows: list[TargetRow] = []
    pools: dict[str, int | None] = {}
    async with asyncio.timeout(timeout), get_client() as client:
        found = await client.read_deployments(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[RELEASE_FLOW]))
        )
        prefix = f"{RELEASE_DEPLOYMENT}-"
        fleet = [d for d in found if d.name == RELEASE_DEPLOYMENT or d.name.startswith(prefix)]
        for d in sorted(fleet, key=lambda d: (d.name != RELEASE_DEPLOYMENT, d.name)):
            queue_limit = None
            if d.work_pool_name and d.work_queue_name:
                try:
                    queue = await client.read_work_queue_by_name(
                        d.work_queue_name, work_pool_name=d.work_pool_name
                    )
                    queue_limit = queue.concurrency_limit
                except ObjectNotFound:
                    queue_limit = None
                if d.work_pool_name not in pools:
                    pools[d.work_pool_name] = (
                        await client.read_work_pool(d.work_pool_name)
                    ).concurrency_limit
            limit = d.global_concurrency_limit.limit if d.global_concurrency_limit else None
            target = str(d.parameters.get("target", "")) if d.name != RELEASE_DEPLOYMENT else ""
            rows.append(
                TargetRow(
                    deployment=d.name,
                    target=target,
                    pool=d.work_pool_name,
                    queue=d.work_queue_name if d.work_pool_name else None,
                    queue_limit=queue_limit,
                    deployment_limit=limit,
                    waiting=await _count(client, d.id, ["SCHEDULED", "PENDING"]),
                    running=await _count(client, d.id, ["RUNNING", "CANCELLING"]),
                )
            )
    return FleetStatus(rows, pools)


def fleet_status(timeout: float = DEFAULT_TIMEOUT_S) -> FleetStatus:
    """`afleet_status` for synchronous callers."""
    from prefect.utilities.asyncutils import run_coro_as_sync

    status = run_coro_as_sync(afleet_status(timeout))
    assert status is not None  # noqa: S101 - run_coro_as_sync is typed Optional; it returns ours
    return status
