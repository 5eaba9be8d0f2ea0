"""Stage events: `shipyard.<stage>.started|succeeded|failed|retrying`, one set per stage.

Someone who was not there can follow a release in the Prefect UI's event feed: each stage
(mirror, prewarm, build, exposure, quota, quota-preferences, deploy per region, canary, cutover,
rollback, publish, cpu-fallback) says when it started, how it ended (with seconds and the
cause of a failure) and each retry (attempt and cause). The primary resource is the Cloud Run
service (`shipyard.cloud-run.service.NAME`); the git tag, revision, region, image digest and
the flow run are related resources, so an automation can match on any of them.

Events are POSTed to the Prefect API synchronously (a few ms each): a `started` event is
stored before the stage does anything, so a release killed midway still leaves it. When the
process is terminated (SIGTERM), the stage's `failed` event is sent on the way out.

The release scope (`release_scope(...)`) is a context variable: stages and the Cloud Logging
handler read the service, git tag, region and revision of the current release from it.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.context import FlowRunContext
from prefect.settings import PREFECT_API_URL

__all__ = [
    "ReleaseScope",
    "current_scope",
    "emit_stage_event",
    "release_scope",
    "retry_reporter",
    "stage",
    "stage_hooks",
    "step_stage",
]

PREFIX = "shipyard"
_log = logging.getLogger("shipyard.events")


@dataclass(frozen=True)
class ReleaseScope:
    """What the current release (or flow) is about; labels for events and log entries."""

    service: str | None = None
    git_tag: str | None = None
    flow_run_id: str | None = None
    stage: str | None = None
    region: str | None = None
    revision: str | None = None
    image: str | None = None

    def labels(self) -> dict[str, str]:
        """Cloud Logging labels (only the known ones)."""
        names = ("service", "git_tag", "stage", "region", "revision", "flow_run_id")
        return {n: str(getattr(self, n)) for n in names if getattr(self, n)}


_EMPTY = ReleaseScope()
_SCOPE: contextvars.ContextVar[ReleaseScope] = contextvars.ContextVar("shipyard_release_scope")


def current_scope() -> ReleaseScope:
    scope = _SCOPE.get(_EMPTY)
    if scope.flow_run_id is None:
        run = FlowRunContext.get()
        if run is not None and run.flow_run is not None:
            scope = replace(scope, flow_run_id=str(run.flow_run.id))
    return scope


@contextmanager
def release_scope(**fields: Any) -> Iterator[ReleaseScope]:
    """Set (some of) the scope's fields for the duration of the block."""
    scope = replace(_SCOPE.get(_EMPTY), **{k: v for k, v in fields.items() if v is not None})
    token = _SCOPE.set(scope)
    try:
        yield scope
    finally:
        _SCOPE.reset(token)


# ---------------------------------------------------------------- sending


_clients: dict[str, SyncPrefectClient] = {}
_clients_lock = threading.Lock()


def _client() -> SyncPrefectClient:
    url = str(PREFECT_API_URL.value() or "")
    with _clients_lock:
        client = _clients.get(url)
        if client is None:
            client = get_client(sync_client=True)
            client.__enter__()
            _clients[url] = client
        return client


def _digest(image: str | None) -> str | None:
    return image.split("@", 1)[1] if image and "@" in image else None


def _related(scope: ReleaseScope) -> list[dict[str, str]]:
    related = []
    if scope.git_tag:
        related.append(_res(f"shipyard.git-tag.{scope.git_tag}", "git-tag", scope.git_tag))
    if scope.revision:
        related.append(
            _res(f"shipyard.cloud-run.revision.{scope.revision}", "revision", scope.revision)
        )
    if scope.region:
        related.append(_res(f"shipyard.gcp.region.{scope.region}", "region", scope.region))
    digest = _digest(scope.image)
    if digest:
        related.append(_res(f"shipyard.image.{digest}", "image-digest", digest))
    if scope.flow_run_id:
        related.append(_res(f"prefect.flow-run.{scope.flow_run_id}", "flow-run", scope.flow_run_id))
    return related


