"""Adapter between tasks/quotas.py and the release's region decision.

tasks/quotas.py reads every region's Cloud Run quota in one `list_quota_infos` round, files a
QuotaPreference once under a deterministic id, and polls one preference until decided; its
types (`RegionQuota`, `PreferenceState`) are the ones the release records. The release wants:
the figures of the GPU variant it deploys (plus CPU and memory) per region in its order; all
candidate regions' preferences filed and polled at the same time (threads), not one region
after another.

The wrapped functions are Prefect tasks with their own retries on transient errors
(tasks/errors.py decides); they are called as tasks — one task run per region, submitted
side by side (`.submit`), so the UI shows each region's filing and polling and Prefect retries
each one. The release step that calls them does not retry again (one retry mechanism); given
its stage's name, a retry they are granted is reported as that stage's `retrying` event, as a
retried step reports its own (flows/observe/stage_events.py).
"""

from __future__ import annotations

from typing import Any

from shipyard.blocks.cloud import GoogleCloud
from shipyard.flows.observe.progress import Progress
from shipyard.flows.observe.stage_events import retry_reporter
from shipyard.tasks.errors import retry_condition_fn
from shipyard.tasks.quotas import (
    PreferenceState,
    RegionQuota,
    file_quota_preference,
    preference_id_for,
    read_region_capacity,
    wait_quota_decision,
)


def _reported(task: Any, stage: str | None) -> Any:
    """`task` with its own retries, each one it is granted reported as `<stage>.retrying`."""
    if stage is None:
        return task
    return task.with_options(retry_condition_fn=retry_reporter(stage, retry_condition_fn))


def preference_ids(quota_id: str, regions: list[str]) -> dict[str, str]:
    """region -> the preference id for `quota_id` there. Per project and region, never per
    service: quota is per project+region, so two services share one preference."""
    return {region: preference_id_for(quota_id, region) for region in regions}


def read_region_quotas(
    cloud: GoogleCloud,
    project: str,
    regions: list[str],
    *,
    zonal_redundancy: bool,
    stage: str | None = None,
) -> list[RegionQuota]:
    """One round of Cloud Quotas reads for every region (the task tasks/quotas.read_region_capacity,
    retried by Prefect on transient errors; each retry a `<stage>.retrying` event)."""
    quotas: dict[str, RegionQuota] = _reported(read_region_capacity, stage)(
        cloud, regions, zonal_redundancy_disabled=not zonal_redundancy, project=project
    )
    return [quotas[region] for region in regions]


def file_preferences(
    cloud: GoogleCloud,
    project: str,
    ids: dict[str, str],
    *,
    quota_id: str,
    preferred_value: int,
    justification: str,
    contact_email: str,
    stage: str | None = None,
) -> dict[str, bool]:
    """File one preference per region, in parallel; region -> True when this call filed it.

    Where the project already has a preference for this quota and region under another id
    (filed in the console or by another tool: Google keeps one per quota and dimensions), that
    one is adopted: `ids[region]` becomes its id, so that it is the one polled."""

    futures = {
        region: _reported(file_quota_preference, stage)
        .with_options(task_run_name=f"file-preference:{region}")
        .submit(
            cloud,
            quota_id=quota_id,
            region=region,
            preferred_value=preferred_value,
            contact_email=contact_email,
            justification=justification,
            preference_id=ids[region],
            project=project,
        )
        for region in ids
    }
    created = {}
    for region, future in futures.items():
        request = future.result()
        ids[region] = request.name.rsplit("/", 1)[-1]  # an adopted preference's own id
        created[region] = request.created
    return created


def poll_preferences(
    cloud: GoogleCloud,
    project: str,
    ids: dict[str, str],
    *,
    budget_s: float,
    initial_s: float,
    max_s: float,
) -> list[PreferenceState]:
    """Wait for every preference's decision at the same time, within one budget."""
    parent = f"projects/{project}/locations/global/quotaPreferences"

    futures = {
        region: wait_quota_decision.with_options(task_run_name=f"poll-preference:{region}").submit(
            cloud,
            f"{parent}/{ids[region]}",
            budget_s=budget_s,
            first_delay_s=initial_s,
            max_delay_s=max_s,
        )
        for region in ids
    }
    progress = Progress(f"quota-{project}", f"Waiting for quota decisions in {', '.join(ids)}")
    states: list[PreferenceState] = []
    for future in futures.values():
        states.append(future.result())
        progress.update(
            len(states),
            len(ids),
            "; ".join(f"{s.region}: {s.state} after {s.polls} polls" for s in states),
        )
    return states
