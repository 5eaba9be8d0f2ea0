"""What a release leaves when it is cancelled or crashes, and the canary verdict it persists.

`abort_cleanup` is the release flow's `on_cancellation` / `on_crashed` hook: it cancels the
tag's Cloud Build if one still runs, takes the `canary` tag off the tag's revision wherever that
revision has 0% (an untested revision never keeps a tag URL, nor gets traffic), and leaves
traffic where it is: on the last good revision (or, after a cutover, on the revision whose
canary passed). A kill -9 runs no hook; the next release of the service frees the dead run's
slot (flows/release_slot.py) and converges (its steps are idempotent).

The canary verdict is written to the Variable `shipyard-verdict-{service}` before the cutover,
so a re-run that finds the revision serving knows why it serves (and reports its figures).
"""

from __future__ import annotations

import logging
from typing import Any

from prefect.variables import Variable

from blocks.release_target import ReleaseTarget, sanitize_name

logger = logging.getLogger("shipyard.release")


def verdict_variable(service: str) -> str:
    return sanitize_name(f"shipyard-verdict-{service}", 255)


def record_verdict(service: str, revision: str, figures: dict[str, Any]) -> None:
    Variable.set(
        verdict_variable(service), {"revision": revision, "canary": figures}, overwrite=True
    )


def canary_verdict(service: str, revision: str) -> dict[str, Any] | None:
    """The persisted canary figures of `revision`, if its canary passed and was recorded."""
    saved = Variable.get(verdict_variable(service), default=None)
    if isinstance(saved, dict) and saved.get("revision") == revision:
        figures = saved.get("canary")
        return figures if isinstance(figures, dict) else None
    return None


def _target_of(parameters: dict[str, Any]) -> ReleaseTarget | None:
    target = parameters.get("target", "default")
    try:
        if isinstance(target, ReleaseTarget):
            return target
        if isinstance(target, str):
            return ReleaseTarget.load(target)  # type: ignore[return-value]
        if isinstance(target, dict):
            return ReleaseTarget.model_validate(target)
    except Exception as exc:  # noqa: BLE001 - a hook must not raise; it reports
        logger.warning("release cleanup: cannot load the target: %s", exc)
    return None


def cleanup(target: ReleaseTarget, git_tag: str) -> list[str]:
    """Cancel the tag's running build, clear the tag's canary where it has 0%. What was done."""
    from flows.build import docker_tag
    from flows.region_deploy import clear_failed_step
    from flows.run_context import RunContext
    from tasks import cloud_build as cb

    done: list[str] = []
    ctx = RunContext(target, git_tag, None)
    try:
        client = ctx.cloud.builds_client()
        project = ctx.cloud.resolved_project()
        tag = f'tags="{docker_tag(git_tag)}"'
        for build in client.list_builds(project_id=project, filter=tag):
            if build.status not in cb.TERMINAL:
                cb.cancel_build(client, project, build.id)
                done.append(f"cancelled Cloud Build {build.id}")
    except Exception as exc:  # noqa: BLE001 - keep cleaning the traffic
        done.append(f"could not cancel the build: {exc}")
    for region in target.regions:
        try:
            if clear_failed_step.fn(ctx, region, ctx.gpu_revision):
                done.append(f"cleared the canary tag of {ctx.gpu_revision} in {region}")
        except Exception as exc:  # noqa: BLE001
            done.append(f"{region}: could not clear the canary tag: {exc}")
    return done


def abort_cleanup(flow: Any, flow_run: Any, state: Any) -> None:
    """on_cancellation / on_crashed: leave the service as the last good release left it."""
    parameters = dict(getattr(flow_run, "parameters", None) or {})
    target = _target_of(parameters)
    git_tag = parameters.get("git_tag")
    if target is None or not git_tag or parameters.get("dry_run"):
        return
    for line in cleanup(target, str(git_tag)):
        logger.warning("release %s of %s (%s): %s", git_tag, target.service, state.name, line)
