"""Cloud Quotas v1 in the sandbox, through the official client and the tasks/quotas.py wrappers."""

from __future__ import annotations

import pytest
from google.api_core import exceptions as gexc
from google.cloud import cloudquotas_v1
from google.protobuf import field_mask_pb2

from shipyard.tasks.errors import is_transient
from shipyard.tasks.quotas import (
    CPU,
    GPU_L4,
    GPU_L4_NO_ZONAL_REDUNDANCY,
    MEMORY,
    file_quota_preference,
    preference_id_for,
    read_region_capacity,
    wait_quota_decision,
)

EMAIL = "release@example.com"
FAST = {"first_delay_s": 0.02, "max_delay_s": 0.05}


def _parent(cloud) -> str:
    return f"projects/{cloud.resolved_project()}/locations/global"


def _us_central1_preference(quota_id: str) -> cloudquotas_v1.QuotaPreference:
    return cloudquotas_v1.QuotaPreference(
        service="run.googleapis.com",
        quota_id=quota_id,
        dimensions={"region": "us-central1"},
        quota_config=cloudquotas_v1.QuotaConfig(preferred_value=1),
        contact_email=EMAIL,
    )


def _created_then_conflict(cloud, pref, first_id: str, second_id: str):
    """Create `pref` as `first_id`; the same again as `second_id` is ALREADY_EXISTS (409)."""
    client = cloud.quotas_client()
    first = client.create_quota_preference(
        parent=_parent(cloud), quota_preference=pref, quota_preference_id=first_id
    )
    with pytest.raises(gexc.Conflict, match="already exists") as again:
        client.create_quota_preference(
            parent=_parent(cloud), quota_preference=pref, quota_preference_id=second_id
        )
    assert again.value.response.json()["error"]["status"] == "ALREADY_EXISTS"
    return first


def _info_values(info) -> dict[str, int]:
    """region -> value: its own entry, else the default entry's applicableLocations."""
    own = {d.dimensions["region"]: d.details.value for d in info.dimensions_infos if d.dimensions}
    for d in info.dimensions_infos:
        if not d.dimensions:
            for region in d.applicable_locations:
                own.setdefault(region, d.details.value)
    return own


def test_quota_infos_per_region_follow_the_scenario(sandbox_admin, cloud):
    sandbox_admin.reset(
        scenario_data={
            "default_region": {"gpu": 0, "gpu_no_zonal_redundancy": 0, "cpu": 100},
            "regions": {
                "europe-west1": {"gpu": 3, "gpu_no_zonal_redundancy": 2, "memory_gib": 64},
                "me-west1": {"gpu": 1},
            },
        }
    )
    client = cloud.quotas_client()
    parent = f"{_parent(cloud)}/services/run.googleapis.com"
    infos = {i.quota_id: i for i in client.list_quota_infos(parent=parent)}
    assert set(infos) == {GPU_L4, GPU_L4_NO_ZONAL_REDUNDANCY, CPU, MEMORY}

    gpu = _info_values(infos[GPU_L4])
    assert gpu["europe-west1"] == 3 and gpu["me-west1"] == 1  # scenario regions
    assert gpu["us-central1"] == 0 and gpu["asia-southeast1"] == 0  # common regions: default
    assert {"europe-west4", "us-east4", "asia-east1"} <= set(gpu)
    assert _info_values(infos[GPU_L4_NO_ZONAL_REDUNDANCY])["europe-west1"] == 2
    cpu = infos[CPU]
    assert cpu.metric == "run.googleapis.com/cpu_allocation" and cpu.metric_unit == "milli-vCPU"
    assert _info_values(cpu)["us-central1"] == 100_000
    mem = infos[MEMORY]
    assert mem.metric_unit == "By" and _info_values(mem)["europe-west1"] == 64 * 1024**3
    dim = next(
        d for d in infos[GPU_L4].dimensions_infos if d.dimensions.get("region") == "me-west1"
    )
    assert list(dim.applicable_locations) == ["me-west1"]
    # Google's default entry: no dimensions, the regions without their own value.
    (default,) = [d for d in infos[GPU_L4].dimensions_infos if not d.dimensions]
    assert default.details.value == 0 and "us-central1" in default.applicable_locations
    assert "europe-west1" not in default.applicable_locations
    capacity = read_region_capacity(
        cloud, ["us-central1", "europe-west1"], zonal_redundancy_disabled=False
    )
    assert (capacity["us-central1"].gpu, capacity["europe-west1"].gpu) == (0, 3)
    assert capacity["us-central1"].cpu == 100

    one = client.get_quota_info(name=f"{parent}/quotaInfos/{GPU_L4}")
    assert (
        one.quota_id == GPU_L4
        and one.container_type == cloudquotas_v1.QuotaInfo.ContainerType.PROJECT
    )
    with pytest.raises(gexc.NotFound, match="NoSuchQuota"):
        client.get_quota_info(name=f"{parent}/quotaInfos/NoSuchQuota")
    calls = sandbox_admin.calls()
    assert calls["quotas.list_quota_infos"] == 2 and calls["quotas.get_quota_info"] == 2


