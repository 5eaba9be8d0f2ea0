"""Progressive delivery on the sandbox's real containers (issue 22, "Done when"): one stable
release (v1) of the page service, each revision a container on the sandbox's Docker daemon, the
service URL routed by the traffic split to those containers, both revisions' request logs
written by the router with Google's fields. Then three v2 releases against that v1:

- one whose new revision fails 5 % of its requests once it has real traffic (errors_under_load:
  every 20th request past its first 10): it passes the 0 % canary (three probes), and is rolled
  back at its first step with the judge's figures (the error rates, Fisher's p) in the reason;
- one whose new revision answers twice as slowly past its first 10 requests (slow_under_load:
  p95 x2): rolled back at its first step with the p95 figures;
- a healthy one: 0 % canary, then 10 %, 50 %, 100 %, a pass at each step.

The faults come from the scenario by revision name (a release names its revisions after the
tag); the faulty releases come first so that v1 is the stable revision of all three. One image
for every release (tests/runtime/page_image_kit.py: built once, released by reference). Short
bakes, small min_samples, a load rate the page service's containers sustain on a busy 2-core
machine (one instance per revision, concurrency 1, as the GPU template asks).
"""

from __future__ import annotations

import pytest
from page_image_kit import build_page_image

pytestmark = pytest.mark.timeout(600)

SERVICE = "steps-on-containers"
REGION = "europe-west1"
TOKEN_BLOCK = "shipyard-test-internal-token"  # tests/conftest.py's internal_token
ERRORS_TAG, SLOW_TAG, HEALTHY_TAG = "v2.1.0", "v2.2.0", "v2.0.0"


def _revision(tag: str) -> str:
    return f"{SERVICE}-{tag.replace('.', '-')}"


def _scenario(token: str) -> dict:
    from sandbox.scenario import load_scenario

    data = load_scenario("healthy").model_dump()
    data["serving"] = {**data["serving"], "gpu_ms": 5, "cpu_ms": 400, "idle_instance_s": 60}
    data["secrets"] = {TOKEN_BLOCK: token}
    # Both revisions hold a GPU during a step (the hand-over would otherwise skip the steps).
    data["default_region"] = {**data["default_region"], "gpu": 2, "gpu_no_zonal_redundancy": 2}
    data["revision_faults"] = [
        {
            "fault": "errors_under_load",
            "revision_contains": _revision(ERRORS_TAG),
            "after_requests": 10,
            "rate": 0.05,
        },
        {
            "fault": "slow_under_load",
            "revision_contains": _revision(SLOW_TAG),
            "after_requests": 10,
            "factor": 2.0,
        },
    ]
    return data


def _target(steps: list[tuple[int, float]], rate: float, min_samples: int):
    from shipyard.blocks.rollout_policy import (
        JudgePolicy,
        LoadGenerator,
        RolloutPolicy,
        RolloutStep,
    )
    from shipyard.deployments.demo.run import sandbox_target

    rollout = RolloutPolicy(
        steps=[RolloutStep(percent=p, bake_s=b) for p, b in steps],
        judge=JudgePolicy(
            min_samples=min_samples,
            analysis_interval_s=1.0,
            failure_limit=1,
            # Same image, same speed: a busy machine's noise stays well inside x1.5; the slow
            # fault is x2 and more (a slower answer also queues the next at concurrency 1).
            latency_ratio_band=1.5,
        ),
        load=LoadGenerator(rate_per_s=rate, max_in_flight=8),
    )
    return sandbox_target(
        service=SERVICE, regions=[REGION], token_block=TOKEN_BLOCK, rollout=rollout
    )


@pytest.fixture(scope="module")
def stable(engine_session, engine_base, internal_token, tmp_path_factory):
    """The page service image, the scenario, and v1 released (a first release: no steps)."""
    from sandbox.admin import SandboxAdmin
    from shipyard.flows.release.flow import run_release

    with engine_session.env_applied():
        image = build_page_image(engine_session, engine_base, tmp_path_factory.mktemp("page"))
        admin = SandboxAdmin(engine_session.emulator_url)
        try:
            admin.reset(scenario_data=_scenario(internal_token))
        finally:
            admin.close()
        first = run_release("v1.0.0", _target([(50, 1.0)], 10, 10), image=image)
    assert first.outcome == "released", first.reasons
    assert first.rollout_steps == []  # nothing stable to compare with: one cutover
    return image, first


