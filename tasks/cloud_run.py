"""Cloud Run Admin v2, thinly: get/create/update a service, wait for a revision's Ready, set traffic.

Plain typed functions over the official `run_v2` clients (REST). They know nothing of releases:
callers pass the clients, names and templates, and decide what an error means. Transient API
errors are raised as the client raises them (google.api_core exceptions) for the caller's retry
policy; built-in client retries are switched off (`retry=None`) so one policy applies.

Every call has a deadline (tasks/deadlines.py: `timeout=`, the request's socket timeout over
REST); without one the client waits forever on a server that accepted and never answers.

Long-running operations are waited for with google-api-core's own poller
(`operation.result(polling=...)`), and a revision's Ready condition with the waiter
(tasks/waiting.py), both from `poll_s` with the one backoff rule (the default polling starts at
1 s and grows to 20 s, too coarse to report a Ready condition promptly). The timeout is the
whole wait's: each poll gets at most what is left of it, and a transient error of a poll is
polled again within it (the step's retry would start a whole new wait). A wait that runs out
raises ReadyTimeout: a verdict, never retried.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterable
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Protocol

from google.api_core import exceptions as gexc
from google.api_core import operation as gop
from google.api_core.client_options import ClientOptions
from google.api_core.future.polling import DEFAULT_POLLING
from google.api_core.retry import Retry
from google.cloud import run_v2
from google.longrunning import operations_pb2
from google.protobuf import duration_pb2, field_mask_pb2

from shipyard.tasks import deadlines
from shipyard.tasks.errors import PermanentError, WaitExpired, is_transient
from shipyard.tasks.waiting import HEARTBEAT_S, MULTIPLIER, Deadline, Heartbeat, NotYet, wait_for

__all__ = [
    "MissingRevision",
    "ReadyTimeout",
    "RevisionFailed",
    "RevisionNotReady",
    "Traffic",
    "create_service",
    "delete_service",
    "get_revision",
    "get_service",
    "list_revisions",
    "missing_revision",
    "ready_state",
    "refuse_unready",
    "replaced",
    "revision_path",
    "service_path",
    "serving_traffic",
    "set_traffic",
    "tag_uri",
    "traffic_of",
    "update_service",
    "wait_operation",
    "wait_revision_ready",
]

READY = "Ready"
SUCCEEDED = run_v2.Condition.State.CONDITION_SUCCEEDED
FAILED = run_v2.Condition.State.CONDITION_FAILED
LATEST = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
BY_REVISION = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION


class RevisionFailed(Exception):
    """A revision's Ready condition ended in CONDITION_FAILED; `message` is Cloud Run's."""

    def __init__(self, revision: str, message: str, reason: str = ""):
        super().__init__(f"revision {revision} failed to become Ready: {message}")
        self.revision = revision
        self.message = message
        self.reason = reason


class ReadyTimeout(WaitExpired):
    """A revision (or operation) did not finish within the timeout: a verdict, never retried."""


@dataclass(frozen=True)
class Traffic:
    """One traffic target. `revision=None` with `latest=True` means LATEST."""

    revision: str | None
    percent: int = 0
    tag: str | None = None
    latest: bool = False

    def to_proto(self) -> run_v2.TrafficTarget:
        target = run_v2.TrafficTarget(
            type_=LATEST if self.latest else BY_REVISION, percent=self.percent
        )
        if self.revision and not self.latest:
            target.revision = self.revision
        if self.tag:
            target.tag = self.tag
        return target


# ---------------------------------------------------------------- names


def service_path(project: str, region: str, service: str) -> str:
    return f"projects/{project}/locations/{region}/services/{service}"


def revision_path(project: str, region: str, service: str, revision: str) -> str:
    return f"{service_path(project, region, service)}/revisions/{revision}"


def short_name(name: str) -> str:
    return name.rsplit("/", 1)[-1]


# ---------------------------------------------------------------- reading


def get_service(
    client: run_v2.ServicesClient, name: str, *, timeout: float | None = None
) -> run_v2.Service | None:
    """The service, or None when it does not exist. `timeout`: seconds for the call (default:
    the client's read deadline, tasks/deadlines.py)."""
    try:
        return client.get_service(
            name=name, retry=None, timeout=timeout or deadlines.of(client).google_read_s
        )
    except gexc.NotFound:
        return None


def get_revision(
    client: run_v2.RevisionsClient, name: str, *, timeout: float | None = None
) -> run_v2.Revision | None:
    """The revision, or None when it does not exist (`timeout` as for `get_service`)."""
    try:
        return client.get_revision(
            name=name, retry=None, timeout=timeout or deadlines.of(client).google_read_s
        )
    except gexc.NotFound:
        return None


def list_revisions(
    client: run_v2.RevisionsClient, service_name: str, *, timeout: float | None = None
) -> list[run_v2.Revision]:
    """Every revision of the service; `timeout` per page request (as for `get_service`)."""
    return list(
        client.list_revisions(
            parent=service_name,
            retry=None,
            timeout=timeout or deadlines.of(client).google_read_s,
        )
    )


def ready_state(resource: run_v2.Revision | run_v2.Service) -> tuple[str, str]:
    """('succeeded' | 'failed' | 'reconciling', message) of the Ready condition."""
    conditions: Iterable[run_v2.Condition] = list(resource.conditions)
    terminal = getattr(resource, "terminal_condition", None)
    if terminal is not None and terminal.type_:
        conditions = [terminal, *conditions]
    for condition in conditions:
        if condition.type_ == READY:
            if condition.state == SUCCEEDED:
                return "succeeded", condition.message
            if condition.state == FAILED:
                return "failed", condition.message
            return "reconciling", condition.message
    return "reconciling", ""


def ready_reasons(resource: run_v2.Revision | run_v2.Service) -> set[str]:
    """The enum names of the Ready condition's `reason` (Condition.CommonReason, e.g.
    CONTAINER_MISSING) and `revision_reason` (Condition.RevisionReason, e.g.
    HEALTH_CHECK_CONTAINER_ERROR), googleapis google/cloud/run/v2/condition.proto; unset ones
    (`*_UNDEFINED`) left out."""
    names: set[str] = set()
    for condition in resource.conditions:
        if condition.type_ != READY:
            continue
        for value in (condition.reason, condition.revision_reason):
            if value and not value.name.endswith("_UNDEFINED"):
                names.add(value.name)
    return names


def traffic_of(service: run_v2.Service) -> list[Traffic]:
    """The service's traffic spec as plain values."""
    return [
        Traffic(
            revision=t.revision or None,
            percent=t.percent,
            tag=t.tag or None,
            latest=t.type_ == LATEST,
        )
        for t in service.traffic
    ]


def serving_traffic(service: run_v2.Service) -> list[Traffic]:
    """What the service serves (trafficStatuses) as plain values. After a failed update
    Google keeps the requested `traffic` while the statuses keep the last serving state
    (google/cloud/run/v2/service.proto, Service.reconciling); before the first reconcile
    there are no statuses: the spec then."""
    if not service.traffic_statuses:
        return traffic_of(service)
    latest = short_name(service.latest_ready_revision) if service.latest_ready_revision else None
    return [
        Traffic(
            revision=t.revision or (latest if t.type_ == LATEST else None),
            percent=t.percent,
            tag=t.tag or None,
            latest=t.type_ == LATEST,
        )
        for t in service.traffic_statuses
    ]


def tag_uri(service: run_v2.Service, tag: str) -> str | None:
    """The URL Cloud Run published for a traffic tag (from trafficStatuses)."""
    for status in service.traffic_statuses:
        if status.tag == tag and status.uri:
            return status.uri
    return None


# ---------------------------------------------------------------- operations


def polling(timeout: float, poll_s: float = 0.05, max_poll_s: float = 5.0) -> Retry:
    """google-api-core's LRO polling, from `poll_s` up to `max_poll_s`, for `timeout`: its
    exponential_sleep_generator with the waiter's multiplier (tasks/waiting.py: one rule)."""
    return DEFAULT_POLLING.with_delay(
        initial=poll_s, maximum=max_poll_s, multiplier=MULTIPLIER
    ).with_timeout(timeout)


class Operation(Protocol):
    """What is waited on of a google.api_core `Operation` (its `result` has no type hints)."""

    @property
    def operation(self) -> Any: ...

    def result(self, timeout: Any = ..., retry: Any = None, polling: Any = None) -> Any: ...


class OperationsSource(Protocol):
    """A client that reads long-running operations (the GAPIC clients' `get_operation`)."""

    def get_operation(
        self, request: Any = None, *, retry: Any = ..., timeout: Any = ..., metadata: Any = ...
    ) -> operations_pb2.Operation: ...


class _DeadlinedOperations:
    """What google-api-core's Operation polls with (`get_operation(name, metadata=, retry=)`),
    each poll with a deadline: the operation future from the client has none (its
    `get_operation` is called with `timeout=None`: a stalled poll blocks forever). A transient
    error of a poll is polled again within the wait's deadline."""

    def __init__(self, client: OperationsSource, deadline: Deadline) -> None:
        self.client = client
        self.deadline = deadline
        self.per_call_s = deadlines.of(client).operation_poll_s
        self.heartbeat: Heartbeat | None = None

    def get_operation(self, name: str, metadata: Any = None, retry: Any = None) -> Any:
        del metadata, retry  # the client's own routing header; retries: the waiter below
        request = operations_pb2.GetOperationRequest(name=name)
        if self.heartbeat is None:  # api-core's polling loop is silent: a line every 15 s
            self.heartbeat = Heartbeat(f"operation {short_name(name)}", HEARTBEAT_S, self.deadline)
        self.heartbeat.beat()

        def once() -> operations_pb2.Operation:
            timeout = deadlines.within(self.per_call_s, self.deadline)
            return self.client.get_operation(request=request, retry=None, timeout=timeout)

        return wait_for(
            once,
            what=f"operation {short_name(name)}",
            first_delay_s=0.05,
            max_delay_s=2.0,
            deadline=self.deadline,
            retry_on=is_transient,
        )

    def cancel_operation(self, name: str, metadata: Any = None) -> None:
        raise NotImplementedError("Shipyard never cancels a Cloud Run operation")


def wait_operation(
    operation: Operation,
    *,
    timeout: float,
    poll_s: float = 0.05,
    max_poll_s: float = 5.0,
    client: OperationsSource | None = None,
    result_type: Any = run_v2.Service,
) -> Any:
    """Wait for a google.api_core Operation (`operation.result(polling=...)`); return its
    result (the operation's response type) or raise its error; ReadyTimeout when it is not
    done within `timeout`. With `client` (what made the operation), every poll is made through
    it with a deadline, and `result_type` is the operation's response type (every Cloud Run
    service operation answers with a Service)."""
    deadline = Deadline(timeout)
    if client is not None:
        operation = gop.from_gapic(  # type: ignore[no-untyped-call]  # api-core: unannotated
            operation.operation,
            _DeadlinedOperations(client, deadline),
            result_type,
            metadata_type=result_type,
        )
    try:
        return operation.result(polling=polling(timeout, poll_s, max_poll_s))
    except (FutureTimeout, WaitExpired) as exc:
        raise ReadyTimeout(
            f"operation {operation.operation.name} not done after {timeout:.0f} s"
            + (f" ({exc})" if isinstance(exc, WaitExpired) else "")
        ) from exc


def create_service(
    client: run_v2.ServicesClient,
    project: str,
    region: str,
    service: run_v2.Service,
    service_id: str,
    *,
    timeout: float = 600,
    poll_s: float = 0.05,
) -> run_v2.Service:
    """Create a service and wait for the operation (not for readiness of its revision)."""
    operation = client.create_service(
        parent=f"projects/{project}/locations/{region}",
        service=service,
        service_id=service_id,
        retry=None,
        timeout=deadlines.of(client).google_write_s,
    )
    created: run_v2.Service = wait_operation(
        operation, timeout=timeout, poll_s=poll_s, client=client
    )
    return created


def delete_service(
    client: run_v2.ServicesClient, name: str, *, timeout: float = 600, poll_s: float = 0.05
) -> None:
    """Delete a service (and with it its revisions) and wait for the operation; a service
    already gone is fine (a retried call)."""
    try:
        operation = client.delete_service(
            name=name, retry=None, timeout=deadlines.of(client).google_write_s
        )
    except gexc.NotFound:
        return
    wait_operation(operation, timeout=timeout, poll_s=poll_s, client=client)


def update_service(
    client: run_v2.ServicesClient,
    service: run_v2.Service,
    *,
    timeout: float = 600,
    poll_s: float = 0.05,
    update_mask: list[str] | None = None,
) -> run_v2.Service:
    """PATCH a service (its `name` set) and wait for the operation."""
    request = run_v2.UpdateServiceRequest(service=service)
    if update_mask:
        request.update_mask = field_mask_pb2.FieldMask(paths=update_mask)
    operation = client.update_service(
        request=request, retry=None, timeout=deadlines.of(client).google_write_s
    )
    try:
        updated: run_v2.Service = wait_operation(
            operation, timeout=timeout, poll_s=poll_s, client=client
        )
    except gexc.GoogleAPICallError as exc:
        missing = missing_revision(exc)
        if missing is None:
            raise
        raise MissingRevision(service.name, missing, service.traffic) from exc
    return updated


def set_traffic(
    client: run_v2.ServicesClient,
    service: run_v2.Service,
    traffic: list[Traffic],
    *,
    timeout: float = 600,
    poll_s: float = 0.05,
    revisions: run_v2.RevisionsClient | None = None,
) -> run_v2.Service:
    """Replace the service's traffic split, leaving its template as it is.

    Every revision the split gives traffic (percent > 0) is read right before the update and
    must be Ready (`refuse_unready`): the one place every traffic update of Shipyard passes, so
    no step can hand users to a revision that failed or still starts, whatever it computed.
    `revisions`: the client to read them with (default: one made like `client`)."""
    total = sum(t.percent for t in traffic)
    if total != 100:
        raise ValueError(f"traffic percentages add up to {total}, not 100: {traffic}")
    refuse_unready(revisions or revisions_client_like(client), service.name, traffic)
    updated = replaced(service, traffic=[t.to_proto() for t in traffic])
    return update_service(client, updated, timeout=timeout, poll_s=poll_s)


class RevisionNotReady(PermanentError):
    """A traffic update would give traffic to a revision that is not Ready: refused before it
    is sent. Cloud Run refuses it too ("Revision '…' is not ready and cannot serve traffic.",
    FAILED_PRECONDITION); refusing first says which revision, why, and what serves instead."""

    def __init__(self, service: str, revision: str, percent: int, state: str, message: str):
        super().__init__(
            f"refused to give {percent}% of {short_name(service)}'s traffic to revision "
            f"{revision!r}: it is not Ready ({state}: {message or 'no message'}). Fix: route the "
            "traffic to a Ready revision (gcloud run revisions list shows them), or deploy the "
            "revision again under a new name"
        )
        self.revision = revision
        self.message = message


def refuse_unready(
    client: run_v2.RevisionsClient, service_name: str, traffic: Iterable[Traffic]
) -> None:
    """Raise RevisionNotReady when a target with percent > 0 names a revision that is not
    Ready (missing ones are left to Cloud Run's own refusal: `MissingRevision`). LATEST is
    Cloud Run's latest *Ready* revision: nothing to check."""
    for t in traffic:
        if t.percent <= 0 or t.latest or not t.revision:
            continue
        found = get_revision(client, f"{service_name}/revisions/{t.revision}")
        if found is None:
            continue
        state, message = ready_state(found)
        if state != "succeeded":
            raise RevisionNotReady(service_name, t.revision, t.percent, state, message)


_REVISIONS_LIKE: weakref.WeakKeyDictionary[run_v2.ServicesClient, run_v2.RevisionsClient] = (
    weakref.WeakKeyDictionary()
)


def revisions_client_like(client: run_v2.ServicesClient) -> run_v2.RevisionsClient:
    """A RevisionsClient with the services client's endpoint, credentials, transport and
    deadlines (made once per services client)."""
    made = _REVISIONS_LIKE.get(client)
    if made is None:
        made = run_v2.RevisionsClient(
            credentials=client.transport._credentials,  # the same identity as the caller's
            transport="rest",
            client_options=ClientOptions(api_endpoint=client.api_endpoint),
        )
        deadlines.attach(made, deadlines.of(client))
        _REVISIONS_LIKE[client] = made
    return made


def replaced(service: run_v2.Service, **changes: Any) -> run_v2.Service:
    """The service as read, output-only fields cleared, with `changes` applied: the body of a
    full-object update. An update replaces the whole service (no update mask), so every field
    the caller does not change (invoker IAM, ingress, labels, annotations, scaling, ...) must be
    sent as it is, or Cloud Run resets it (a public service would turn private)."""
    body: run_v2.Service = run_v2.Service.deserialize(run_v2.Service.serialize(service))
    for name in _OUTPUT_ONLY:
        if name not in ("name", "etag"):  # the name says what to update; the etag guards it
            body._pb.ClearField(name)
    for name, value in changes.items():
        setattr(body, name, value)
    return body


# Service fields marked OUTPUT_ONLY in google/cloud/run/v2/service.proto.
_OUTPUT_ONLY = (
    "name",
    "uid",
    "generation",
    "create_time",
    "update_time",
    "delete_time",
    "expire_time",
    "creator",
    "last_modifier",
    "observed_generation",
    "terminal_condition",
    "conditions",
    "latest_ready_revision",
    "latest_created_revision",
    "traffic_statuses",
    "uri",
    "urls",
    "satisfies_pzs",
    "reconciling",
    "etag",
)

# A traffic target naming a revision that does not exist fails the update's operation with
# code 13 (INTERNAL), which google-api-core maps to a transient 500: "Error code 13, message:
# Revision 'cloudrun-srv-green' does not exist or is deleted. Update all traffic to route to
# currently available revisions." (a real deploy, terraform-google-modules/
# terraform-docs-samples#269). Retrying cannot create the revision: the text decides.
_MISSING_REVISION = re.compile(r"Revision '([^']+)' does not exist or is deleted")


def missing_revision(error: BaseException | str) -> str | None:
    """The revision a refused traffic update named but Cloud Run does not have, if that is
    what the error says."""
    text = error if isinstance(error, str) else (getattr(error, "message", None) or str(error))
    match = _MISSING_REVISION.search(text)
    return match.group(1) if match else None


class MissingRevision(PermanentError):
    """A traffic update named a revision that does not exist (deleted meanwhile, or a typo):
    permanent, the split must be changed."""

    def __init__(self, service: str, revision: str, traffic: Iterable[run_v2.TrafficTarget]):
        named = ", ".join(f"{t.revision or 'LATEST'}={t.percent}%" for t in traffic)
        super().__init__(
            f"Cloud Run refused the traffic of {short_name(service)}: revision {revision!r} "
            f"does not exist or was deleted (traffic asked: {named}). Fix: route the traffic "
            "to revisions the service has (gcloud run revisions list), or deploy the revision "
            "again"
        )
        self.revision = revision


# ---------------------------------------------------------------- readiness


def wait_revision_ready(
    client: run_v2.RevisionsClient,
    name: str,
    *,
    timeout: float,
    poll_s: float = 0.05,
    max_poll_s: float = 5.0,
) -> run_v2.Revision:
    """Poll a revision until its Ready condition succeeds (returned) or fails (RevisionFailed),
    with the waiter. `timeout` is the whole wait's: each read gets at most what is left of it,
    and a transient error of a read is read again within it (raised to the caller, a step that
    retries, it would start a whole new `timeout`); other API errors go to the caller.

    A revision that does not exist yet is waited for as well: Cloud Run creates it shortly
    after the service update that names it.
    """
    last = ["not created yet"]
    deadline = Deadline(timeout)
    per_call_s = deadlines.of(client).google_read_s

    def noted(exc: Exception) -> None:
        if not isinstance(exc, NotYet):  # a transient error read again: the last thing seen
            last[0] = f"{type(exc).__name__}: {exc}"[:200]

    def check() -> run_v2.Revision:
        revision = get_revision(client, name, timeout=deadlines.within(per_call_s, deadline))
        if revision is None:
            raise NotYet(last[0])
        state, message = ready_state(revision)
        if state == "succeeded":
            return revision
        if state == "failed":
            reasons = " ".join(sorted(ready_reasons(revision)))
            raise RevisionFailed(short_name(name), message or "no message", reasons)
        last[0] = message or "reconciling"
        raise NotYet(last[0])

    try:
        return wait_for(
            check,
            what=f"revision {short_name(name)}",
            first_delay_s=poll_s,
            max_delay_s=max_poll_s,
            deadline=deadline,
            retry_on=is_transient,
            on_retry=noted,
        )
    except WaitExpired as exc:
        raise ReadyTimeout(
            f"revision {short_name(name)} not Ready after {timeout:.0f} s (last: {last[0]})"
        ) from exc


def seconds(value: float) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=int(value), nanos=int((value % 1) * 1e9))
