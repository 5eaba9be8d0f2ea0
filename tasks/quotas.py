"""Cloud Quotas v1, thinly: read Cloud Run's regional capacity, file and poll quota preferences.

Typed wrappers over the official `cloudquotas_v1.CloudQuotasClient` (REST). They know nothing
of releases: callers pass the GoogleCloud block (or a client and a project), regions and values,
and decide what a denial means. Built-in client retries are off (`retry=None`); Prefect retries
transient errors (tasks/errors.py) — safe here, since reads are reads and a preference is filed
under a deterministic id (a retry or a re-run finds it instead of filing twice).

Units: Cloud Quotas reports run.googleapis.com CPU in milli-vCPU and memory in bytes ("By");
`RegionCapacity` converts them to vCPU and GiB using each QuotaInfo's `metricUnit`. A quota
preference's values are in the quota's own API unit (GPUs: a count).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Literal

from google.api_core import exceptions as gexc
from google.cloud import cloudquotas_v1
from google.protobuf import field_mask_pb2
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from shipyard.blocks.cloud import GoogleCloud
from shipyard.tasks.errors import backoff_delay, is_transient, retry_condition_fn

__all__ = [
    "CPU",
    "GPU_L4",
    "GPU_L4_NO_ZONAL_REDUNDANCY",
    "MEMORY",
    "RUN_SERVICE",
    "QuotaDecision",
    "QuotaRequest",
    "RegionCapacity",
    "file_quota_preference",
    "preference_id_for",
    "read_region_capacity",
    "wait_quota_decision",
]

RUN_SERVICE = "run.googleapis.com"
GPU_L4 = "NvidiaL4GpuAllocPerProjectRegion"
GPU_L4_NO_ZONAL_REDUNDANCY = "NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion"
CPU = "CpuAllocPerProjectRegion"
MEMORY = "MemAllocPerProjectRegion"
_SHORT = {GPU_L4: "l4", GPU_L4_NO_ZONAL_REDUNDANCY: "l4-nzr", CPU: "cpu", MEMORY: "mem"}
# metricUnit -> factor to vCPU (CPU) or GiB (memory). Unknown units fail loudly.
_CPU_UNITS = {"milli-vCPU": 1e-3, "{milli-vCPU}": 1e-3, "1": 1.0, "vCPU": 1.0}
_MEMORY_UNITS = {"By": 1 / 1024**3, "KiBy": 1 / 1024**2, "MiBy": 1 / 1024, "GiBy": 1.0}

_RETRY: dict[str, Any] = dict(
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=0.5),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_condition_fn,
    cache_policy=NO_CACHE,
)

Source = GoogleCloud | cloudquotas_v1.CloudQuotasClient


@dataclass(frozen=True)
class RegionCapacity:
    """A region's Cloud Run quota. `math.inf` = unlimited (Google's -1)."""

    region: str
    gpu_l4: float  # NvidiaL4GpuAllocPerProjectRegion, GPUs
    gpu_l4_no_zonal_redundancy: float  # NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion, GPUs
    cpu_vcpu: float  # CpuAllocPerProjectRegion, converted from milli-vCPU
    memory_gib: float  # MemAllocPerProjectRegion, converted from bytes

    def gpus(self, zonal_redundancy_disabled: bool) -> float:
        """The GPU quota a deploy draws on, by its zonal-redundancy setting."""
        return self.gpu_l4_no_zonal_redundancy if zonal_redundancy_disabled else self.gpu_l4

    def shortfalls(
        self, *, gpus: float, vcpu: float, memory_gib: float, zonal_redundancy_disabled: bool
    ) -> list[str]:
        """Quota ids too small for the asked totals (empty: it fits)."""
        gpu_quota = GPU_L4_NO_ZONAL_REDUNDANCY if zonal_redundancy_disabled else GPU_L4
        short = []
        if gpus > self.gpus(zonal_redundancy_disabled):
            short.append(gpu_quota)
        if vcpu > self.cpu_vcpu:
            short.append(CPU)
        if memory_gib > self.memory_gib:
            short.append(MEMORY)
        return short


@dataclass(frozen=True)
class QuotaRequest:
    """A QuotaPreference as filed (or found)."""

    name: str
    quota_id: str
    region: str
    preferred_value: int
    granted_value: int | None
    reconciling: bool
    state_detail: str
    created: bool  # False: it existed already (nothing was filed by this call)


@dataclass(frozen=True)
class QuotaDecision:
    """Where a preference stands: granted (granted >= preferred), denied, or still pending."""

    name: str
    status: Literal["granted", "denied", "pending"]
    preferred_value: int
    granted_value: int | None
    state_detail: str
    polls: int


def _client_project(
    source: Source, project: str | None
) -> tuple[cloudquotas_v1.CloudQuotasClient, str]:
    if isinstance(source, GoogleCloud):
        return source.quotas_client(), project or source.resolved_project()
    if not project:
        raise ValueError(
            "project: required when a CloudQuotasClient is passed instead of the GoogleCloud "
            "block; pass project='my-project'"
        )
    return source, project


def _value(raw: int, quota_id: str, unit: str) -> float:
    if raw == -1:
        return math.inf
    table = {CPU: _CPU_UNITS, MEMORY: _MEMORY_UNITS}.get(quota_id)
    if table is None:
        return float(raw)
    if unit not in table:
        raise ValueError(
            f"{quota_id}: metricUnit {unit!r} is not understood; known: {', '.join(table)}"
        )
    return raw * table[unit]


def _region_value(info: cloudquotas_v1.QuotaInfo, region: str) -> int:
    """The region's value: its own dimensionsInfo, else the default (no-dimension) one, else 0."""
    default = None
    for dim in info.dimensions_infos:
        regions = dict(dim.dimensions).get("region")
        if regions == region or (regions is None and region in dim.applicable_locations):
            return dim.details.value
        if not dim.dimensions and default is None:
            default = dim.details.value
    return default if default is not None else 0


