"""The GPU hand-over never moves users to an untested CPU revision (issue 21).

With a GPU quota of 1 and the serving GPU revision warm, the canary needs the serving revision's
GPU: its users go to a CPU revision during the canary (flows/deploy/gpu_handover.py). A CPU
revision that never passed anything is first sent the canary's samples through its `baseline`
tag URL (flows/canary/cpu_check.py); here every CPU revision answers 500 (a scenario fault
only CPU revisions have), so nothing moves and the release stops before the GPU canary.
"""

from __future__ import annotations

import pytest

from sandbox.release_invariants import invariant_violations, serving, stale_canary_tags, stale_tags
from shipyard.flows.release.flow import run_release

pytestmark = pytest.mark.slow

IMAGE = "registry.sandbox.local/pages/page-service"


def test_a_cpu_revision_that_fails_its_check_gets_no_users(stage, make_target, sandbox_admin):
    from shipyard.flows.canary.stage import recorded_release

    # unicode_header: the page answer's non-ASCII header fails it (UnicodeEncodeError, 500);
    # /health still answers 200, so the CPU revision is Ready and only its answers are wrong.
    stage(
        default_region={"gpu": 1, "gpu_no_zonal_redundancy": 1},
        revision_faults=[{"fault": "unicode_header", "accelerator": "cpu"}],
    )
    base = make_target()
    warm = base.gpu_template.model_copy(update={"min_instances": 1})
    # No speed-up check: the CPU baseline, broken here, is never measured.
    canary = base.canary.model_copy(update={"min_speedup": None})
    target = make_target(regions=["europe-west1"], gpu_template=warm, canary=canary)
    first = run_release("v21.0.0", target, image=f"{IMAGE}:v21.0.0")
    assert first.outcome == "released", first.reasons
    before = len(sandbox_admin.traffic_history(target.service))

    second = run_release("v21.1.0", target, image=f"{IMAGE}:v21.1.0")

    assert second.outcome == "rolled_back" and second.revision == first.revision, second.reasons
    cpu = f"{target.service}-v21-0-0-cpu"
    refused = next((r for r in second.reasons if "GPU hand-over refused" in r), "")
    assert f"{cpu} failed the canary's answer checks" in refused, second.reasons
    assert "status 500, expected 200" in refused  # what its check got
    assert f"{first.revision} keeps the users" in refused
    assert "to 2" in refused and "ReleaseTarget.cpu_template" in refused  # the fixes
    assert second.canary is None  # the GPU canary never ran
    names = [s.name for s in second.steps]
    assert "cpu-baseline-check-run" in names
    assert not any(n.startswith(("canary-run", "gpu-handover:", "cutover")) for n in names)

    history = sandbox_admin.traffic_history(target.service)
    assert invariant_violations(history, [first, second]) == []
    assert stale_canary_tags(history) == [] and stale_tags(history, "baseline") == []
    # From the second release on, only the GPU revision that served ever had users.
    for entry in history[before:]:
        assert {t["revision"] for t in entry["traffic"] if t["percent"]} == {first.revision}
    assert serving(history, "europe-west1") == {first.revision: 100}
    assert cpu not in ((recorded_release(target.service) or {}).get("checked") or {})
