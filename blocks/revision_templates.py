"""What one Cloud Run revision runs on: the GPU template and the CPU baseline template.

Defaults are the Cloud Run L4 spec known to work: 1 `nvidia-l4`, 4 CPU, 16Gi, concurrency 1,
timeout 900 s, max 1 instance, no CPU throttling; CPU baseline 4 CPU / 8Gi.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Env names Cloud Run sets itself: "The environment variables defined in the container runtime
# contract are reserved and cannot be set" (cloud.google.com/run/docs/configuring/services/
# environment-variables; the contract's: PORT, K_SERVICE, K_REVISION, K_CONFIGURATION). Google
# refuses a template that sets one: "The following reserved env names were provided: PORT."
RESERVED_ENV = ("PORT", "K_SERVICE", "K_REVISION", "K_CONFIGURATION")
# One GPU per instance: the GPU page configures `--gpu=1` with `nvidia-l4`; the Cloud Run
# example in huggingface/Google-Cloud-Containers#82 says "`--gpu` and `--gpu-type`: The number
# of GPUs and the GPU type to use. Needs to be set to 1 and `nvidia-l4`".
MAX_GPUS_PER_INSTANCE = 1
MAX_MEMORY_GIB = 32.0  # "The maximum amount of memory you can configure is 32 gibibyte"
# (CPU at least, memory GiB from, memory GiB up to): Cloud Run's "CPU and memory table" (.08 vCPU
# up to 512 MiB, .5 up to 1 GiB, 1 up to 4, 2 up to 8, 4: 2 to 16, 6: 4 to 24, 8: 4 to 32 GiB;
# cloud.google.com/run/docs/configuring/services/cpu), the same as the memory page's "Required
# minimum CPUs" (more than 4 GiB: 2, 8 GiB: 4, 16 GiB: 6, 24 GiB: 8; .../memory-limits).
CPU_MEMORY_GIB: tuple[tuple[float, float, float], ...] = (
    (8.0, 4.0, 32.0),
    (6.0, 4.0, 24.0),
    (4.0, 2.0, 16.0),
    (2.0, 0.0, 8.0),
    (1.0, 0.0, 4.0),
    (0.5, 0.0, 1.0),
    (0.0, 0.0, 0.5),
)


def memory_range_gib(cpu: float) -> tuple[float, float]:
    """The memory (GiB, inclusive) Cloud Run allows beside `cpu` CPUs."""
    return next((low, high) for at_least, low, high in CPU_MEMORY_GIB if cpu >= at_least)


def cpu_needed_for(memory_gib: float) -> float:
    """The fewest CPUs whose memory range reaches `memory_gib`."""
    return min(at_least for at_least, _low, high in CPU_MEMORY_GIB if memory_gib <= high)


class SecretEnv(_Model):
    """An environment variable filled by Cloud Run from Secret Manager (never a literal value)."""

    secret: str = Field(
        title="Secret",
        description="Secret Manager secret name, e.g. shipyard-internal-token (what `shipyard "
        "setup` creates)",
    )
    version: str = Field(
        default="latest",
        title="Version",
        description="the secret's version: a number, or 'latest'",
    )


class RevisionSpec(_Model):
    """What one revision runs on: resources, scaling and environment."""

    cpu: str = Field(
        default="4",
        title="CPU",
        description="vCPU limit, e.g. '4' or '500m'; with memory it follows Cloud Run's table "
        "(more than 4Gi needs 2 CPU, 8Gi: 4, 16Gi: 6, 24Gi: 8)",
    )
    memory: str = Field(
        default="16Gi",
        title="Memory",
        description="memory limit, e.g. '16Gi', at most '32Gi' (2-4Gi runs out of memory on "
        "L4 inference)",
    )
    gpu: int = Field(
        default=1,
        ge=0,
        title="GPUs",
        description="GPUs per instance: 1, or 0 for a CPU revision (Cloud Run attaches at most "
        "one)",
    )
    concurrency: int = Field(
        default=1, ge=1, title="Concurrency", description="max concurrent requests per instance"
    )
    timeout_s: int = Field(
        default=900,
        ge=1,
        le=3600,
        title="Request timeout (s)",
        description="how long a request may take, 1 to 3600 seconds",
    )
    min_instances: int = Field(
        default=0,
        ge=0,
        title="Minimum instances",
        description="instances kept warm (each holds its GPU while the revision is addressable)",
    )
    max_instances: int = Field(
        default=1,
        ge=1,
        title="Maximum instances",
        description="the most instances the revision scales to (each needs GPU quota)",
    )
    cpu_throttling: bool = Field(
        default=False,
        title="CPU throttling",
        description="False = instance-based billing (cpu_idle=false), needed by GPU",
    )
    startup_cpu_boost: bool = Field(
        default=True,
        title="Startup CPU boost",
        description="more CPU while an instance starts (shorter cold starts)",
    )
    port: int = Field(
        default=8080,
        ge=1,
        le=65535,
        title="Container port",
        description="the port the container listens on; Cloud Run passes it as $PORT",
    )
    startup_probe_s: int | None = Field(
        default=None,
        ge=1,
        le=240,
        title="Startup probe (s)",
        description="How long Cloud Run waits for the container to listen on $PORT (a TCP "
        "startup probe); empty: Cloud Run's default probe, 240 s",
    )
    env: dict[str, str] = Field(
        default={},
        title="Environment",
        description="plain env name -> value (no secrets: use secret_env; PORT, K_SERVICE, "
        "K_REVISION and K_CONFIGURATION are Cloud Run's own)",
    )
    secret_env: dict[str, SecretEnv] = Field(
        # A plain default (not default_factory): the UI's block form only shows and saves
        # defaults written in the JSON schema. Empty: a default naming a secret that `shipyard
        # setup` never creates failed every revision of a target made in the UI (issue 21).
        default={},
        title="Secret environment",
        description="env name -> Secret Manager reference (tokens never go into images), e.g. "
        "INTERNAL_TOKEN -> shipyard-internal-token (the secret `shipyard setup` creates); "
        "empty: none",
    )
    service_account: str | None = Field(
        default=None,
        title="Service account",
        description="the revision's identity (email); empty: the project's default",
    )
    image: str | None = Field(
        default=None,
        title="Image",
        description="Pin an image for this template; default: the release image",
    )

    @field_validator("cpu")
    @classmethod
    def _cpu_quantity(cls, value: str) -> str:
        if not re.fullmatch(r"[0-9]+(\.[0-9]+)?m?", value, re.ASCII):
            raise ValueError(
                f"cpu={value!r} is not a Cloud Run CPU quantity: use e.g. '4' or '500m'"
            )
        return value

    @field_validator("gpu")
    @classmethod
    def _one_gpu(cls, value: int) -> int:
        if value > MAX_GPUS_PER_INSTANCE:
            raise ValueError(
                f"gpu={value}: Cloud Run attaches at most {MAX_GPUS_PER_INSTANCE} GPU per "
                "instance; set gpu=1 (more capacity: raise max_instances instead)"
            )
        return value

    @field_validator("env", "secret_env")
    @classmethod
    def _not_reserved(cls, value: dict[str, object], info: ValidationInfo) -> dict[str, object]:
        reserved = [name for name in RESERVED_ENV if name in value]
        if reserved:
            raise ValueError(
                f"{info.field_name}: {', '.join(reserved)}: reserved env name(s) that Cloud Run "
                "sets itself (the container contract); remove them from "
                f"{info.field_name}"
                + (" and set port= for the container port" if "PORT" in reserved else "")
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

    def check_cpu_memory(self, field: str) -> None:
        """Cloud Run's CPU and memory table, refused naming `field` (e.g. gpu_template) the way
        Google refuses it ("Invalid value specified for memory. For 4.0 CPU, memory must be
        between 2Gi and 16Gi inclusive.")."""
        memory, cpu = self.memory_gib(), self.cpu_count()
        mem, cpus = f"{field}.memory={self.memory!r}", f"{field}.cpu={self.cpu!r}"
        if memory > MAX_MEMORY_GIB:
            raise ValueError(
                f"{mem}: Cloud Run gives an instance at most {MAX_MEMORY_GIB:g}Gi; set "
                f"{field}.memory='{MAX_MEMORY_GIB:g}Gi' or less"
            )
        low, high = memory_range_gib(cpu)
        if memory > high:
            need = cpu_needed_for(memory)
            raise ValueError(
                f"{mem} with {cpus}: Cloud Run gives {cpu:g} CPU at most {high:g}Gi and needs "
                f"{need:g} CPU for {self.memory}; set {field}.cpu='{need:g}' or "
                f"{field}.memory='{high:g}Gi'"
            )
        if memory < low:
            raise ValueError(
                f"{mem} with {cpus}: {cpu:g} CPU need at least {low:g}Gi on Cloud Run; set "
                f"{field}.memory='{low:g}Gi'"
            )


class GpuTemplate(RevisionSpec):
    """The GPU revision: 1 nvidia-l4, 4 CPU, 16Gi, concurrency 1, max 1 instance, no throttling."""

    model_config = ConfigDict(title="GPU template")

    @model_validator(mode="after")
    def _cloud_run_table(self) -> GpuTemplate:
        self.check_cpu_memory("gpu_template")
        return self


class CpuTemplate(RevisionSpec):
    """The CPU baseline revision: 4 CPU, 8Gi (2Gi and 4Gi run out of memory on real pages),
    no GPU, max 2 instances; what serves when no region can run the GPU revision."""

    model_config = ConfigDict(title="CPU baseline template")

    memory: str = Field(
        default="8Gi",
        title="Memory",
        description="memory limit, e.g. '8Gi', at most '32Gi'",
    )
    gpu: int = Field(
        default=0, ge=0, title="GPUs", description="always 0: the CPU baseline has no GPU"
    )
    max_instances: int = Field(
        default=2,
        ge=1,
        title="Maximum instances",
        description="the most instances the baseline scales to",
    )
    cpu_throttling: bool = Field(
        default=True,
        title="CPU throttling",
        description="True = request-based billing (no GPU: cheaper when idle)",
    )

    @model_validator(mode="after")
    def _cloud_run_table(self) -> CpuTemplate:
        self.check_cpu_memory("cpu_template")
        return self


def default_cpu_template() -> CpuTemplate:
    """The CPU baseline: 4 CPU, 8Gi (2Gi and 4Gi OOM on real pages), maxScale 2."""
    return CpuTemplate()


def as_template(value: object) -> object:
    """A plain RevisionSpec given for a template field is read as that template's model."""
    if isinstance(value, RevisionSpec) and not isinstance(value, (GpuTemplate, CpuTemplate)):
        return value.model_dump(exclude_unset=False)
    return value
