"""Cloud Quotas v1, thinly: read Cloud Run's regional capacity, file and poll quota preferences.

Typed wrappers over the official `cloudquotas_v1.CloudQuotasClient` (REST). They know nothing
of releases: callers pass a client and a project (or what makes both: the GoogleCloud block, or
any `QuotasSource`), regions and values, and decide what a denial means. Built-in client
retries are off (`retry=None`); Prefect retries transient errors (tasks/errors.py) — safe here,
since reads are reads and a preference is filed under a deterministic id (a retry or a re-run
finds it instead of filing twice). Polling a preference uses the waiter (tasks/waiting.py).

Units: Cloud Quotas reports run.googleapis.com CPU in milli-vCPU and memory in bytes ("By");
`RegionQuota` converts them to vCPU and GiB using each QuotaInfo's `metricUnit`. A quota
preference's values are in the quota's own API unit (GPUs: a count).

One type per concept: `RegionQuota` (a region's quota, and the caller's verdict on it) and
`PreferenceState` (where a QuotaPreference stands, in Google's words: `reconciling` until
decided) are what the release records too (its result, ledger and summary).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from google.api_core import exceptions as gexc
from google.cloud import cloudquotas_v1
from google.protobuf import field_mask_pb2
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff
from pydantic import BaseModel

from shipyard.tasks import deadlines
from shipyard.tasks.errors import WaitExpired, is_transient, retry_condition_fn
from shipyard.tasks.waiting import Deadline, NotYet, wait_for

__all__ = [
    "CPU",
    "GPU_L4",
    "GPU_L4_NO_ZONAL_REDUNDANCY",
    "MEMORY",
    "RUN_SERVICE",
    "PreferenceState",
    "QuotaRequest",
    "QuotasSource",
    "RegionQuota",
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


class QuotasSource(Protocol):
    """What makes a quotas client and names the project (the GoogleCloud block does; tasks do
    not import blocks)."""

    def quotas_client(self) -> cloudquotas_v1.CloudQuotasClient: ...

    def resolved_project(self) -> str: ...


Source = cloudquotas_v1.CloudQuotasClient | QuotasSource


class RegionQuota(BaseModel):
    """A region's Cloud Run quota for the GPU variant read, and a caller's verdict on it.

    Figures: `math.inf` = unlimited (Google's -1); None = not read (`error` says why).
    `fits` and `why` are left to the caller (the release's region choice fills them).
    """

    region: str
    gpu: float | None = None  # the variant read: GPU_L4_NO_ZONAL_REDUNDANCY or GPU_L4, GPUs
    cpu: float | None = None  # CpuAllocPerProjectRegion, vCPU (converted from milli-vCPU)
    memory_gib: float | None = None  # MemAllocPerProjectRegion, GiB (converted from bytes)
    error: str | None = None
    fits: bool = False
    why: str = ""


PreferenceStatus = Literal["granted", "denied", "reconciling"]


class PreferenceState(BaseModel):
    """Where a QuotaPreference stands: `reconciling` (Google's word) until decided, then
    `granted` (grantedValue >= preferredValue, or unlimited) or `denied`."""

    region: str
    preference_id: str
    state: PreferenceStatus
    granted_value: int | None = None
    polls: int = 0  # GETs that answered
    created: bool = False  # filed by the caller's run (a poll cannot know: the caller sets it)
    message: str = ""  # Google's stateDetail

    @property
    def granted(self) -> bool:
        return self.state == "granted"


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


def _client_project(
    source: Source, project: str | None
) -> tuple[cloudquotas_v1.CloudQuotasClient, str]:
    if not isinstance(source, cloudquotas_v1.CloudQuotasClient):
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
    source: Source,
    regions: list[str],
    *,
    zonal_redundancy_disabled: bool,
    project: str | None = None,
    timeout: float | None = None,
) -> dict[str, RegionQuota]:
    """The GPU, CPU and memory quota of every region, in one list round. The GPU quota is the
    one a deploy with that zonal-redundancy setting draws on."""
    if not regions:
        raise ValueError("regions: empty; pass at least one region, e.g. ['us-central1']")
    client, project = _client_project(source, project)
    timeout = timeout or deadlines.of(client).google_read_s
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

    gpu_quota = GPU_L4_NO_ZONAL_REDUNDANCY if zonal_redundancy_disabled else GPU_L4
    return {
        region: RegionQuota(
            region=region,
            gpu=read(gpu_quota, region),
            cpu=read(CPU, region),
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
    timeout: float | None = None,
) -> QuotaRequest:
    """File a quota preference once: an existing one (same deterministic id) is returned as is.

    If the existing preference asks for less than `preferred_value`, it is raised (PATCH of
    quotaConfig.preferredValue), never filed a second time. `contact_email` is required by
    Google for an increase.
    """
    client, project = _client_project(source, project)
    timeout = timeout or deadlines.of(client).google_write_s
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


def _state(pref: cloudquotas_v1.QuotaPreference, polls: int) -> PreferenceState:
    config = pref.quota_config
    granted = config.granted_value
    state: PreferenceStatus
    if pref.reconciling:
        state = "reconciling"
    elif granted is not None and (granted == -1 or granted >= config.preferred_value):
        state = "granted"
    else:
        state = "denied"
    return PreferenceState(
        region=dict(pref.dimensions).get("region", ""),
        preference_id=pref.name.rsplit("/", 1)[-1],
        state=state,
        granted_value=granted,
        polls=polls,
        message=config.state_detail,
    )


@task(name="quotas.wait_quota_decision", cache_policy=NO_CACHE)
def wait_quota_decision(
    source: Source,
    name: str,
    *,
    budget_s: float = 600.0,
    first_delay_s: float = 2.0,
    max_delay_s: float = 60.0,
) -> PreferenceState:
    """Poll a preference with backoff until it is decided or `budget_s` runs out (then its last
    state, `reconciling`).

    Transient errors while polling are waited out within the budget; others are raised. A
    budget spent without any answer, or ending on a transient error, raises WaitExpired.
    """
    # The name carries the project.
    client = (
        source if isinstance(source, cloudquotas_v1.CloudQuotasClient) else source.quotas_client()
    )
    deadline = Deadline(budget_s)
    per_call_s = deadlines.of(client).google_read_s
    polls = 0
    last: PreferenceState | None = None

    def poll() -> PreferenceState:
        nonlocal polls, last
        pref = client.get_quota_preference(
            name=name, retry=None, timeout=deadlines.within(per_call_s, deadline)
        )
        polls += 1
        last = _state(pref, polls)
        if last.state == "reconciling":
            raise NotYet(last.state)
        return last

    try:
        return wait_for(
            poll,
            what=f"quota preference {name}",
            first_delay_s=first_delay_s,
            max_delay_s=max_delay_s,
            deadline=deadline,
            retry_on=is_transient,
        )
    except WaitExpired as expired:
        if last is None or not isinstance(expired.__cause__, NotYet):
            raise
        return last
