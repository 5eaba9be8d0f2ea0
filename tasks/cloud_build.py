"""Cloud Build v1, thinly: submit a build, follow it to the end, cancel it, fetch its log.

Plain typed functions over the official `cloudbuild_v1.CloudBuildClient` (REST) and
google-cloud-logging's client; they know nothing of releases or cache tiers. Built-in client
retries are off (`retry=None`): the caller's policy (tasks/errors.py) decides. Every call has a
deadline (`timeout=`, tasks/deadlines.py: the client's, or what a wait has left).

Following a build polls `get_build` with the waiter (tasks/waiting.py), from `poll_s` with its
backoff up to `max_poll_s` (google-api-core's default LRO polling starts at 1 s and grows to
60 s: too coarse for minute-long builds and for the sandbox). The log is read from Cloud Logging
(resource type "build", label build_id), which is where `options.logging: CLOUD_LOGGING_ONLY`
sends it; it arrives with a delay, so it is polled (the same waiter) until complete.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from google.cloud.devtools import cloudbuild_v1

from shipyard.tasks import deadlines
from shipyard.tasks.cloud_logging import LoggingClient
from shipyard.tasks.errors import WaitExpired
from shipyard.tasks.waiting import Deadline, NotYet, wait_for

__all__ = [
    "ONGOING",
    "TERMINAL",
    "BuildTimeout",
    "cancel_build",
    "fetch_build_log",
    "find_ongoing",
    "find_submitted",
    "get_build",
    "ongoing_builds",
    "submit_build",
    "wait_build",
]

Status = cloudbuild_v1.Build.Status
TERMINAL = frozenset(
    {
        Status.SUCCESS,
        Status.FAILURE,
        Status.INTERNAL_ERROR,
        Status.TIMEOUT,
        Status.CANCELLED,
        Status.EXPIRED,
    }
)


class BuildTimeout(WaitExpired):
    """The build did not reach a terminal status within the caller's deadline (never retried)."""


def submit_build(
    client: cloudbuild_v1.CloudBuildClient, project: str, build: cloudbuild_v1.Build
) -> cloudbuild_v1.Build:
    """Create the build; returns the Build from the operation's metadata (id, status QUEUED)."""
    operation = client.create_build(
        project_id=project, build=build, retry=None, timeout=deadlines.of(client).google_write_s
    )
    submitted: cloudbuild_v1.Build = operation.metadata.build
    return submitted


def find_submitted(
    client: cloudbuild_v1.CloudBuildClient, project: str, submission_tag: str
) -> cloudbuild_v1.Build | None:
    """The build an earlier attempt submitted under `submission_tag` (a build tag), if Google
    accepted it: list builds with `filter=tags="..."` (the Cloud Build filter syntax)."""
    builds = client.list_builds(
        request=cloudbuild_v1.ListBuildsRequest(
            project_id=project, filter=f'tags="{submission_tag}"', page_size=5
        ),
        retry=None,
        timeout=deadlines.of(client).google_read_s,
    )
    for build in builds:
        return build
    return None


ONGOING = ("PENDING", "QUEUED", "WORKING")


def find_ongoing(
    client: cloudbuild_v1.CloudBuildClient, project: str, tag: str
) -> cloudbuild_v1.Build | None:
    """A build under the build tag `tag` that has not ended yet (PENDING, QUEUED, WORKING).

    One `tags="..."` term per filter (Cloud Build's list filter); the status is checked here."""
    builds = client.list_builds(
        request=cloudbuild_v1.ListBuildsRequest(
            project_id=project, filter=f'tags="{tag}"', page_size=50
        ),
        retry=None,
        timeout=deadlines.of(client).google_read_s,
    )
    for build in builds:
        if build.status.name in ONGOING:
            return build
    return None


def ongoing_builds(
    client: cloudbuild_v1.CloudBuildClient, project: str, tag: str, *, timeout: float | None = None
) -> list[cloudbuild_v1.Build]:
    """Every build under the build tag `tag` that has not ended yet (what an interrupted run
    leaves running: flows/observe/undo_hooks.py cancels them)."""
    builds = client.list_builds(
        request=cloudbuild_v1.ListBuildsRequest(
            project_id=project, filter=f'tags="{tag}"', page_size=50
        ),
        retry=None,
        timeout=timeout or deadlines.of(client).google_read_s,
    )
    return [build for build in builds if build.status.name in ONGOING]


