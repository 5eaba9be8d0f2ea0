"""Cloud Run service templates as the client sends them: enum numbers to names, the fields
the server owns, and what a template asks for (CPU, memory, GPUs, device).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from sandbox.emulator.cloud_run_gpu import (
    GPU_MAX_PER_INSTANCE,
    GPU_MIN_CPU,
    GPU_MIN_MEMORY_GIB,
    gpu_regions,
)
from sandbox.emulator.core import ApiError
from sandbox.emulator.run_limits import check_cpu_memory, check_reserved_env
from sandbox.emulator.run_resources import GPU_LIMIT

# Fields of a Service that the server owns: dropped from what the client sends.
OUTPUT_ONLY = {
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


def camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part.title() for part in rest)


def check_template(template: dict, region: str) -> None:
    """Everything Cloud Run refuses in a template at once (400): the GPU rules, then CPU with
    memory and reserved env names (run_limits.py)."""
    check_gpu_template(template, region)
    limits = template_limits(template)
    check_cpu_memory(template, parse_cpu(limits.get("cpu")), parse_memory_gib(limits.get("memory")))
    check_reserved_env(template)


def check_gpu_template(template: dict, region: str) -> None:
    """Cloud Run's GPU rules (sandbox/emulator/cloud_run_gpu.py, from the GPU docs), answered 400 like a
    field error: a region that offers the accelerator, its minimum CPU and memory, CPU always
    allocated, and the accelerator node selector together with the GPU limit."""
    gpus = template_gpus(template)
    accelerator = template.get("nodeSelector", {}).get("accelerator", "")
    if not gpus and not accelerator:
        return
    if not gpus or not accelerator:
        raise ApiError(
            400,
            "spec.template.spec.nodeSelector: a GPU revision sets both the accelerator node "
            f"selector and the '{GPU_LIMIT}' limit (got accelerator {accelerator!r}, "
            f"{gpus} GPU).",
        )
    if gpus > GPU_MAX_PER_INSTANCE:
        # One GPU per instance (cloud_run_gpu.py): a template asking for more is refused as a
        # field error, before any quota is counted.
        raise ApiError(
            400,
            f"spec.template.spec.containers[0].resources.limits.{GPU_LIMIT}: Invalid value "
            f"specified for GPU: {gpus} requested, a Cloud Run instance has at most "
            f"{GPU_MAX_PER_INSTANCE} GPU.",
        )
    if region not in gpu_regions(accelerator):
        raise ApiError(
            400,
            f"spec.template.spec.nodeSelector: accelerator '{accelerator}' is not supported in "
            f"region '{region}'.",
        )
    containers = template.get("containers") or [{}]
    resources = containers[0].get("resources", {})
    limits = resources.get("limits", {})
    if parse_cpu(limits.get("cpu")) < GPU_MIN_CPU.get(accelerator, 0.0):
        raise ApiError(
            400,
            f"spec.template.spec.containers[0].resources.limits.cpu: a revision with "
            f"'{accelerator}' needs at least {GPU_MIN_CPU[accelerator]:g} CPU.",
        )
    if parse_memory_gib(limits.get("memory")) < GPU_MIN_MEMORY_GIB.get(accelerator, 0.0):
        raise ApiError(
            400,
            f"spec.template.spec.containers[0].resources.limits.memory: a revision with "
            f"'{accelerator}' needs at least {GPU_MIN_MEMORY_GIB[accelerator]:g}Gi.",
        )
    # "if ResourceRequirements is set, the caller must explicitly set this field to true to
    # preserve the default behavior" (google/cloud/run/v2/k8s.min.proto, cpu_idle): omitted
    # (how proto3 JSON sends false) means always allocated.
    if resources.get("cpuIdle", False):
        raise ApiError(
            400,
            "spec.template.spec.containers[0].resources.cpuIdle: a GPU revision needs CPU "
            "always allocated (cpuIdle false).",
        )


@dataclass(frozen=True)
class StartupProbe:
    """The first container's TCP startup probe: how long Cloud Run waits for $PORT.

    Without `startupProbe` Cloud Run applies its default: "tcpSocket: port: CONTAINER_PORT,
    timeoutSeconds: 240, periodSeconds: 240, failureThreshold: 1" (cloud.google.com/run/docs/
    configuring/healthchecks, "The default TCP startup probe"). A configured probe waits
    initialDelaySeconds + failureThreshold * periodSeconds (proto defaults: period 10 s,
    threshold 3; google/cloud/run/v2/k8s.min.proto, Probe)."""

    window_s: float
    failures: int
    default: bool
    port: int

    def failure_text(self, container: str) -> str:
        """The revision's system log line when the probe gives up (Google's wording; the
        default probe's line is quoted in openillumi.com/?p=117277)."""
        times = "1 time" if self.failures == 1 else f"{self.failures} times"
        prefix = "Default STARTUP" if self.default else "STARTUP"
        return (
            f'{prefix} TCP probe failed {times} consecutively for container "{container}" on '
            f"port {self.port}. The instance was not started."
        )


def startup_probe(template: dict) -> StartupProbe:
    container = (template.get("containers") or [{}])[0]
    port = int(((container.get("ports") or [{}])[0]).get("containerPort") or 8080)
    probe = container.get("startupProbe")
    if not probe:
        return StartupProbe(window_s=240.0, failures=1, default=True, port=port)
    failures = int(probe.get("failureThreshold") or 3)
    window = int(probe.get("initialDelaySeconds") or 0) + failures * int(
        probe.get("periodSeconds") or 10
    )
    return StartupProbe(window_s=float(window), failures=failures, default=False, port=port)
