"""What a release leaves when it times out, is cancelled or crashes, and the canary verdict it
persists.

`abort_cleanup` is the release flow's undo hook (flows/observe/undo_hooks.py): it runs when the
release times out (`on_failure` with the state `TimedOut`: Prefect has no timeout hook), is
cancelled or crashes. It cancels the tag's Cloud Build if one still runs, takes the `canary`
tag off the tag's revision wherever that revision has 0% (an untested revision never keeps a
tag URL, nor gets traffic), takes off the `baseline` tag the canary puts on a CPU revision
while it measures the CPU baseline (a run stopped during that measurement never reached its
own untag), and leaves traffic where it is:
on the last good revision (or, after a cutover, on the revision whose canary passed). A kill -9
runs no hook; the next release of the service frees the dead run's slot
(flows/release/slot.py) and converges (its steps are idempotent).

The canary verdict is written to the Variable `shipyard-verdict-{scope}` (ReleaseTarget.scope:
the service, or `service-environment`) before the cutover,
so a re-run that finds the revision serving knows why it serves (and reports its figures).
"""

from __future__ import annotations

import logging
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.variables import Variable

from shipyard.blocks.names import sanitize_name
from shipyard.blocks.release_target import ReleaseTarget, as_release_target
from shipyard.flows.observe.undo_hooks import run_parameters

logger = logging.getLogger("shipyard.release")


def verdict_variable(scope: str) -> str:
    return sanitize_name(f"shipyard-verdict-{scope}", 255)


def record_verdict(scope: str, revision: str, figures: dict[str, Any]) -> None:
    Variable.set(verdict_variable(scope), {"revision": revision, "canary": figures}, overwrite=True)


def canary_verdict(scope: str, revision: str) -> dict[str, Any] | None:
    """The persisted canary figures of `revision`, if its canary passed and was recorded."""
    saved = Variable.get(verdict_variable(scope), default=None)
    if isinstance(saved, dict) and saved.get("revision") == revision:
        figures = saved.get("canary")
        return figures if isinstance(figures, dict) else None
    return None


def _target_of(parameters: dict[str, Any]) -> ReleaseTarget | None:
    target = parameters.get("target", "default")
    try:
        return as_release_target(target)
    except Exception as exc:  # noqa: BLE001 - a hook must not raise; it reports
        logger.warning("release cleanup: cannot load the target: %s", exc)
    return None


@task(name="cancel-tag-builds", cache_policy=NO_CACHE, persist_result=False)
def cancel_tag_builds_step(ctx: Any, git_tag: str) -> list[str]:
    """Cancel the tag's Cloud Builds that still run (found by the tag Shipyard gives them)."""
    from shipyard.flows.build.flow import docker_tag
    from shipyard.flows.release.steps import note_attempt
    from shipyard.tasks import cloud_build as cb

    note_attempt()
    client = ctx.cloud.builds_client()
    project = ctx.cloud.resolved_project()
    done = []
    for build in client.list_builds(project_id=project, filter=f'tags="{docker_tag(git_tag)}"'):
        if build.status not in cb.TERMINAL:
            cb.cancel_build(client, project, build.id)
            done.append(f"cancelled Cloud Build {build.id}")
    return done


def cleanup(
    target: ReleaseTarget,
    git_tag: str,
    *,
    cancel_builds: bool = True,
    ended_run: str | None = None,
) -> list[str]:
    """Cancel the tag's running build (unless not `cancel_builds`), undo the tag's rollout when
    its run is over (`ended_run`: the run whose hook this is; else the journal's run must be in a
    final state or gone: flows/rollout/abort.py, traffic back to the stable revision, warmed
    first, the journal cleared), clear the tag's canary where it has 0% and the CPU baseline's
    measurement tag. What was done.

    Each Google call is a step task run with the target's retries on transient errors (the
    release's one retry mechanism), outside any flow run when a runner calls the hook."""
    from shipyard.flows.canary.stage import untag_step
    from shipyard.flows.deploy.region_deploy import clear_failed_step
    from shipyard.flows.deploy.traffic_split import BASELINE_TAG
    from shipyard.flows.release.context import RunContext
    from shipyard.flows.release.steps import StepLog

    done: list[str] = []
    ctx = RunContext(target, git_tag, None)
    steps = StepLog(target.retries, target.retry_delays())
    try:
        if cancel_builds:
            cancelled: list[str] = steps.run(
                "cancel-tag-builds", cancel_tag_builds_step, ctx, git_tag
            )
            done += cancelled
    except Exception as exc:  # noqa: BLE001 - keep cleaning the traffic
        done.append(f"could not cancel the build: {exc}")
    from shipyard.flows.rollout.abort import undo_rollout

    try:
        done += undo_rollout(target, git_tag, ended_run=ended_run)
    except Exception as exc:  # noqa: BLE001 - keep cleaning the tags
        done.append(f"could not undo the rollout: {exc}")
    for region in target.regions:
        try:
            if steps.run(f"clear:{region}", clear_failed_step, ctx, region, ctx.gpu_revision):
                done.append(f"cleared the canary tag of {ctx.gpu_revision} in {region}")
        except Exception as exc:  # noqa: BLE001 - keep cleaning the other regions
            done.append(f"{region}: could not clear the canary tag: {exc}")
        try:
            if steps.run(f"untag-baseline:{region}", untag_step, ctx, region, BASELINE_TAG):
                done.append(f"took the {BASELINE_TAG} tag off in {region}")
        except Exception as exc:  # noqa: BLE001 - keep cleaning the other regions
            done.append(f"{region}: could not take the {BASELINE_TAG} tag off: {exc}")
    return done


def abort_cleanup(flow: Any, flow_run: Any, state: Any) -> None:
    """Timed out, cancelled or crashed: leave the service as the last good release left it."""
    parameters = run_parameters(flow_run)
    target = _target_of(parameters)
    git_tag = parameters.get("git_tag")
    if target is None or not git_tag or parameters.get("dry_run"):
        return
    lines = cleanup(target, str(git_tag), ended_run=str(flow_run.id))
    for line in lines:
        logger.warning("release %s of %s (%s): %s", git_tag, target.service, state.name, line)
    if state.is_cancelling() or state.is_cancelled():  # a person's cancel: recorded as one
        from shipyard.flows.release.cancelled import record_cancelled  # lazy: as `cleanup` does

        record_cancelled(target, str(git_tag), flow_run, lines)