@task(name="quotas.read_region_capacity", **_RETRY)
def read_region_capacity(
    source: Source, regions: list[str], *, project: str | None = None, timeout: float = 30.0
) -> dict[str, RegionCapacity]:
    """The GPU (both variants), CPU and memory quota of every region, in one list round."""
    if not regions:
        raise ValueError("regions: empty; pass at least one region, e.g. ['us-central1']")
    client, project = _client_project(source, project)
    parent = f"projects/{project}/locations/global/services/{RUN_SERVICE}"
    infos = {
        info.quota_id: info
        for info in client.list_quota_infos(parent=parent, retry=None, timeout=timeout)
        if info.quota_id in _SHORT
    }
    missing = [q for q in _SHORT if q not in infos]
    if missing:
        raise ValueError(f"quotaInfos of {RUN_SERVICE} lack {', '.join(missing)} ({parent})")

    def read(quota_id: str, region: str) -> float:
        info = infos[quota_id]
        return _value(_region_value(info, region), quota_id, info.metric_unit)

    return {
        region: RegionCapacity(
            region=region,
            gpu_l4=read(GPU_L4, region),
            gpu_l4_no_zonal_redundancy=read(GPU_L4_NO_ZONAL_REDUNDANCY, region),
            cpu_vcpu=read(CPU, region),
            memory_gib=read(MEMORY, region),
        )
        for region in regions
    }


def preference_id_for(quota_id: str, region: str, prefix: str = "shipyard") -> str:
    """Deterministic id of the one preference Shipyard files per (quota, region)."""
    short = _SHORT.get(quota_id) or quota_id.lower()[:20]
    return f"{prefix}-{short}-{region}".lower()


def _request(pref: cloudquotas_v1.QuotaPreference, created: bool) -> QuotaRequest:
    config = pref.quota_config
    return QuotaRequest(
        name=pref.name,
        quota_id=pref.quota_id,
        region=dict(pref.dimensions).get("region", ""),
        preferred_value=config.preferred_value,
        granted_value=config.granted_value,  # Int64Value: None when unset
        reconciling=pref.reconciling,
        state_detail=config.state_detail,
        created=created,
    )