def test_quota_infos_page_through_the_official_pager(sandbox_admin, cloud):
    """pageSize 3 over the 4 quotas: the client's pager asks twice and sees each quota once."""
    sandbox_admin.reset()
    client = cloud.quotas_client()
    parent = f"{_parent(cloud)}/services/run.googleapis.com"
    pager = client.list_quota_infos(request={"parent": parent, "page_size": 3})
    pages = [[i.quota_id for i in page.quota_infos] for page in pager.pages]
    assert [len(p) for p in pages] == [3, 1]
    assert sorted(q for p in pages for q in p) == sorted(
        {GPU_L4, GPU_L4_NO_ZONAL_REDUNDANCY, CPU, MEMORY}
    )
    assert sandbox_admin.calls()["quotas.list_quota_infos"] == 2
    with pytest.raises(gexc.BadRequest, match="pageToken"):
        list(client.list_quota_infos(request={"parent": parent, "page_token": "not-ours"}))


def test_capacity_of_six_regions_in_one_round(sandbox_admin, cloud):
    sandbox_admin.reset(
        scenario_data={
            "default_region": {"gpu": 0, "gpu_no_zonal_redundancy": 0},
            "regions": {"us-central1": {"gpu": 2, "gpu_no_zonal_redundancy": 1, "cpu": 8}},
        }
    )
    regions = [
        "europe-west1",
        "europe-west4",
        "us-central1",
        "us-east4",
        "asia-southeast1",
        "asia-east1",
    ]
    capacity = read_region_capacity(cloud, regions, zonal_redundancy_disabled=True)
    assert list(capacity) == regions
    us = capacity["us-central1"]
    assert (us.gpu, us.cpu, us.memory_gib) == (1, 8.0, 400.0)  # GPU: the no-redundancy quota
    assert capacity["europe-west1"].gpu == 0
    assert (us.error, us.fits, us.why) == (None, False, "")  # the verdict is the caller's
    calls = sandbox_admin.calls()
    assert calls["quotas.list_quota_infos"] == 1
    assert calls.get("quotas.get_quota_info", 0) == 0
    redundant = read_region_capacity(cloud, regions, zonal_redundancy_disabled=False)
    assert (redundant["us-central1"].gpu, redundant["us-central1"].cpu) == (2, 8.0)


def test_capacity_read_retries_transient_errors(sandbox_admin, cloud):
    sandbox_admin.reset(scenario_data={"apis": {"quotas": {"every_nth": 1, "error_codes": [503]}}})
    # every request fails: the task retries (Prefect, retry_condition_fn) and then gives up
    with pytest.raises(gexc.ServiceUnavailable):
        read_region_capacity.with_options(retry_delay_seconds=0)(
            cloud, ["us-central1"], zonal_redundancy_disabled=False
        )
    assert sandbox_admin.calls()["fault.quotas"] == 4  # 1 try + 3 retries

    sandbox_admin.reset(scenario_data={"apis": {"quotas": {"every_nth": 2, "error_codes": [429]}}})
    read = read_region_capacity.with_options(retry_delay_seconds=0)
    read(cloud, ["us-central1"], zonal_redundancy_disabled=False)  # 1st ok
    capacity = read(cloud, ["us-central1"], zonal_redundancy_disabled=False)
    assert capacity["us-central1"].gpu == 1
    assert sandbox_admin.calls()["fault.quotas"] == 1


def test_allocation_quota_errors_are_permanent_rate_limits_transient():
    gpu = gexc.ResourceExhausted(
        "Quota exceeded for total allowable count of GPUs per project per region"
    )
    rate = gexc.TooManyRequests(
        "Quota exceeded for quota metric 'Read requests' and limit 'Read requests per minute'"
    )
    assert not is_transient(gpu)
    assert is_transient(rate)
    assert is_transient(gexc.TooManyRequests("sandbox: injected transient 429 on quotas"))
    assert not is_transient(gexc.ResourceExhausted("You do not have quota for using GPUs"))


