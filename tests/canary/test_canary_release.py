"""A release whose canary fails says why from the revision's own logs: the first error lines
of that revision in Cloud Logging (and the filter that shows them), in the run's state
message, the summary artifact and the ledger (a real release on the sandbox)."""

from __future__ import annotations

import pytest

from sandbox.release_invariants import invariant_violations, stale_canary_tags
from shipyard.flows.release.flow import release
from shipyard.flows.release.outcome import release_result

pytestmark = pytest.mark.slow

IMAGE = "registry.sandbox.local/pages/page-service"
# What the sample page service logs when its answer header cannot be encoded (the fault
# `unicode_header`: a non-ASCII response header, seen in the field as a 500).
EXCEPTION = "UnicodeEncodeError: 'latin-1' codec can't encode"


def test_a_failed_canary_cites_the_revisions_own_error_line(stage, make_target, sandbox_admin):
    from prefect.artifacts import Artifact

    from shipyard.flows.observe.ledger import read_ledger

    stage(revision_faults=[{"fault": "unicode_header"}])
    target = make_target(service="pg-canary-cites-its-log")
    # A team's own policy knows none of Shipyard's log signatures: the reason must still say
    # what the revision's log says, not only "status 500".
    target.canary.log_signatures = []
    target.canary.min_speedup = None

    state = release("v1.0.0", target, image=f"{IMAGE}:v1.0.0", return_state=True)
    result = release_result(state)

    assert result.outcome == "rolled_back", result.reasons
    canary = [r for r in result.reasons if r.startswith("canary: ")]
    revision = f"{target.service}-v1-0-0"
    size = target.canary.sample_path().stat().st_size
    # The why first: the revision's own line (the traceback's first line and its exception).
    assert canary[0].startswith(f"canary: revision logs of {revision} (3 error entries): ")
    assert f"Exception in ASGI application … {EXCEPTION}" in canary[0]
    assert "Traceback (most recent call last)" not in canary[0]
    # Then what was sent and what came back, said once for the three runs.
    assert canary[1] == (
        "canary: runs 1-3: status 500, expected 200; sent POST /internal/translate/page "
        f"image/png (page.png), {size} B; got 500 application/json, 26 B: "
        '`{"error":"internal error"}`'
    )
    # And the filter that shows every error line of the revision, as a user types it.
    assert f'resource.labels.revision_name="{revision}"' in canary[-1]
    # Where the user looks: the run's state, the summary, the ledger.
    assert EXCEPTION in state.message
    summary = Artifact.get(f"release-{target.service}")
    assert summary is not None and EXCEPTION in summary.data
    assert EXCEPTION in read_ledger(target.service)[-1].rollback_reason
    history = sandbox_admin.traffic_history(target.service)
    assert invariant_violations(history, [result]) == []
    assert stale_canary_tags(history) == []
