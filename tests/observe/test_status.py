"""What serves now (flows/observe/status.py, `shipyard status`), on the sandbox, around one pair
of releases: after the second, the status shows its revision at 100 % with its git tag, image,
GPU, Ready, canary time (the verdict's) and the first one at 0 % `prior` (canary time from the
ledger); the artifact `status-<service>` and the release deployment's "Serving now" section say
so. After a rollback by hand, all three change (the static description and another service's
section are kept). A `canary` tag at 0 % and a rollout waiting for approval show in the headline.
The CLI prints the table and `--json` parses; its mistakes are one line (PREFECT_API_URL unset:
tests/ui/test_cli_errors.py, in a subprocess). A Cloud Run that does not
answer: publish_status logs one WARNING and raises nothing."""

from __future__ import annotations

import json
import logging
import uuid

import pytest
from cli_kit import run_cli

from shipyard.flows.deploy.rollback import rollback
from shipyard.flows.observe.status import ServiceStatus, publish_status, service_status
from shipyard.flows.observe.status_page import section_of, status_key, update_deployments
from shipyard.flows.release.flow import run_release

pytestmark = pytest.mark.slow

IMAGE = "registry.sandbox.local/pages/page-service"
STATIC = "Release a git tag of a service (the static text of prefect.yaml)."


