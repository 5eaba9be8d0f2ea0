"""Where and how a GPU inference service is released: the `ReleaseTarget` and `CanaryPolicy` blocks.

Defaults are the Cloud Run L4 spec known to work and the canary that catches a silent CPU
fallback: 1 `nvidia-l4`, 4 CPU, 16Gi, concurrency 1, timeout 900 s, max 1
instance, no CPU throttling, GPU zonal redundancy disabled; CPU baseline 4 CPU / 8Gi;
canary 3 runs of a real page with `X-Internal-Token`, HTTP 200, `x-fallback-used: 0`,
at least 30% faster than the CPU baseline.

Nothing here knows whether the project is on Google or in the sandbox: the `GoogleCloud`
block (endpoint switch) is the only place that does.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from prefect.blocks.core import Block
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from shipyard.blocks.cloud import GoogleCloud, default_cloud
from shipyard.blocks.gpu_regions import GPU_MIN_CPU, GPU_MIN_MEMORY_GIB, gpu_regions

# The canary's default sample page ships inside the package (package data), so an installed
# worker has it; nothing is read from a checkout at run time.
PACKAGED_SAMPLE_IMAGE = Path(__file__).resolve().parent / "samples" / "page.png"
LEGACY_SAMPLE_IMAGE = "examples/sample-pages/page.png"  # what older saved policies hold
DEFAULT_TOKEN_SECRET = "shipyard-internal-token"  # noqa: S105 - a block *name*, not a secret
# The revision templates' default Secret Manager entry for the service's internal token.
TEMPLATE_TOKEN_SECRET = "manga-internal-token"  # noqa: S105 - an entry's name, not a secret

GPU_QUOTA_IDS = {
    # (gpu type, zonal redundancy) -> Cloud Quotas quota id on run.googleapis.com
    ("nvidia-l4", True): "NvidiaL4GpuAllocPerProjectRegion",
    ("nvidia-l4", False): "NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion",
}
CPU_QUOTA_ID = "CpuAllocPerProjectRegion"
MEMORY_QUOTA_ID = "MemAllocPerProjectRegion"

_REGION = re.compile(r"^[a-z]+-[a-z]+[0-9]$")
_SERVICE = re.compile(r"^[a-z]([-a-z0-9]{0,47}[a-z0-9])?$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SecretEnv(_Model):
    """An environment variable filled by Cloud Run from Secret Manager (never a literal value)."""

    secret: str = Field(description="Secret Manager secret name, e.g. manga-internal-token")
    version: str = Field(default="latest")


class RevisionSpec(_Model):
    """What one revision runs on: resources, scaling and environment."""

    cpu: str = Field(default="4", description="vCPU limit, e.g. '4'")
    memory: str = Field(
        default="16Gi",
        description="memory limit, e.g. '16Gi' (2-4Gi runs out of memory on L4 inference)",
    )
    gpu: int = Field(default=1, ge=0, description="GPUs per instance (0: a CPU revision)")
    concurrency: int = Field(default=1, ge=1, description="max concurrent requests per instance")
    timeout_s: int = Field(default=900, ge=1, le=3600)
    min_instances: int = Field(default=0, ge=0)
    max_instances: int = Field(default=1, ge=1)
    cpu_throttling: bool = Field(
        default=False, description="False = instance-based billing (cpu_idle=false), needed by GPU"
    )
    startup_cpu_boost: bool = True
    port: int = Field(default=8080, ge=1, le=65535)
    startup_probe_s: int | None = Field(
        default=None,
        ge=1,
        le=240,
        description="How long Cloud Run waits for the container to listen on $PORT (a TCP "
        "startup probe); empty: Cloud Run's default probe, 240 s",
    )
    env: dict[str, str] = Field(default={})
    secret_env: dict[str, SecretEnv] = Field(
        # A plain default (not default_factory): the UI's block form only shows and saves
        # defaults written in the JSON schema. Pydantic copies mutable defaults per instance.
        default={"MANGA_INTERNAL_API_TOKEN": SecretEnv(secret=TEMPLATE_TOKEN_SECRET)},
        description="env name -> Secret Manager reference (tokens never go into images)",
    )
    service_account: str | None = None
    image: str | None = Field(
        default=None, description="Pin an image for this template; default: the release image"
    )

    @field_validator("cpu")
    @classmethod
    def _cpu_quantity(cls, value: str) -> str:
        if not re.fullmatch(r"[0-9]+(\.[0-9]+)?m?", value, re.ASCII):
            raise ValueError(
                f"cpu={value!r} is not a Cloud Run CPU quantity: use e.g. '4' or '500m'"
            )
        return value

    def memory_gib(self) -> float:
        """'16Gi' -> 16.0, '512Mi' -> 0.5, '8G' -> 7.45 (decimal units converted)."""
        match = re.fullmatch(r"(\d+(?:\.\d+)?)(Gi|Mi|G|M)", self.memory)
        if not match:
            raise ValueError(
                f"memory={self.memory!r} is not a Cloud Run quantity: use e.g. '16Gi' or '512Mi'"
            )
        value, unit = float(match.group(1)), match.group(2)
        factor = {"Gi": 1.0, "Mi": 1 / 1024, "G": 1e9 / 2**30, "M": 1e6 / 2**30}[unit]
        return value * factor

    def cpu_count(self) -> float:
        text = self.cpu
        if text.endswith("m"):
            return float(text[:-1]) / 1000
        return float(text)


class GpuTemplate(RevisionSpec):
    """The GPU revision: 1 nvidia-l4, 4 CPU, 16Gi, concurrency 1, max 1 instance, no throttling."""

    model_config = ConfigDict(title="GPU template")


class CpuTemplate(RevisionSpec):
    """The CPU baseline revision: 4 CPU, 8Gi (2Gi and 4Gi run out of memory on real pages),
    no GPU, max 2 instances; what serves when no region can run the GPU revision."""

    model_config = ConfigDict(title="CPU baseline template")

    memory: str = Field(default="8Gi", description="memory limit, e.g. '8Gi'")
    gpu: int = Field(default=0, ge=0, description="always 0: the CPU baseline has no GPU")
    max_instances: int = Field(default=2, ge=1)
    cpu_throttling: bool = Field(
        default=True, description="True = request-based billing (no GPU: cheaper when idle)"
    )


def default_cpu_template() -> CpuTemplate:
    """The CPU baseline: 4 CPU, 8Gi (2Gi and 4Gi OOM on real pages), maxScale 2."""
    return CpuTemplate()


def _as_template(value: object) -> object:
    """A plain RevisionSpec given for a template field is read as that template's model."""
    if isinstance(value, RevisionSpec) and not isinstance(value, (GpuTemplate, CpuTemplate)):
        return value.model_dump(exclude_unset=False)
    return value


