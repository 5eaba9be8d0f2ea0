"""What Cloud Run refuses in a revision template besides GPUs (run_templates.check_gpu_template):
CPU and memory that do not go together, reserved env names, and the traffic tag's length.

Each refusal is the 400 INVALID_ARGUMENT Google answers, with Google's text where it is quoted
in public:

- CPU and memory. "CPUs / Memory required: .08 vCPU up to 512 MiB, .5 vCPU up to 1 GiB, 1 vCPU
  up to 4 GiB, 2 vCPU up to 8 GiB, 4 vCPU 2 to 16 GiB, 6 vCPU 4 to 24 GiB, 8 vCPU 4 to 32 GiB"
  (cloud.google.com/run/docs/configuring/services/cpu, "CPU and memory table"); the same rule
  seen from memory: "More than 4 GiB: 2, more than 8 GiB: 4, more than 16 GiB: 6, more than 24
  GiB: 8 [minimum CPUs]" and "The maximum amount of memory you can configure is 32 gibibyte"
  (.../configuring/services/memory-limits, "Required minimum CPUs"); the minimum is 128 MiB
  (first generation) or 512 MiB (second generation). The refusal reads "spec.template.spec.
  containers[0].resources.limits.memory: Invalid value specified for memory. For 1.0 CPU,
  memory must be between 128Mi and 4Gi inclusive." (googleapis/repo-automation-bots#3875; the
  gen2 form in MarkEdmondson1234/googleCloudRunner#137).
- Reserved env names: "The environment variables defined in the container runtime contract are
  reserved and cannot be set" (.../configuring/services/environment-variables, "Reserved
  names"; the contract's are PORT, K_SERVICE, K_REVISION, K_CONFIGURATION: .../container-
  contract#env-vars). The refusal reads "spec.template.spec.containers[0].env: The following
  reserved env names were provided: PORT. These values are automatically set by the system."
  (quoted from real deploys in public runbooks and terraform comments).
- Tags: "spec.traffic.tag: traffic tag 'stage3-staging-2401-7110f23' and service name
  'policyengine-api-staging' together are too long. Combined traffic tag and service name
  cannot exceed 46 characters." (PolicyEngine/policyengine-api#3729, solana-foundation/tokens
  #89: the tag URL's DNS label); a tag needs at least three characters (a tag `s1` was refused:
  PolicyEngine/policyengine-sim-api#656; Google's wording of that one is not quoted there, so
  the text below is the sandbox's own).
"""

from __future__ import annotations

from sandbox.emulator.core import ApiError

RESERVED_ENV = ("PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION")
MAX_MEMORY_GIB = 32.0
TAG_AND_SERVICE_MAX = 46
TAG_MIN = 3

# (CPU at least, the memory range in GiB it allows), from the CPU page's table; the lower
# bound is raised to the execution environment's minimum.
_CPU_MEMORY: tuple[tuple[float, float, float], ...] = (
    (8.0, 4.0, 32.0),
    (6.0, 4.0, 24.0),
    (4.0, 2.0, 16.0),
    (2.0, 0.0, 8.0),
    (1.0, 0.0, 4.0),
    (0.5, 0.0, 1.0),
    (0.0, 0.0, 0.5),
)


def memory_range_gib(cpu: float, gen2: bool) -> tuple[float, float]:
    """The memory (GiB, inclusive) Cloud Run allows beside `cpu` CPUs."""
    floor = 0.5 if gen2 else 0.125
    for at_least, low, high in _CPU_MEMORY:
        if cpu >= at_least:
            return max(low, floor), high
    return floor, 0.5


def _quantity(gib: float) -> str:
    return f"{gib:g}Gi" if gib >= 1 else f"{round(gib * 1024)}Mi"


def check_cpu_memory(template: dict, cpu: float, memory_gib: float) -> None:
    """400 when the first container's memory is outside what its CPU allows."""
    gen2 = template.get("executionEnvironment") == "EXECUTION_ENVIRONMENT_GEN2"
    low, high = memory_range_gib(cpu, gen2)
    if low <= memory_gib <= high:
        return
    where = "with gen2 execution environment" if gen2 else ""
    raise ApiError(
        400,
        "spec.template.spec.containers[0].resources.limits.memory: Invalid value specified "
        f"for memory{' ' + where if where else ''}. For {cpu:.1f} CPU, memory must be between "
        f"{_quantity(low)} and {_quantity(high)} inclusive.",
    )


def check_reserved_env(template: dict) -> None:
    """400 when a container sets an env name the container contract reserves."""
    for i, container in enumerate(template.get("containers") or []):
        names = [v.get("name", "") for v in container.get("env") or []]
        reserved = [n for n in RESERVED_ENV if n in names]
        if reserved:
            raise ApiError(
                400,
                f"spec.template.spec.containers[{i}].env: The following reserved env names "
                f"were provided: {', '.join(reserved)}. These values are automatically set by "
                "the system.",
            )


def check_tag(service_short: str, tag: str) -> None:
    """400 when a traffic tag is too short, or too long beside the service's name."""
    if len(tag) < TAG_MIN:
        raise ApiError(
            400,
            f"spec.traffic.tag: traffic tag '{tag}' is too short: a tag has at least "
            f"{TAG_MIN} characters.",
        )
    if len(tag) + len(service_short) > TAG_AND_SERVICE_MAX:
        raise ApiError(
            400,
            f"spec.traffic.tag: traffic tag '{tag}' and service name '{service_short}' together "
            f"are too long. Combined traffic tag and service name cannot exceed "
            f"{TAG_AND_SERVICE_MAX} characters.",
        )


def check_service_scaling(spec: dict) -> None:
    """The service-level scaling (google/cloud/run/v2/vendor_settings.proto ServiceScaling:
    "total min instances for the service", "total max instances for the service"): counts of
    instances, so not negative, and a minimum above the maximum cannot be kept. Google's wording
    of these refusals is not quoted in public: the texts are the sandbox's own."""
    scaling = spec.get("scaling") or {}
    if not isinstance(scaling, dict):
        raise ApiError(400, "service.scaling: expected an object such as {'minInstanceCount': 1}.")
    counts = {}
    for key in ("minInstanceCount", "maxInstanceCount", "manualInstanceCount"):
        value = scaling.get(key, 0) or 0
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ApiError(
                400,
                f"service.scaling.{key}: {value!r} is not a count of instances; give a whole "
                "number >= 0.",
            )
        counts[key] = value
    low, high = counts["minInstanceCount"], counts["maxInstanceCount"]
    if high and low > high:
        raise ApiError(
            400,
            f"service.scaling.minInstanceCount: {low} is more than maxInstanceCount {high}; "
            "lower the minimum or raise the maximum.",
        )
