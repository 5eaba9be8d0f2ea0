"""Where and how a GPU inference service is released: the `ReleaseTarget` block.

It holds the candidate regions, the revision templates (blocks/revision_templates.py), the quota
policy (blocks/quota_policy.py) and the canary policy (blocks/canary_policy.py); the defaults are
the Cloud Run L4 spec known to work and GPU zonal redundancy disabled.

Nothing here knows whether the project is on Google or in the sandbox: the `GoogleCloud`
block (endpoint switch) is the only place that does.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, cast

from prefect.blocks.core import Block
from pydantic import Field, ValidationInfo, field_validator, model_validator

from shipyard.blocks.canary_policy import CanaryPolicy
from shipyard.blocks.cloud import (
    ENDPOINT_ENV,
    PROJECT_ENV,
    SETUP_CLOUD_BLOCK,
    GoogleCloud,
    default_cloud,
    environment_names_google,
)
from shipyard.blocks.gpu_regions import GPU_MIN_CPU, GPU_MIN_MEMORY_GIB, gpu_regions
from shipyard.blocks.names import tag_url_problem
from shipyard.blocks.quota_policy import QuotaPolicy
from shipyard.blocks.revision_templates import CpuTemplate, GpuTemplate, as_template
from shipyard.blocks.rollout_policy import RolloutPolicy
from shipyard.blocks.schema_cache import CachedSchema

GPU_QUOTA_IDS = {
    # (gpu type, zonal redundancy) -> Cloud Quotas quota id on run.googleapis.com
    ("nvidia-l4", True): "NvidiaL4GpuAllocPerProjectRegion",
    ("nvidia-l4", False): "NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion",
}
CPU_QUOTA_ID = "CpuAllocPerProjectRegion"
MEMORY_QUOTA_ID = "MemAllocPerProjectRegion"

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.objects import BlockDocument

# The blocks `shipyard setup` saves (deployments/demo/sandbox_setup.py BUILD_BLOCK, TIERS_BLOCK):
# what the UI's block form proposes for a new target (blocks import no deployments).
SETUP_BUILD_BLOCK = "sandbox"
SETUP_TIERS_BLOCK = "sandbox"
# field -> (block type slug, block type name, setup's block) of a block a target names
_NAMED_BLOCKS = {
    "build_settings_block": (
        "shipyard-build-settings",
        "Shipyard Build Settings",
        SETUP_BUILD_BLOCK,
    ),
    "build_tiers_block": ("shipyard-cache-tiers", "Shipyard Cache Tiers", SETUP_TIERS_BLOCK),
}

_REGION = re.compile(r"^[a-z]+-[a-z]+[0-9]$")
_SERVICE = re.compile(r"^[a-z]([-a-z0-9]{0,47}[a-z0-9])?$")
# An environment names keys (the release slot `shipyard-release-<service>-<environment>`,
# Variables, artifact keys) and a resource label: short, lowercase letters, digits and '-'.
_ENVIRONMENT = re.compile(r"^[a-z]([-a-z0-9]{0,18}[a-z0-9])?$")


class ReleaseTarget(CachedSchema, Block):
    """One service to release: project, candidate regions, templates, quota and canary policies."""

    _block_type_name = "Shipyard Release Target"
    _block_type_slug = "shipyard-release-target"
    _description = (
        "A Cloud Run GPU inference service: candidate regions in order, GPU and CPU baseline "
        "templates, quota policy and canary policy."
    )

    service: str = Field(
        default="manga-translator-compute",
        title="Service",
        description="Cloud Run service name (lowercase letters, digits and '-')",
    )
    project: str | None = Field(
        default=None,
        title="Project",
        description="Google Cloud project id; empty: the project of the cloud block",
    )
    cloud: GoogleCloud | None = Field(
        default=None,
        title="Cloud",
        description="Shipyard Google Cloud block (project, credentials, endpoint; on the "
        f"sandbox: {SETUP_CLOUD_BLOCK!r}, saved by `shipyard setup`); empty: the environment "
        f"when it names a project or endpoint ({PROJECT_ENV}, {ENDPOINT_ENV}), else the "
        f"{SETUP_CLOUD_BLOCK!r} block",
    )
    regions: list[str] = Field(
        default=["europe-west1", "us-central1"],
        title="Regions",
        description="Candidate regions in order; the first is the primary",
    )
    gpu_type: str = Field(
        default="nvidia-l4",
        title="GPU type",
        description="Cloud Run accelerator of the GPU revision, e.g. nvidia-l4",
    )
    gpu_zonal_redundancy: bool = Field(
        default=False,
        title="GPU zonal redundancy",
        description="Off: the revision uses the no-zonal-redundancy GPU quota (the spec known "
        "to work)",
    )
    # Plain defaults (in the JSON schema) and a model per template: the UI's block form fills
    # a nested object from the schema's defaults and labels it with the model's title, so
    # both templates carry their own.
    gpu_template: GpuTemplate = Field(
        default=GpuTemplate(),
        title="GPU template",
        description="The GPU canary revision",
    )
    cpu_template: CpuTemplate = Field(
        default=CpuTemplate(),
        title="CPU baseline template",
        description="The CPU revision that serves when no GPU can (gpu must stay 0)",
    )
    public: bool = Field(
        default=False,
        title="Public",
        description="Allow unauthenticated invocations (default: the invoker stays private)",
    )
    quota: QuotaPolicy = Field(
        default=QuotaPolicy(),
        title="Quota policy",
        description="Whether to ask for GPU quota when no region has it, and how long to wait",
    )
    canary: CanaryPolicy = Field(
        default_factory=CanaryPolicy,
        title="Canary policy",
        description="A saved canary policy block; empty: the defaults of the canary policy",
    )
    rollout: RolloutPolicy = Field(
        default_factory=RolloutPolicy,
        title="Rollout policy",
        description="Traffic steps after the 0% canary, the judge, the load generator and the "
        "approval gate; no steps: 100% at once after the canary",
    )
    rollback_to_cpu: bool = Field(
        default=False,
        title="Roll back to CPU",
        description="On a failed canary, go to the CPU baseline even if a last good exists",
    )
    # The form proposes setup's blocks (the schema's default); a target built in Python without
    # them keeps None, the environment's settings, as before. A name whose block does not exist
    # is refused when the target is loaded (`_check_pieces`).
    build_settings_block: str | None = Field(
        default=None,
        json_schema_extra={"default": SETUP_BUILD_BLOCK},
        title="Build settings block",
        description="Name of the Shipyard Build Settings block the release builds with "
        f"(registry, git source; {SETUP_BUILD_BLOCK!r}: the one `shipyard setup` saves); empty: "
        "the environment's settings",
    )
    build_tiers_block: str | None = Field(
        default=None,
        json_schema_extra={"default": SETUP_TIERS_BLOCK},
        title="Cache tiers block",
        description="Name of the Shipyard Cache Tiers block the build uses as cache "
        f"({SETUP_TIERS_BLOCK!r}: the one `shipyard setup` saves); empty: the default tiers",
    )
    base_image: str | None = Field(
        default=None,
        title="Base image",
        description="Mirrored base image repository whose pin the build uses",
    )
    ready_timeout_s: float = Field(
        default=600.0,
        gt=0,
        title="Ready timeout (s)",
        description="Wait this long for a Cloud Run operation; a new revision is waited for at "
        "least its startup probe (the template's startup_probe_s, else Cloud Run's 240 s) plus "
        "60 s to pull and schedule",
    )
    poll_interval_s: float = Field(
        default=1.0,
        gt=0,
        title="Poll interval (s)",
        description="First Ready/operation poll delay",
    )
    retries: int = Field(
        default=3,
        ge=0,
        le=20,
        title="Retries",
        description="Retries of a step on transient errors",
    )
    retry_delay_s: float = Field(
        default=2.0,
        ge=0,
        title="Retry delay (s)",
        description="First retry delay; doubles, +jitter",
    )
    lock_timeout_s: float = Field(
        default=30.0,
        ge=0,
        title="Lock timeout (s)",
        description="Wait this long for another release of the service",
    )
    slot_lease_s: float = Field(
        default=60.0,
        ge=60,
        le=3600,
        title="Release slot lease (s)",
        description="Lease of the service's release slot, renewed while the release lives; a "
        "crashed release elsewhere blocks the service at most this long (Prefect's minimum: 60)",
    )

    environment: str | None = Field(
        default=None,
        title="Environment",
        description="The stage this target is, e.g. staging or production (empty: a target "
        "outside any pipeline). One release per service per environment runs at a time.",
    )
    promotes_from: str | None = Field(
        default=None,
        title="Promotes from",
        description="The ReleaseTarget block of the previous stage (e.g. digit-staging): this "
        "target then takes only image digests that passed there (`shipyard promote-release`), "
        "never a rebuild; empty: the first stage (releases build from the git tag)",
    )
    auto_promote: bool = Field(
        default=False,
        title="Promote automatically",
        description="When a release passes in the previous stage (promotes_from), promote its "
        "digest here at once (an automation on the release event); off: promote by hand",
    )

    @property
    def scope(self) -> str:
        """What one-at-a-time is keyed by: the service, and its environment when it has one
        (staging and production releases of one service may run side by side)."""
        return f"{self.service}-{self.environment}" if self.environment else self.service

    @field_validator("gpu_template", "cpu_template", mode="before")
    @classmethod
    def _template_model(cls, value: object) -> object:
        return as_template(value)

    @field_validator("quota", "canary", "rollout", mode="before")
    @classmethod
    def _empty_policy(cls, value: object, info: ValidationInfo) -> object:
        # The UI sends null for a policy left empty: that means the defaults.
        if value is None:
            defaults = {"quota": QuotaPolicy, "canary": CanaryPolicy, "rollout": RolloutPolicy}
            return defaults[info.field_name or "quota"]()
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

    @field_validator("environment", "promotes_from", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        # The UI sends "" for a text left empty: no environment, no previous stage.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("environment")
    @classmethod
    def _environment(cls, value: str | None) -> str | None:
        if value is not None and not _ENVIRONMENT.match(value):
            raise ValueError(
                f"environment={value!r} is not an environment name: lowercase letters, digits "
                "and '-', starting with a letter, at most 20 characters (e.g. staging, production)"
            )
        return value

    @model_validator(mode="after")
    def _pipeline(self) -> ReleaseTarget:
        if self.auto_promote and not self.promotes_from:
            raise ValueError(
                "auto_promote=True needs promotes_from: name the ReleaseTarget block of the "
                "previous stage (e.g. digit-staging), or turn auto_promote off"
            )
        if self.promotes_from and not self.environment:
            raise ValueError(
                f"promotes_from={self.promotes_from!r} needs environment: name this stage "
                "(e.g. production), the ledger tells the stages apart by it"
            )
        return self

    @field_validator("service")
    @classmethod
    def _service(cls, value: str) -> str:
        if not _SERVICE.match(value):
            raise ValueError(
                f"service={value!r} is not a Cloud Run service name: lowercase letters, digits "
                "and '-', starting with a letter, at most 49 characters"
            )
        if (problem := tag_url_problem(value)) is not None:  # the release's tag URLs
            raise ValueError(problem)
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

    # ---------------------------------------------------------------- loading

    @classmethod
    def _load_from_block_document(
        cls, block_document: BlockDocument, validate: bool = True
    ) -> ReleaseTarget:
        """Prefect's load (sync and async), then the pieces the target names are checked."""
        target = super()._load_from_block_document(block_document, validate=validate)
        target._check_pieces(block_document.name or "")
        return target

    def _check_pieces(self, name: str) -> None:
        """Refuse a loaded target that names a block that does not exist, naming the field and
        the block to choose; an empty `cloud` becomes setup's GoogleCloud block when the
        environment does not say where Google is (a sync client: works under `aload` too)."""
        from prefect.client.orchestration import get_client

        where = f"Shipyard Release Target {name!r}"
        if name and self.promotes_from == name:
            raise ValueError(
                f"{where}: promotes_from={name!r} names this target itself: name the "
                "ReleaseTarget block of the previous stage (e.g. digit-staging), or empty it "
                "for a first stage"
            )
        with get_client(sync_client=True) as client:
            for field, (slug, type_name, setup_block) in _NAMED_BLOCKS.items():
                block = getattr(self, field)
                if block and _block_document(client, block, slug) is None:
                    raise ValueError(
                        f"{where}: {field}={block!r} names no {type_name} block: choose an "
                        f"existing {type_name} block in {field} (on the sandbox `shipyard setup` "
                        f"saves {setup_block!r}), or empty it to use the environment's"
                    )
            if self.cloud is not None or self.project or environment_names_google():
                return
            document = _block_document(client, SETUP_CLOUD_BLOCK, "shipyard-google-cloud")
        if document is None:
            raise ValueError(
                f"{where}: cloud is empty and no Shipyard Google Cloud block "
                f"{SETUP_CLOUD_BLOCK!r} exists: choose a Shipyard Google Cloud block in cloud "
                f"(on the sandbox: run `shipyard setup`, which saves {SETUP_CLOUD_BLOCK!r}; on "
                f"Google: a block with your project and credentials)"
            )
        self.cloud = GoogleCloud._load_from_block_document(document)

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


def _block_document(client: SyncPrefectClient, name: str, slug: str) -> BlockDocument | None:
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_block_document_by_name(name, slug, include_secrets=True)
    except ObjectNotFound:
        return None


def cpu_template_fingerprint(target: ReleaseTarget) -> str:
    """What the CPU baseline was measured on: a recorded figure for another template is stale."""
    import hashlib

    return hashlib.sha256(target.cpu_template.model_dump_json().encode()).hexdigest()[:16]


def as_release_target(target: object) -> ReleaseTarget:
    """A ReleaseTarget from the block itself, its saved name, or its fields (a flow run's
    parameters hold any of them). Raises ValueError for a name no block has."""
    if isinstance(target, ReleaseTarget):
        return target
    if isinstance(target, str):
        return cast(ReleaseTarget, ReleaseTarget.load(target))  # Block.load is typed as Block
    if isinstance(target, dict):
        return ReleaseTarget.model_validate(target)
    raise TypeError(f"target: a ReleaseTarget, its block name or its fields, not {target!r}")
