"""`shipyard fleet deploy|show`: per-target release deployments, each in its own work queue with a
concurrency limit of 1, and the pool's limit sized to the GPU quota (deployments/fleet.py).
"""

from __future__ import annotations

import typer
from rich.console import Console

console = Console()

fleet_app = typer.Typer(
    help=(
        "Release many services side by side: one `release-<target>` deployment per Release "
        "Target block, each in its own work queue of the pool with a concurrency limit of 1 "
        "(one release per service and environment at a time; a run waiting for its target stays "
        "Scheduled and holds no worker), and the pool's concurrency limit as the global limit, "
        "sized to the GPU quota. Webhook deliveries for a target go to its deployment."
    ),
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(fleet_app, name="fleet")


@fleet_app.command(
    "deploy",
    help=(
        "Create or update `release-<target>` for each TARGET in --pool, each in its own work "
        "queue `release-<target>` (concurrency limit 1; a deployment limit of 1 guards two "
        "workers that poll at the same instant), and set the pool's "
        "concurrency limit (the global one). Idempotent: run it again after adding a target; "
        "existing deployments are updated in place. The generic `release` deployment stays; a "
        "tag push for a target that has its own deployment runs that one only (the webhook "
        "looks it up, cached 30 s)."
    ),
)
def deploy_command(
    targets: list[str] = typer.Argument(
        ...,
        help="Release Target block names, one deployment each (e.g. digit-staging "
        "digit-production pages-production).",
    ),
    pool: str = typer.Option(
        ..., "--pool", help="The work pool the workers poll (e.g. shipyard-process)."
    ),
    global_limit: int | None = typer.Option(
        None,
        "--global-limit",
        min=1,
        help="Releases of the whole pool at once. Default: the GPU quota, summed over the "
        "targets' primary regions (Cloud Quotas, read through each target's cloud block).",
    ),
) -> None:
    from shipyard.deployments.cli.errors import fail, one_line, require_prefect_api
    from shipyard.deployments.fleet import FleetError, deploy_fleet, queue_name

    require_prefect_api("fleet")
    try:
        names = deploy_fleet(targets, pool, global_limit)
    except FleetError as exc:
        fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - an API down, a block that does not load: one line
        fail(f"fleet deploy: {one_line(exc)}")
    for target, name in zip(targets, names, strict=True):
        console.print(f"{name}  queue {queue_name(target)} (limit 1)", soft_wrap=True)
    console.print(
        f"pool {pool}: `shipyard fleet show` shows its limit and the runs", soft_wrap=True
    )
    from shipyard.deployments.stack.workers import worker_limits

    limit = _pool_limit(pool)
    if limit:
        three = ", ".join(str(n) for n in worker_limits(limit, 3))
        console.print(
            f"pool {pool}: global limit {limit}. Two workers polling at the same instant can "
            "each take its last slot: give your workers `--limit`s that sum to it to make it a "
            f"hard bound (3 workers: --limit {three}).",
            soft_wrap=True,
        )


def _pool_limit(pool: str) -> int | None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        limit: int | None = client.read_work_pool(pool).concurrency_limit
        return limit


def _limit(value: int | None) -> str:
    return "none" if value is None else str(value)


@fleet_app.command(
    "show",
    help=(
        "Each release deployment: its target, pool, queue and queue limit, runs waiting "
        "(Scheduled, Pending) and running; then each pool's concurrency limit (the global limit)."
    ),
)
def show_command() -> None:
    from shipyard.deployments.cli.errors import fail, one_line, require_prefect_api
    from shipyard.deployments.fleet import fleet_status

    require_prefect_api("fleet")
    try:
        status = fleet_status()
    except Exception as exc:  # noqa: BLE001 - an API down: one line
        fail(f"fleet show: {one_line(exc)}")
    if not status.rows:
        console.print("no release deployment: `prefect deploy --all`, then `shipyard fleet deploy`")
        return
    # One line per deployment (not a table): names stay whole in a narrow terminal and greppable.
    for row in status.rows:
        queue = (
            f"queue {row.queue} (limit {_limit(row.queue_limit)})"
            if row.queue
            else "no queue: offered to no work pool (served)"
        )
        console.print(
            f"{row.deployment}  target {row.target or '(each run names its own)'}  "
            f"pool {row.pool or 'none'}  {queue}"
            + (f"  deployment limit {row.deployment_limit}" if row.deployment_limit else "")
            + f"  waiting {row.waiting}  running {row.running}",
            soft_wrap=True,
            markup=False,
        )
    for pool, limit in sorted(status.pool_limits.items()):
        console.print(f"pool {pool}: concurrency limit {_limit(limit)} (global)", soft_wrap=True)