def _res(rid: str, role: str, name: str) -> dict[str, str]:
    return {
        "prefect.resource.id": rid,
        "prefect.resource.role": role,
        "prefect.resource.name": name,
    }


def _primary(scope: ReleaseScope, resource: str | None) -> dict[str, str]:
    if scope.service:
        return {
            "prefect.resource.id": f"shipyard.cloud-run.service.{scope.service}",
            "prefect.resource.name": scope.service,
        }
    name = resource or "pipeline"
    return {"prefect.resource.id": f"shipyard.{name}", "prefect.resource.name": name}


def emit_stage_event(
    stage_name: str,
    phase: str,
    payload: dict[str, Any] | None = None,
    *,
    scope: ReleaseScope | None = None,
    resource: str | None = None,
) -> str | None:
    """Send `shipyard.<stage>.<phase>` now; returns the event id (None if it could not be sent:
    observability must never fail the release)."""
    scope = scope or current_scope()
    event_id = str(uuid.uuid4())
    body = {
        "id": event_id,
        "occurred": dt.datetime.now(dt.UTC).isoformat(),
        "event": f"{PREFIX}.{stage_name}.{phase}",
        "resource": _primary(scope, resource),
        "related": _related(scope),
        "payload": {
            "stage": stage_name,
            "git_tag": scope.git_tag,
            "region": scope.region,
            "revision": scope.revision,
            "image": scope.image,
            **(payload or {}),
        },
    }
    try:
        _client().request("POST", "/events", json=[body])
    except Exception as exc:  # noqa: BLE001 - a lost event is logged, never fatal
        _log.warning("event %s not sent: %s", body["event"], exc)
        return None
    return event_id


def short_cause(exc: BaseException | str) -> str:
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:297] + "..."


# ---------------------------------------------------------------- stages


@contextmanager
def stage(
    name: str,
    *,
    region: str | None = None,
    revision: str | None = None,
    image: str | None = None,
    resource: str | None = None,
) -> Iterator[dict[str, Any]]:
    """`with stage("canary", region=r, revision=rev) as info:` emits started, then succeeded
    (with seconds and whatever the block put in `info`) or failed (with the cause, also for a
    termination signal), and sets the scope's stage/region/revision for logs inside.
    A block that ends normally but judged the stage failed (a canary verdict) sets
    `info["failed"]` to the cause."""
    with release_scope(stage=name, region=region, revision=revision, image=image):
        emit_stage_event(name, "started", resource=resource)
        info: dict[str, Any] = {}
        started = time.perf_counter()
        try:
            yield info
        except BaseException as exc:
            info.pop("failed", None)
            seconds = round(time.perf_counter() - started, 3)
            emit_stage_event(
                name,
                "failed",
                {"seconds": seconds, "cause": short_cause(exc), **info},
                resource=resource,
            )
            raise
        verdict = info.pop("failed", None)
        seconds = round(time.perf_counter() - started, 3)
        if verdict:
            payload = {"seconds": seconds, "cause": short_cause(str(verdict)), **info}
            emit_stage_event(name, "failed", payload, resource=resource)
        else:
            emit_stage_event(name, "succeeded", {"seconds": seconds, **info}, resource=resource)


# Release step names (flows/release/steps.py) -> (stage, emits its own started/ended events).
# Steps not named here (find-release, clear:*, base-image-pin) are bookkeeping, not stages;
# canary sub-steps report their retries under the canary stage, which release.py wraps whole.
_STEP_STAGES: dict[str, tuple[str, bool]] = {
    "check-exposure": ("exposure", True),
    "quota": ("quota", True),
    "quota-preferences": ("quota-preferences", True),
    "cutover": ("cutover", True),
    "rollback": ("rollback", True),
    "publish-url": ("publish", True),
    "cpu-path": ("cpu-fallback", True),
}


def stage_of_step(step_name: str) -> tuple[str | None, str | None, bool]:
    """(stage, region, own events) of a release step name."""
    if step_name.startswith("deploy:"):
        return "deploy", step_name.split(":", 1)[1], True
    if step_name.startswith(("canary-", "cpu-baseline")):
        return "canary", None, False
    found = _STEP_STAGES.get(step_name)
    return (found[0], None, found[1]) if found else (None, None, False)


