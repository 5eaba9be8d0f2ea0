"""Cloud Quotas v1 over REST, as `google.cloud.cloudquotas_v1.CloudQuotasClient` (REST) calls it.

QuotaInfos (get/list) for the four Cloud Run quotas a GPU deploy needs: a `dimensionsInfos`
entry per region whose value differs from `default_region`'s, and one default entry (no
dimensions, `applicableLocations` = the other regions) for the rest (the scenario's regions
plus the common Cloud Run GPU regions). QuotaPreferences (create/get/list/patch) start `reconciling` and are decided
by the region's `preference` policy after `after_polls` GETs: grant raises the region's quota
(QuotaInfo and the Cloud Run emulator see it, via `effective_limit`), deny keeps it.

Units are Google's (as the Cloud Quotas API reports them for run.googleapis.com):
GPUs in units ("1"), CPU in milli-vCPU (`run.googleapis.com/cpu_allocation`), memory in bytes
("By", `run.googleapis.com/mem_allocation`). The scenario keeps GPUs / vCPU / GiB; the factors
below convert. A preference's `granted_value` in the scenario is in the API unit of its quota.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request

from sandbox.emulator.core import (
    ApiError,
    SandboxState,
    json_body,
    now_rfc3339,
    paged,
    query_flag,
)

RUN_SERVICE = "run.googleapis.com"
V1 = "/v1/projects/{project}/locations/global"

# Regions every QuotaInfo lists (Cloud Run GPU regions); scenario regions are added to these.
COMMON_REGIONS = (
    "asia-east1",
    "asia-northeast1",
    "asia-south1",
    "asia-southeast1",
    "europe-west1",
    "europe-west4",
    "us-central1",
    "us-east4",
)


@dataclass(frozen=True)
class QuotaDef:
    quota_id: str
    metric: str
    metric_unit: str
    display: str
    scenario_field: str  # RegionScenario attribute
    factor: int  # API value = scenario value * factor


QUOTAS: dict[str, QuotaDef] = {
    q.quota_id: q
    for q in (
        QuotaDef(
            "NvidiaL4GpuAllocPerProjectRegion",
            f"{RUN_SERVICE}/nvidia_l4_gpu_allocation",
            "1",
            "Total Nvidia L4 GPU allocation with zonal redundancy, per project per region",
            "gpu",
            1,
        ),
        QuotaDef(
            "NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion",
            f"{RUN_SERVICE}/nvidia_l4_gpu_allocation_no_zonal_redundancy",
            "1",
            "Total Nvidia L4 GPU allocation without zonal redundancy, per project per region",
            "gpu_no_zonal_redundancy",
            1,
        ),
        QuotaDef(
            "CpuAllocPerProjectRegion",
            f"{RUN_SERVICE}/cpu_allocation",
            "milli-vCPU",
            "Total CPU allocation, in milli vCPU, per project per region",
            "cpu",
            1000,
        ),
        QuotaDef(
            "MemAllocPerProjectRegion",
            f"{RUN_SERVICE}/mem_allocation",
            "By",
            "Total memory allocation, in bytes, per project per region",
            "memory_gib",
            1024**3,
        ),
    )
}

_PREF_ID = re.compile(r"^[a-z0-9][-a-z0-9_]{0,62}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
# Fields a PATCH may change (camelCase, as update_mask arrives in the query string).
_PATCHABLE = {
    "quotaConfig",
    "quotaConfig.preferredValue",
    "quotaConfig.annotations",
    "justification",
    "contactEmail",
    "dimensions",
}


def _int64(value: Any, field_name: str) -> int:
    """int64 arrives as a JSON string ("3") or a number; refuse anything else."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ApiError(
            400, f'{field_name}: {value!r} is not an integer (int64, e.g. "1").'
        ) from None
    if number < 0 and number != -1:
        raise ApiError(400, f"{field_name}: {number} is negative; use -1 for unlimited.")
    return number


@dataclass
class Preference:
    name: str
    project: str
    pref_id: str
    body: dict[str, Any]
    polls: int = 0
    decided: bool = False
    history: list[str] = field(default_factory=list)


