"""A person's word to a stepped release while it bakes at 10 %, and a rollout whose process died
there (issues 22 and 23), on one stable release (v1.0.0) shared by the cases, in order:

1. `shipyard abort TARGET -m WHY --by ana` while the release bakes: the release itself rolls back
   at its next analysis tick (the reason names the abort and who), the stable revision serves
   100 %, no `canary` / `stable` tag is left, the service's scaling (raised to warm the stable
   revision) is back as it was, read through the official run_v2 client; the journal is gone.
2. A release killed (SIGKILL: no hook runs) mid-bake: its flow run still says Running, but its
   process is gone; `shipyard abort TARGET` takes the dead-run path: it sweeps the dead run as
   `shipyard sweep` does (flows/release/slot.py `sweep`: run tree Crashed, slot freed,
   hooks.cleanup -> undo_rollout: traffic back to stable, journal cleared), and a `shipyard
   sweep` afterwards finds nothing left.
3. `promote` while it bakes: promote during a bake ends the bake and cuts over to 100 % at once,
   skipping any remaining steps (flows/rollout/stage.py: a "promoted" decision, then the
   cutover); at a gate it is an approval, and the release goes on past that gate.
4. `on_quota_short="direct"`: a step the GPU quota cannot hold is skipped and the release cuts
   over right after the canary, saying why in its reasons.

Revisions are the emulator's in-process page services; no load generator (the commands do not
need the judge's figures), bakes long enough that only a command or a kill ends them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cli_kit import run_cli

from sandbox.release_invariants import serving, stale_canary_tags, stale_tags
from shipyard.flows.release.flow import run_release

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "registry.sandbox.local/pages/page-service"
REGION = "europe-west1"
# Three GPUs: the stable and the new revision hold one each during a step; the direct case's new
# revision keeps 3 instances, so its 70 % step needs ceil(3 x 0.7) = 3 plus the stable's 1.
QUOTA = {"default_region": {"gpu": 3, "gpu_no_zonal_redundancy": 3}}
KILLED_MID_BAKE = """
import sys
from shipyard.flows.release.flow import release
release(sys.argv[1], sys.argv[2], image=sys.argv[3])
"""


def _target(make_target, block: str, steps, gpu=None, **rollout):
    from shipyard.blocks.rollout_policy import (
        JudgePolicy,
        LoadGenerator,
        RolloutPolicy,
        RolloutStep,
    )

    policy = RolloutPolicy(
        steps=[RolloutStep(percent=p, bake_s=b) for p, b in steps],
        judge=JudgePolicy(min_samples=10, analysis_interval_s=0.5, failure_limit=1),
        load=LoadGenerator(enabled=False),
        **rollout,
    )
    base = make_target()
    template = base.gpu_template.model_copy(update=gpu or {})
    target = make_target(regions=[REGION], rollout=policy, gpu_template=template)
    target.save(block, overwrite=True)
    return target


def _baking(service: str, tag: str, alive) -> object:
    """The journal once the release of `tag` bakes its 10 % step (polled while `alive()`)."""
    from shipyard.flows.rollout.journal import read

    while True:
        found = read(service)
        if (
            found is not None
            and found.git_tag == tag
            and found.percent == 10
            and found.state == "baking"
        ):
            return found
        assert alive(), f"the release of {tag} ended before it baked at 10%"
        time.sleep(0.2)


def _live(block: str, service: str, tag: str, act):
    """Release `tag` in a thread; `act()` once it bakes at 10 %; the release's result."""
    done: dict = {}
    worker = threading.Thread(
        target=lambda: done.update(result=run_release(tag, block, image=f"{IMAGE}:{tag}"))
    )
    worker.start()
    try:
        _baking(service, tag, worker.is_alive)
        act()
    finally:
        worker.join(timeout=120)
    assert not worker.is_alive(), f"the release of {tag} did not end after the command"
    return done["result"]


def _killed_mid_bake(block: str, service: str, tag: str) -> str:
    """A release of `tag` in its own process, SIGKILLed while it bakes at 10 %; its run id."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_MID_BAKE, tag, block, f"{IMAGE}:{tag}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # No deadline of its own while the child lives (the suite's per-test timeout bounds it).
        found = _baking(service, tag, lambda: child.poll() is None)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return str(found.flow_run_id)  # type: ignore[attr-defined] # a RolloutJournal


def _min_instances(cloud, service: str) -> int:
    """The service's `scaling.min_instance_count`, read back through the official client."""
    name = f"projects/{cloud.resolved_project()}/locations/{REGION}/services/{service}"
    got = cloud.services_client().get_service(name=name, timeout=30)
    return int(got.scaling.min_instance_count)


def _back_on(sandbox_admin, service: str, stable: str, new: str) -> None:
    """The stable revision serves 100 %, the new one had its 10 % and has none now, no rollout
    tag is left, no rollout journal."""
    from shipyard.flows.rollout.journal import read

    history = sandbox_admin.traffic_history(service)
    assert serving(history, REGION) == {stable: 100}
    assert any(
        t["revision"] == new and t["percent"] == 10 for e in history for t in e["traffic"]
    ), new
    assert stale_canary_tags(history) == [] and stale_tags(history, "stable") == []
    assert read(service) is None