def test_preference_granted_after_polls_raises_the_quota(sandbox_admin, cloud):
    sandbox_admin.reset(
        scenario_data={
            "regions": {
                "us-central1": {
                    "gpu": 0,
                    "gpu_no_zonal_redundancy": 0,
                    "preference": {"decision": "grant", "after_polls": 2},
                }
            }
        }
    )
    filed = file_quota_preference(
        cloud,
        quota_id=GPU_L4_NO_ZONAL_REDUNDANCY,
        region="us-central1",
        preferred_value=1,
        contact_email=EMAIL,
        justification="L4 inference canary",
    )
    assert filed.created and filed.reconciling and filed.preferred_value == 1
    assert filed.granted_value == 0
    assert filed.name.endswith(
        "/quotaPreferences/" + preference_id_for(GPU_L4_NO_ZONAL_REDUNDANCY, "us-central1")
    )

    decision = wait_quota_decision(cloud, filed.name, budget_s=10, **FAST)
    assert decision.state == "granted" and decision.granted and decision.granted_value == 1
    assert decision.polls == 3  # two GETs still reconciling, the third decided
    assert (decision.region, decision.preference_id) == (
        "us-central1",
        preference_id_for(GPU_L4_NO_ZONAL_REDUNDANCY, "us-central1"),
    )

    regions = ["us-central1"]
    no_redundancy = read_region_capacity(cloud, regions, zonal_redundancy_disabled=True)
    redundant = read_region_capacity(cloud, regions, zonal_redundancy_disabled=False)
    assert no_redundancy["us-central1"].gpu == 1 and redundant["us-central1"].gpu == 0
    # A later read shows the decision without polling again into a new state.
    again = cloud.quotas_client().get_quota_preference(name=filed.name)
    assert not again.reconciling and again.quota_config.granted_value == 1


def test_preference_denied_keeps_the_quota(sandbox_admin, cloud):
    sandbox_admin.reset(scenario="default")  # europe-west1: no L4 quota, preference denied
    filed = file_quota_preference(
        cloud, quota_id=GPU_L4, region="europe-west1", preferred_value=1, contact_email=EMAIL
    )
    decision = wait_quota_decision(cloud, filed.name, budget_s=10, **FAST)
    assert decision.state == "denied" and not decision.granted
    assert (filed.preferred_value, decision.granted_value) == (1, 0)
    assert "Denied" in decision.message and "europe-west1" in decision.message
    capacity = read_region_capacity(cloud, ["europe-west1"], zonal_redundancy_disabled=False)
    assert capacity["europe-west1"].gpu == 0


def test_undecided_preference_is_pending_when_the_budget_runs_out(sandbox_admin, cloud):
    sandbox_admin.reset(
        scenario_data={"default_region": {"gpu": 0, "preference": {"decision": "never"}}}
    )
    filed = file_quota_preference(
        cloud, quota_id=GPU_L4, region="us-east4", preferred_value=1, contact_email=EMAIL
    )
    decision = wait_quota_decision(cloud, filed.name, budget_s=0.3, **FAST)
    assert decision.state == "reconciling" and decision.polls >= 2


def test_create_is_idempotent(sandbox_admin, cloud):
    sandbox_admin.reset(scenario="default")
    pref = _us_central1_preference(GPU_L4)
    first = _created_then_conflict(cloud, pref, "manual-1", "manual-1")
    assert first.reconciling
    found = file_quota_preference(
        cloud,
        quota_id=GPU_L4,
        region="us-central1",
        preferred_value=1,
        contact_email=EMAIL,
        preference_id="manual-1",
    )
    assert not found.created and found.name == first.name
    # The task with its deterministic id, twice (a re-run of the same release).
    runs = [
        file_quota_preference(
            cloud, quota_id=GPU_L4, region="europe-west1", preferred_value=1, contact_email=EMAIL
        )
        for _ in range(2)
    ]
    assert [r.created for r in runs] == [True, False] and runs[0].name == runs[1].name
    calls = sandbox_admin.calls()
    assert calls["quotas.create_preference"] == 2  # manual-1 and the task's, each once
    assert calls["quotas.create_preference_conflict"] == 1


