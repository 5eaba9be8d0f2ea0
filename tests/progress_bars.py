"""Progress artifacts of a flow run, read back through the Prefect API (what the UI shows)."""

from __future__ import annotations

from typing import Any


def progress_bars(flow_run_id: str, key_prefix: str) -> list[Any]:
    """The flow run's progress artifacts whose key starts with `progress-<key_prefix>`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterType,
    )

    with get_client(sync_client=True) as client:
        bars = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                type=ArtifactFilterType(any_=["progress"]),
            )
        )
    return [a for a in bars if (a.key or "").startswith(f"progress-{key_prefix}")]
