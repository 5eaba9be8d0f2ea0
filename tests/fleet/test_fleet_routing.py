"""Which deployment takes a tag push, and which work pool offers a served deployment's runs.

- The webhook's dispatcher (deployments/webhook/dispatch.py, the real one on a journal of its
  own) labels each event's resource `shipyard.deployment`: `release-<target>` when the fleet has
  that deployment, else `release`; each release trigger matches only its own label, so one
  delivery makes exactly one run, of the right deployment.
- `shipyard serve` (deployments/serve.py) takes a deployment out of the work pool that
  `prefect deploy` put it in: its runs are no longer offered to a worker.

No worker runs here: trigger-made runs stay Scheduled.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid

from shipyard.deployments.fleet import adeploy_fleet, full_name
from shipyard.deployments.serve import PREFECT_YAML, build_deployments, read_specs

REPOSITORY = "acme/fleet-routing"
YAML = PREFECT_YAML


async def _runs_tagged(client, tag: str) -> list:
    """Runs of the release flow, any deployment, for `tag` (a trigger-made run is named at
    random until it starts: `release-{git_tag}` is applied by the engine)."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    runs = await client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=["release"])),
        sort=FlowRunSort.EXPECTED_START_TIME_DESC,  # the newest: this test's
        limit=200,
    )
    return [r for r in runs if r.parameters.get("git_tag") == tag]


async def _wait_runs(client, tag: str) -> list:
    from shipyard.tasks.waiting import Deadline, NotYet, await_for

    async def some():
        runs = await _runs_tagged(client, tag)
        if not runs:
            raise NotYet(f"no run for {tag} yet")
        return runs

    return await await_for(
        some,
        what=f"the run of {tag}",
        first_delay_s=0.2,
        max_delay_s=1.0,
        deadline=Deadline(60),
        heartbeat_s=None,
    )


def _push(target: str, tag: str):
    from shipyard.deployments.webhook.parse import TagPush

    commit = hashlib.sha1(tag.encode(), usedforsecurity=False).hexdigest()
    return TagPush("github", uuid.uuid4().hex, REPOSITORY, tag, commit, f"refs/tags/{tag}", target)


async def _dispatch(dispatcher, journal, push) -> tuple[str, str | None]:
    """One delivery through the receiver's journal and the real dispatcher's `handle`."""
    await journal.call(
        journal.record, push, "push", hashlib.sha256(push.tag.encode()).hexdigest(), 0
    )
    (row,) = [r for r in await journal.call(journal.lease_due) if r.push.tag == push.tag]
    return await dispatcher.handle(row)


def test_one_delivery_one_run_of_the_routed_deployment_and_serve_leaves_the_pool(
    make_target, tmp_path
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from shipyard.deployments.serve import to_runner_deployment
    from shipyard.deployments.webhook.dispatch import Dispatcher
    from shipyard.deployments.webhook.journal import Journal
    from shipyard.deployments.webhook.settings import WebhookSettings

    suffix = uuid.uuid4().hex[:4]
    routed, plain = f"routed-{suffix}", f"plain-{suffix}"
    make_target(service=f"fleet-routed-{suffix}").save(routed)
    make_target(service=f"fleet-plain-{suffix}").save(plain)
    (release_spec,) = [s for s in read_specs(YAML) if s.name == "release"]
    # prefect.yaml's generic trigger takes only the events routed to `release`.
    assert {"shipyard.deployment": "release"}.items() <= release_spec.triggers[0][
        "match"
    ].items(), release_spec.triggers[0]

    async def scenario():
        async with get_client() as client:
            pool = f"fleet-route-{suffix}"
            await client.create_work_pool(WorkPoolCreate(name=pool, type="process"))

            # `prefect deploy`: the generic release in the pool; a run of it is offered there.
            deployed = await to_runner_deployment(release_spec)
            deployed.work_pool_name = pool
            release_id = await deployed.aapply()
            before = await client.read_deployment(release_id)
            offered_run = await client.create_flow_run_from_deployment(
                release_id, parameters={"git_tag": f"v0.0.{suffix}-a", "target": plain}
            )
            offered_before = await client.get_scheduled_flow_runs_for_work_pool(pool)
            # `shipyard serve`: the same deployment, as the runner registers it.
            (served,) = await build_deployments(YAML, ["release"])
            assert await served.aapply() == release_id
            after = await client.read_deployment(release_id)
            served_run = await client.create_flow_run_from_deployment(
                release_id, parameters={"git_tag": f"v0.0.{suffix}-b", "target": plain}
            )
            offered_after = await client.get_scheduled_flow_runs_for_work_pool(pool)
            for run in (offered_run, served_run):
                await client.delete_flow_run(run.id)

            # The fleet: `routed` has its own deployment, `plain` does not.
            await adeploy_fleet([routed], pool, global_limit=1)
            own = await client.read_deployment_by_name(full_name(routed))
            journal = Journal(tmp_path / "journal.db")
            dispatcher = Dispatcher(journal, WebhookSettings(), client)
            routes = (
                await dispatcher.routes.deployment_for(routed),
                await dispatcher.routes.deployment_for(plain),
            )
            tags = {name: f"v9.{i}.{int(suffix, 16)}" for i, name in enumerate((routed, plain))}
            handled = {t: await _dispatch(dispatcher, journal, _push(t, tags[t])) for t in tags}
            runs = {t: await _wait_runs(client, tags[t]) for t in tags}
            # Sentinel: one more routed delivery; once its run exists, every automation the
            # first two events could fire has fired (the trigger service takes them in order).
            sentinel = f"v9.9.{int(suffix, 16)}"
            await _dispatch(dispatcher, journal, _push(routed, sentinel))
            await _wait_runs(client, sentinel)
            runs = {t: await _runs_tagged(client, tags[t]) for t in tags}
            journal.close()
            await client.delete_deployment(own.id)
            return (
                release_id,
                before,
                after,
                offered_run,
                offered_before,
                served_run,
                offered_after,
                own,
                routes,
                handled,
                runs,
            )

    (
        release_id,
        before,
        after,
        offered_run,
        offered_before,
        served_run,
        offered_after,
        own,
        routes,
        handled,
        runs,
    ) = asyncio.run(scenario())

    # Serve leaves the pool: before, the deployment named the pool and its run was offered to
    # the pool's workers; after, no pool, and a new run is offered to none.
    assert before.work_pool_name is not None and before.work_queue_id is not None
    assert offered_run.id in {r.flow_run.id for r in offered_before}
    assert after.work_pool_name is None and after.work_queue_id is None, after
    assert served_run.id not in {r.flow_run.id for r in offered_after}

    # Routing: the target with its own deployment goes there, the other to `release`.
    assert routes == (f"release-{routed}", "release")
    assert handled[routed] == ("emitted", f"to release-{routed}")
    assert handled[plain] == ("emitted", None)
    (routed_run,) = runs[routed]  # exactly one run per delivery ...
    (plain_run,) = runs[plain]
    assert routed_run.deployment_id == own.id  # ... of the right deployment
    assert routed_run.parameters["target"] == routed
    assert routed_run.work_queue_name == f"release-{routed}"
    assert plain_run.deployment_id == release_id
    assert plain_run.parameters["target"] == plain
    for run in (routed_run, plain_run):
        assert run.state.type.value == "SCHEDULED"
        assert run.created_by is not None and run.created_by.type == "AUTOMATION"
