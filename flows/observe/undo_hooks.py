"""Undo on interrupt: what a flow that changed something outside takes back when it stops midway.

Prefect 3.8.8 stops a flow run three ways before its own code can clean up:

- its `timeout_seconds` runs out: the engine raises `FlowRunTimeoutError` in the body and ends
  the run Failed with the name `TimedOut` (prefect/flow_engine.py, `handle_timeout`). There is
  no `on_timeout` hook: Prefect runs the `on_failure` hooks. Any other `TimeoutError` the body
  lets out ends the run `TimedOut` too (a wait that expired, e.g. a build followed past its
  deadline): the body did not handle it either;
- it is cancelled: `on_cancellation` (run by the engine, or by the runner that killed it);
- it crashes (a termination signal, a BaseException): `on_crashed`.

An ordinary failure also runs `on_failure`, but the flow raised it after deciding what to leave
(a release rolled back, a build that failed on Cloud Build): then there is nothing to undo. So
`undo_hooks(undo)` runs `undo` on `on_crashed` and `on_cancellation`, and on `on_failure` only
when the state is `TimedOut`. A kill -9 runs no hook at all; each flow says what converges then.

What each flow undoes (the hooks live beside the flows):

| flow | left outside when interrupted | undo |
| --- | --- | --- |
| release | its tag's Cloud Build still running; the `canary` tag on its untested revision (and the CPU revision's `baseline` tag) | cancel the build, take the tags off; traffic stays on the last good revision (flows/release/hooks.py) |
| build-release-image | its Cloud Build still running | cancel it (`cancel_builds_hook`); a Docker build stops with its connection |
| prewarm-cache-tiers | a tier's Cloud Build still running | cancel it (`cancel_builds_hook`) |
| mirror_base_image | blobs pushed by digest, no tag moved, no pin written | nothing (see flows/mirror/flow.py) |
| rollback | one traffic update, atomic on Cloud Run | nothing (see flows/deploy/rollback.py) |

`cancel_builds_hook` finds the builds to cancel through the Cloud Build API (the tag Shipyard
gives them, created since the run started), so it works in the runner's process too, where a
cancelled run's hooks run after its own process was stopped.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Callable
from typing import Any, cast

from prefect.context import FlowRunContext

from shipyard.blocks.build_settings import BuildSettings
from shipyard.blocks.cloud import GoogleCloud, default_cloud
from shipyard.tasks import cloud_build as cb
from shipyard.tasks.errors import is_transient
from shipyard.tasks.waiting import wait_for

__all__ = [
    "TIMED_OUT",
    "Hook",
    "cancel_builds_hook",
    "cancel_running_builds",
    "combined",
    "run_parameters",
    "timed_out",
    "undo_hooks",
]

TIMED_OUT = "TimedOut"  # the state name Prefect 3.8.8 gives a flow run past timeout_seconds

Hook = Callable[[Any, Any, Any], None]

logger = logging.getLogger("shipyard.undo")


def timed_out(state: Any) -> bool:
    """The run ended because time ran out (not an ordinary failure the flow handled)."""
    return bool(state.is_failed()) and state.name == TIMED_OUT


def _when_timed_out(undo: Hook) -> Hook:
    def on_failure(flow: Any, flow_run: Any, state: Any) -> None:
        if timed_out(state):
            undo(flow, flow_run, state)

    on_failure.__name__ = f"{getattr(undo, '__name__', 'undo')}_when_timed_out"
    return on_failure


def undo_hooks(undo: Hook) -> dict[str, list[Hook]]:
    """`undo` on a timeout (on_failure, TimedOut only), a crash and a cancellation."""
    return {
        "on_failure": [_when_timed_out(undo)],
        "on_crashed": [undo],
        "on_cancellation": [undo],
    }


def combined(*hook_sets: dict[str, list[Any]]) -> Any:
    """Hook sets merged per kind, in order: `@flow(**combined(stage_hooks("x"), undo_hooks(f)))`
    (the stage's `failed` event is sent first, then the undo). Typed Any, as `stage_hooks`:
    Prefect's `@flow` overloads type each hook list by keyword, which a `**` mapping cannot."""
    merged: dict[str, list[Any]] = {}
    for hooks in hook_sets:
        for kind, listed in hooks.items():
            merged.setdefault(kind, []).extend(listed)
    return merged


def run_parameters(flow_run: Any) -> dict[str, Any]:
    """The run's parameters as the flow got them when the hook runs inside the run (a timeout:
    blocks stay blocks), else as the API holds them (a runner's hook, a crashed subflow)."""
    ctx = FlowRunContext.get()
    if ctx is not None and ctx.flow_run is not None and ctx.flow_run.id == flow_run.id:
        return dict(ctx.parameters or {})
    return dict(getattr(flow_run, "parameters", None) or {})


# ---------------------------------------------------------------- Cloud Build


def cancel_running_builds(
    cloud: GoogleCloud, tag: str, since: dt.datetime | None = None
) -> list[str]:
    """Cancel every build under the build tag `tag` that has not ended (created at or after
    `since`, when given); what was done, one line per build. Each call is retried on transient
    errors by the waiter."""
    client = cloud.builds_client()
    project = cloud.resolved_project()

    def retried(what: str, call: Callable[[], Any]) -> Any:
        return wait_for(
            call, what=what, first_delay_s=0.2, max_delay_s=2.0, attempts=4, retry_on=is_transient
        )

    builds = retried(
        f"listing builds tagged {tag}", lambda: cb.ongoing_builds(client, project, tag)
    )
    done = []
    for build in builds:
        created = build.create_time
        if since is not None and created is not None and created < since:
            continue  # an earlier run's build
        build_id: str = build.id
        retried(
            f"cancelling build {build_id}",
            functools.partial(cb.cancel_build, client, project, build_id),
        )
        done.append(f"cancelled Cloud Build {build.id} ({tag})")
    return done


def _cloud_of(parameters: dict[str, Any]) -> GoogleCloud:
    from shipyard.blocks.release_target import ReleaseTarget

    given = parameters.get("cloud")
    if isinstance(given, GoogleCloud):
        return given
    if isinstance(given, dict):
        return GoogleCloud.model_validate(given)
    if parameters.get("cloud_block"):
        return cast(GoogleCloud, GoogleCloud.load(parameters["cloud_block"]))
    target = parameters.get("target")
    if isinstance(target, str) and target:
        return cast(ReleaseTarget, ReleaseTarget.load(target)).google()
    return default_cloud()


def _settings_of(parameters: dict[str, Any]) -> BuildSettings:
    from shipyard.blocks.release_target import ReleaseTarget

    name = parameters.get("settings_block")
    target = parameters.get("target")
    if not name and isinstance(target, str) and target:
        name = cast(ReleaseTarget, ReleaseTarget.load(target)).build_settings_block
    return cast(BuildSettings, BuildSettings.load(name)) if name else BuildSettings()


# Clocks: Cloud Build's createTime against the Prefect server's start time of the run.
_CLOCK_SKEW = dt.timedelta(seconds=30)


def cancel_builds_hook(
    what: str, tag_of: Callable[[dict[str, Any]], str | None], *, since_start: bool
) -> Hook:
    """A hook that cancels the run's Cloud Builds still running: those under the build tag
    `tag_of(parameters)`; with `since_start`, only those created since the run started (a
    prewarm tag is every prewarm's; a release's git tag is its own, and a build of it that the
    run adopted, started by a killed run, is cancelled too: nothing follows it any more).

    A Docker build (BuildSettings.backend "docker") needs no call: it is the stream of the run's
    request to the daemon, which cancels a build whose client went away (the run's process
    ended, or the run left the `with` of its client on the way out). Docker's words: "If the
    docker client loses connection to the daemon, the build is canceled" (moby/moby#9774; the
    body goes with a Content-Length, not the chunked upload of moby/moby#32417)."""

    def cancel_builds(flow: Any, flow_run: Any, state: Any) -> None:
        parameters = run_parameters(flow_run)
        try:
            tag = tag_of(parameters)
            if not tag:
                return
            settings = _settings_of(parameters)
            if settings.backend == "docker":
                logger.warning(
                    "%s (%s): the Docker build stopped with its connection", what, state.name
                )
                return
            started = getattr(flow_run, "start_time", None)
            since = started - _CLOCK_SKEW if since_start and started is not None else None
            lines = cancel_running_builds(_cloud_of(parameters), tag, since)
        except Exception as exc:  # noqa: BLE001 - a hook must not raise; it reports
            logger.warning("%s (%s): could not cancel its Cloud Build: %s", what, state.name, exc)
            return
        for line in lines or ["no Cloud Build of the run was still running"]:
            logger.warning("%s (%s): %s", what, state.name, line)

    cancel_builds.__name__ = f"cancel_{what.replace(' ', '_').replace('-', '_')}_builds"
    return cancel_builds
