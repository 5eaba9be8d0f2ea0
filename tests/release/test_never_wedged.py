"""Never wedged (issue 23): no traffic update gives users to a revision that is not Ready, and a
CPU baseline that failed is never deployed again under its name nor given traffic: a re-run
deploys a new attempt (`-r2`) that serves once Ready."""

from __future__ import annotations

import secrets

import pytest

from sandbox.invariants import traffic_violations
from sandbox.release_invariants import serving
from shipyard.flows.release.flow import run_release

pytestmark = pytest.mark.slow

IMAGE = "registry.sandbox.local/pages/page-service"


def test_a_failed_cpu_baseline_never_serves_and_a_rerun_deploys_a_new_one(
    stage, make_target, sandbox_admin, internal_token
):
    from shipyard.blocks.revision_templates import RevisionSpec, SecretEnv
    from shipyard.flows.release.context import RunContext
    from shipyard.tasks import cloud_run as cr

    stage(revision_faults=[{"fault": "oom", "image_contains": ":v21.1"}])
    good = run_release("v21.0.0", make_target(), image=f"{IMAGE}:v21.0.0")
    assert good.outcome == "released"
    # The CPU template names a Secret Manager secret that is gone (a sandbox restart that lost
    # it, a secret deleted on Google): its revision fails to become Ready.
    lost = "shipyard-test-lost-" + secrets.token_hex(4)
    cpu = RevisionSpec(
        gpu=0,
        memory="8Gi",
        max_instances=2,
        cpu_throttling=True,
        secret_env={"INTERNAL_TOKEN": SecretEnv(secret=lost)},
    )
    target = make_target(rollback_to_cpu=True, cpu_template=cpu)
    baseline = f"{target.service}-v21-1-0-cpu"

    # The canary fails (OOM), the rollback asks for the CPU baseline, which fails: the release
    # stops saying what is missing and how to restore it; the last good keeps serving.
    with pytest.raises(Exception, match="missing: the Secret Manager secret") as stopped:
        run_release("v21.1.0", target, image=f"{IMAGE}:v21.1.0")
    told = str(stopped.value)
    assert lost in told and "shipyard setup" in told and "cpu_template.secret_env" in told
    history = sandbox_admin.traffic_history(target.service)
    assert traffic_violations(history) == []
    assert serving(history, "europe-west1") == {good.revision: 100}

    # Cloud Run's refusal, said first by the one place every traffic update passes.
    ctx = RunContext(target, "v21.1.0", None)
    service = cr.get_service(ctx.services, ctx.service_name("europe-west1"))
    assert service is not None
    with pytest.raises(cr.RevisionNotReady, match="was not found") as refused:
        cr.set_traffic(ctx.services, service, [cr.Traffic(baseline, 100)], timeout=10)
    assert f"revision '{baseline}'" in str(refused.value) and "not Ready" in str(refused.value)

    # The secret restored, the re-run does not reuse the failed revision: a new attempt serves.
    sandbox_admin.put_secret(lost, internal_token)
    again = run_release("v21.1.0", target, image=f"{IMAGE}:v21.1.0")

    assert again.outcome == "rolled_back" and again.revision == f"{baseline}-r2", again.reasons
    history = sandbox_admin.traffic_history(target.service)
    assert traffic_violations(history) == []
    assert serving(history, "europe-west1") == {f"{baseline}-r2": 100}
    gave = [t for h in history for t in h["traffic"] if t["revision"] == baseline]
    assert not any(t["percent"] or t["tag"] for t in gave)  # the failed one: never addressed
    assert history[-1]["revisions"][baseline] is False  # still there, failed, untouched
