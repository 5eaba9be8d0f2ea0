"""Run one Cloud Build request: submit (retried on transient errors only), follow with fast
polling and progress logs, fetch the log from Cloud Logging, parse CACHED vs RUN.

Every pause is the waiter's (tasks/waiting.py: one backoff rule); task retries are Prefect's.

A build that did not succeed raises `BuildFailedError` naming the Cloud Build step, the
Dockerfile step, the error and the last log lines.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from google.cloud.devtools import cloudbuild_v1
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from shipyard.blocks.build_settings import BuildSettings
from shipyard.blocks.cloud import GoogleCloud
from shipyard.flows.observe.progress import Progress
from shipyard.tasks import cloud_build as cb
from shipyard.tasks.buildkit_log import BuildLogReport, parse_buildkit_log
from shipyard.tasks.errors import PermanentError, is_transient, retry_condition_fn
from shipyard.tasks.waiting import wait_for


class BuildFailedError(PermanentError):
    """A Cloud Build build ended without SUCCESS (or was refused)."""

    def __init__(self, message: str, *, build_id: str = "", step: str = "", detail: str = ""):
        super().__init__(message)
        self.build_id, self.step, self.detail = build_id, step, detail


SUBMISSION_PREFIX = "shipyard-submit-"
# A task that reads or pushes (safe to repeat): three retries on transient errors, no caching.
RETRIED_READ: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": [0.5, 1, 2],
    "retry_condition_fn": retry_condition_fn,
    "cache_policy": NO_CACHE,
    "persist_result": False,
}


def submission_tag() -> str:
    """A build tag unique to one submission (Cloud Build tags: [\\w][\\w.-]{0,127})."""
    return f"{SUBMISSION_PREFIX}{uuid.uuid4().hex}"


@dataclass
class BuildRun:
    build_id: str
    status: str
    images: dict[str, str]  # name -> digest (results.images; empty when buildx pushed itself)
    seconds: float
    log_url: str
    report: BuildLogReport
    tail: list[str] = field(default_factory=list)


# A task calling the Cloud Build API: retried on transient errors only.
API_TASK: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": [0.5, 1, 2],
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_condition_fn,
    "cache_policy": NO_CACHE,
    "persist_result": False,
}


@task(name="cloud-build-submit", **API_TASK)
def submit_task(cloud: GoogleCloud, request: cloudbuild_v1.Build) -> str:
    """Submit once: the request carries a unique submission tag (`submission_tag`), and a
    retried attempt first looks for a build under that tag, so a timeout after Google accepted
    the request does not start a second build."""
    client = cloud.builds_client()
    project = cloud.resolved_project()
    tag = next((t for t in request.tags if t.startswith(SUBMISSION_PREFIX)), None)
    run = TaskRunContext.get()
    if tag is not None and run is not None and run.task_run.run_count > 1:
        earlier = cb.find_submitted(client, project, tag)
        if earlier is not None:
            get_run_logger().info("build %s was already submitted (tag %s)", earlier.id, tag)
            return earlier.id
    try:
        build = cb.submit_build(client, project, request)
    except Exception as exc:
        if is_transient(exc):
            raise
        raise BuildFailedError(f"Cloud Build refused the build request: {exc}") from None
    return build.id


@task(name="cloud-build-find-ongoing", **API_TASK)
def find_ongoing_task(cloud: GoogleCloud, tag: str) -> str | None:
    """The id of a build under `tag` still running (a killed run's build), or None."""
    build = cb.find_ongoing(cloud.builds_client(), cloud.resolved_project(), tag)
    return build.id if build is not None else None


@task(name="cloud-build-follow", cache_policy=NO_CACHE, persist_result=False)
def follow_task(
    cloud: GoogleCloud, build_id: str, timeout_s: float, poll_s: float
) -> dict[str, Any]:
    logger = get_run_logger()
    client = cloud.builds_client()
    project = cloud.resolved_project()

    def read(bid: str) -> cloudbuild_v1.Build:
        """One read of the build, asked up to five times on transient errors."""
        return wait_for(
            lambda: cb.get_build(client, project, bid),
            what=f"reading build {bid}",
            first_delay_s=0.4,
            max_delay_s=2.0,
            attempts=5,
            retry_on=is_transient,
        )

    progress = Progress(f"build-{build_id}", f"Cloud Build {build_id}")

    def changed(build: cloudbuild_v1.Build) -> None:
        logger.info("build %s: %s", build.id, build.status.name)
        done = sum(1 for s in build.steps if s.status == cloudbuild_v1.Build.Status.SUCCESS)
        total = len(build.steps)
        progress.update(
            done, total, f"Cloud Build {build.id}: {build.status.name}, {done}/{total} steps"
        )

    build = cb.wait_build(
        client, project, build_id, timeout_s=timeout_s, poll_s=poll_s, on_change=changed, get=read
    )
    return {
        "status": build.status.name,
        "status_detail": build.status_detail,
        "failure": build.failure_info.detail if build.failure_info else "",
        "images": {i.name: i.digest for i in build.results.images},
        "log_url": build.log_url,
        "seconds": (
            (build.finish_time - build.start_time).total_seconds()
            if build.start_time and build.finish_time
            else 0.0
        ),
    }


@task(name="cloud-build-log", **RETRIED_READ)
def log_task(cloud: GoogleCloud, build_id: str) -> list[str]:
    return cb.fetch_build_log(cloud.logging_client(), cloud.resolved_project(), build_id)


def run_cloud_build(
    cloud: GoogleCloud,
    settings: BuildSettings,
    request: cloudbuild_v1.Build,
    what: str,
    adopt_tag: str | None = None,
) -> BuildRun:
    """Submit, follow, read the log; raise BuildFailedError unless the build succeeded.

    `adopt_tag`: a build tag naming what is built (the commit); a build under it that is still
    running (a run killed mid-build keeps its Cloud Build going) is followed instead of
    submitting a second one.
    """
    logger = get_run_logger()
    started = time.monotonic()
    build_id = find_ongoing_task(cloud, adopt_tag) if adopt_tag else None
    if build_id:
        logger.info(
            "%s: following Cloud Build %s, started earlier and still running", what, build_id
        )
    else:
        request = cloudbuild_v1.Build(request)
        request.tags.append(submission_tag())
        build_id = submit_task(cloud, request)
        logger.info("%s: submitted Cloud Build %s", what, build_id)
    final = follow_task(cloud, build_id, settings.timeout_s + 120, settings.poll_s)
    lines = log_task(cloud, build_id)
    report = parse_buildkit_log(lines)
    run = BuildRun(
        build_id,
        final["status"],
        final["images"],
        final["seconds"] or round(time.monotonic() - started, 3),
        final["log_url"],
        report,
        [line for line in lines if line.strip()][-15:],
    )
    logger.info(
        "%s: build %s %s in %.1fs; steps CACHED %d, RUN %d (hit rate %.0f%%)",
        what,
        build_id,
        run.status,
        run.seconds,
        report.cached,
        report.run,
        100 * report.hit_rate,
    )
    if run.status != "SUCCESS":
        step, error = report.failure()
        if not error and final["failure"] != final["status_detail"]:
            error = final["failure"]
        tail = "\n".join(run.tail)
        raise BuildFailedError(
            f"{what}: Cloud Build {build_id} ended {run.status}: {final['status_detail']}"
            + (f"; failing step {step}" if step else "")
            + (f": {error}" if error else "")
            + f"\nlast log lines:\n{tail}",
            build_id=build_id,
            step=step,
            detail=error or final["status_detail"],
        )
    return run
