"""Environments and promotion: one image digest promoted dev -> staging -> production, never
rebuilt, only when it passed the stage before. Real Prefect server (the session's), the sandbox
through the official clients, a real image in the sandbox's registry; in-process releases.

One pipeline set up once (three targets, each its own Cloud Run service), then in order: the
dev release of v1 (by tag: its ledger row gets the digest from the registry); a promotion to
production that skips staging (refused, through the CLI); the promotions to staging (the flow,
through staging's own release deployment, whose run the test executes as a worker's engine
would) and to production (the CLI, in this process, copied by digest to production's own image
repository): the digest that passed, no build; the automation that promotes to production firing
on staging's pass; a v2 rolled back in staging that production then refuses (production
unchanged); a first stage refused; the report's chain.
"""

from __future__ import annotations

import datetime as dt
import time
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter
from prefect.flow_engine import run_flow
from typer.testing import CliRunner

from sandbox.seed import seed_cuda_image
from shipyard.deployments.cli.main import app
from shipyard.flows.observe.ledger import read_ledger
from shipyard.flows.promotion.flow import promote, promote_release
from shipyard.flows.promotion.passed import PromotionRefused, passed_in
from shipyard.flows.release.flow import release, run_release

pytestmark = pytest.mark.slow

EU = "europe-west1"
FAILS_V2 = [
    # The sandbox's canary-fails scenario: v2's GPU revision answers 503 to every request.
    {"fault": "http_503", "accelerator": "gpu", "revision_contains": "-v2-", "requests": 0}
]


def _serving_image(cloud, service: str) -> str:
    """The image of the revision that has 100% of the service's traffic (official client)."""
    name = f"projects/{cloud.resolved_project()}/locations/{EU}/services/{service}"
    svc = cloud.services_client().get_service(name=name, timeout=30)
    full = [t.revision for t in svc.traffic_statuses if t.percent == 100]
    assert len(full) == 1, svc.traffic_statuses
    revision = cloud.revisions_client().get_revision(name=f"{name}/revisions/{full[0]}", timeout=30)
    return revision.containers[0].image


def _builds(cloud) -> int:
    client = cloud.builds_client()
    return len(list(client.list_builds(project_id=cloud.resolved_project(), timeout=30)))