class QuotaStore:
    """state.stores["quotas"]: preferences, their poll counts, and granted values."""

    def __init__(self, state: SandboxState):
        self.state = state
        self.preferences: dict[str, Preference] = {}
        # (project, region, quota_id) -> value in API units, set by a granted preference.
        self.granted: dict[tuple[str, str, str], int] = {}

    def reset(self) -> None:
        self.preferences.clear()
        self.granted.clear()

    # ---- quota values ---------------------------------------------------------------------

    def regions(self) -> list[str]:
        return sorted(set(COMMON_REGIONS) | set(self.state.scenario.regions))

    def value(self, project: str, region: str, quota_id: str) -> int:
        """The region's quota in API units: a granted preference's value, else the scenario's."""
        granted = self.granted.get((project, region, quota_id))
        if granted is not None:
            return granted
        q = QUOTAS[quota_id]
        return int(getattr(self.state.scenario.region(region), q.scenario_field)) * q.factor

    def effective_limit(self, project: str, region: str, quota_id: str) -> float | None:
        """For the Cloud Run emulator: the quota in GPUs / vCPU / GiB (scenario units)."""
        q = QUOTAS.get(quota_id)
        if q is None:
            return None
        value = self.value(project, region, quota_id)
        return float("inf") if value == -1 else value / q.factor

    def quota_info(self, project: str, quota_id: str) -> dict[str, Any]:
        q = QUOTAS[quota_id]
        return {
            "name": f"projects/{project}/locations/global/services/{RUN_SERVICE}"
            f"/quotaInfos/{quota_id}",
            "quotaId": quota_id,
            "metric": q.metric,
            "service": RUN_SERVICE,
            "isPrecise": True,
            "refreshInterval": "60s",
            "containerType": "PROJECT",
            "dimensions": ["region"],
            "metricDisplayName": q.display.split(",")[0],
            "quotaDisplayName": q.display,
            "metricUnit": q.metric_unit,
            "quotaIncreaseEligibility": {"isEligible": True},
            "isFixed": False,
            "isConcurrent": True,
            "dimensionsInfos": self.dimensions_infos(project, quota_id),
        }

    def dimensions_infos(self, project: str, quota_id: str) -> list[dict[str, Any]]:
        """One entry per region whose value is its own, then the default entry: no
        `dimensions`, its `applicableLocations` every other region. As Google answers: "If a
        dimension does not appear in the map of dimensions, the dimensions info applies to all
        the dimension values except for those that have another DimensionInfo instance
        configured for the specific value." (google/api/cloudquotas/v1/resources.proto,
        DimensionsInfo.dimensions)"""
        q = QUOTAS[quota_id]
        default = int(getattr(self.state.scenario.default_region, q.scenario_field)) * q.factor
        values = {region: self.value(project, region, quota_id) for region in self.regions()}
        infos: list[dict[str, Any]] = [
            {
                "dimensions": {"region": region},
                "details": {"value": str(value)},
                "applicableLocations": [region],
            }
            for region, value in values.items()
            if value != default
        ]
        common = [region for region, value in values.items() if value == default]
        if common:
            infos.append({"details": {"value": str(default)}, "applicableLocations": common})
        return infos

    # ---- preferences ----------------------------------------------------------------------

    def validate(self, body: dict[str, Any]) -> tuple[str, str, int]:
        """(quota_id, region, preferred value) of a preference body, or a 400 naming the field."""
        service = body.get("service", "")
        if service != RUN_SERVICE:
            raise ApiError(
                400,
                f"quota_preference.service: {service!r} is not emulated; use {RUN_SERVICE!r}.",
            )
        quota_id = body.get("quotaId", "")
        if quota_id not in QUOTAS:
            raise ApiError(
                400,
                f"quota_preference.quota_id: {quota_id!r} is not a quota of {RUN_SERVICE}; "
                f"known: {', '.join(QUOTAS)}.",
            )
        region = (body.get("dimensions") or {}).get("region", "")
        if not region:
            raise ApiError(
                400,
                "quota_preference.dimensions: 'region' is required for "
                f"{quota_id} (a per-region quota), e.g. {{'region': 'us-central1'}}.",
            )
        config = body.get("quotaConfig") or {}
        if "preferredValue" not in config:
            raise ApiError(400, "quota_preference.quota_config.preferred_value is required.")
        preferred = _int64(
            config["preferredValue"], "quota_preference.quota_config.preferred_value"
        )
        return quota_id, region, preferred

    def check_contact(self, body: dict, project: str, quota_id: str, region: str, preferred: int):
        """Google requires a contact email when a preference asks for more than is granted."""
        current = self.value(project, region, quota_id)
        email = body.get("contactEmail", "")
        if (preferred > current or preferred == -1) and not _EMAIL.match(email or ""):
            raise ApiError(
                400,
                "quota_preference.contact_email: required when requesting a quota increase "
                f"({quota_id} in {region}: {current} -> {preferred}); give an email address.",
            )

    def render(self, pref: Preference) -> dict[str, Any]:
        body = json.loads(json.dumps(pref.body))
        body.pop("contactEmail", None)  # input only
        content = json.dumps(pref.body, sort_keys=True).encode()
        body["etag"] = hashlib.sha1(content, usedforsecurity=False).hexdigest()[:16]  # a version
        return body

    def start(self, pref: Preference, preferred: int) -> None:
        """(Re)start reconciling toward `preferred`."""
        quota_id, region = pref.body["quotaId"], pref.body["dimensions"]["region"]
        config = pref.body.setdefault("quotaConfig", {})
        config["preferredValue"] = str(preferred)
        config["grantedValue"] = str(self.value(pref.project, region, quota_id))
        config["traceId"] = self.state.new_id()
        config.pop("stateDetail", None)
        config.pop("requestOrigin", None)  # output only; enums may arrive as ints
        pref.body["reconciling"] = True
        pref.body["updateTime"] = now_rfc3339()
        pref.polls = 0
        pref.decided = False

    def poll(self, pref: Preference) -> None:
        """A GET: count it; decide per the region's policy once `after_polls` GETs have passed."""
        if pref.decided:
            return
        pref.polls += 1
        quota_id, region = pref.body["quotaId"], pref.body["dimensions"]["region"]
        policy = self.state.scenario.region(region).preference
        if policy.decision == "never" or pref.polls <= policy.after_polls:
            return
        config = pref.body["quotaConfig"]
        preferred = int(config["preferredValue"])
        current = self.value(pref.project, region, quota_id)
        if policy.decision == "grant":
            granted = preferred if policy.granted_value is None else policy.granted_value
            self.granted[(pref.project, region, quota_id)] = granted
            config["grantedValue"] = str(granted)
            config["stateDetail"] = (
                f"Granted: {quota_id} in {region} is now {granted} (preferred {preferred})."
            )
            self.state.calls["quotas.granted"] += 1
        else:
            config["grantedValue"] = str(current)
            config["stateDetail"] = (
                f"Denied: the quota increase request for {quota_id} in {region} "
                f"({current} -> {preferred}) was not approved; there is not enough capacity "
                "available for this project in this region. Try another region."
            )
            self.state.calls["quotas.denied"] += 1
        pref.body["reconciling"] = False
        pref.body["updateTime"] = now_rfc3339()
        pref.decided = True


