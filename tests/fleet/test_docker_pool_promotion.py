"""A promotion staging -> production on the Docker work pool on PostgreSQL (issue 25's "Done
when": a promotion reuses the digest and refuses one that did not pass staging), on the session's
`docker_pool_fleet` (tests/fleet/conftest.py: two docker workers, the worker image; its set-up is
paid by whichever fleet test runs first).

Every release runs in a container taken by a docker worker, through the targets' own
`release-<target>` deployments (deployments/fleet.py); the promotion is the operator's CLI
(`shipyard promote-release`, in this process, pointed at the fleet's server), which finds
production's release deployment and starts the release there (flows/promotion/flow.py).
Production lives in another project and keeps its images in a repository of its own: what it
serves is the digest that passed staging, copied by digest, not an image of the same tag.

The in-process promotion of three stages, the automation and the report's chain are
tests/fleet/test_promotion.py's (SQLite harness); this module proves the same promise where the
releases are containers on a distributed Prefect.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import pytest
from docker_pool_kit import CONTAINER_ID, containers_started, create_runs, deploy, wait_runs
from typer.testing import CliRunner

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

EU = "europe-west1"
PROD_PROJECT = "shipyard-sandbox-prod"  # production's own project (the sandbox takes any id)
FAILS_V2 = [
    # As tests/fleet/test_promotion.py: v2's GPU revision answers 503 to every request, so its
    # canary fails and the release rolls back (the session sandbox's in-process revisions: the
    # scenario reaches the revisions a container's release creates).
    {"fault": "http_503", "accelerator": "gpu", "revision_contains": "-v2-", "requests": 0}
]


def _serving_image(cloud, project: str, service: str) -> str:
    """The image of the revision that has 100% of the service's traffic (official client)."""
    name = f"projects/{project}/locations/{EU}/services/{service}"
    svc = cloud.services_client().get_service(name=name, timeout=30)
    full = [t.revision for t in svc.traffic_statuses if t.percent == 100]
    assert len(full) == 1, svc.traffic_statuses
    revision = cloud.revisions_client().get_revision(name=f"{name}/revisions/{full[0]}", timeout=30)
    return str(revision.containers[0].image)


def _builds(cloud, projects: list[str]) -> int:
    """Cloud Build's list, every build of the projects (official client)."""
    client = cloud.builds_client()
    return sum(len(list(client.list_builds(project_id=p, timeout=30))) for p in projects)


