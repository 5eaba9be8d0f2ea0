"""The release slot of a dead holder: freed at once by the next release, and its lease running
out later must not free the slot that next release now holds (one release per service)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid

import pytest
from prefect import flow
from prefect.client.orchestration import get_client

from shipyard.flows.release.slot import holder_status, release_slot, slot_name

pytestmark = pytest.mark.slow

HOLD = """
import sys, time
from prefect import flow
from prefect.concurrency.context import ConcurrencyContext
from shipyard.flows.release.slot import release_slot

@flow
def hold(service: str) -> None:
    with release_slot(service, timeout_s=30, lease_s=60):
        print(ConcurrencyContext.get().cleanup_lease_ids[-1], flush=True)
        time.sleep(600)

hold(sys.argv[1])
"""


def _active(service: str) -> int:
    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(slot_name(service)).active_slots


def _lease_runs_out(lease_id: uuid.UUID) -> None:
    """What Prefect's repossessor does when a lease expires (server/services/repossessor.py,
    revoke_expired_lease): decrement the lease's limits by its slots and revoke it. The same
    server operation as decrement-with-lease, without waiting the 60 s minimum lease."""
    with get_client(sync_client=True) as client:
        client.release_concurrency_slots_with_lease(lease_id)


def test_dead_holders_lease_expiring_later_does_not_free_the_live_holders_slot(prefect_server):
    from prefect.settings import PREFECT_API_URL

    service = f"slot-race-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, PREFECT_API_URL=str(PREFECT_API_URL.value()))
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLD), service],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert child.stdout is not None
        dead_lease = uuid.UUID(child.stdout.readline().strip())
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert _active(service) == 1  # the killed holder still holds its slot
    assert holder_status(service)[1].startswith("dead")

    seen: dict[str, int] = {}

    @flow
    def next_release() -> None:
        with release_slot(service, timeout_s=5, lease_s=60):  # freed at once: no 60 s wait
            seen["holding"] = _active(service)
            _lease_runs_out(dead_lease)  # the dead holder's lease expires now
            seen["after the dead lease expired"] = _active(service)

    next_release()

    assert seen == {"holding": 1, "after the dead lease expired": 1}
    assert _active(service) == 0  # the live holder released its own slot at the end