@pytest.fixture
def admin(engine_sandbox):
    from sandbox.admin import SandboxAdmin

    client = SandboxAdmin(engine_sandbox.emulator_url)
    yield client
    client.close()


def _check_history(admin, new: str, shares: list[int], serves: str) -> list[dict]:
    from sandbox.release_invariants import serving, stale_canary_tags, stale_tags

    history = admin.traffic_history(SERVICE)
    for percent in shares:
        assert any(
            t["revision"] == new and t["percent"] == percent for e in history for t in e["traffic"]
        ), (new, percent)
    assert serving(history, REGION) == {serves: 100}
    assert stale_canary_tags(history) == [] and stale_tags(history, "stable") == []
    return history


@pytest.mark.parametrize(
    ("tag", "says"),
    [(ERRORS_TAG, "step 50%: errors "), (SLOW_TAG, "step 50%: p95 ")],
    ids=["errors_under_load", "slow_under_load"],
)
def test_a_fault_only_under_load_passes_the_canary_and_is_rolled_back_at_the_first_step(
    stable, admin, tag, says
):
    from shipyard.flows.release.flow import run_release

    image, first = stable
    target = _target([(50, 20.0), (100, 0.0)], rate=40, min_samples=20)

    result = run_release(tag, target, image=image)

    assert result.canary is not None and result.canary.passed  # 3 probes saw nothing wrong
    assert result.outcome == "rolled_back", (result.reasons, result.rollout_steps)
    assert result.revision == first.revision
    assert [(s.percent, s.verdict) for s in result.rollout_steps] == [(50, "fail")]
    reason = result.reasons[0]
    assert reason.startswith(says), result.reasons
    figures = result.rollout_steps[0].figures
    if tag == ERRORS_TAG:
        # e.g. "errors 5.0% vs 0.0% (Fisher p=0.0012, band 1.0 pt)"
        assert "Fisher p=" in reason and figures["errors_new"] >= 2, (reason, figures)
        assert figures["errors_stable"] == 0, figures
    else:
        assert "Mann-Whitney p=" in reason and figures["latency_ratio"] > 1.5, (reason, figures)
    _check_history(admin, _revision(tag), [0, 50], first.revision)
    calls = admin.calls()
    fault = "run.load_fault.error" if tag == ERRORS_TAG else "run.load_fault.slowed"
    assert calls[fault] >= 1, calls  # the container's requests really went through the fault


def test_a_healthy_release_goes_10_50_100_with_a_pass_at_each_step(stable, admin):
    from sandbox.release_invariants import invariant_violations
    from shipyard.flows.release.flow import run_release

    image, first = stable
    target = _target([(10, 6.0), (50, 3.0)], rate=40, min_samples=10)

    second = run_release(HEALTHY_TAG, target, image=image)

    assert second.outcome == "released", second.reasons
    assert second.canary is not None and second.canary.passed
    assert [(s.percent, s.verdict) for s in second.rollout_steps] == [
        (10, "pass"),
        (50, "pass"),
        (100, "pass"),
    ], second.rollout_steps
    ten = second.rollout_steps[0].figures
    assert ten["n_new"] >= 10 and ten["n_stable"] >= 10, ten
    history = _check_history(admin, second.revision, [0, 10, 50, 100], second.revision)
    shares = [{t["revision"]: t["percent"] for t in e["traffic"] if t["percent"]} for e in history]
    assert {first.revision: 90, second.revision: 10} in shares
    assert {first.revision: 50, second.revision: 50} in shares
    faulty = {_revision(ERRORS_TAG), _revision(SLOW_TAG)}  # their own tests check them
    assert invariant_violations(history, [first, second], known_good=faulty) == []