def test_a_promotion_on_the_pool_reuses_the_digest_and_refuses_what_failed_staging(
    docker_pool_fleet, stage, make_target, sandbox, cloud
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from sandbox.seed import seed_cuda_image
    from shipyard.blocks.build_settings import BuildSettings
    from shipyard.deployments.cli.main import app
    from shipyard.flows.observe.ledger import read_ledger

    fleet = docker_pool_fleet
    began = time.perf_counter()
    stage(default_region={"gpu": 8, "gpu_no_zonal_redundancy": 8}, revision_faults=FAILS_V2)
    base = f"dpp-{uuid.uuid4().hex[:4]}"
    staging, production = f"{base}-staging", f"{base}-production"
    staging_project = cloud.resolved_project()
    assert staging_project != PROD_PROJECT
    # Two images of one repository, two digests (v2's cuDNN is another 8.9 build).
    repo = f"promotion-pool/{base}"
    v1 = seed_cuda_image(sandbox.registry_url, repo, "v1.0.0")
    v2 = seed_cuda_image(sandbox.registry_url, repo, "v2.0.0", cudnn="8.9.2.26")
    assert v1.digest != v2.digest
    prod_repository = f"{sandbox.registry_host}/promotion-pool-prod/{base}"
    with fleet.api():
        BuildSettings(image_repository=prod_repository).save(f"{base}-prod-build")
        make_target(service=staging, environment="staging").save(staging)
        make_target(
            service=production,
            environment="production",
            promotes_from=staging,
            project=PROD_PROJECT,
            build_settings_block=f"{base}-prod-build",
        ).save(production)
    deployments = deploy(fleet, [staging, production])
    builds_before = _builds(cloud, [staging_project, PROD_PROJECT])
    since = time.time() - 1

    # Staging, through its release deployment (a container run): v1 passes.
    (staged_v1,) = wait_runs(
        fleet, create_runs(fleet, [(staging, deployments[staging], "v1.0.0")], image=v1.repository)
    )
    staged_s = time.perf_counter() - began
    with fleet.api():
        (v1_row,) = read_ledger(staging)
    assert v1_row.outcome == "released", (v1_row, fleet.logs())
    assert v1_row.digest == v1.digest  # resolved from the registry in the container
    assert v1_row.flow_run_id == staged_v1.id

    # v2 goes to staging (its canary will fail) while v1 is promoted: another queue, the other
    # worker, side by side (the promotion of v1 reads only v1's rows).
    v2_run = create_runs(fleet, [(staging, deployments[staging], "v2.0.0")], image=v1.repository)

    # staging -> production: the operator's CLI. Production's release deployment gets the run
    # (the promotion does not wait for it, `--wait` does) and a docker worker runs it.
    runner = CliRunner()
    cli_began = time.perf_counter()
    with fleet.api():
        out = runner.invoke(
            app, ["promote-release", production, "--tag", "v1.0.0", "--wait", "--by", "ana"]
        )
    promote_s = time.perf_counter() - cli_began
    assert out.exit_code == 0, out.output
    ran = re.search(
        rf"release run ([0-9a-f-]{{36}}) of v1\.0\.0 in {production}: released", out.stdout
    )
    assert ran, out.output
    (promoted,) = wait_runs(fleet, {ran.group(1): (production, "v1.0.0")})
    assert promoted.states[-1].type.value == "COMPLETED", (promoted.names, fleet.logs())
    assert promoted.infrastructure_pid and CONTAINER_ID.search(promoted.infrastructure_pid)
    (staged_v2,) = wait_runs(fleet, v2_run)
    with fleet.api():
        staging_rows = {row.git_tag: row for row in read_ledger(staging)}
    assert staging_rows["v2.0.0"].outcome == "rolled_back", staging_rows
    assert staging_rows["v2.0.0"].digest == v2.digest
    assert staging_rows["v2.0.0"].flow_run_id == staged_v2.id
    # Each release ran in a container of the worker image on the pool's daemon.
    started = containers_started(fleet, since)
    for run in (staged_v1, staged_v2, promoted):
        assert started.get(run.id) == fleet.image, (run.tag, run.target, started)
    # Production serves exactly the digest that passed staging, from its own repository (copied
    # by digest), in its own project; nothing was built for it.
    prod_ref = f"{prod_repository}@{v1.digest}"
    assert _serving_image(cloud, PROD_PROJECT, production) == prod_ref
    assert _builds(cloud, [staging_project, PROD_PROJECT]) == builds_before

    # v2 did not pass staging: refused in one line (the tag, the stage, the reason), no run.
    with fleet.api():
        out = runner.invoke(app, ["promote-release", production, "--tag", "v2.0.0"])
    assert out.exit_code == 2, out.output
    lines = [line for line in out.output.splitlines() if line.strip()]
    assert len(lines) == 1, out.output
    assert lines[0].startswith(
        "error: v2.0.0 did not pass staging: its release there ended rolled_back"
    ), out.output
    assert _serving_image(cloud, PROD_PROJECT, production) == prod_ref  # still v1

    # The ledger's chain: production's one row names staging's run of v1, the same digest.
    with fleet.api():
        (prod_row,) = read_ledger(production)

        async def production_runs() -> list:
            async with get_client() as client:
                return await client.read_flow_runs(
                    deployment_filter=DeploymentFilter(
                        id=DeploymentFilterId(any_=[uuid.UUID(deployments[production])])
                    )
                )

        runs = asyncio.run(production_runs())
    assert [str(r.id) for r in runs] == [promoted.id]  # the refusal started nothing
    assert prod_row.outcome == "released" and prod_row.environment == "production"
    assert prod_row.flow_run_id == promoted.id
    assert prod_row.promoted_from == f"{staging}/{staged_v1.id}"
    assert prod_row.digest == v1_row.digest == v1.digest
    assert prod_row.commit == v1_row.commit

    side_by_side = staged_v2.started < promoted.ended and promoted.started < staged_v2.ended
    overhead = [r.started - r.first("PENDING") for r in (staged_v1, staged_v2, promoted)]
    print(
        f"\npromotion on the pool: {time.perf_counter() - began:.1f} s in all (staging's v1 "
        f"{staged_s:.1f} s, `promote-release --wait` {promote_s:.1f} s); container start "
        f"(Pending -> Running): {', '.join(f'{s:.1f}' for s in overhead)} s; the promoted "
        f"release {promoted.ended - promoted.first('PENDING'):.1f} s from Pending to its end; "
        f"staging's v2 ran beside it: {side_by_side}"
    )
