"""Cloud Run Admin v2 resources of the emulator: Service and Revision, their hosts and logs,
and the index of both that the rest of the model builds on (lookup by name).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sandbox.emulator.core import ApiError, SandboxState
from sandbox.scenario import RevisionFault

TYPE_PREFIX = "type.googleapis.com/google.cloud.run.v2."
LATEST = "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST"
REVISION = "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION"
GPU_LIMIT = "nvidia.com/gpu"


def url_hash(project: str) -> str:
    """Stable 10-char lowercase string, like the project hash in *.a.run.app hosts."""
    return hashlib.sha256(project.encode()).hexdigest()[:10]


def service_host(project: str, region: str, short: str, tag: str = "") -> str:
    host = f"{short}-{url_hash(project)}-{region}.a.run.app"
    return f"{tag}---{host}" if tag else host


@dataclass
class Revision:
    name: str  # full resource name
    short: str
    service: str  # full service name
    project: str
    region: str
    generation: int
    template: dict
    uid: str
    create_time: str
    ready: bool
    device: str
    # Its container is starting (docker run + the startup probe): neither Ready nor failed.
    reconciling: bool = False
    message: str = ""
    reason: str = ""
    revision_reason: str = ""
    faults: list[RevisionFault] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # resolved, secrets included: never rendered
    page_requests: int = 0  # requests that reached an instance (counts `oom` faults)
    routed_requests: int = 0  # requests its instances admitted (counts load faults)
    # GPU instance accounting against the region's quota (sandbox/emulator/gpu_instances.py)
    instance: bool = False
    in_flight: int = 0
    last_used: float = 0.0

    def ready_condition(self) -> dict:
        if self.reconciling:
            # "CONDITION_RECONCILING: Transient state: reconciliation is still in progress."
            # (googleapis google/cloud/run/v2/condition.proto, Condition.State)
            return {
                "type": "Ready",
                "state": "CONDITION_RECONCILING",
                "lastTransitionTime": self.create_time,
            }
        cond = {
            "type": "Ready",
            "state": "CONDITION_SUCCEEDED" if self.ready else "CONDITION_FAILED",
            "lastTransitionTime": self.create_time,
        }
        if not self.ready:
            cond.update(message=self.message, severity="ERROR")
            if self.reason:
                cond["reason"] = self.reason
            if self.revision_reason:
                cond["revisionReason"] = self.revision_reason
        return cond

    def render(self) -> dict:
        t = self.template
        body: dict[str, Any] = {
            "name": self.name,
            "uid": self.uid,
            "generation": str(self.generation),
            "labels": t.get("labels", {}),
            "annotations": t.get("annotations", {}),
            "createTime": self.create_time,
            "updateTime": self.create_time,
            "service": self.service,
            "scaling": t.get("scaling", {}),
            "containers": t.get("containers", []),
            "timeout": t.get("timeout", "300s"),
            "maxInstanceRequestConcurrency": t.get("maxInstanceRequestConcurrency", 80),
            "conditions": [self.ready_condition()],
            "observedGeneration": str(self.generation),
            # "Indicates whether the resource's reconciliation is still in progress. See
            # comments in Service.reconciling" (google/cloud/run/v2/revision.proto)
            "reconciling": self.reconciling,
            "logUri": f"https://console.cloud.google.com/logs/viewer?project={self.project}",
            "etag": f'"{self.uid[:12]}"',
        }
        for key in (
            "serviceAccount",
            "nodeSelector",
            "gpuZonalRedundancyDisabled",
            "executionEnvironment",
            "volumes",
            "sessionAffinity",
        ):
            if key in t:
                body[key] = t[key]
        return body


@dataclass
class Service:
    name: str
    short: str
    project: str
    region: str
    uid: str
    create_time: str
    spec: dict  # the user-settable fields as the client sent them (canonical JSON)
    generation: int = 1
    etag: str = ""
    update_time: str = ""
    statuses: list[dict] = field(default_factory=list)  # resolved traffic
    latest_ready: str = ""
    latest_created: str = ""
    failure: dict | None = None  # {"reason", "message"} of the last failed reconcile
    pending_op: str | None = None

    def host(self, tag: str = "") -> str:
        return service_host(self.project, self.region, self.short, tag)


@dataclass
class Reconcile:
    """What a create/update's long-running operation reports, once `decided`: `error`, or
    the service. Decided at request time, except while the service's latest revision starts
    its container: then when that revision is Ready or failed (run_store.RunStore.apply).

    Google: "When a new Service is created, or an existing one is updated, Cloud Run will
    asynchronously perform all necessary steps to bring the Service to the desired serving
    state. This process is called reconciliation." (google/cloud/run/v2/service.proto,
    Service.reconciling); the operation is done when it is over."""

    revision: Revision | None = None  # the revision this create/update made, if any
    creating: bool = False
    error: ApiError | None = None
    decided: bool = True
    listeners: list[Callable[[], None]] = field(default_factory=list)

    def decide(self, error: ApiError | None) -> None:
        self.error, self.decided = error, True
        for listener in self.listeners:
            listener()


class RunIndex:
    """Every service and revision of the emulator, by full name, and the traffic history."""

    def __init__(self, state: SandboxState):
        self.state = state
        self.services: dict[str, Service] = {}
        self.revisions: dict[str, Revision] = {}  # full name -> revision, in creation order
        self.history: list[dict] = []
        self.deploy_errors_used: dict[str, int] = {}
        self.instances: dict[str, Any] = {}  # revision name -> its ASGI app (revisions_http)
        # revision name -> the creates/updates waiting for its container's start to be decided
        self.waiting: dict[str, list[Reconcile]] = {}
        # revision name -> the task starting its container (kept across a reset: it removes
        # the container it started for a revision that is gone)
        self.starting: dict[str, Any] = {}

    def reset(self) -> None:
        self.services.clear()
        self.revisions.clear()
        self.history.clear()
        self.deploy_errors_used.clear()
        self.instances.clear()
        self.waiting.clear()

    # ---- lookup -------------------------------------------------------------------------

    def get_service(self, name: str) -> Service:
        svc = self.services.get(name)
        if svc is None:
            _, project, _, region, _, short = name.split("/")
            raise ApiError(
                404,
                f"Resource '{short}' of kind 'SERVICE' in region '{region}' in project "
                f"'{project}' does not exist.",
            )
        return svc

    def get_revision(self, name: str) -> Revision:
        rev = self.revisions.get(name)
        if rev is None:
            parts = name.split("/")
            raise ApiError(
                404,
                f"Resource '{parts[-1]}' of kind 'REVISION' in region '{parts[3]}' in project "
                f"'{parts[1]}' does not exist.",
            )
        return rev

    def service_revisions(self, service: str) -> list[Revision]:
        return [r for r in self.revisions.values() if r.service == service]

    def base_url(self) -> str:
        return self.state.base_url.rstrip("/")

    def uri(self, svc: Service, tag: str = "") -> str:
        return f"{self.base_url()}/run/{svc.host(tag)}"


def revision_resource(rev: Revision) -> dict:
    service = rev.service.rsplit("/", 1)[-1]
    return {
        "type": "cloud_run_revision",
        "labels": {
            "project_id": rev.project,
            "service_name": service,
            "revision_name": rev.short,
            "location": rev.region,
            "configuration_name": service,
        },
    }


def write_revision_log(
    state: SandboxState,
    rev: Revision,
    severity: str,
    text: str | None,
    stream: str | None = None,
    json_payload: dict | None = None,
) -> dict:
    """A line of the revision's stdout/stderr (or `requests` log) in the Cloud Logging store;
    `json_payload`: a structured line (sandbox/emulator/logging_api.py: container_line)."""
    if stream is None:
        stream = "stderr" if severity in ("ERROR", "CRITICAL", "ALERT", "EMERGENCY") else "stdout"
    return state.write_log(
        text,
        severity=severity,
        resource=revision_resource(rev),
        log_name=f"projects/{rev.project}/logs/run.googleapis.com%2F{stream}",
        json_payload=json_payload,
    )


def container_name(template: dict) -> str:
    containers = template.get("containers") or [{}]
    return containers[0].get("name") or "placeholder-1"
