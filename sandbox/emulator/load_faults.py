"""Revision faults that show only under load: a revision that passes its 0 % canary's few probes
and turns worse once a rollout step gives it real traffic (issue 22).

Acted on where the emulator routes a request to a revision (revisions_http.py), so they behave
the same for an in-process revision and a container; the page service never hears of them. A
revision counts every request routed to it that its instances admitted (service URL or tag URL,
any path); the first `after_requests` (scenario default 10) are healthy, then:

- `errors_under_load`: every round(1/rate)-th request past them is answered 500 (rate 0.05:
  requests after+20, after+40, ...), deterministic so a test or a bench can count them;
- `slow_under_load`: each answer is held back (factor - 1) x the time the revision's instance
  took to answer it, so every latency, p95 included, is `factor` times the healthy one.

The request log line (run.googleapis.com/requests) is written after either, so it carries the
true status and latency.
"""

from __future__ import annotations

from sandbox.emulator.run_resources import Revision
from sandbox.scenario import RevisionFault

# What a Python web app's server answers when a handler raises (Starlette's and uvicorn's plain
# 500 body), as a revision that fails under load would.
INTERNAL_ERROR_BODY = "Internal Server Error"


def _fault(rev: Revision, name: str) -> RevisionFault | None:
    return next((f for f in rev.faults if f.fault == name), None)


def routed(rev: Revision) -> int:
    """Count one more request routed to the revision; returns its number (1-based)."""
    rev.routed_requests += 1
    return rev.routed_requests


def fails(rev: Revision, number: int) -> bool:
    """Whether request `number` of the revision gets its `errors_under_load` 500."""
    fault = _fault(rev, "errors_under_load")
    if fault is None or number <= fault.after_requests:
        return False
    every = max(1, round(1 / fault.rate))
    return (number - fault.after_requests) % every == 0


def slowdown(rev: Revision, number: int) -> float:
    """How many times as long as its instance took request `number` takes (1.0: as long)."""
    fault = _fault(rev, "slow_under_load")
    if fault is None or number <= fault.after_requests:
        return 1.0
    return fault.factor
