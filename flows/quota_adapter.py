"""Adapter: the quota reads and quota preferences the deploy decision needs.

Shape the release wants: the GPU/CPU/memory quota of N regions from ONE parallel round of
Cloud Quotas reads (each QuotaInfo lists every region in `dimensionsInfos`, so one read per
quota id covers all regions), idempotent QuotaPreference filing, and polling with backoff
within a budget that stops as soon as the order of regions is decided.

This lives in flows/ because it is glue for the release's decision; the API calls are the
official cloudquotas_v1 client's.
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from google.api_core import exceptions as gexc
from google.cloud import cloudquotas_v1
from pydantic import BaseModel

from blocks.cloud import GoogleCloud
from blocks.release_target import CPU_QUOTA_ID, MEMORY_QUOTA_ID

SERVICE = "run.googleapis.com"


class RegionQuota(BaseModel):
    region: str
    gpu: float | None = None
    cpu: float | None = None
    memory_gib: float | None = None
    error: str | None = None
    fits: bool = False
    why: str = ""


class PreferenceState(BaseModel):
    region: str
    preference_id: str
    state: Literal["granted", "denied", "reconciling", "error"]
    granted_value: int | None = None
    polls: int = 0
    created: bool = False
    message: str = ""

    @property
    def granted(self) -> bool:
        return self.state == "granted"


def _info_name(project: str, quota_id: str) -> str:
    return f"projects/{project}/locations/global/services/{SERVICE}/quotaInfos/{quota_id}"


def _values(info: cloudquotas_v1.QuotaInfo) -> dict[str, float]:
    out: dict[str, float] = {}
    for dim in info.dimensions_infos:
        region = dim.dimensions.get("region")
        if region:
            out[region] = float(dim.details.value)
        else:
            for location in dim.applicable_locations:
                out.setdefault(location, float(dim.details.value))
    return out


def read_region_quotas(
    cloud: GoogleCloud, project: str, regions: list[str], gpu_quota_id: str
) -> list[RegionQuota]:
    """One parallel round: the three QuotaInfos at once. A 404 quota means 'not limited'."""
    client = cloud.quotas_client()
    ids = {"gpu": gpu_quota_id, "cpu": CPU_QUOTA_ID, "memory_gib": MEMORY_QUOTA_ID}

    def read(quota_id: str) -> dict[str, float] | None:
        try:
            return _values(client.get_quota_info(name=_info_name(project, quota_id), retry=None))
        except gexc.NotFound:
            return None

    with ThreadPoolExecutor(max_workers=len(ids)) as pool:
        results = dict(zip(ids, pool.map(read, ids.values()), strict=True))
    quotas = []
    for region in regions:
        fields: dict[str, float | None] = {}
        for key, values in results.items():
            # A region missing from a QuotaInfo's dimensionsInfos has no quota there: 0.
            fields[key] = None if values is None else values.get(region, 0.0)
        quotas.append(RegionQuota(region=region, **fields))
    return quotas


def file_preferences(
    cloud: GoogleCloud,
    project: str,
    ids: dict[str, str],
    *,
    quota_id: str,
    preferred_value: int,
    justification: str,
    contact_email: str | None,
) -> dict[str, bool]:
    """Create one preference per region (in parallel); an existing id is not filed again.

    Returns region -> True when this call created it.
    """
    client = cloud.quotas_client()
    parent = f"projects/{project}/locations/global"

    def create(item: tuple[str, str]) -> bool:
        region, pref_id = item
        try:
            client.get_quota_preference(name=f"{parent}/quotaPreferences/{pref_id}", retry=None)
            return False
        except gexc.NotFound:
            pass
        preference = cloudquotas_v1.QuotaPreference(
            dimensions={"region": region},
            quota_config=cloudquotas_v1.QuotaConfig(preferred_value=preferred_value),
            service=SERVICE,
            quota_id=quota_id,
            justification=justification,
        )
        if contact_email:
            preference.contact_email = contact_email
        try:
            client.create_quota_preference(
                parent=parent,
                quota_preference=preference,
                quota_preference_id=pref_id,
                retry=None,
            )
            return True
        except gexc.AlreadyExists:
            return False

    with ThreadPoolExecutor(max_workers=max(1, len(ids))) as pool:
        created = list(pool.map(create, ids.items()))
    return dict(zip(ids, created, strict=True))


def poll_preferences(
    cloud: GoogleCloud,
    project: str,
    ids: dict[str, str],
    *,
    needed: int,
    budget_s: float,
    initial_s: float,
    max_s: float,
) -> list[PreferenceState]:
    """Poll all preferences in parallel rounds with backoff (+jitter) until the first region
    in order is known to be usable (granted, every earlier one denied), all are decided, or
    the budget is spent. Order of the result = order of `ids`."""
    client = cloud.quotas_client()
    parent = f"projects/{project}/locations/global"
    states = {
        r: PreferenceState(region=r, preference_id=p, state="reconciling") for r, p in ids.items()
    }
    deadline = time.monotonic() + budget_s
    delay = initial_s

    def poll(region: str) -> None:
        state = states[region]
        if state.state in ("granted", "denied"):
            return
        pref = client.get_quota_preference(
            name=f"{parent}/quotaPreferences/{state.preference_id}", retry=None
        )
        state.polls += 1
        if pref.reconciling:
            return
        granted = int(pref.quota_config.granted_value)
        state.granted_value = granted
        state.state = "granted" if granted >= needed else "denied"
        state.message = pref.quota_config.state_detail

    with ThreadPoolExecutor(max_workers=max(1, len(ids))) as pool:
        while True:
            list(pool.map(poll, ids))
            if _decided(list(states.values())):
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(remaining, delay / 2 + random.uniform(0, delay / 2)))
            delay = min(delay * 2, max_s)
    return list(states.values())


def _decided(states: list[PreferenceState]) -> bool:
    for state in states:
        if state.state == "granted":
            return True
        if state.state == "reconciling":
            return False
    return True