# ---- the list filter (ListQuotaPreferencesRequest.filter) -----------------------------------

_FILTER_TERM = re.compile(r"^\s*([A-Za-z_.]+)\s*=\s*\"?([^\"]*?)\"?\s*$")
_FILTER_FIELDS = {
    "quotaid": lambda b: b.get("quotaId", ""),
    "quota_id": lambda b: b.get("quotaId", ""),
    "service": lambda b: b.get("service", ""),
    "reconciling": lambda b: str(bool(b.get("reconciling"))).lower(),
    "region": lambda b: (b.get("dimensions") or {}).get("region", ""),
    "dimensions.region": lambda b: (b.get("dimensions") or {}).get("region", ""),
}


def preference_filter(text: str):
    """`key=value [AND key=value ...]` over quotaId, service, reconciling, region."""
    terms = []
    for part in re.split(r"\s+AND\s+", text.strip()) if text.strip() else []:
        match = _FILTER_TERM.match(part)
        key = match.group(1).lower() if match else ""
        if not match or key not in _FILTER_FIELDS:
            raise ApiError(
                400,
                f"filter: {part.strip()!r} is not supported; use key=value terms joined by AND "
                f"with key one of: quotaId, service, reconciling, region (got {text!r}).",
            )
        terms.append((_FILTER_FIELDS[key], match.group(2)))

    def keep(body: dict) -> bool:
        return all(getter(body).lower() == value.lower() for getter, value in terms)

    return keep