def _deployment(name: str) -> tuple[object, str]:
    """A deployment of the `release` flow with a static description: (its id, its name)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("release")
        return client.create_deployment(flow_id, name=name, description=STATIC), name


def _description(deployment_id: object) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_deployment(deployment_id).description or ""


def _artifact(service: str) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        found = client.read_latest_artifacts()  # one per key
        return next(a.data for a in found if a.key == status_key(service))


def _only(status: ServiceStatus):
    assert len(status.regions) == 1 and not status.regions[0].error, status
    return status.regions[0]


def test_status_follows_releases_and_a_rollback(stage, make_target, monkeypatch, capsys, caplog):
    from prefect.client.orchestration import get_client

    from shipyard.blocks.cloud import GoogleCloud
    from shipyard.flows.release.context import RunContext
    from shipyard.flows.rollout.journal import RolloutJournal, StepRecord, clear, write
    from shipyard.tasks import cloud_run as cr

    stage()
    target = make_target()
    name = f"st-{uuid.uuid4().hex[:6]}"
    target.save(name)
    deployment_id, _ = _deployment(f"status-{name}")
    other = ServiceStatus(service="zz-other-service", project="p", read_at="2025-01-01T00:00:00")
    update_deployments(other)  # another service's section, to be kept
    try:
        a = run_release("v1.0.0", target, image=f"{IMAGE}:v1.0.0")
        b = run_release("v1.1.0", target, image=f"{IMAGE}:v1.1.0")
        assert (a.outcome, b.outcome) == ("released", "released")

        # The release's end published it (flows/release/run.py _finish).
        region = _only(service_status(target))
        new, old = region.revisions
        assert (new.revision, new.percent, new.git_tag) == (b.revision, 100, "v1.1.0")
        assert (new.kind, new.ready, new.last_good, new.good_because) == (
            "GPU",
            "succeeded",
            True,
            "passed its canary",
        )
        assert new.image == f"{IMAGE}:v1.1.0" and not new.pinned
        assert new.canary_passed_source == "verdict" and new.canary_passed_at
        # With one GPU of quota, B's canary took over through v1.0.0's CPU revision: its prior.
        assert (old.revision, old.percent, old.tags, old.git_tag) == (
            f"{a.revision}-cpu",
            0,
            ["prior"],
            "v1.0.0",
        )
        assert (old.kind, old.good_because) == (
            "CPU",
            "passed its answer check before the GPU hand-over",
        )
        headline = f"v1.1.0 serves 100% in {b.region} on GPU; last good v1.1.0"
        assert headline in _artifact(target.service)
        assert "after: release v1.1.0: released" in _artifact(target.service)
        text = _description(deployment_id)
        assert text.startswith(STATIC) and headline in section_of(text, target.service)
        assert section_of(text, "zz-other-service") is not None

        # A rollback by hand (H6's rollback publishes too; published here so as not to wait on it).
        rollback(name)
        publish_status(target, "rollback by hand")
        region = _only(service_status(target))
        assert [(r.revision, r.percent) for r in region.revisions] == [
            (a.revision, 100),
            (b.revision, 0),
        ]
        assert region.last_good == a.revision
        # v1.0.0's verdict was replaced by v1.1.0's: its canary time is its release's end.
        assert region.revisions[0].canary_passed_source == "ledger"
        assert region.revisions[0].canary_passed_at
        rolled = f"v1.0.0 serves 100% in {b.region} on GPU; last good v1.0.0"
        assert rolled in _artifact(target.service)
        text = _description(deployment_id)
        section = section_of(text, target.service)
        assert rolled in section and "after: rollback by hand" in section and headline not in text
        assert text.startswith(STATIC) and section_of(text, "zz-other-service") is not None
        assert text.count(f"### {target.service}") == 1

        # A `canary` tag at 0% (a run testing v1.1.0 again) and a rollout awaiting approval.
        ctx = RunContext(target, "v1.1.0", None)
        service = cr.get_service(ctx.services, ctx.service_name(b.region))
        traffic = [cr.Traffic(a.revision, 100), cr.Traffic(b.revision, 0, "canary")]
        cr.set_traffic(ctx.services, service, traffic, **ctx.wait)
        write(
            RolloutJournal(
                service=target.service,
                target=name,
                flow_run_id=None,
                git_tag="v1.1.0",
                region=b.region,
                new=b.revision,
                stable=a.revision,
                percent=0,
                state="awaiting-approval",
                steps=[StepRecord(percent=0, verdict="pass")],
            )
        )
        status = service_status(target)
        assert "canary v1.1.0 at 0% (under test)" in status.headline()
        assert status.rollout is not None and status.rollout.state == "awaiting-approval"
        assert "rollout of v1.1.0: step 2" in status.headline()
        clear(target.service)

        # The CLI: the table, --json, and its mistakes as one line.
        monkeypatch.setenv("COLUMNS", "200")  # a terminal wide enough for the revision names
        code, output = run_cli(monkeypatch, capsys, "status", name)
        assert code == 0 and a.revision in output and "v1.0.0 serves 100%" in output, output
        code, output = run_cli(monkeypatch, capsys, "status", target.service, "--json")
        assert code == 0, output
        parsed = ServiceStatus.model_validate(json.loads(output))
        assert parsed.regions[0].revisions[0].revision == a.revision
        code, output = run_cli(monkeypatch, capsys, "status", "no-such-target")
        assert code == 2 and output.count("\n") == 1 and "no-such-target" in output, output

        # Cloud Run not answering: the CLI says so in one line; publish_status only warns.
        dead = make_target(cloud=GoogleCloud(endpoint="http://127.0.0.1:9"))
        dead.save(f"{name}-dead")
        code, output = run_cli(monkeypatch, capsys, "status", f"{name}-dead")
        assert code == 2 and output.count("\n") == 1 and "sandbox up" in output, output
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="shipyard.status"):
            publish_status(dead, "nothing")
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "not published" in warnings[0].getMessage(), warnings
    finally:
        with get_client(sync_client=True) as client:
            client.delete_deployment(deployment_id)


def test_a_fleet_deployment_of_one_target_shows_only_its_own_service():
    """A fleet's `release-<target>` deployment (its `target` fixed to one block) shows that
    target's service only; the shared deployments show every service, also one whose `target`
    parameter has a default (prefect.yaml's `target: default`); a status whose block is unknown
    still goes everywhere."""
    from prefect.client.orchestration import get_client

    from shipyard.deployments.fleet import release_deployment_name
    from shipyard.flows.observe.status_page import FLEET_RELEASE_PREFIX

    suffix = uuid.uuid4().hex[:6]
    # The fleet names its deployments as the status page recognises them.
    assert release_deployment_name(suffix) == f"{FLEET_RELEASE_PREFIX}{suffix}"
    mine, theirs = f"fleet-a-{suffix}", f"fleet-b-{suffix}"
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("release")
        ids = {
            name: client.create_deployment(
                flow_id, name=name, description=STATIC, parameters=parameters
            )
            for name, parameters in (
                (f"release-{mine}", {"target": mine}),
                (f"release-{theirs}", {"target": theirs}),
                (f"shared-{suffix}", {}),
                # prefect.yaml's deployments: `target` is a default, not a dedication.
                (f"rollback-{suffix}", {"target": theirs}),
            )
        }
    service = f"svc-{suffix}"
    status = ServiceStatus(service=service, target=mine, project="p", read_at="2026-01-01T00:00")
    done = update_deployments(status)
    assert f"release-{mine}" in done and f"shared-{suffix}" in done
    assert f"release-{theirs}" not in done and f"rollback-{suffix}" in done
    assert section_of(_description(ids[f"release-{mine}"]), service) is not None
    assert section_of(_description(ids[f"shared-{suffix}"]), service) is not None
    assert section_of(_description(ids[f"release-{theirs}"]), service) is None

    unknown = ServiceStatus(service=f"{service}-x", project="p", read_at="2026-01-01T00:00")
    assert {f"release-{mine}", f"release-{theirs}"} <= set(update_deployments(unknown))
