"""What makes one release observable, in one place: the release scope, its `release.started`
and `release.failed` events, and its log lines in Cloud Logging.

`observed_release(target, git_tag)` wraps the body of the release flow. The `release_crashed`
flow hook covers a crash Prefect reports outside the body.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect.exceptions import Pause

from shipyard.blocks.cloud import GoogleCloud
from shipyard.flows.observe.stage_events import (
    current_scope,
    emit_stage_event,
    release_scope,
    short_cause,
)
from shipyard.tasks.cloud_logging_handler import CloudLoggingHandler

__all__ = ["PIPELINE_LOGGERS", "observed_release", "pipeline_logging", "release_crashed"]

# The pipeline's own log lines: Prefect's run loggers (get_run_logger) and our own.
PIPELINE_LOGGERS = ("prefect.flow_runs", "prefect.task_runs", "shipyard")

_failed_sent: set[str] = set()


def _labels(record: logging.LogRecord) -> dict[str, str]:
    labels = current_scope().labels()
    run_id = getattr(record, "flow_run_id", None)
    if run_id and "flow_run_id" not in labels:
        labels["flow_run_id"] = str(run_id)
    return labels


@contextmanager
def pipeline_logging(cloud: GoogleCloud) -> Iterator[CloudLoggingHandler | None]:
    """Attach a Cloud Logging handler to the pipeline's loggers when the block says so."""
    if not cloud.pipeline_logging():
        yield None
        return
    handler = CloudLoggingHandler(cloud.logging_client(), labels=_labels)
    loggers = [logging.getLogger(n) for n in PIPELINE_LOGGERS]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield handler
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
        handler.close()


@contextmanager
def observed_release(target: Any, git_tag: str) -> Iterator[None]:
    """Scope + release.started/failed events + Cloud Logging for the body of a release."""
    with (
        release_scope(service=target.service, git_tag=git_tag),
        pipeline_logging(target.google()),
    ):
        scope = current_scope()
        emit_stage_event("release", "started")
        try:
            yield
        except Pause:  # suspended at a rollout gate: not a failure, its re-run finishes it
            raise
        except BaseException as exc:
            emit_stage_event("release", "failed", {"cause": short_cause(exc)})
            if scope.flow_run_id:
                _failed_sent.add(scope.flow_run_id)
            raise


def release_crashed(flow: Any, flow_run: Any, state: Any) -> None:
    """Flow hook (on_crashed): `shipyard.release.failed` unless the body already sent it."""
    run_id = str(flow_run.id)
    if run_id in _failed_sent:
        return
    params = flow_run.parameters or {}
    target = params.get("target")
    service = target.get("service") if isinstance(target, dict) else None
    with release_scope(service=service, git_tag=params.get("git_tag"), flow_run_id=run_id):
        emit_stage_event("release", "failed", {"cause": short_cause(state.message or "crashed")})