def register(app: FastAPI, state: SandboxState) -> None:
    """Add Cloud Quotas v1: quotaInfos get/list, quotaPreferences create/get/list/patch."""
    store = QuotaStore(state)
    state.stores["quotas"] = store

    def pref_name(project: str, pref_id: str) -> str:
        return f"projects/{project}/locations/global/quotaPreferences/{pref_id}"

    def get_pref(project: str, pref_id: str) -> Preference:
        pref = store.preferences.get(pref_name(project, pref_id))
        if pref is None:
            raise ApiError(404, f"QuotaPreference {pref_name(project, pref_id)!r} was not found.")
        return pref

    @app.get(V1 + "/services/{service}/quotaInfos")
    async def list_quota_infos(project: str, service: str, request: Request) -> dict:
        state.calls["quotas.list_quota_infos"] += 1
        ids = list(QUOTAS) if service == RUN_SERVICE else []
        return paged(
            ids, request, "quotaInfos", lambda q: store.quota_info(project, q), default_size=1000
        )

    @app.get(V1 + "/services/{service}/quotaInfos/{quota_id}")
    async def get_quota_info(project: str, service: str, quota_id: str) -> dict:
        state.calls["quotas.get_quota_info"] += 1
        if service != RUN_SERVICE or quota_id not in QUOTAS:
            raise ApiError(
                404,
                f"QuotaInfo {quota_id!r} of service {service!r} was not found; the sandbox "
                f"knows {RUN_SERVICE}: {', '.join(QUOTAS)}.",
            )
        return store.quota_info(project, quota_id)

    @app.post(V1 + "/quotaPreferences")
    async def create_preference(project: str, request: Request) -> dict:
        pref_id = request.query_params.get("quotaPreferenceId") or f"p{state.new_id()}"
        if not _PREF_ID.match(pref_id):
            raise ApiError(
                400,
                f"quota_preference_id: {pref_id!r} is not valid; use 1-63 lowercase letters, "
                "digits, '-' or '_', starting with a letter or digit.",
            )
        body = await json_body(request)
        quota_id, region, preferred = store.validate(body)
        name = pref_name(project, pref_id)
        if name in store.preferences:
            state.calls["quotas.create_preference_conflict"] += 1
            raise ApiError(409, f"QuotaPreference {name!r} already exists.")
        # "There is only one QuotaPreference resource for a quota value targeting a unique set
        # of dimensions." (google/api/cloudquotas/v1/resources.proto, QuotaPreference): one
        # filed under another id (the console, another tool) makes ours conflict.
        same = next(
            (
                p
                for p in store.preferences.values()
                if p.project == project
                and p.body.get("quotaId") == quota_id
                and p.body.get("dimensions") == body.get("dimensions")
            ),
            None,
        )
        if same is not None:
            state.calls["quotas.create_preference_conflict"] += 1
            raise ApiError(
                409,
                f"A QuotaPreference for quota {quota_id!r} with dimensions "
                f"{json.dumps(body.get('dimensions'), sort_keys=True)} already exists: "
                f"{same.name!r}. Update that preference instead.",
                status="ALREADY_EXISTS",
            )
        store.check_contact(body, project, quota_id, region, preferred)
        if query_flag(request, "validateOnly"):
            return {**body, "name": name, "reconciling": True}
        state.calls["quotas.create_preference"] += 1
        now = now_rfc3339()
        kept = {k: v for k, v in body.items() if k not in ("etag", "reconciling", "name")}
        pref = Preference(name=name, project=project, pref_id=pref_id, body=kept)
        pref.body.update(name=name, createTime=now)
        store.start(pref, preferred)
        store.preferences[name] = pref
        if state.scenario.region(region).preference.after_polls == 0:
            # Decided at once: Google can answer the create itself with `reconciling: false`,
            # the granted value ("0" for a denial) and a `stateDetail`.
            store.poll(pref)
        return store.render(pref)

    @app.get(V1 + "/quotaPreferences/{pref_id}")
    async def get_preference(project: str, pref_id: str) -> dict:
        state.calls["quotas.get_preference"] += 1
        pref = get_pref(project, pref_id)
        store.poll(pref)
        return store.render(pref)

    @app.get(V1 + "/quotaPreferences")
    async def list_preferences(project: str, request: Request) -> dict:
        state.calls["quotas.list_preferences"] += 1
        keep = preference_filter(request.query_params.get("filter", ""))
        prefix = f"projects/{project}/locations/global/quotaPreferences/"
        prefs = [
            p
            for n, p in sorted(store.preferences.items(), key=lambda kv: kv[1].body["createTime"])
            if n.startswith(prefix) and keep(p.body)
        ]
        return paged(prefs, request, "quotaPreferences", store.render, default_size=1000)

    @app.patch(V1 + "/quotaPreferences/{pref_id}")
    async def update_preference(project: str, pref_id: str, request: Request) -> dict:
        state.calls["quotas.update_preference"] += 1
        body = await json_body(request)
        name = pref_name(project, pref_id)
        if body.get("name") and body["name"] != name:
            raise ApiError(
                400, f"quota_preference.name: {body['name']!r} does not match the URL ({name})."
            )
        pref = store.preferences.get(name)
        if pref is None:
            if not query_flag(request, "allowMissing"):
                raise ApiError(
                    404, f"QuotaPreference {name!r} was not found (set allow_missing to create)."
                )
            quota_id, region, preferred = store.validate(body)
            store.check_contact(body, project, quota_id, region, preferred)
            if query_flag(request, "validateOnly"):
                return {**body, "name": name, "reconciling": True}
            state.calls["quotas.create_preference"] += 1
            kept = {k: v for k, v in body.items() if k not in ("etag", "reconciling")}
            pref = Preference(name=name, project=project, pref_id=pref_id, body=kept)
            pref.body.update(name=name, createTime=now_rfc3339())
            store.start(pref, preferred)
            store.preferences[name] = pref
            return store.render(pref)

        current = store.render(pref)
        if body.get("etag") and body["etag"] != current["etag"]:
            raise ApiError(
                409,
                f"quota_preference.etag: {body['etag']!r} is stale (current {current['etag']!r}); "
                "read the preference again and retry.",
                status="ABORTED",
            )
        mask = [p for p in request.query_params.get("updateMask", "").split(",") if p]
        mask = [re.sub(r"_([a-z])", lambda m: m.group(1).upper(), p) for p in mask]
        unknown = [p for p in mask if p not in _PATCHABLE]
        if unknown:
            raise ApiError(
                400,
                f"update_mask: {', '.join(unknown)} cannot be updated; allowed: "
                f"{', '.join(sorted(_PATCHABLE))}.",
            )
        merged = json.loads(json.dumps(pref.body))
        paths = mask or ["quotaConfig.preferredValue", "justification", "contactEmail"]
        for path in paths:
            head, _, tail = path.partition(".")
            if head not in body:
                continue
            if tail:
                if tail in (body[head] or {}):
                    merged.setdefault(head, {})[tail] = body[head][tail]
            else:
                merged[head] = body[head]
        quota_id, region, preferred = store.validate(merged)
        if quota_id != pref.body["quotaId"] or region != pref.body["dimensions"]["region"]:
            raise ApiError(400, "quota_preference: quota_id and region cannot change.")
        store.check_contact(merged, project, quota_id, region, preferred)
        if query_flag(request, "validateOnly"):
            return {**current, **{k: v for k, v in merged.items() if k != "contactEmail"}}
        old_preferred = int(pref.body["quotaConfig"]["preferredValue"])
        pref.body = merged
        if preferred != old_preferred:
            store.start(pref, preferred)
        else:
            pref.body["updateTime"] = now_rfc3339()
        return store.render(pref)