class QuotaPolicy(_Model):
    """Whether to ask for GPU quota when no region has it, and how long to wait for a decision."""

    request: bool = Field(default=True, description="file QuotaPreferences when no region fits")
    preferred_value: int = Field(default=1, ge=1)
    budget_s: float = Field(default=600.0, ge=0, description="total time to wait for decisions")
    poll_initial_s: float = Field(default=5.0, gt=0)
    poll_max_s: float = Field(default=60.0, gt=0)
    justification: str = "Cloud Run GPU inference service (Shipyard release)"
    contact_email: str | None = None


class CanaryPolicy(Block):
    """How a canary revision is judged before it gets any traffic."""

    _block_type_name = "Shipyard Canary Policy"
    _block_type_slug = "shipyard-canary-policy"
    _description = (
        "Smoke test of a canary revision on a real sample page: status, headers, speed-up over "
        "the CPU baseline, and the revision's logs, before it gets any traffic."
    )

    sample_image: str | None = Field(
        default=None,
        description="Path of the sample page image on the worker (relative: from the working "
        "directory); empty: the scanned printed page shipped with Shipyard",
    )
    health_path: str | None = Field(
        default="/health",
        description="GET first (verifies /health after the deploy; also starts the instance)",
    )
    method: Literal["POST", "PUT"] = "POST"
    path: str = "/internal/translate/page"
    content_type: str | None = Field(default=None, description="default: from the file suffix")
    auth_header: str = "X-Internal-Token"
    token_secret: str | None = Field(
        default=DEFAULT_TOKEN_SECRET,
        description="Name of the Prefect Secret block holding the internal token (None: no header)",
    )
    runs: int = Field(default=3, ge=1, le=50)
    expected_status: int = 200
    required_headers: dict[str, str] = Field(
        default={"x-fallback-used": "0"}, description="headers the answer must carry, exactly"
    )
    p95_limit_ms: float = Field(
        default=90_000, gt=0, description="single-page p95 limit (default 90 s)"
    )
    min_speedup: float | None = Field(
        default=0.30,
        ge=0,
        lt=1,
        description="1 - canary median / CPU baseline must reach this (default: >= 30%); "
        "None: not checked",
    )
    baseline_max_age_days: float = Field(
        default=30.0,
        gt=0,
        description="re-measure the recorded CPU baseline when it is older than this (it is "
        "also re-measured whenever the CPU template changes)",
    )
    check_image: bool = Field(
        default=True, description="response decodes as an image of the input's size"
    )
    log_signatures: list[str] = Field(
        default=[
            "Failed to create CUDAExecutionProvider",
            "undefined symbol",
            # Cloud Run's OOM lines: "Memory limit of 16384 MiB exceeded with 16420 MiB used.
            # Consider increasing the memory limit, ..." then "Container terminated on signal
            # 9." (dart-lang/pub-dev#9554, SkyTruth/cerulean-cloud#90)
            "Memory limit of",
            "Container terminated on signal 9",
            "UnicodeEncodeError",
        ],
        description="a canary whose revision logs contain one of these fails",
    )
    log_settle_s: float = Field(
        default=10.0, ge=0, description="wait for log ingestion before reading the canary window"
    )
    request_timeout_s: float = Field(default=900.0, gt=0)
    retry_statuses: list[int] = Field(
        default=[429, 502, 503, 504],
        description="answers retried as transient (a 500 is the app failing: not retried)",
    )
    retries: int = Field(default=3, ge=0, le=20)
    retry_delay_s: float = Field(default=1.0, ge=0)

    def sample_path(self) -> Path:
        if not self.sample_image or self.sample_image == LEGACY_SAMPLE_IMAGE:
            return PACKAGED_SAMPLE_IMAGE
        return Path(self.sample_image).absolute()


