"""Cloud Run Admin v2 resources of the emulator: services, revisions, traffic, traffic history.

The model, independent of HTTP. A create/update is applied at request time (the state
changes at once; its long-running operation only reports the outcome, and the service
shows `reconciling` until the operation is done). Rules that mirror Google:

- a new revision is created when the template changes; traffic-only updates create none;
  `template.revision` names it (must start with "{service}-"; a name that exists with a
  different template is 409 ALREADY_EXISTS), else `{service}-{generation:05d}-{abc}`;
- traffic is validated (percents add up to 100, named revisions exist, tags unique);
  traffic that would reach a revision that is not Ready is refused: the operation fails
  and the traffic stays where it was;
- LATEST means the latest *ready* revision.

Deploy failures come from the scenario (per region): quota shortfall (GPU / CPU / memory,
reported where `quota_where` says), `deploy_error` (where: api | operation | revision),
`never_ready`, and revision faults `never_ready`.
"""

from __future__ import annotations

import copy
import hashlib
import re
import string
import uuid
from dataclasses import dataclass, field
from typing import Any

from sandbox.emulator.core import ApiError, SandboxState, now_rfc3339
from sandbox.scenario import GPU_QUOTA_MESSAGE, GPU_ZONAL_MESSAGE, DeployError, RevisionFault

TYPE_PREFIX = "type.googleapis.com/google.cloud.run.v2."
LATEST = "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST"
REVISION = "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION"
GPU_LIMIT = "nvidia.com/gpu"
NOT_READY_MESSAGE = (
    "The user-provided container failed to start and listen on the port defined provided by "
    "the PORT=8080 environment variable within the allocated timeout. This can happen when "
    "the container port is misconfigured or if the timeout is too short. The health check "
    "timeout can be extended. Logs for this revision might contain more information."
)
CPU_QUOTA_MESSAGE = "Quota exceeded for total allowable CPU per project per region."
MEMORY_QUOTA_MESSAGE = "Quota exceeded for total allowable memory per project per region."

# Fields of a Service that the server owns: dropped from what the client sends.
_OUTPUT_ONLY = {
    "name",
    "uid",
    "generation",
    "createTime",
    "updateTime",
    "deleteTime",
    "expireTime",
    "creator",
    "lastModifier",
    "observedGeneration",
    "terminalCondition",
    "conditions",
    "latestReadyRevision",
    "latestCreatedRevision",
    "trafficStatuses",
    "uri",
    "urls",
    "reconciling",
    "etag",
    "satisfiesPzs",
}
_TAG = re.compile(r"^[a-z]([-a-z0-9]{0,44}[a-z0-9])?$")


# Enum fields of a Service (JSON paths; "[]" = every list item) -> names by number. The
# clients send `$alt=json;enum-encoding=int`: enums arrive as numbers, we store and answer
# names. (Kept as data rather than importing google.cloud.run_v2: that import costs seconds
# of emulator start-up on a busy machine.)
_ENUM_FIELDS: dict[tuple[str, ...], list[str] | dict[int, str]] = {
    ("ingress",): [
        "INGRESS_TRAFFIC_UNSPECIFIED",
        "INGRESS_TRAFFIC_ALL",
        "INGRESS_TRAFFIC_INTERNAL_ONLY",
        "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER",
        "INGRESS_TRAFFIC_NONE",
    ],
    ("launchStage",): {
        0: "LAUNCH_STAGE_UNSPECIFIED",
        1: "EARLY_ACCESS",
        2: "ALPHA",
        3: "BETA",
        4: "GA",
        5: "DEPRECATED",
        6: "UNIMPLEMENTED",
        7: "PRELAUNCH",
    },
    ("traffic", "[]", "type"): [
        "TRAFFIC_TARGET_ALLOCATION_TYPE_UNSPECIFIED",
        "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST",
        "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION",
    ],
    ("scaling", "scalingMode"): ["SCALING_MODE_UNSPECIFIED", "AUTOMATIC", "MANUAL"],
    ("template", "executionEnvironment"): [
        "EXECUTION_ENVIRONMENT_UNSPECIFIED",
        "EXECUTION_ENVIRONMENT_GEN1",
        "EXECUTION_ENVIRONMENT_GEN2",
    ],
    ("template", "encryptionKeyRevocationAction"): [
        "ENCRYPTION_KEY_REVOCATION_ACTION_UNSPECIFIED",
        "PREVENT_NEW",
        "SHUTDOWN",
    ],
    ("template", "vpcAccess", "egress"): [
        "VPC_EGRESS_UNSPECIFIED",
        "ALL_TRAFFIC",
        "PRIVATE_RANGES_ONLY",
    ],
}