def get_build(
    client: cloudbuild_v1.CloudBuildClient,
    project: str,
    build_id: str,
    *,
    timeout: float | None = None,
) -> cloudbuild_v1.Build:
    """The build; `timeout`: seconds for the call (default: the client's read deadline)."""
    return client.get_build(
        project_id=project,
        id=build_id,
        retry=None,
        timeout=timeout or deadlines.of(client).google_read_s,
    )


def cancel_build(
    client: cloudbuild_v1.CloudBuildClient, project: str, build_id: str
) -> cloudbuild_v1.Build:
    return client.cancel_build(
        project_id=project, id=build_id, retry=None, timeout=deadlines.of(client).google_write_s
    )


def wait_build(
    client: cloudbuild_v1.CloudBuildClient,
    project: str,
    build_id: str,
    *,
    timeout_s: float,
    poll_s: float = 0.2,
    max_poll_s: float = 5.0,
    on_change: Callable[[cloudbuild_v1.Build], None] | None = None,
    get: Callable[[str], cloudbuild_v1.Build] | None = None,
) -> cloudbuild_v1.Build:
    """Poll until the build is terminal (the waiter: API errors go to the caller); `on_change`
    sees each new status. `get` overrides the read (e.g. a retried one)."""
    deadline = Deadline(timeout_s)
    per_call_s = deadlines.of(client).google_read_s
    read = get or (
        lambda bid: get_build(client, project, bid, timeout=deadlines.within(per_call_s, deadline))
    )
    last: list[object] = [None]

    def check() -> cloudbuild_v1.Build:
        build = read(build_id)
        if build.status != last[0]:
            last[0] = build.status
            if on_change is not None:
                on_change(build)
        if build.status not in TERMINAL:  # the waiter's 15 s heartbeat line says this
            done = sum(1 for s in build.steps if s.status == Status.SUCCESS)
            now = next((s.id or s.name for s in build.steps if s.status == Status.WORKING), "")
            raise NotYet(
                f"{build.status.name}, {done} of {len(build.steps)} steps done"
                + (f", now: {now}" if now else "")
            )
        return build

    try:
        return wait_for(
            check,
            what=f"build {build_id}",
            first_delay_s=poll_s,
            max_delay_s=max_poll_s,
            deadline=deadline,
        )
    except WaitExpired as exc:
        status = getattr(last[0], "name", last[0])
        raise BuildTimeout(
            f"build {build_id} still {status} after {timeout_s:.0f}s; it keeps "
            "running on Cloud Build (cancel it there or raise the timeout)"
        ) from exc


# The build-level lines Cloud Build ends a finished build's log with.
_LOG_END = re.compile(r"^(DONE|TIMEOUT|CANCELLED|ERROR\b.*)$")


def fetch_build_log(
    logging_client: LoggingClient, project: str, build_id: str, *, wait_s: float = 30.0
) -> list[str]:
    """A finished build's log lines, oldest first, complete: build logs reach Cloud Logging
    with a delay, so read until the log ends as Cloud Build ends it (`DONE`, `ERROR ...`,
    `TIMEOUT`, `CANCELLED`) and has stopped growing, for at most `wait_s` (then what is
    there)."""
    lines: list[str] = []
    last = -1

    def complete() -> list[str]:
        nonlocal lines, last
        lines = _read_build_log(logging_client, project, build_id)
        ended = bool(lines) and _LOG_END.match(lines[-1]) is not None
        if ended and len(lines) == last:
            return lines
        last = len(lines)
        raise NotYet(f"{last} lines")

    try:
        return wait_for(
            complete,
            what=f"the log of build {build_id}",
            first_delay_s=0.1,
            max_delay_s=2.0,
            deadline=Deadline(wait_s),
        )
    except WaitExpired:
        return lines


def _read_build_log(logging_client: LoggingClient, project: str, build_id: str) -> list[str]:
    from google.cloud import logging_v2

    entries = logging_client.list_entries(
        resource_names=[f"projects/{project}"],
        filter_=f'resource.type="build" AND resource.labels.build_id="{build_id}"',
        order_by=logging_v2.ASCENDING,
        page_size=1000,
    )
    lines: list[str] = []
    for entry in entries:
        payload = entry.payload
        if isinstance(payload, str):
            lines.append(payload)
        elif isinstance(payload, dict) and "message" in payload:
            lines.append(str(payload["message"]))
    return lines