class ReleaseTarget(Block):
    """One service to release: project, candidate regions, templates, quota and canary policies."""

    _block_type_name = "Shipyard Release Target"
    _block_type_slug = "shipyard-release-target"
    _description = (
        "A Cloud Run GPU inference service: candidate regions in order, GPU and CPU baseline "
        "templates, quota policy and canary policy."
    )

    service: str = Field(default="manga-translator-compute", description="Cloud Run service name")
    project: str | None = Field(default=None, description="default: the GoogleCloud block's")
    cloud: GoogleCloud | None = Field(default=None, description="default: from the environment")
    regions: list[str] = Field(
        default=["europe-west1", "us-central1"],
        description="candidate regions in order; the first is the primary",
    )
    gpu_type: str = "nvidia-l4"
    gpu_zonal_redundancy: bool = Field(
        default=False,
        description="off: the revision uses the no-zonal-redundancy GPU quota (the spec known to work)",
    )
    # Plain defaults (in the JSON schema) and a model per template: the UI's block form fills
    # a nested object from the schema's defaults and labels it with the model's title, so
    # both templates carry their own.
    gpu_template: GpuTemplate = Field(
        default=GpuTemplate(),
        description="the GPU canary revision",
    )
    cpu_template: CpuTemplate = Field(
        default=CpuTemplate(),
        description="the CPU revision that serves when no GPU can (gpu must stay 0)",
    )
    public: bool = Field(
        default=False,
        description="allow unauthenticated invocations (default: the invoker stays private)",
    )
    quota: QuotaPolicy = Field(default=QuotaPolicy())
    canary: CanaryPolicy = Field(
        default_factory=CanaryPolicy,
        description="a saved canary policy block; empty: the defaults of the canary policy",
    )
    rollback_to_cpu: bool = Field(
        default=False,
        description="on a failed canary, go to the CPU baseline even if a last good exists",
    )
    build_settings_block: str | None = Field(
        default=None, description="build settings block name for flows/build/flow.py (its default)"
    )
    build_tiers_block: str | None = Field(
        default=None, description="cache tiers block name for flows/build/flow.py (its default)"
    )
    base_image: str | None = Field(
        default=None, description="mirrored base image repository whose pin the build uses"
    )
    ready_timeout_s: float = Field(default=600.0, gt=0, description="wait for a revision's Ready")
    poll_interval_s: float = Field(
        default=1.0, gt=0, description="first Ready/operation poll delay"
    )
    retries: int = Field(
        default=3, ge=0, le=20, description="retries of a step on transient errors"
    )
    retry_delay_s: float = Field(
        default=2.0, ge=0, description="first retry delay; doubles, +jitter"
    )
    lock_timeout_s: float = Field(
        default=30.0, ge=0, description="wait this long for another release of the service"
    )
    slot_lease_s: float = Field(
        default=60.0,
        ge=60,
        le=3600,
        description="lease of the service's release slot, renewed while the release lives; a "
        "crashed release elsewhere blocks the service at most this long (Prefect's minimum: 60)",
    )

    @field_validator("gpu_template", "cpu_template", mode="before")
    @classmethod
    def _template_model(cls, value: object) -> object:
        return _as_template(value)

    @field_validator("quota", "canary", mode="before")
    @classmethod
    def _empty_policy(cls, value: object, info: ValidationInfo) -> object:
        # The UI sends null for a policy left empty: that means the defaults.
        if value is None:
            return QuotaPolicy() if info.field_name == "quota" else CanaryPolicy()
        return value

    @field_validator("regions")
    @classmethod
    def _regions(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("regions is empty: give at least one region, e.g. ['europe-west1']")
        for region in value:
            if not _REGION.match(region):
                raise ValueError(
                    f"regions: {region!r} is not a Cloud Run region name (e.g. 'us-central1')"
                )
        if len(set(value)) != len(value):
            raise ValueError(f"regions: {value} lists a region twice; list each once, in order")
        return value

    @field_validator("service")
    @classmethod
    def _service(cls, value: str) -> str:
        if not _SERVICE.match(value):
            raise ValueError(
                f"service={value!r} is not a Cloud Run service name: lowercase letters, digits "
                "and '-', starting with a letter, at most 49 characters"
            )
        return value

    @model_validator(mode="after")
    def _templates(self) -> ReleaseTarget:
        if self.gpu_template.gpu < 1:
            raise ValueError("gpu_template.gpu=0: the GPU template needs gpu >= 1")
        if self.cpu_template.gpu != 0:
            raise ValueError(
                f"cpu_template.gpu={self.cpu_template.gpu}: the CPU baseline must have gpu=0"
            )
        if (self.gpu_type, self.gpu_zonal_redundancy) not in GPU_QUOTA_IDS:
            known = sorted({t for t, _ in GPU_QUOTA_IDS})
            raise ValueError(f"gpu_type={self.gpu_type!r} is not known; use one of {known}")
        self.gpu_template.memory_gib()
        self.cpu_template.memory_gib()
        self._gpu_requirements()
        return self

    def _gpu_requirements(self) -> None:
        """What Cloud Run asks of a GPU revision (blocks/gpu_regions.py), before any call."""
        offered = gpu_regions(self.gpu_type)
        for region in self.regions:
            if region not in offered:
                raise ValueError(
                    f"regions: {region!r} does not offer Cloud Run {self.gpu_type} GPUs; use "
                    f"regions among {', '.join(offered)}"
                )
        spec = self.gpu_template
        min_cpu = GPU_MIN_CPU.get(self.gpu_type, 0.0)
        if spec.cpu_count() < min_cpu:
            raise ValueError(
                f"gpu_template.cpu={spec.cpu!r}: a {self.gpu_type} revision needs at least "
                f"{min_cpu:g} CPU; set gpu_template.cpu='{min_cpu:g}'"
            )
        min_memory = GPU_MIN_MEMORY_GIB.get(self.gpu_type, 0.0)
        if spec.memory_gib() < min_memory:
            raise ValueError(
                f"gpu_template.memory={spec.memory!r}: a {self.gpu_type} revision needs at "
                f"least {min_memory:g}Gi; set gpu_template.memory='{min_memory:g}Gi'"
            )
        if spec.cpu_throttling:
            raise ValueError(
                "gpu_template.cpu_throttling=True: a GPU revision needs CPU always allocated; "
                "set gpu_template.cpu_throttling=False"
            )

    # ---------------------------------------------------------------- derived

    @property
    def primary_region(self) -> str:
        return self.regions[0]

    def google(self) -> GoogleCloud:
        """The `cloud` block (as saved with the target: the environment never redirects it), else
        the environment's default."""
        if self.cloud is None:
            return default_cloud()
        return self.cloud.inside_saved_block() if self._block_document_id else self.cloud

    def resolved_project(self) -> str:
        return self.project or self.google().resolved_project()

    def gpu_quota_id(self) -> str:
        return GPU_QUOTA_IDS[(self.gpu_type, self.gpu_zonal_redundancy)]

    def retry_delays(self) -> list[float]:
        """Prefect retry_delay_seconds: exponential from retry_delay_s (jitter added by Prefect)."""
        return [self.retry_delay_s * 2**attempt for attempt in range(self.retries)]


def _slug(text: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower())
    return re.sub(r"-{2,}", "-", name).strip("-")


def sanitize_name(text: str, limit: int = 63) -> str:
    """Lowercase [a-z0-9-], starting with a letter, no double/trailing dash, at most `limit`."""
    name = _slug(text)
    if not name or not name[0].isalpha():
        name = f"r-{name}".rstrip("-")
    return name[:limit].rstrip("-")


def revision_name(service: str, git_tag: str, suffix: str = "") -> str:
    """`{service}-v1-2-3[-suffix]`: the same tag gives the same name (re-runs converge).

    Cloud Run revision names are at most 63 characters; when too long, the tag part is cut
    and a short hash of the full tag keeps different tags apart.
    """
    import hashlib

    tag = _slug(git_tag)
    if not tag:
        raise ValueError(f"git_tag={git_tag!r} has no letters or digits: use a tag like 'v1.2.3'")
    tail = f"-{suffix}" if suffix else ""
    name = sanitize_name(f"{service}-{tag}{tail}", 1000)
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(git_tag.encode()).hexdigest()[:6]
    room = 63 - len(service) - len(tail) - len(digest) - 2
    if room < 1:
        raise ValueError(
            f"service={service!r} is too long to name revisions: keep it under {63 - 10} characters"
        )
    return sanitize_name(f"{service}-{tag[:room]}-{digest}{tail}", 63)


def cpu_template_fingerprint(target: ReleaseTarget) -> str:
    """What the CPU baseline was measured on: a recorded figure for another template is stale."""
    import hashlib

    return hashlib.sha256(target.cpu_template.model_dump_json().encode()).hexdigest()[:16]
