"""The fault matrix in the suite (marked `faults`): a representative case per stage, each
checked for its expected outcome, the invariants over the whole traffic history, duplicate
revisions and a free release slot. bench/faults.py runs every case, and the SIGKILL ones."""

from __future__ import annotations

import re

import pytest

from bench.fault_matrix import CASES, run_case

pytestmark = [pytest.mark.slow, pytest.mark.faults]

SUITE = {
    "quota-read:429 burst",
    "quota-polling:never decided",
    "deploy:429 burst",
    "deploy:connection reset at 20%",
    "deploy:502/504 at 20%",
    "deploy:quota refused by the operation",
    "readiness:GPU revision never Ready (fault)",
    "canary:OOM",
    "traffic:rollback under 429 bursts",
    "build:answer to the submission lost",
}


def test_matrix_has_at_least_thirty_cases_over_every_stage():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.stage for c in CASES} >= {
        "quota-read",
        "quota-polling",
        "deploy",
        "readiness",
        "canary",
        "traffic",
        "build",
    }
    assert {c.id for c in CASES} >= SUITE


@pytest.mark.parametrize("case", [c for c in CASES if c.id in SUITE], ids=lambda c: c.id)
def test_fault_case(case, stage, make_target, sandbox_admin, request):
    service = "fm-" + re.sub(r"[^a-z0-9]+", "-", case.id.lower()).strip("-")[:30].rstrip("-")
    build_blocks = None
    if case.build:  # the real build of a tag, from a throwaway git repository
        settings_block, repo = request.getfixturevalue("app_build")
        base = request.getfixturevalue("pinned_base")
        repo.tag("v1.0.0")

        def build_blocks(service: str, timeout_s: float):
            return {"base_image": base, "build_settings_block": settings_block}, None

    outcome = run_case(case, stage, make_target, sandbox_admin, service, build_blocks)
    assert outcome.passed, outcome