@contextmanager
def step_stage(step_name: str, *args: Any) -> Iterator[None]:
    """The stage events of one release step (nothing for bookkeeping steps)."""
    name, region, own = stage_of_step(step_name)
    if name is None or not own:
        yield
        return
    strings = [a for a in args if isinstance(a, str)]
    if region is None:
        region = next((a for a in strings if _looks_like_region(a)), None)
    # Steps take (ctx|target, region, revision, ...): the first other plain string is a revision.
    revision = next((a for a in strings[1:] if "://" not in a and a != region), None)
    ctx = args[0] if args else None
    if revision is None and name == "deploy":
        revision = getattr(ctx, "gpu_revision", None)
    if revision is None and name == "cpu-fallback":
        revision = getattr(ctx, "cpu_revision", None)
    with stage(name, region=region, revision=revision, image=getattr(ctx, "image", None)):
        yield


def _looks_like_region(text: str) -> bool:
    parts = text.split("-")
    return len(parts) == 2 and parts[1][-1:].isdigit() and parts[0].isalpha()


def retry_reporter(step_name: str, condition: Callable[..., bool]) -> Callable[..., bool]:
    """Wrap a Prefect `retry_condition_fn`: when it grants a retry, emit `<stage>.retrying`
    with the attempt about to run and the cause. Prefect asks only while retries remain."""
    name, region, _ = stage_of_step(step_name)

    def condition_and_report(task: Any, task_run: Any, state: Any) -> bool:
        retry = condition(task, task_run, state)
        if retry and name is not None:
            cause = state.message or ""
            try:
                exc = state.result(raise_on_failure=False)
                if isinstance(exc, BaseException):
                    cause = short_cause(exc)
            except Exception:  # noqa: BLE001, S110 - the message is enough then
                pass
            with release_scope(region=region):
                emit_stage_event(
                    name,
                    "retrying",
                    {"attempt": task_run.run_count + 1, "step": step_name, "cause": cause},
                )
        return retry

    return condition_and_report


# ---------------------------------------------------------------- whole flows as stages


def stage_hooks(name: str, resource_parameter: str | None = None) -> Any:
    """Flow state hooks making a whole flow one stage: `@flow(..., **stage_hooks("mirror"))`.

    on_running -> started; on_completion -> succeeded; on_failure/on_crashed/on_cancellation
    -> failed with the state's message. `resource_parameter` names the flow parameter used as
    the primary resource when no release scope gives a service (e.g. the mirror destination).
    """

    def scope_of(flow_run: Any) -> tuple[ReleaseScope, str | None]:
        scope = replace(current_scope(), stage=name, flow_run_id=str(flow_run.id))
        params = flow_run.parameters or {}
        if scope.git_tag is None and isinstance(params.get("git_tag"), str):
            scope = replace(scope, git_tag=params["git_tag"])
        res = params.get(resource_parameter) if resource_parameter else None
        return scope, f"{name}.{res}" if isinstance(res, str) and res else name

    def started(flow: Any, flow_run: Any, state: Any) -> None:
        scope, res = scope_of(flow_run)
        emit_stage_event(name, "started", scope=scope, resource=res)

    def succeeded(flow: Any, flow_run: Any, state: Any) -> None:
        scope, res = scope_of(flow_run)
        emit_stage_event(name, "succeeded", _timing(flow_run), scope=scope, resource=res)

    def failed(flow: Any, flow_run: Any, state: Any) -> None:
        scope, res = scope_of(flow_run)
        payload = {**_timing(flow_run), "cause": short_cause(state.message or state.name)}
        emit_stage_event(name, "failed", payload, scope=scope, resource=res)

    return {
        "on_running": [started],
        "on_completion": [succeeded],
        "on_failure": [failed],
        "on_crashed": [failed],
        "on_cancellation": [failed],
    }


def _timing(flow_run: Any) -> dict[str, Any]:
    start = getattr(flow_run, "start_time", None)
    if start is None:
        return {}
    return {"seconds": round((dt.datetime.now(dt.UTC) - start).total_seconds(), 3)}