def canonical_service(data: dict) -> dict:
    """A Service as the client sent it (proto3 JSON, camelCase), with enum numbers as names."""
    if not isinstance(data, dict):
        raise ApiError(400, "Invalid service: expected a JSON object.")
    body = copy.deepcopy(data)
    for path, names in _ENUM_FIELDS.items():
        _name_enums(body, path, names)
    return body


def _name_enums(node: Any, path: tuple[str, ...], names: list[str] | dict[int, str]) -> None:
    if not path or not isinstance(node, dict | list):
        return
    head, rest = path[0], path[1:]
    if head == "[]":
        for item in node if isinstance(node, list) else []:
            _name_enums(item, rest, names)
        return
    if not isinstance(node, dict) or head not in node:
        return
    if rest:
        _name_enums(node[head], rest, names)
        return
    value = node[head]
    if isinstance(value, int) and not isinstance(value, bool):
        table = dict(enumerate(names)) if isinstance(names, list) else names
        if value not in table:
            raise ApiError(400, f"Invalid value at 'service.{'.'.join(path)}' ({value}).")
        node[head] = table[value]


def url_hash(project: str) -> str:
    """Stable 10-char lowercase string, like the project hash in *.a.run.app hosts."""
    return hashlib.sha256(project.encode()).hexdigest()[:10]


def service_host(project: str, region: str, short: str, tag: str = "") -> str:
    host = f"{short}-{url_hash(project)}-{region}.a.run.app"
    return f"{tag}---{host}" if tag else host


def parse_cpu(value: str | None) -> float:
    if not value:
        return 1.0
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


def parse_memory_gib(value: str | None) -> float:
    if not value:
        return 0.5
    units = {"Ki": 2**-20, "Mi": 2**-10, "Gi": 1, "Ti": 2**10, "M": 1e6 / 2**30, "G": 1e9 / 2**30}
    for suffix, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value) / 2**30


def template_limits(template: dict) -> dict[str, str]:
    containers = template.get("containers") or [{}]
    return containers[0].get("resources", {}).get("limits", {})


def template_gpus(template: dict) -> int:
    return sum(
        int(c.get("resources", {}).get("limits", {}).get(GPU_LIMIT, "0") or 0)
        for c in template.get("containers", [])
    )


def template_device(template: dict) -> str:
    """GPU when the template asks for a GPU and an accelerator, else CPU."""
    has_accelerator = bool(template.get("nodeSelector", {}).get("accelerator"))
    return "gpu" if template_gpus(template) > 0 and has_accelerator else "cpu"


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
    message: str = ""
    reason: str = ""
    revision_reason: str = ""
    faults: list[RevisionFault] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # resolved, secrets included: never rendered

    def ready_condition(self) -> dict:
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
            "reconciling": False,
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


