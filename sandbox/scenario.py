"""Sandbox scenarios: what the local cloud does, as a data file (YAML or TOML).

A scenario says, per region, how much GPU/CPU/memory quota there is, whether a quota
preference gets granted (and after how many polls), which deploy errors happen and
where Google reports them; which faults revisions show; and how each emulated API
behaves (latency, transient errors). Every key is optional: the defaults are a
healthy cloud with GPU quota 1 everywhere.

A bad file fails with a message naming the file, the key and what is allowed.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from sandbox.build_scenario import BuildScenario

SCENARIO_DIR = Path(__file__).parent / "scenarios"

# Google's texts, as real deploys print them (hashicorp/terraform-provider-google#21999).
GPU_QUOTA_MESSAGE = "Quota exceeded for total allowable count of GPUs per project per region."
GPU_ZONAL_MESSAGE = "You do not have quota for using GPUs without zonal redundancy."


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names file, key and what is allowed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PreferencePolicy(_Strict):
    """What happens to a QuotaPreference filed in this region."""

    decision: Literal["grant", "deny", "never"] = "deny"
    after_polls: int = Field(
        default=1,
        ge=0,
        description="GETs that still answer reconciling; 0: decided in the create response",
    )
    granted_value: int | None = Field(
        default=None, ge=0, description="default: the preferred value"
    )


class DeployError(_Strict):
    """A deploy in this region fails although quota may say otherwise."""

    message: str = GPU_QUOTA_MESSAGE
    reason: str | None = Field(
        default="RESOURCE_QUOTA_EXCEEDED",
        description="the ErrorInfo reason sent with an api/operation error (None: no ErrorInfo)",
    )
    quota_id: str = "NvidiaL4GpuAllocPerProjectRegion"
    where: Literal["api", "operation", "revision"] = "operation"
    gpu_only: bool = True
    times: int = Field(default=0, ge=0, description="0 = every deploy; N = the first N deploys")


class RegionScenario(_Strict):
    gpu: int = Field(default=1, ge=0, description="NvidiaL4GpuAllocPerProjectRegion")
    gpu_no_zonal_redundancy: int = Field(
        default=1, ge=0, description="NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion"
    )
    cpu: int = Field(default=200, ge=0, description="vCPU, CpuAllocPerProjectRegion")
    memory_gib: int = Field(default=400, ge=0, description="GiB, MemAllocPerProjectRegion")
    preference: PreferencePolicy = PreferencePolicy()
    deploy_error: DeployError | None = None
    never_ready: bool = False
    quota_where: Literal["api", "operation", "revision"] | None = Field(
        default=None,
        description="where a deploy over this region's GPU/CPU/memory quota is reported "
        "(default: as Google, the revision fails; a create without zonal redundancy is refused "
        "by the API call)",
    )


# A start that fails to import a module, as Python prints it on stderr before the container
# exits. Cloud Run writes each stderr line as its own entry of the `run.googleapis.com/stderr`
# log WITHOUT a severity ("Logs written directly to stdout or stderr do not have an associated
# log level", cloud.google.com/functions/docs/monitoring/logging; on Cloud Run services too:
# "all logs default to the default severity since it's being gathered from stderr",
# google/osv.dev#1305), so `severity>=ERROR` alone never finds a traceback; the platform then
# logs the exit in `varlog/system` ("Container called exit(1).").
EXIT_LINE = "Container called exit(1)."


def missing_dependency_lines(module: str) -> list[str]:
    """The stderr lines of a service whose entry point imports `module`, not installed."""
    return [
        "Traceback (most recent call last):",
        '  File "/app/app/main.py", line 9, in <module>',
        f"    import {module}",
        f"ModuleNotFoundError: No module named '{module}'",
    ]


# Faults of a revision's start (the platform's, acted on by the emulator: run_revisions.py).
STARTUP_FAULTS = ("missing_dependency", "slow_start")
# Faults that show only under load, acted on where the emulator routes a request to the
# revision (sandbox/emulator/load_faults.py), the same for in-process and container revisions;
# the page service never hears of them.
LOAD_FAULTS = ("errors_under_load", "slow_under_load")


class RevisionFault(_Strict):
    """A fault shown by revisions that match."""

    fault: Literal[
        "silent_cpu_fallback",
        "oom",
        "http_503",
        "never_ready",
        "unicode_header",
        "missing_dependency",
        "slow_start",
        "errors_under_load",
        "slow_under_load",
    ]
    accelerator: Literal["gpu", "cpu", "any"] = "gpu"
    region: str = "*"
    image_contains: str = ""
    revision_contains: str = Field(
        default="",
        description="match revisions whose name contains this (a release names its revisions "
        "after the tag, e.g. '-v2-' for v2.x.y; a built release's image is a digest, so "
        "image_contains cannot tell its tags apart)",
    )
    requests: int = Field(
        default=0, ge=0, description="http_503, oom: the first N requests fail; 0 = all"
    )
    start_s: float = Field(
        default=0.0,
        ge=0,
        description="slow_start: the container listens on $PORT this long after it started; "
        "beyond the revision's startup probe window Cloud Run fails the revision",
    )
    module: str = Field(
        default="onnxruntime",
        description="missing_dependency: the module the service fails to import (its traceback "
        "goes to the revision's stderr log, then the container exits)",
    )
    after_requests: int = Field(
        default=10,
        ge=0,
        description="errors_under_load, slow_under_load: the revision's first N requests are "
        "healthy (a 0% canary's few probes pass); the fault shows from request N+1 on",
    )
    rate: float = Field(
        default=0.05,
        gt=0.0,
        le=1.0,
        description="errors_under_load: the share of requests past `after_requests` that get a "
        "500, deterministically every round(1/rate)-th one (0.05: the 20th, 40th, ...)",
    )
    factor: float = Field(
        default=2.0,
        ge=1.0,
        description="slow_under_load: each answer past `after_requests` takes this many times "
        "as long as the revision took (2.0: p95 doubles)",
    )


ApiFault = Literal[429, 500, 502, 503, 504, "reset", "lost_answer"]


class ApiBehaviour(_Strict):
    """Transient faults of one emulated API, each as Google (or its front end) answers it:
    429 with a RATE_LIMIT_EXCEEDED ErrorInfo, 500 INTERNAL, 502 as the front end's HTML page,
    503 UNAVAILABLE, 504 DEADLINE_EXCEEDED, "reset": the connection dropped mid-answer before the
    request was handled, "lost_answer": the request WAS handled, then the answer was lost."""

    latency_ms: int = Field(default=0, ge=0)
    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    error_codes: list[ApiFault] = [503]
    every_nth: int = Field(default=0, ge=0, description="fail every Nth request (deterministic)")
    first_n: int = Field(default=0, ge=0, description="fail the first N requests (a burst)")
    only_path: str = Field(
        default="",
        description="affect only requests whose path contains this (a region such as "
        "'/locations/us-central1/', or 'entries:list'); the counts above are over those",
    )


class Apis(_Strict):
    run: ApiBehaviour = ApiBehaviour()
    build: ApiBehaviour = ApiBehaviour()
    quotas: ApiBehaviour = ApiBehaviour()
    logging: ApiBehaviour = ApiBehaviour()


class ServingSpeed(_Strict):
    """How long the sample page service takes per page, by accelerator."""

    gpu_ms: int = Field(default=40, ge=0)
    cpu_ms: int = Field(default=400, ge=0)
    idle_instance_s: float = Field(
        default=0.0,
        ge=0,
        description="how long an idle instance stays after its last request: a GPU instance of "
        "an addressable revision holds the region's GPU quota meanwhile; on the container "
        "engine the revision's container is stopped after it (scale to zero) and the next "
        "request starts it again. Google keeps idle instances up to 15 minutes. Minimum "
        "instances and requests in flight hold it anyway",
    )
    request_pending_s: float = Field(
        default=10.0,
        ge=0,
        description="container engine: how long a request waits for a free instance when every "
        "instance the revision may have is busy at its concurrency; then Google's 429 "
        "(requests are pending up to 10 s, or the average startup time when an instance starts)",
    )


class Operations(_Strict):
    polls_before_done: int = Field(
        default=0, ge=0, description="operation GETs answering done=false"
    )
    # "Traffic routing adjustments are not instantaneous" (Cloud Run docs, Rollbacks, gradual
    # rollouts, and traffic migration): an update that moves only traffic or tags still takes
    # its time before Google reports the operation done.
    traffic_update_ms: int = Field(
        default=0,
        ge=0,
        description="a service update that creates no revision (traffic, tags) is done only "
        "this long after it was accepted",
    )


class Scenario(_Strict):
    name: str = "healthy"
    description: str = ""
    seed: int = 0
    default_region: RegionScenario = RegionScenario()
    regions: dict[str, RegionScenario] = {}
    revision_faults: list[RevisionFault] = []
    serving: ServingSpeed = ServingSpeed()
    apis: Apis = Apis()
    operations: Operations = Operations()
    # Secret Manager stand-in: secret name (short or "projects/P/secrets/NAME") -> value, used to
    # resolve a container env `valueSource.secretKeyRef`; an unknown secret fails the revision.
    secrets: dict[str, str] = {}
    builds: BuildScenario = BuildScenario()

    def region(self, name: str) -> RegionScenario:
        return self.regions.get(name, self.default_region)


def _describe(err: ErrorDetails) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"key '{key}' is not allowed here"
    if kind == "literal_error":
        allowed = err.get("ctx", {}).get("expected", "")
        return f"key '{key}': value {err.get('input')!r} is not allowed; allowed: {allowed}"
    return f"key '{key}': {err['msg']} (got {err.get('input')!r})"


def parse_scenario(data: object, source: str = "<scenario>") -> Scenario:
    if not isinstance(data, dict):
        raise ScenarioError(
            f"{source}: a scenario must be a mapping of keys, got {type(data).__name__}"
        )
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        allowed = ", ".join(Scenario.model_fields)
        raise ScenarioError(f"{source}: {problems}. Top-level keys allowed: {allowed}") from None


def resolve_scenario_path(name_or_path: str | Path) -> Path:
    """A path, or the name of a file in sandbox/scenarios/ (with or without extension)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    for ext in ("", ".yaml", ".yml", ".toml"):
        candidate = SCENARIO_DIR / f"{name_or_path}{ext}"
        if candidate.exists():
            return candidate
    known = ", ".join(sorted(p.stem for p in SCENARIO_DIR.glob("*.*")))
    raise ScenarioError(
        f"scenario {str(name_or_path)!r} not found: give a file path or one of: {known}"
    )


def load_scenario(name_or_path: str | Path | None) -> Scenario:
    if name_or_path is None:
        return Scenario()
    path = resolve_scenario_path(name_or_path)
    text = path.read_text()
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text) or {}
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(
            f"{path}: not valid {path.suffix.lstrip('.').upper() or 'YAML'}: {exc}"
        ) from None
    return parse_scenario(data, str(path))