def _passed_event_run(deployment_id, since: dt.datetime, timeout: float = 30.0):
    """The promote-release run the automation created (polled: triggers act asynchronously)."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                flow_run_filter=FlowRunFilter(),
            )
            runs = [r for r in runs if r.created and r.created >= since]
            if runs or time.monotonic() > deadline:
                return runs
            time.sleep(0.5)


def test_one_digest_promoted_through_the_pipeline(stage, make_target, sandbox, cloud):
    from shipyard.blocks.build_settings import BuildSettings
    from shipyard.deployments.automations import (
        auto_promotion_name,
        create_auto_promotion_automation,
    )
    from shipyard.deployments.report.figures import chain_rows

    stage(revision_faults=FAILS_V2)
    base = "pgpromo"
    names = {env: f"{base}-{env}" for env in ("dev", "staging", "production")}
    previous = {"dev": None, "staging": names["dev"], "production": names["staging"]}
    # Production keeps its images in a repository of its own: the promotion copies by digest.
    prod_repository = f"{sandbox.registry_host}/promotion-prod/{base}"
    BuildSettings(image_repository=prod_repository).save(f"{base}-prod-build", overwrite=True)
    for env, name in names.items():
        make_target(
            service=name,
            environment=env,
            promotes_from=previous[env],
            auto_promote=env == "production",
            build_settings_block=f"{base}-prod-build" if env == "production" else None,
        ).save(name, overwrite=True)
    dev, staging, production = names["dev"], names["staging"], names["production"]
    repo = f"promotion-tests/{base}"
    seeded = seed_cuda_image(sandbox.registry_url, repo, "v1.0.0")
    builds_before = _builds(cloud)

    # dev: a first stage, released from an image given by tag.
    first = run_release("v1.0.0", dev, image=seeded.ref)
    assert first.outcome == "released"
    (dev_row,) = read_ledger(dev)
    assert dev_row.environment == "dev" and dev_row.target == dev
    assert dev_row.digest == seeded.digest  # resolved from the registry at release time
    assert dev_row.promoted_from == ""

    # A promotion to production that skips staging is refused, with the way forward (the CLI:
    # one line, exit 2, no run).
    out = CliRunner().invoke(app, ["promote-release", production, "--tag", "v1.0.0"])
    assert out.exit_code == 2, out.output
    assert "v1.0.0 passed dev, not staging: promote it to staging first" in out.output
    assert f"shipyard promote-release {staging} --tag v1.0.0" in out.output
    assert "Traceback" not in out.output

    # The automation that promotes to production what passes in staging (a deployment of the
    # promotion flow that nothing runs: the automation's run stays Scheduled, it is looked at).
    promote_id = promote_release.to_deployment(name="promotion-tests").apply()
    created = create_auto_promotion_automation(
        [dev, staging, production], deployment="promote-release/promotion-tests"
    )
    assert list(created) == [production]  # only production has auto_promote on
    since = dt.datetime.now(dt.UTC)

    # dev -> staging, the flow itself: staging's own release deployment gets a run of the digest
    # that passed dev (timeout=0: the promotion does not wait), which a worker's engine runs.
    staging_deployment = release.to_deployment(name=f"release-{staging}").apply()
    staging_run = promote_release(target=staging, git_tag="v1.0.0", by="ana", comment="ok")
    digest_ref = f"{seeded.repository}@{seeded.digest}"
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(staging_run))
        assert run.deployment_id == staging_deployment and run.state.is_scheduled()
        assert run.parameters["image"] == digest_ref and run.parameters["target"] == staging
        state = run_flow(release, flow_run=run, return_type="state")  # a worker's part
        client.delete_deployment(staging_deployment)
    assert state.is_completed(), state.message
    assert _serving_image(cloud, staging) == digest_ref
    (staging_row,) = read_ledger(staging)
    assert staging_row.flow_run_id == staging_run and staging_row.outcome == "released"
    assert staging_row.environment == "staging" and staging_row.digest == seeded.digest
    assert staging_row.promoted_from == f"{dev}/{dev_row.flow_run_id}"
    assert staging_row.commit == dev_row.commit

    # The automation fired on staging's `shipyard.release.passed`: a promote-release run for
    # production with the tag that passed.
    (auto_run,) = _passed_event_run(promote_id, since)
    assert auto_run.parameters["target"] == production
    assert auto_run.parameters["git_tag"] == "v1.0.0"
    assert auto_run.parameters["by"] == "automation (auto_promote)"
    with get_client(sync_client=True) as client:
        client.delete_flow_run(auto_run.id)  # nothing runs it: not left Scheduled
        for automation in client.read_automations_by_name(auto_promotion_name(production)):
            client.delete_automation(automation.id)
        client.delete_deployment(promote_id)

    # staging -> production through the CLI: the exact digest that passed staging, nothing built.
    out = CliRunner().invoke(
        app, ["promote-release", production, "--tag", "v1.0.0", "--here", "--by", "ana"]
    )
    assert out.exit_code == 0, out.output
    assert f"in {production}: released" in out.stdout
    prod_ref = f"{prod_repository}@{seeded.digest}"  # copied there, the same digest
    assert _serving_image(cloud, production) == prod_ref
    (prod_row,) = read_ledger(production)
    assert prod_row.environment == "production" and prod_row.digest == seeded.digest
    assert prod_row.promoted_from == f"{staging}/{staging_run}"
    assert prod_row.cache_hit_rate is None and prod_row.pull_bytes is None  # no build figures
    assert _builds(cloud) == builds_before  # Cloud Build's list: no build for any stage

    # The newest that passed staging, when no tag is given.
    assert passed_in(production_block(production), None).git_tag == "v1.0.0"

    # v2 rolled back in staging (released there from its tag): production refuses it.
    seed_cuda_image(sandbox.registry_url, repo, "v2.0.0")
    bad = run_release("v2.0.0", staging, image=f"{seeded.repository}:v2.0.0")
    assert bad.outcome == "rolled_back"
    with pytest.raises(PromotionRefused) as refused:
        promote(production, "v2.0.0", where="here")
    message = str(refused.value)
    assert message.startswith("v2.0.0 did not pass staging: its release there ended rolled_back")
    assert "\n" not in message
    assert _serving_image(cloud, production) == prod_ref  # nothing changed in production
    assert len(read_ledger(production)) == 1

    # A first stage takes no promotion.
    with pytest.raises(PromotionRefused, match="dev is a first stage"):
        promote(dev, "v1.0.0", where="here")

    # The report's chain: v1.0.0 went dev -> staging -> production with one digest.
    (chain,) = [c for c in chain_rows(read_ledger()) if c["service"] == dev]
    assert chain["git_tag"] == "v1.0.0" and chain["same_digest"] is True
    assert chain["chain"].startswith("dev ") and " -> staging " in chain["chain"]
    assert " -> production " in chain["chain"] and chain["digest"] == seeded.digest[:19]
    out = CliRunner().invoke(app, ["report", "--since", "1d", "--format", "table"])
    assert out.exit_code == 0, out.output
    assert f"{dev} v1.0.0: {chain['chain']} (same digest {seeded.digest[:19]})" in out.stdout


def production_block(name: str):
    from shipyard.flows.promotion.passed import load_target

    return load_target(name)


def test_pipeline_fields_are_checked_with_the_fix():
    from shipyard.blocks.release_target import ReleaseTarget
    from shipyard.flows.promotion.chain import check_promoted_from

    cases = [
        ({"environment": "Prod"}, "environment='Prod' is not an environment name"),
        ({"auto_promote": True}, "auto_promote=True needs promotes_from"),
        ({"promotes_from": "digit-staging"}, "promotes_from='digit-staging' needs environment"),
    ]
    for fields, message in cases:
        with pytest.raises(ValueError, match=message):
            ReleaseTarget(**fields)
    empty = ReleaseTarget(environment="", promotes_from="")  # the UI's empty texts
    assert (
        empty.environment is None and empty.promotes_from is None and empty.scope == empty.service
    )
    with pytest.raises(ValueError, match="is not TARGET-BLOCK/FLOW-RUN-ID"):
        check_promoted_from("digit-staging")
    check_promoted_from("digit-staging/0b6f3f1e-2f4a-4a52-9d55-6f1b1e0e8f10")