def test_patch_list_filter_and_validation(sandbox_admin, cloud):
    sandbox_admin.reset(scenario="default")
    client = cloud.quotas_client()
    a = file_quota_preference(
        cloud, quota_id=GPU_L4, region="us-central1", preferred_value=1, contact_email=EMAIL
    )
    file_quota_preference(
        cloud, quota_id=CPU, region="europe-west1", preferred_value=300_000, contact_email=EMAIL
    )
    # Asking for more through the task patches the same preference (no second filing).
    raised = file_quota_preference(
        cloud, quota_id=GPU_L4, region="us-central1", preferred_value=2, contact_email=EMAIL
    )
    assert raised.name == a.name and not raised.created and raised.preferred_value == 2
    assert raised.reconciling
    assert sandbox_admin.calls()["quotas.update_preference"] == 1

    listed = list(client.list_quota_preferences(parent=_parent(cloud)))
    assert len(listed) == 2
    only = list(
        client.list_quota_preferences(
            request={
                "parent": _parent(cloud),
                "filter": 'region="us-central1" AND quotaId=' + GPU_L4,
            }
        )
    )
    assert [p.name for p in only] == [a.name]
    with pytest.raises(gexc.BadRequest, match="not supported"):
        list(client.list_quota_preferences(request={"parent": _parent(cloud), "filter": "x>1"}))

    # allow_missing creates; enums (ignore_safety_checks) arrive as integers and are accepted.
    missing = cloudquotas_v1.QuotaPreference(
        name=f"{_parent(cloud)}/quotaPreferences/via-patch",
        service="run.googleapis.com",
        quota_id=MEMORY,
        dimensions={"region": "us-east4"},
        quota_config=cloudquotas_v1.QuotaConfig(preferred_value=1024**3),
    )
    made = client.update_quota_preference(
        request=cloudquotas_v1.UpdateQuotaPreferenceRequest(
            quota_preference=missing,
            allow_missing=True,
            update_mask=field_mask_pb2.FieldMask(paths=["quota_config.preferred_value"]),
            ignore_safety_checks=[cloudquotas_v1.QuotaSafetyCheck.QUOTA_DECREASE_BELOW_USAGE],
        )
    )
    assert made.reconciling and made.quota_config.preferred_value == 1024**3
    with pytest.raises(gexc.NotFound):
        missing.name = f"{_parent(cloud)}/quotaPreferences/nope"
        client.update_quota_preference(quota_preference=missing)

    with pytest.raises(gexc.BadRequest, match="contact_email"):
        file_quota_preference(
            cloud, quota_id=GPU_L4, region="asia-east1", preferred_value=4, contact_email=""
        )
    with pytest.raises(gexc.BadRequest, match="quota_id"):
        file_quota_preference(
            cloud,
            quota_id="NoSuchQuota",
            region="asia-east1",
            preferred_value=1,
            contact_email=EMAIL,
        )


def test_a_preference_filed_elsewhere_is_adopted_not_duplicated(sandbox_admin, cloud):
    """Google keeps one QuotaPreference per quota and set of dimensions
    (google/api/cloudquotas/v1/resources.proto, QuotaPreference): one filed in the console
    under another id makes ours conflict; the task adopts it and polls that one."""
    sandbox_admin.reset(scenario="default")  # us-central1: granted after two polls
    pref = _us_central1_preference(GPU_L4_NO_ZONAL_REDUNDANCY)
    console = _created_then_conflict(cloud, pref, "console-l4", "another-tool")

    filed = file_quota_preference(
        cloud,
        quota_id=GPU_L4_NO_ZONAL_REDUNDANCY,
        region="us-central1",
        preferred_value=1,
        contact_email=EMAIL,
    )
    assert not filed.created and filed.name == console.name
    decision = wait_quota_decision(cloud, filed.name, budget_s=10, **FAST)
    assert decision.state == "granted" and decision.preference_id == "console-l4"


def test_a_denial_in_the_create_response_is_read_as_denied(sandbox_admin, cloud):
    """The create can answer decided: `reconciling: false`, `grantedValue: "0"`, a
    `stateDetail`; the task reports it and the poll agrees at once."""
    deny_now = {"gpu": 0, "preference": {"decision": "deny", "after_polls": 0}}
    sandbox_admin.reset(scenario_data={"regions": {"europe-west4": deny_now}})
    filed = file_quota_preference(
        cloud, quota_id=GPU_L4, region="europe-west4", preferred_value=1, contact_email=EMAIL
    )
    assert filed.created and not filed.reconciling
    assert filed.granted_value == 0 and "Denied" in filed.state_detail
    decision = wait_quota_decision(cloud, filed.name, budget_s=10, **FAST)
    assert (decision.state, decision.polls) == ("denied", 1)
