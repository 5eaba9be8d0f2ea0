"""The checks after a fault case (bench/fault_matrix.py, bench/fault_kills.py): the release
record (a Prefect Variable, flows/release/record.py) and the service's ledger
(flows/observe/ledger.py) against the truth of what the case released (the image its revision
runs as Cloud Run reports it, the commit built, the tag's time, the CPU baseline the canary
measured), and the flow runs a case left Running or Pending. Used by the tests and the bench."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Truth:
    """What a case really released, to compare the release record and the ledger with."""

    service: str
    git_tag: str
    outcome: str | None  # None: nothing may claim the tag (a killed release nobody re-ran)
    revision: str | None = None  # what serves at the end
    region: str | None = None
    commit: str = ""  # the commit built ("" when the release was given its image)
    tagged_at: str | None = None  # None: not checked
    tagged_at_source: str = "release-start"
    cpu_baseline_ms: float | None = None  # the baseline the canary measured (None: not checked)


def revision_image(region: str, service: str, revision: str) -> str | None:
    """The image the revision runs, as Cloud Run reports it (the official client)."""
    from google.api_core import exceptions as gexc

    from shipyard.blocks.cloud import GoogleCloud

    cloud = GoogleCloud()
    name = (
        f"projects/{cloud.resolved_project()}/locations/{region}/services/{service}"
        f"/revisions/{revision}"
    )
    try:
        found = cloud.revisions_client().get_revision(name=name, timeout=30)
    except gexc.NotFound:
        return None
    return found.containers[0].image if found.containers else None


def _same_time(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a == b
    parse = dt.datetime.fromisoformat
    return parse(a.replace("Z", "+00:00")) == parse(b.replace("Z", "+00:00"))


def record_problems(truth: Truth) -> list[str]:
    """The release record (Prefect Variable) and the ledger rows of the tag against the truth:
    one line per mismatch (empty: both right)."""
    from shipyard.flows.canary.stage import recorded_release
    from shipyard.flows.observe.ledger import read_ledger

    record = recorded_release(truth.service) or {}
    rows = [e for e in read_ledger(truth.service) if e.git_tag == truth.git_tag and not e.noop]
    problems: list[str] = []

    def differs(where: str, name: str, got: Any, want: Any) -> None:
        same = _same_time(got, want) if name == "tagged_at" else got == want
        if not same:
            problems.append(f"{where} {name}: {got!r}, truth {want!r}")

    if truth.outcome is None:  # nothing completed the release: nothing may claim it
        if record.get("git_tag") == truth.git_tag:
            problems.append(f"record names {truth.git_tag}, which never completed")
        problems += [f"ledger row {e.outcome} for a release that never completed" for e in rows]
        return problems
    image = None
    if truth.outcome == "released" and truth.region and truth.revision:
        image = revision_image(truth.region, truth.service, truth.revision)
    if not record:
        problems.append("no release record")
    else:
        differs("record", "revision", record.get("revision"), truth.revision)
        if truth.outcome == "released":
            differs("record", "git_tag", record.get("git_tag"), truth.git_tag)
            differs("record", "image", record.get("image"), image)
            differs("record", "commit", record.get("commit"), truth.commit)
            if truth.tagged_at is not None:
                differs("record", "tagged_at", record.get("tagged_at"), truth.tagged_at)
        else:
            attempted = record.get("attempted") or {}
            differs("record", "attempted git_tag", attempted.get("git_tag"), truth.git_tag)
        if truth.cpu_baseline_ms is not None:
            differs(
                "record", "cpu_baseline_ms", record.get("cpu_baseline_ms"), truth.cpu_baseline_ms
            )
    if len(rows) != 1:
        problems.append(f"{len(rows)} ledger rows (not no-ops) for {truth.git_tag}, expected 1")
    for row in rows[-1:]:
        differs("ledger", "outcome", row.outcome, truth.outcome)
        differs("ledger", "revision", row.revision, truth.revision)
        differs("ledger", "commit", row.commit, truth.commit)
        if truth.outcome == "released":
            differs("ledger", "image", row.image, image)
        if truth.tagged_at is not None:
            differs("ledger", "tagged_at", row.tagged_at, truth.tagged_at)
            differs("ledger", "tagged_at_source", row.tagged_at_source, truth.tagged_at_source)
        if truth.cpu_baseline_ms is not None:
            differs("ledger", "baseline_ms", row.baseline_ms, truth.cpu_baseline_ms)
    return problems


def runs_left_running(since: dt.datetime) -> list[str]:
    """Flow runs created since `since` (a case's start) that are still Running, Pending or
    Cancelling: a dead run nobody marked, or a subflow run its dead parent left."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    live = [StateType.RUNNING, StateType.PENDING, StateType.CANCELLING]
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=live)),
                expected_start_time=FlowRunFilterExpectedStartTime(
                    after_=since - dt.timedelta(seconds=1)
                ),
            ),
            limit=200,
        )
    return [f"{r.name} ({r.id}): {r.state.name if r.state else '?'}" for r in runs]
