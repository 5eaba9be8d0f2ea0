"""What one Cloud Run revision runs on: the GPU template and the CPU baseline template.

Defaults are the Cloud Run L4 spec known to work: 1 `nvidia-l4`, 4 CPU, 16Gi, concurrency 1,
timeout 900 s, max 1 instance, no CPU throttling; CPU baseline 4 CPU / 8Gi.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

# The revision templates' default Secret Manager entry for the service's internal token.
TEMPLATE_TOKEN_SECRET = "manga-internal-token"  # noqa: S105 - an entry's name, not a secret


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


def as_template(value: object) -> object:
    """A plain RevisionSpec given for a template field is read as that template's model."""
    if isinstance(value, RevisionSpec) and not isinstance(value, (GpuTemplate, CpuTemplate)):
        return value.model_dump(exclude_unset=False)
    return value
