"""`python progressive_served.py NAME`: serves the real release flow as `release/NAME` (a runner
in its own process, as a worker runs a deployment), so that a rollout gate suspends the run and
Prefect re-runs it from the start when it is resumed (tests/rollout/test_progressive_resumed.py).
"""

from __future__ import annotations

import sys

from prefect import serve

from shipyard.flows.release.flow import release

if __name__ == "__main__":
    serve(release.to_deployment(name=sys.argv[1]), print_starting_message=False)
