"""bench/webhook.py measures runs that ran: its stand-in takes exactly the release flow's
parameters (the trigger passes `tagged_at`; a stand-in without it failed every run with
SignatureMismatchError and the bench reported a queue of runs that never ran), and the bench
fails when its runs did not complete."""

from __future__ import annotations

import inspect

from bench.webhook import problems, release_standin


def test_the_stand_in_takes_exactly_the_release_flows_parameters():
    from shipyard.flows.release.flow import release

    real = inspect.signature(release.fn).parameters
    standin = inspect.signature(release_standin.fn).parameters
    assert [(p.name, p.kind, p.default) for p in standin.values()] == [
        (p.name, p.kind, p.default) for p in real.values()
    ]
    assert set(release_standin.parameters.properties) == set(release.parameters.properties)
    # What prefect.yaml's trigger passes, as Prefect validates it before a run starts.
    passed = {
        "git_tag": "v1.2.3",
        "commit": "a" * 40,
        "target": "default",
        "tagged_at": "2026-02-12T09:30:00+00:00",
    }
    assert release_standin.validate_parameters(passed)["tagged_at"] == passed["tagged_at"]


def _figures(**overrides):
    figures = {
        "events": 100,
        "runs": 100,
        "completed": 100,
        "run_states": {"Completed": 100},
        "first_failure": None,
        "lost": 0,
        "twice": 0,
        "max_concurrent": 1,
    }
    return {**figures, **overrides}


def test_the_burst_bench_fails_when_its_runs_did_not_complete():
    assert problems(_figures(), 100) == []
    failed = _figures(
        completed=0,
        max_concurrent=0,
        run_states={"Failed": 100},
        first_failure="Failed: SignatureMismatchError",
    )
    (found, concurrency) = problems(failed, 100)
    assert "0 of 100 runs completed" in found and "SignatureMismatchError" in found
    assert "max_concurrent 0" in concurrency
    assert problems(_figures(runs=99, completed=99, lost=1), 100)