class RunStore:
    """state.stores["run"]: every service, revision and the traffic history."""

    def __init__(self, state: SandboxState):
        self.state = state
        self.services: dict[str, Service] = {}
        self.revisions: dict[str, Revision] = {}  # full name -> revision, in creation order
        self.history: list[dict] = []
        self.deploy_errors_used: dict[str, int] = {}
        self.instances: dict[str, Any] = {}  # revision name -> its ASGI app (revisions_http)

    def reset(self) -> None:
        self.services.clear()
        self.revisions.clear()
        self.history.clear()
        self.deploy_errors_used.clear()
        self.instances.clear()

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

    # ---- rendering ----------------------------------------------------------------------

    def render_service(self, svc: Service) -> dict:
        pending = svc.pending_op is not None and not self.state.operations[svc.pending_op].done
        if pending:
            terminal = {"type": "Ready", "state": "CONDITION_RECONCILING"}
        elif svc.failure:
            terminal = {
                "type": "Ready",
                "state": "CONDITION_FAILED",
                "severity": "ERROR",
                **svc.failure,
            }
        else:
            terminal = {"type": "Ready", "state": "CONDITION_SUCCEEDED"}
        terminal["lastTransitionTime"] = svc.update_time
        latest = self.revisions.get(svc.latest_created)
        configs = {"type": "ConfigurationsReady", "state": "CONDITION_SUCCEEDED"}
        if latest is not None and not latest.ready:
            configs = {
                "type": "ConfigurationsReady",
                "state": "CONDITION_FAILED",
                "message": latest.message,
                "reason": "REVISION_FAILED",
            }
        routes = {
            "type": "RoutesReady",
            "state": "CONDITION_SUCCEEDED" if svc.statuses else "CONDITION_FAILED",
        }
        body = copy.deepcopy(svc.spec)
        body.update(
            name=svc.name,
            uid=svc.uid,
            generation=str(svc.generation),
            createTime=svc.create_time,
            updateTime=svc.update_time,
            creator="sandbox@shipyard.local",
            lastModifier="sandbox@shipyard.local",
            observedGeneration=str(svc.generation if not pending else svc.generation - 1),
            terminalCondition=terminal,
            conditions=[routes, configs],
            latestReadyRevision=svc.latest_ready,
            latestCreatedRevision=svc.latest_created,
            trafficStatuses=[self._status_json(svc, s) for s in svc.statuses],
            uri=self.uri(svc),
            urls=[self.uri(svc)],
            reconciling=pending,
            etag=svc.etag,
        )
        body.setdefault("ingress", "INGRESS_TRAFFIC_ALL")
        body.setdefault("launchStage", "GA")
        return body

    def _status_json(self, svc: Service, status: dict) -> dict:
        out = {"type": status["type"], "percent": status["percent"]}
        if status["type"] == REVISION:
            out["revision"] = status["revision"].rsplit("/", 1)[-1]
        if status.get("tag"):
            out["tag"] = status["tag"]
            out["uri"] = self.uri(svc, status["tag"])
        return out

    # ---- deploys ------------------------------------------------------------------------

    def apply(
        self,
        name: str,
        body: dict,
        *,
        creating: bool,
        update_mask: list[str] | None = None,
        allow_missing: bool = False,
        validate_only: bool = False,
    ) -> tuple[Service, ApiError | None]:
        """Create or update a service. Raises ApiError for what the API call itself refuses;
        returns the service and the error its operation will report (or None)."""
        _, project, _, region, _, short = name.split("/")
        existing = self.services.get(name)
        if creating and existing is not None:
            raise ApiError(409, f"Resource '{short}' already exists.")
        if not creating and existing is None and not allow_missing:
            self.get_service(name)  # raises NOT_FOUND
        incoming = canonical_service(body)
        etag = incoming.get("etag", "")
        if existing is not None and etag and etag != existing.etag:
            raise ApiError(
                409,
                f"The etag provided ({etag}) does not match the current etag of service "
                f"'{short}' ({existing.etag}): get the service again and retry.",
                status="ABORTED",
            )
        incoming = {k: v for k, v in incoming.items() if k not in _OUTPUT_ONLY}
        spec = self._merged_spec(existing, incoming, update_mask)
        if not spec.get("traffic"):
            spec["traffic"] = [{"type": LATEST, "percent": 100}]
        template = spec.setdefault("template", {})
        if not template.get("containers"):
            raise ApiError(
                400,
                "service.template.containers: at least one container is required "
                "(set template.containers[0].image).",
            )
        changed = existing is None or template != existing.spec.get("template", {})
        new_rev_name = ""
        if changed:
            new_rev_name = self._check_revision_name(name, short, template)
        self._validate_traffic(name, spec["traffic"], new_rev_name)

        failure = self._deploy_failure(project, region, template) if changed else None
        if failure is not None and failure.where == "api":
            self.state.calls["run.deploy_error.api"] += 1
            raise ApiError(429, failure.message)
        if validate_only:
            return existing or self._stub(name, project, region, short, spec), None
        if failure is not None and failure.where == "operation":
            self.state.calls["run.deploy_error.operation"] += 1
            if existing is not None:
                existing.failure = {"reason": "REVISION_FAILED", "message": failure.message}
            return existing or self._stub(name, project, region, short, spec), ApiError(
                429, failure.message
            )

        now = now_rfc3339()
        if existing is None:
            svc = Service(
                name=name,
                short=short,
                project=project,
                region=region,
                uid=str(uuid.uuid4()),
                create_time=now,
                spec=spec,
                generation=1,
            )
            self.services[name] = svc
            self.state.calls["run.service_created"] += 1
        else:
            svc = existing
            old_traffic = svc.spec.get("traffic", [])
            svc.spec = spec
            svc.generation += 1
        svc.update_time = now
        svc.etag = f'"{uuid.uuid4().hex[:16]}"'

        op_error: ApiError | None = None
        if changed:
            rev = self._create_revision(svc, template, new_rev_name, failure)
            svc.latest_created = rev.name
            if not rev.ready:
                op_error = ApiError(
                    400,
                    f"Revision '{rev.short}' is not ready and cannot serve traffic. {rev.message}",
                    status="FAILED_PRECONDITION",
                )
        svc.latest_ready = next(
            (r.name for r in reversed(self.service_revisions(name)) if r.ready), ""
        )
        statuses, refused = self._resolve_traffic(svc, spec["traffic"])
        if refused is not None:
            self.state.calls["run.traffic_refused"] += 1
            op_error = op_error or refused
            if existing is not None:
                svc.spec["traffic"] = old_traffic  # Google: the traffic stays where it was
            else:
                svc.statuses = []
        else:
            svc.statuses = statuses
        if op_error is not None:
            svc.failure = {"reason": "REVISION_FAILED", "message": op_error.message}
        else:
            svc.failure = None
        self.record(svc, "create" if existing is None else "update", note=_note(op_error))
        return svc, op_error

    def _stub(self, name: str, project: str, region: str, short: str, spec: dict) -> Service:
        """A service that is not stored: what a failed create or a validateOnly one answers."""
        return Service(
            name=name,
            short=short,
            project=project,
            region=region,
            uid="",
            create_time=now_rfc3339(),
            spec=spec,
        )

    @staticmethod
    def _merged_spec(existing: Service | None, incoming: dict, mask: list[str] | None) -> dict:
        if existing is None or not mask:
            return incoming
        spec = copy.deepcopy(existing.spec)
        for path in mask:
            keys = [_camel(k) for k in path.split(".")]
            src: Any = incoming
            for key in keys:
                src = src.get(key) if isinstance(src, dict) else None
            dst = spec
            for key in keys[:-1]:
                dst = dst.setdefault(key, {})
            if src is None:
                dst.pop(keys[-1], None)
            else:
                dst[keys[-1]] = copy.deepcopy(src)
        return spec

    def _check_revision_name(self, service: str, short: str, template: dict) -> str:
        """The new revision's short name (validated), or "" to generate one."""
        wanted = template.get("revision", "")
        if not wanted:
            return ""
        if not wanted.startswith(f"{short}-") or not re.fullmatch(r"[a-z0-9-]{1,63}", wanted):
            raise ApiError(
                400,
                f"service.template.revision: revision name '{wanted}' must start with the "
                f"service name followed by '-' (e.g. '{short}-v2') and use only lowercase "
                "letters, digits and '-' (63 characters at most).",
            )
        if f"{service}/revisions/{wanted}" in self.revisions:
            raise ApiError(
                409,
                f"Revision named '{wanted}' with different configuration already exists.",
            )
        return wanted

    def _validate_traffic(self, service: str, traffic: list[dict], new_rev: str) -> None:
        total = 0
        tags: set[str] = set()
        for i, target in enumerate(traffic):
            kind = target.get("type") or (REVISION if target.get("revision") else "")
            if kind not in (LATEST, REVISION):
                raise ApiError(
                    400,
                    f"service.traffic[{i}].type: set TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST or "
                    "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION.",
                )
            target["type"] = kind
            rev = target.get("revision", "")
            if rev.startswith(f"{service}/revisions/"):  # a full name: accept it, store short
                rev = target["revision"] = rev.rsplit("/", 1)[-1]
            if kind == LATEST and rev:
                raise ApiError(
                    400,
                    f"service.traffic[{i}]: a LATEST target must not name a revision "
                    f"(got '{rev}'); use TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION.",
                )
            if kind == REVISION:
                if not rev:
                    raise ApiError(400, f"service.traffic[{i}].revision: a revision is required.")
                if rev != new_rev and f"{service}/revisions/{rev}" not in self.revisions:
                    raise ApiError(
                        400,
                        f"service.traffic[{i}].revision: Revision '{rev}' referenced in "
                        "traffic not found.",
                    )
            percent = target.get("percent", 0)
            if not 0 <= percent <= 100:
                raise ApiError(
                    400,
                    f"service.traffic[{i}].percent: {percent} is out of range (0 to 100).",
                )
            total += percent
            tag = target.get("tag", "")
            if tag:
                if not _TAG.match(tag):
                    raise ApiError(
                        400,
                        f"service.traffic[{i}].tag: '{tag}' is not a valid tag: use lowercase "
                        "letters, digits and '-', starting with a letter (46 characters at most).",
                    )
                if tag in tags:
                    raise ApiError(
                        400, f"service.traffic[{i}].tag: tag '{tag}' is used more than once."
                    )
                tags.add(tag)
        if total != 100:
            raise ApiError(
                400,
                f"service.traffic: the traffic percents must add up to 100, got {total}.",
            )

    def _resolve_traffic(
        self, svc: Service, traffic: list[dict]
    ) -> tuple[list[dict], ApiError | None]:
        """Targets -> statuses with full revision names; refuse targets on non-Ready revisions."""
        statuses = []
        for target in traffic:
            percent = target.get("percent", 0)
            tag = target.get("tag", "")
            if target["type"] == LATEST:
                rev_name = svc.latest_ready
                if not rev_name:
                    latest = self.revisions.get(svc.latest_created)
                    detail = f" {latest.message}" if latest else ""
                    return [], ApiError(
                        400,
                        f"Service '{svc.short}' has no Ready revision to serve traffic.{detail}",
                        status="FAILED_PRECONDITION",
                    )
            else:
                rev_name = f"{svc.name}/revisions/{target['revision']}"
            rev = self.revisions[rev_name]
            if not rev.ready and (percent > 0 or tag):
                return [], ApiError(
                    400,
                    f"Revision '{rev.short}' is not ready and cannot serve traffic. {rev.message}",
                    status="FAILED_PRECONDITION",
                )
            statuses.append(
                {"type": target["type"], "revision": rev_name, "percent": percent, "tag": tag}
            )
        return statuses, None

    # ---- revisions, quota, scenario -------------------------------------------------------

    def _deploy_failure(self, project: str, region: str, template: dict) -> DeployError | None:
        """The scenario's deploy error or quota shortfall for this template, if any."""
        rs = self.state.scenario.region(region)
        err = rs.deploy_error
        if err is not None and (not err.gpu_only or template_gpus(template) > 0):
            used = self.deploy_errors_used.get(region, 0)
            if err.times == 0 or used < err.times:
                self.deploy_errors_used[region] = used + 1
                return err
        message = self._quota_shortfall(project, region, template)
        if message:
            self.state.calls["run.quota_exceeded"] += 1
            return DeployError(message=message, where=rs.quota_where, gpu_only=False)
        return None

    def _quota_shortfall(self, project: str, region: str, template: dict) -> str | None:
        instances = max(1, int(template.get("scaling", {}).get("maxInstanceCount", 0) or 1))
        gpus = template_gpus(template) * instances
        if gpus:
            if template.get("gpuZonalRedundancyDisabled"):
                quota_id, message = (
                    "NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion",
                    (GPU_ZONAL_MESSAGE),
                )
            else:
                quota_id, message = "NvidiaL4GpuAllocPerProjectRegion", GPU_QUOTA_MESSAGE
            if gpus > self.quota_limit(project, region, quota_id):
                return message
        limits = template_limits(template)
        if parse_cpu(limits.get("cpu")) * instances > self.quota_limit(
            project, region, "CpuAllocPerProjectRegion"
        ):
            return CPU_QUOTA_MESSAGE
        if parse_memory_gib(limits.get("memory")) * instances > self.quota_limit(
            project, region, "MemAllocPerProjectRegion"
        ):
            return MEMORY_QUOTA_MESSAGE
        return None

    def quota_limit(self, project: str, region: str, quota_id: str) -> float:
        """The region's quota (GPUs, vCPU, GiB): the Quotas emulator's view if it offers one
        (`state.stores["quotas"].effective_limit(project, region, quota_id)`, e.g. after a
        granted preference), else the scenario's value."""
        lookup = getattr(self.state.stores.get("quotas"), "effective_limit", None)
        if callable(lookup):
            value = lookup(project, region, quota_id)
            if value is not None:
                return float(value)
        rs = self.state.scenario.region(region)
        return float(
            {
                "NvidiaL4GpuAllocPerProjectRegion": rs.gpu,
                "NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion": rs.gpu_no_zonal_redundancy,
                "CpuAllocPerProjectRegion": rs.cpu,
                "MemAllocPerProjectRegion": rs.memory_gib,
            }[quota_id]
        )

    def _create_revision(
        self, svc: Service, template: dict, short: str, failure: DeployError | None
    ) -> Revision:
        scenario = self.state.scenario
        if not short:
            suffix = "".join(self.state.rng.choices(string.ascii_lowercase + string.digits, k=3))
            short = f"{svc.short}-{svc.generation:05d}-{suffix}"
        device = template_device(template)
        images = " ".join(c.get("image", "") for c in template.get("containers", []))
        faults = [
            f
            for f in scenario.revision_faults
            if f.accelerator in ("any", device)
            and f.region in ("*", svc.region)
            and f.image_contains in images
        ]
        env, missing_secret = self._resolve_env(svc.project, template)
        rev = Revision(
            name=f"{svc.name}/revisions/{short}",
            short=short,
            service=svc.name,
            project=svc.project,
            region=svc.region,
            generation=svc.generation,
            template=copy.deepcopy(template),
            uid=str(uuid.uuid4()),
            create_time=now_rfc3339(),
            ready=True,
            device=device,
            faults=faults,
            env=env,
        )
        if failure is not None:  # where == "revision"
            self.state.calls["run.deploy_error.revision"] += 1
            rev.ready, rev.message, rev.reason = False, failure.message, "REVISION_FAILED"
        elif missing_secret:
            rev.ready, rev.message, rev.reason = (
                False,
                missing_secret,
                "SECRETS_ACCESS_CHECK_FAILED",
            )
        elif scenario.region(svc.region).never_ready or any(
            f.fault == "never_ready" for f in faults
        ):
            rev.ready, rev.message = False, NOT_READY_MESSAGE
            rev.revision_reason = "HEALTH_CHECK_CONTAINER_ERROR"
        self.revisions[rev.name] = rev
        self.state.calls["run.revision_created"] += 1
        if not rev.ready:
            self.state.calls["run.revision_failed"] += 1
            if rev.revision_reason:  # the container was started and failed its probe
                write_revision_log(
                    self.state,
                    rev,
                    "ERROR",
                    "Default STARTUP TCP probe failed 1 time consecutively for container "
                    f'"{_container_name(template)}" on port 8080. The instance was not started.',
                )
            write_revision_log(self.state, rev, "ERROR", rev.message)
        return rev

    def _resolve_env(self, project: str, template: dict) -> tuple[dict[str, str], str]:
        """The first container's env with secrets resolved from the scenario's `secrets`."""
        env: dict[str, str] = {}
        containers = template.get("containers") or [{}]
        for var in containers[0].get("env", []):
            ref = var.get("valueSource", {}).get("secretKeyRef")
            if ref is None:
                env[var["name"]] = var.get("value", "")
                continue
            secret = ref.get("secret", "")
            value = self.state.scenario.secrets.get(secret)
            if value is None:
                value = self.state.scenario.secrets.get(secret.rsplit("/", 1)[-1])
            if value is None:
                version = ref.get("version", "latest")
                return env, (
                    f"spec.template.spec.containers[0].env.valueFrom.secretKeyRef: Secret "
                    f"projects/{project}/secrets/{secret.rsplit('/', 1)[-1]}/versions/{version} "
                    "was not found"
                )
            env[var["name"]] = value
        return env, ""

    def delete_revision(self, name: str) -> Revision:
        rev = self.get_revision(name)
        svc = self.services.get(rev.service)
        if svc is not None:
            serving = [s for s in svc.statuses if s["revision"] == name]
            if any(s["percent"] > 0 or s.get("tag") for s in serving):
                raise ApiError(
                    400,
                    f"Revision '{rev.short}' is receiving traffic (or has a tag) and cannot be "
                    "deleted: move its traffic and tags first.",
                    status="FAILED_PRECONDITION",
                )
            if svc.latest_created == name:
                raise ApiError(
                    400,
                    f"Revision '{rev.short}' is the latest revision of service '{svc.short}' "
                    "and cannot be deleted.",
                    status="FAILED_PRECONDITION",
                )
        del self.revisions[name]
        self.instances.pop(name, None)
        if svc is not None:
            svc.latest_ready = next(
                (r.name for r in reversed(self.service_revisions(svc.name)) if r.ready), ""
            )
            self.record(svc, "delete_revision", note=rev.short)
        return rev

    def delete_service(self, name: str, etag: str = "") -> dict:
        svc = self.get_service(name)
        if etag and etag != svc.etag:
            raise ApiError(
                409,
                f"The etag provided ({etag}) does not match the current etag of service "
                f"'{svc.short}' ({svc.etag}).",
                status="ABORTED",
            )
        rendered = self.render_service(svc)
        for rev in self.service_revisions(name):
            del self.revisions[rev.name]
            self.instances.pop(rev.name, None)
        del self.services[name]
        self.record(svc, "delete", exists=False)
        return rendered

    # ---- traffic history ----------------------------------------------------------------

    def record(self, svc: Service, event: str, *, exists: bool = True, note: str = "") -> None:
        """One moment of a service's traffic, with each revision's Ready state then."""
        revisions = {r.short: r.ready for r in self.service_revisions(svc.name)}
        traffic = []
        if exists:
            for s in svc.statuses:
                short = s["revision"].rsplit("/", 1)[-1]
                traffic.append(
                    {
                        "revision": short,
                        "percent": s["percent"],
                        "tag": s.get("tag", ""),
                        "ready": revisions.get(short, False),
                        "latest": s["type"] == LATEST,
                    }
                )
        self.history.append(
            {
                "seq": len(self.history) + 1,
                "time": now_rfc3339(),
                "service": svc.short,
                "name": svc.name,
                "event": event,
                "exists": exists,
                "generation": svc.generation,
                "traffic": traffic,
                "revisions": revisions if exists else {},
                "note": note,
            }
        )

    def traffic_history(self, service: str | None = None) -> list[dict]:
        if not service:
            return list(self.history)
        return [h for h in self.history if service in (h["service"], h["name"])]

    # ---- serving ------------------------------------------------------------------------

    def route(self, host: str) -> tuple[Service, Revision | None] | None:
        """The service and the revision a request to this host reaches (None: unknown host)."""
        tag, sep, rest = host.partition("---")
        if not sep:
            tag, rest = "", host
        for svc in self.services.values():
            if svc.host() != rest:
                continue
            if tag:
                status = next((s for s in svc.statuses if s.get("tag") == tag), None)
                if status is None:
                    return None
                return svc, self.revisions.get(status["revision"])
            weighted = [s for s in svc.statuses if s["percent"] > 0]
            if not weighted:
                return svc, None
            point = self.state.rng.random() * sum(s["percent"] for s in weighted)
            for s in weighted:
                point -= s["percent"]
                if point < 0:
                    return svc, self.revisions.get(s["revision"])
            return svc, self.revisions.get(weighted[-1]["revision"])
        return None


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
    state: SandboxState, rev: Revision, severity: str, text: str, stream: str | None = None
) -> dict:
    """A line of the revision's stdout/stderr (or `requests` log) in the Cloud Logging store."""
    if stream is None:
        stream = "stderr" if severity in ("ERROR", "CRITICAL", "ALERT", "EMERGENCY") else "stdout"
    return state.write_log(
        text,
        severity=severity,
        resource=revision_resource(rev),
        log_name=f"projects/{rev.project}/logs/run.googleapis.com%2F{stream}",
    )


def _container_name(template: dict) -> str:
    containers = template.get("containers") or [{}]
    return containers[0].get("name") or "placeholder-1"


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part.title() for part in rest)


def _note(err: ApiError | None) -> str:
    return f"failed: {err.message}" if err else ""
