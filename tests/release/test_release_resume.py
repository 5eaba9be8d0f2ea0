"""Kill and resume, exposure and concurrency: a release killed (SIGKILL) and run again
converges; a dead release never keeps the service's slot; a no-op re-run publishes and records
the right tag; a public service is refused unless the target says so; one release per service,
two services side by side. Invariants over the whole traffic history each time."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort
from prefect.variables import Variable
from test_release_guards import _events

from sandbox.release_invariants import invariant_violations, serving, stale_canary_tags
from shipyard.flows.observe.ledger import read_ledger
from shipyard.flows.release.flow import release
from shipyard.flows.release.hooks import canary_verdict
from shipyard.flows.release.slot import holder_variable, slot_name
from shipyard.tasks.deploy_errors import ConfigurationError
from shipyard.tasks.reports import artifact_key

pytestmark = pytest.mark.slow

IMAGE = "registry.sandbox.local/pages/page-service"


def _clean(admin, target, *results):
    history = admin.traffic_history(target.service)
    assert invariant_violations(history, results) == []
    assert stale_canary_tags(history) == []
    return history


def test_public_service_is_refused_unless_the_target_says_so(stage, make_target, sandbox_admin):
    from shipyard.blocks.cloud import GoogleCloud
    from shipyard.tasks import cloud_run as cr

    stage()
    private = make_target()
    assert release("v1.0.0", private, image=f"{IMAGE}:v1.0.0").outcome == "released"
    # Someone makes the service public outside the pipeline (allUsers / invoker IAM off).
    services = GoogleCloud().services_client()
    name = cr.service_path(GoogleCloud().resolved_project(), "europe-west1", private.service)
    service = cr.get_service(services, name)
    service.invoker_iam_disabled = True
    cr.update_service(services, service, timeout=30)
    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    with pytest.raises(ConfigurationError, match=r"invoker IAM disabled.*public=True"):
        release("v1.1.0", private, image=f"{IMAGE}:v1.1.0")
    history = sandbox_admin.traffic_history(private.service)
    assert serving(history, "europe-west1") == {f"{private.service}-v1-0-0": 100}
    # A step of the release: its stage events, the ledger and the summary say why it stopped.
    refused = read_ledger(private.service)[-1]
    assert (refused.git_tag, refused.outcome) == ("v1.1.0", "failed")
    assert "invoker IAM disabled" in refused.rollback_reason
    assert "exposure" in refused.stage_seconds and "deploy" not in refused.stage_seconds
    resource = f"shipyard.cloud-run.service.{private.service}"
    names = [e.event for e in _events(resource, since, "shipyard.exposure.failed")]
    assert "shipyard.exposure.failed" in names and "shipyard.deploy.started" not in names
    with get_client(sync_client=True) as client:
        summary = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[artifact_key("release", private.service)])
            ),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )[0]
    assert "v1.1.0" in str(summary.data) and "**FAILED**" in str(summary.data)
    assert "check-exposure | failed" in str(summary.data)


def test_noop_rerun_after_a_death_past_cutover_publishes_and_records_the_tag(
    stage, make_target, sandbox_admin
):
    """State a run killed right after its cutover leaves: v2 serves, the record still names v1,
    the serving URL Variable is stale. The re-run is a no-op that fixes both and reports the
    canary verdict persisted before the cutover."""
    from shipyard.flows.canary.stage import recorded_release, release_variable
    from shipyard.flows.deploy.traffic import serving_url_variable

    stage()
    target = make_target()
    first = release("v1.0.0", target, image=f"{IMAGE}:v1.0.0")
    record_v1 = recorded_release(target.service)
    second = release("v2.0.0", target, image=f"{IMAGE}:v2.0.0")
    assert second.outcome == "released" and not second.noop
    Variable.set(release_variable(target.service), record_v1, overwrite=True)  # never recorded
    Variable.set(serving_url_variable(target.service), "https://stale.invalid", overwrite=True)

    again = release("v2.0.0", target)

    assert again.noop and again.outcome == "released"
    assert again.canary is not None and again.canary.passed  # why it serves
    assert canary_verdict(target.service, again.revision)["judged_at"] == second.canary.judged_at
    record = recorded_release(target.service)
    assert record["git_tag"] == "v2.0.0" and record["revision"] == second.revision
    assert Variable.get(serving_url_variable(target.service)) == second.url
    _clean(sandbox_admin, target, first, second, again)


def _child(target_block: str, tag: str) -> subprocess.Popen:
    from prefect.settings import PREFECT_API_URL

    code = textwrap.dedent(
        f"""
        from shipyard.flows.release.flow import release
        release({tag!r}, {target_block!r}, image={IMAGE + ":" + tag!r})
        """
    )
    env = dict(os.environ, PREFECT_API_URL=str(PREFECT_API_URL.value()))
    return subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def test_killed_mid_canary_then_rerun_converges_and_frees_the_slot(
    stage, make_target, sandbox_admin
):
    from prefect.client.orchestration import get_client

    # The canary tag appears before the canary, which first measures the CPU baseline: one
    # CPU page of 2 s of wall time (a sleep in the page service: load does not shorten it),
    # so the kill, a poll after the tag, lands in the canary however loaded the machine is.
    stage(serving={"gpu_ms": 100, "cpu_ms": 2000})
    # The wait for the slot stays under the dead holder's 60 s lease, so a release can only get
    # it by the dead holder being freed; 1 s was too short to acquire even a free slot from a
    # loaded Prefect server (SQLite), which failed once under load.
    target = make_target(lock_timeout_s=20)
    block = f"kill-{target.service}"[:60]
    target.save(block, overwrite=True)
    revision = f"{target.service}-v3-0-0"

    child = _child(block, "v3.0.0")
    try:
        # No deadline of its own: the child is waited for while it lives (starting a Python
        # process with Prefect and the Google clients takes from seconds to a minute and more
        # on a loaded machine); the suite's per-test timeout bounds it.
        while not any(
            t.get("tag") == "canary"
            for e in sandbox_admin.traffic_history(target.service)
            for t in e["traffic"]
        ):
            assert child.poll() is None, "the release ended before its canary"
            time.sleep(0.1)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    holder = Variable.get(holder_variable(target.service))  # the dead run's, kept
    # Killed in its canary: the CPU baseline still serves, the canary revision has nothing.
    cpu = f"{target.service}-v3-0-0-cpu"
    assert serving(sandbox_admin.traffic_history(target.service), "europe-west1") == {cpu: 100}
    with get_client(sync_client=True) as client:
        assert (
            client.read_global_concurrency_limit_by_name(slot_name(target.service)).active_slots
            == 1
        )  # the dead run still holds the slot

    again = release("v3.0.0", target, image=f"{IMAGE}:v3.0.0")  # freed at once: no 60 s lease wait

    assert again.outcome == "released" and again.revision == revision
    with get_client(sync_client=True) as client:
        dead = client.read_flow_run(holder["flow_run_id"])
        assert dead.state.name == "Crashed", dead.state
        limit = client.read_global_concurrency_limit_by_name(slot_name(target.service))
        assert limit.active_slots == 0
    history = _clean(sandbox_admin, target, again)
    assert serving(history, "europe-west1") == {revision: 100}
    # No duplicate revision: the CPU baseline and the tag's revision, each created once.
    assert set(history[-1]["revisions"]) == {cpu, revision}
    assert sandbox_admin.calls()["run.revision_created"] == 2


def test_one_release_per_service_waits_and_services_run_side_by_side(
    stage, make_target, sandbox_admin
):
    stage()
    a = make_target(lock_timeout_s=240)
    b = make_target(service=a.service[:36] + "-b", lock_timeout_s=240)
    assert slot_name(a.service) != slot_name(b.service)  # side by side: no shared slot
    results: dict[str, object] = {}

    def run(key: str, target, tag: str) -> None:
        try:
            results[key] = release(tag, target, image=f"{IMAGE}:{tag}")
        except BaseException as exc:  # noqa: BLE001 - asserted below
            results[key] = exc

    threads = [
        threading.Thread(target=run, args=("a1", a, "v1.0.0")),
        threading.Thread(target=run, args=("a2", a, "v2.0.0")),
        threading.Thread(target=run, args=("b1", b, "v1.0.0")),  # another service
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert all(getattr(r, "outcome", None) == "released" for r in results.values()), results
    history = sandbox_admin.traffic_history(a.service)
    # No interleaving: the canaries of the two tags follow each other, never mix.
    order = [t["revision"] for e in history for t in e["traffic"] if t.get("tag") == "canary"]
    first = order[0]
    switched = [i for i in range(1, len(order)) if order[i] != order[i - 1]]
    assert len(switched) <= 1, order
    assert invariant_violations(history, list(results.values())) == []
    assert serving(sandbox_admin.traffic_history(b.service), "europe-west1") == {
        f"{b.service}-v1-0-0": 100
    }
    assert first in {f"{a.service}-v1-0-0", f"{a.service}-v2-0-0"}
