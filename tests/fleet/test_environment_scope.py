"""One release per service PER ENVIRONMENT: a staging and a production target of one Cloud Run
service (same name, other project) key every per-service record by `ReleaseTarget.scope`.

One shared set-up on the session sandbox (in-process revisions, a given image: nothing built):
- staging's slot held by another release: staging's next release waits for its own slot only
  (it changes nothing in staging until that slot frees) while production releases beside it;
  both complete, and each target's release record, status, canary and release summary name its
  own tag, never the other's;
- the rollout records (journal, commands) of one environment never steer the other's;
- the CLI finds a target by its scope (`SERVICE-ENVIRONMENT`).
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from prefect.artifacts import Artifact
from prefect.client.orchestration import get_client
from prefect.variables import Variable

from sandbox.release_invariants import invariant_violations, serving, stale_canary_tags
from shipyard.flows.canary.stage import recorded_release
from shipyard.flows.observe.status_page import status_key
from shipyard.flows.release.flow import release
from shipyard.flows.release.slot import holder_variable, release_slot, slot_name

pytestmark = pytest.mark.slow

IMAGE = "registry.sandbox.local/pages/page-service"
REGION = "europe-west1"


def _history(admin: Any, project: str, service: str) -> list[dict]:
    """The traffic history of the service in `project` alone (full resource name)."""
    return admin.traffic_history(f"projects/{project}/locations/{REGION}/services/{service}")


def _run(results: dict[str, object], key: str, target: Any, tag: str) -> threading.Thread:
    def go() -> None:
        try:
            results[key] = release(tag, target, image=f"{IMAGE}:{tag}")
        except BaseException as exc:  # noqa: BLE001 - asserted by the caller
            results[key] = exc

    thread = threading.Thread(target=go, name=f"release-{key}")
    thread.start()
    return thread


def _markdown(key: str) -> str:
    found = Artifact.get(key)
    assert found is not None, f"no artifact {key}"
    return str(found.data)


def _save_documents(suffix: str, *targets: Any) -> list[Any]:
    """Each target as a Release Target block document holding what `find_target` reads (its
    service and environment): a whole `ReleaseTarget.save` costs seconds of JSON schemas per
    field (Prefect's secret-field scan). Their ids."""
    from prefect.client.schemas.actions import BlockDocumentCreate

    from shipyard.blocks.release_target import ReleaseTarget

    ReleaseTarget.register_type_and_schema()
    with get_client(sync_client=True) as client:
        block_type = client.read_block_type_by_slug(ReleaseTarget.get_block_type_slug())
        schema = client.get_most_recent_block_schema_for_block_type(block_type.id)
        assert schema is not None
        return [
            client.create_block_document(
                BlockDocumentCreate(
                    name=f"{target.scope}-{suffix}",
                    data={"service": target.service, "environment": target.environment},
                    block_schema_id=schema.id,
                    block_type_id=block_type.id,
                )
            ).id
            for target in targets
        ]


def test_staging_and_production_of_one_service_never_share_a_slot_or_a_record(
    stage, make_target, sandbox_admin
):
    stage(default_region={"gpu": 4, "gpu_no_zonal_redundancy": 4})  # room for both projects
    suffix = uuid.uuid4().hex[:6]
    staging = make_target(
        regions=[REGION],
        environment="staging",
        project=f"fleet-staging-{suffix}",
        lock_timeout_s=240,
    )
    production = make_target(
        regions=[REGION],
        environment="production",
        project=f"fleet-production-{suffix}",
        lock_timeout_s=240,
    )
    service = staging.service
    assert production.service == service
    assert (staging.scope, production.scope) == (f"{service}-staging", f"{service}-production")
    assert slot_name(staging.scope) != slot_name(production.scope)
    assert make_target().scope == service  # no environment: the keys of today, unchanged
    results: dict[str, object] = {}

    # 1. Another staging release holds staging's slot: staging's next release waits for its own
    # slot, changing nothing in staging meanwhile, while production releases beside it.
    with release_slot(staging.scope, timeout_s=30, lease_s=60):
        waiting = _run(results, "staging", staging, "v1.0.0")
        _run(results, "production", production, "v1.1.0").join(timeout=300)
        assert getattr(results.get("production"), "outcome", None) == "released", results
        assert waiting.is_alive(), results  # still waiting for staging's slot
        assert _history(sandbox_admin, staging.project, service) == []  # nothing deployed
        assert Variable.get(holder_variable(production.scope), default=None) is None  # let go
    waiting.join(timeout=300)
    assert getattr(results.get("staging"), "outcome", None) == "released", results

    # 2. Each target's records name its own release, never the other's.
    urls = set()
    for target, tag in ((staging, "v1.0.0"), (production, "v1.1.0")):
        history = _history(sandbox_admin, target.project, service)
        revision = f"{service}-{tag.replace('.', '-')}"
        assert serving(history, REGION) == {revision: 100}, target.environment
        assert stale_canary_tags(history) == []
        assert invariant_violations(history, [results[str(target.environment)]]) == []
        record = recorded_release(target.scope) or {}
        assert (record.get("git_tag"), record.get("revision")) == (tag, revision), record
        urls.add(record.get("url"))
        assert _markdown(f"release-{target.scope}").startswith(f"# Release {tag} of `{service}`")
        assert f"release {tag}: released" in _markdown(status_key(target.scope))
        assert Artifact.get(f"canary-{target.scope}") is not None
    assert len(urls) == 2  # each project's own service URL
    assert recorded_release(service) is None  # nothing under the bare service name
    with get_client(sync_client=True) as client:
        for target in (staging, production):
            limit = client.read_global_concurrency_limit_by_name(slot_name(target.scope))
            assert (limit.limit, limit.active_slots) == (1, 0)

    # 3. A rollout in progress in production (its run not over) holds production only.
    from shipyard.flows.rollout import commands
    from shipyard.flows.rollout import journal as journals
    from shipyard.flows.rollout.stage import RolloutWaiting, refuse_if_waiting

    with get_client(sync_client=True) as client:  # a run that is not over (Scheduled)
        live = client.create_flow_run(release, parameters={"git_tag": "v3.0.0"})
    journals.write(
        journals.RolloutJournal(
            service=service,
            scope=production.scope,
            target="",
            flow_run_id=str(live.id),
            git_tag="v3.0.0",
            region=REGION,
            new=f"{service}-v3-0-0",
            stable=f"{service}-v1-1-0",
            percent=10,
        )
    )
    try:
        assert refuse_if_waiting(staging, "v2.1.0") is None  # staging may release
        with pytest.raises(RolloutWaiting, match=r"v3\.0\.0.*at 10%"):
            refuse_if_waiting(production, "v1.2.0")
        with pytest.raises(commands.NoRolloutInProgress):
            commands.request(staging.scope, "abort", "ana")
        commands.request(production.scope, "abort", "ana", "too slow")
        assert commands.pending(staging.scope) is None
        assert commands.take(staging.scope, str(live.id)) is None
        given = commands.take(production.scope, str(live.id))
        assert given == commands.Given(command="abort", by="ana", comment="too slow")
    finally:
        journals.clear(production.scope)
        with get_client(sync_client=True) as client:
            client.delete_flow_run(live.id)

    # 4. The CLI finds each target by its scope; the bare service name is ambiguous.
    from shipyard.deployments.cli.errors import UsageError
    from shipyard.deployments.cli.rollback import find_target

    ids = _save_documents(suffix, staging, production)
    try:
        assert find_target(staging.scope) == f"{staging.scope}-{suffix}"
        assert find_target(production.scope) == f"{production.scope}-{suffix}"
        with pytest.raises(UsageError, match="several Release Target blocks"):
            find_target(service)
    finally:
        with get_client(sync_client=True) as client:
            for document_id in ids:
                client.delete_block_document(document_id)