@task(name="quotas.file_quota_preference", **_RETRY)
def file_quota_preference(
    source: Source,
    *,
    quota_id: str,
    region: str,
    preferred_value: int,
    contact_email: str,
    justification: str = "",
    preference_id: str | None = None,
    project: str | None = None,
    timeout: float = 30.0,
) -> QuotaRequest:
    """File a quota preference once: an existing one (same deterministic id) is returned as is.

    If the existing preference asks for less than `preferred_value`, it is raised (PATCH of
    quotaConfig.preferredValue), never filed a second time. `contact_email` is required by
    Google for an increase.
    """
    client, project = _client_project(source, project)
    pref_id = preference_id or preference_id_for(quota_id, region)
    parent = f"projects/{project}/locations/global"
    name = f"{parent}/quotaPreferences/{pref_id}"
    try:
        existing = client.get_quota_preference(name=name, retry=None, timeout=timeout)
    except gexc.NotFound:
        existing = None
    if existing is None:
        wanted = cloudquotas_v1.QuotaPreference(
            service=RUN_SERVICE,
            quota_id=quota_id,
            dimensions={"region": region},
            quota_config=cloudquotas_v1.QuotaConfig(preferred_value=preferred_value),
            justification=justification,
            contact_email=contact_email,
        )
        try:
            created = client.create_quota_preference(
                parent=parent,
                quota_preference=wanted,
                quota_preference_id=pref_id,
                retry=None,
                timeout=timeout,
            )
            return _request(created, created=True)
        except gexc.Conflict:  # ALREADY_EXISTS over REST is a 409 Conflict
            # Filed meanwhile under our id, or already there under another id (the console,
            # another tool): Google keeps one preference per quota and dimensions. Adopt it.
            existing = _same_quota_preference(client, parent, quota_id, region, timeout)
            if existing is None:
                existing = client.get_quota_preference(name=name, retry=None, timeout=timeout)
    if existing.quota_config.preferred_value < preferred_value:
        existing.quota_config.preferred_value = preferred_value
        existing.contact_email = contact_email
        updated = client.update_quota_preference(
            request=cloudquotas_v1.UpdateQuotaPreferenceRequest(
                quota_preference=existing,
                update_mask=field_mask_pb2.FieldMask(
                    paths=["quota_config.preferred_value", "contact_email"]
                ),
            ),
            retry=None,
            timeout=timeout,
        )
        return _request(updated, created=False)
    return _request(existing, created=False)


def _same_quota_preference(
    client: cloudquotas_v1.CloudQuotasClient,
    parent: str,
    quota_id: str,
    region: str,
    timeout: float,
) -> cloudquotas_v1.QuotaPreference | None:
    """The project's preference for this quota in this region, whatever its id."""
    for pref in client.list_quota_preferences(
        request=cloudquotas_v1.ListQuotaPreferencesRequest(
            parent=parent, filter=f"quota_id={quota_id}"
        ),
        retry=None,
        timeout=timeout,
    ):
        if pref.quota_id == quota_id and dict(pref.dimensions) == {"region": region}:
            return pref
    return None


def _decision(pref: cloudquotas_v1.QuotaPreference, polls: int) -> QuotaDecision:
    config = pref.quota_config
    granted = config.granted_value
    status: Literal["granted", "denied", "pending"]
    if pref.reconciling:
        status = "pending"
    elif granted is not None and (granted == -1 or granted >= config.preferred_value):
        status = "granted"
    else:
        status = "denied"
    return QuotaDecision(
        name=pref.name,
        status=status,
        preferred_value=config.preferred_value,
        granted_value=granted,
        state_detail=config.state_detail,
        polls=polls,
    )


@task(name="quotas.wait_quota_decision", cache_policy=NO_CACHE)
def wait_quota_decision(
    source: Source,
    name: str,
    *,
    budget_s: float = 600.0,
    first_delay_s: float = 2.0,
    max_delay_s: float = 60.0,
) -> QuotaDecision:
    """Poll a preference with backoff until it is decided or `budget_s` runs out ("pending").

    Transient errors while polling are waited out within the budget; others are raised.
    """
    client = source.quotas_client() if isinstance(source, GoogleCloud) else source
    deadline = time.monotonic() + budget_s
    polls, attempt = 0, 0
    last: QuotaDecision | None = None
    while True:
        attempt += 1
        try:
            pref = client.get_quota_preference(
                name=name, retry=None, timeout=max(1.0, min(30.0, deadline - time.monotonic()))
            )
            polls += 1
            last = _decision(pref, polls)
            if last.status != "pending":
                return last
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() >= deadline:
                raise
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        delay = min(max_delay_s, backoff_delay(attempt, base=first_delay_s, cap=max_delay_s))
        time.sleep(min(delay, remaining))
    if last is None:
        raise TimeoutError(f"{name}: no answer from Cloud Quotas within {budget_s} s")
    return last