def _run_state(run_id: str) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state  # type: ignore[arg-type] # a UUID string
    return state.name if state is not None else "none"


def test_abort_promote_kill_and_quota_direct_on_a_live_rollout(
    stage, make_target, sandbox_admin, cloud, monkeypatch, capsys
):
    from shipyard.flows.rollout import control

    stage(**QUOTA)
    service = make_target().service
    block = f"live-{service}"[:60]
    _target(make_target, block, [(10, 300.0)])
    first = run_release("v1.0.0", block, image=f"{IMAGE}:v1.0.0")
    assert first.outcome == "released", first.reasons
    stable = first.revision
    scaling_before = _min_instances(cloud, service)

    # 1. abort from the CLI while the release bakes: the release rolls itself back.
    said: dict = {}

    def abort_by_ana() -> None:
        said["abort"] = run_cli(
            monkeypatch, capsys, "abort", block, "-m", "error budget burning", "--by", "ana"
        )

    aborted = _live(block, service, "v2.0.0", abort_by_ana)
    code, out = said["abort"]
    assert code == 0 and "to abort: it acts at its next analysis tick" in out, out
    assert aborted.outcome == "rolled_back", aborted.reasons
    assert aborted.revision == stable
    assert aborted.reasons[0] == "step 10%: aborted by ana: error budget burning", aborted.reasons
    assert [(s.percent, s.verdict, s.decided_by) for s in aborted.rollout_steps] == [
        (10, "aborted", "ana")
    ]
    _back_on(sandbox_admin, service, stable, f"{service}-v2-0-0")
    assert _min_instances(cloud, service) == scaling_before

    # 2. killed mid-bake: its run still says Running; `abort` finds its process gone and sweeps
    # it as `shipyard sweep` does (flows/release/slot.py `sweep`: run tree Crashed, slot freed,
    # hooks.cleanup -> undo_rollout: traffic back), so a sweep afterwards finds nothing.
    dead = _killed_mid_bake(block, service, "v2.1.0")
    assert _run_state(dead) == "Running"  # a SIGKILL lets nothing report the end
    code, out = run_cli(monkeypatch, capsys, "promote", block)
    assert code == 2 and "died (its process is gone; it still says Running)" in out, out
    assert "nothing can promote it" in out, out
    code, out = run_cli(monkeypatch, capsys, "abort", block, "--by", "ana")
    assert code == 0, out
    assert "still said Running but its process is gone" in out, out
    swept, undone = (
        out.index("marked Crashed: 1 flow run(s)"),
        out.index(
            f"the rollout of v2.1.0 (its run {dead} ended at 10%) was aborted: {stable} serves 100%"
        ),
    )
    assert swept < undone and out.count("the rollout of v2.1.0") == 1, out
    assert _run_state(dead) == "Crashed"
    _back_on(sandbox_admin, service, stable, f"{service}-v2-1-0")
    assert _min_instances(cloud, service) == scaling_before
    code, out = run_cli(monkeypatch, capsys, "sweep", block)
    assert code == 0 and "nothing to sweep" in out, out

    # 3. promote while it bakes at 10 % of 10 -> 50 -> 100: straight to 100 %, 50 % skipped.
    _target(make_target, block, [(10, 300.0), (50, 300.0)])
    promoted = _live(
        block,
        service,
        "v2.3.0",
        lambda: said.update(promote=control.promote(target=block, comment="looks fine", by="bo")),
    )
    assert "to promote: it acts at its next analysis tick" in said["promote"]
    assert promoted.outcome == "released", promoted.reasons
    assert [(s.percent, s.verdict, s.decided_by) for s in promoted.rollout_steps] == [
        (10, "promoted", "bo"),
        (100, "pass", "bo"),
    ]
    history = sandbox_admin.traffic_history(service)
    assert serving(history, REGION) == {promoted.revision: 100}
    assert not any(
        t["revision"] == promoted.revision and t["percent"] == 50
        for e in history
        for t in e["traffic"]
    )
    assert stale_canary_tags(history) == [] and stale_tags(history, "stable") == []

    # 4. on_quota_short=direct: the 70 % step cannot fit; cut over right after the canary.
    direct_target = _target(
        make_target,
        block,
        [(70, 300.0)],
        gpu={"min_instances": 3, "max_instances": 3},
        on_quota_short="direct",
    )
    direct = run_release("v3.0.0", direct_target, image=f"{IMAGE}:v3.0.0")
    assert direct.outcome == "released", direct.reasons
    assert [(s.percent, s.verdict) for s in direct.rollout_steps] == [
        (70, "quota-short"),
        (100, "pass"),
    ]
    why = [r for r in direct.reasons if "on_quota_short=direct" in r]
    assert why and "the 70% step needs 4 " in why[0] and "cut over directly" in why[0], (
        direct.reasons
    )
    history = sandbox_admin.traffic_history(service)
    assert serving(history, REGION) == {direct.revision: 100}
    new = direct.revision
    assert all(
        t["percent"] in (0, 100) for e in history for t in e["traffic"] if t["revision"] == new
    )
    assert stale_canary_tags(history) == [] and stale_tags(history, "stable") == []
