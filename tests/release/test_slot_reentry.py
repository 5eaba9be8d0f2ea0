"""A release resumed after its approval gate is the same flow run in a new process: the slot's
holder record still naming that run (an earlier incarnation, still unwinding or killed before it
let go) is the run's own slot, re-entered at once, and the run is never taken for a dead holder
(flows/release/slot.py). Another run asking meanwhile still waits and is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.flow_engine import run_flow
from prefect.states import Cancelled, Scheduled, Suspended
from prefect.variables import Variable

from shipyard.flows.release.slot import SlotTaken, holder_variable, release_slot, slot_name
from shipyard.tasks.waiting import Deadline, NotYet, wait_for

pytestmark = pytest.mark.slow  # three Prefect processes and six flow runs (~15 s)

# The earlier incarnation: runs the flow run it is given, takes the slot, prints its lease, and
# holds it until `stop_file` appears; then it unwinds the way a suspension does (Prefect's
# suspend_flow_run raises Pause after the run's state is already Suspended), letting go of the
# slot on the way out, and says so in `stop_file.let-go`. Killed instead, it lets go of nothing.
EARLIER = """
import sys
from pathlib import Path
from uuid import UUID
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.concurrency.context import ConcurrencyContext
from prefect.exceptions import Pause
from prefect.flow_engine import run_flow
from shipyard.flows.release.slot import release_slot
from shipyard.tasks.waiting import Deadline, NotYet, wait_for

def stop_asked(stop_file):
    if not Path(stop_file).exists():
        raise NotYet(stop_file)

@flow(name="slot-incarnation")
def incarnation(scope: str, stop_file: str = "") -> None:
    with release_slot(scope, timeout_s=30, lease_s=60):
        print(ConcurrencyContext.get().cleanup_lease_ids[-1], flush=True)
        wait_for(lambda: stop_asked(stop_file), what="the stop file", first_delay_s=0.1,
                 max_delay_s=0.2, deadline=Deadline(300), heartbeat_s=None)
        raise Pause()

run_id, scope, stop_file = sys.argv[1:4]
with get_client(sync_client=True) as client:
    run = client.read_flow_run(UUID(run_id))
try:
    run_flow(incarnation, flow_run=run, parameters={"scope": scope, "stop_file": stop_file})
finally:
    Path(stop_file + ".let-go").touch()
"""


def _active(scope: str) -> int:
    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(slot_name(scope)).active_slots


def _until_file(path: Path) -> None:
    def there() -> None:
        if not path.exists():
            raise NotYet(str(path))

    wait_for(there, what=str(path), first_delay_s=0.1, max_delay_s=0.3, deadline=Deadline(60))


@flow(name="slot-incarnation")
def incarnation(scope: str, stop_file: str = "") -> dict[str, Any]:
    """The resumed incarnation (its slot wait is short: re-entry must not wait at all). With a
    `stop_file`, the earlier one still holds the slot: it is told to let go meanwhile."""
    seen: dict[str, Any] = {}
    with release_slot(scope, timeout_s=3, lease_s=60):
        seen["record"] = Variable.get(holder_variable(scope))
        seen["active"] = _active(scope)
        if stop_file:
            Path(stop_file).touch()
            _until_file(Path(stop_file + ".let-go"))
            seen["record after the earlier let go"] = Variable.get(holder_variable(scope))
            seen["active after the earlier let go"] = _active(scope)
        with release_slot(scope, timeout_s=1, lease_s=60):  # nested in this run: goes through
            seen["nested"] = _active(scope)
        seen["record after the nested"] = Variable.get(holder_variable(scope))
    return seen


@flow(name="slot-other-run")
def other_run(scope: str) -> None:
    with release_slot(scope, timeout_s=1, lease_s=60):
        pass


def _earlier(run_id: uuid.UUID, scope: str, stop_file: Path) -> subprocess.Popen:
    from prefect.settings import PREFECT_API_URL

    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(EARLIER), str(run_id), scope, str(stop_file)],
        env=dict(os.environ, PREFECT_API_URL=str(PREFECT_API_URL.value())),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _lease(child: subprocess.Popen) -> str:
    """The lease the earlier incarnation holds (its first line, once it holds the slot)."""
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    assert line, f"the earlier incarnation ended (exit {child.wait(timeout=30)}) without a lease"
    return line


def _suspend_and_resume(run_id: uuid.UUID) -> None:
    """What the gate's suspension and Prefect's resume do to the run's state (the resumed run is
    Scheduled again, named Resuming: prefect/server/api/flow_runs.py resume_flow_run)."""
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run_id, Suspended(timeout_seconds=600), force=True)
        client.set_flow_run_state(run_id, Scheduled(name="Resuming"), force=True)


def _run_again(run_id: uuid.UUID, scope: str, stop_file: str) -> tuple[dict[str, Any], list[str]]:
    """The resumed incarnation, in this process; what it saw and its run's state names."""
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
    seen = run_flow(incarnation, flow_run=run, parameters={"scope": scope, "stop_file": stop_file})
    with get_client(sync_client=True) as client:
        states = sorted(client.read_flow_run_states(run_id), key=lambda s: s.timestamp)
    return seen, [s.type.value for s in states]


def _new_run(scope: str) -> uuid.UUID:
    with get_client(sync_client=True) as client:
        return client.create_flow_run(incarnation, parameters={"scope": scope}).id


def test_a_resumed_run_re_enters_its_own_slot_and_another_run_still_waits(tmp_path: Path):
    unwinding, killed, parked = (f"reentry-{uuid.uuid4().hex[:8]}" for _ in range(3))
    first, second, third = _new_run(unwinding), _new_run(killed), _new_run(parked)
    # The earlier incarnations start at once (one Prefect import's time for all).
    stop = tmp_path / "stop"
    slow = _earlier(first, unwinding, stop)
    dead = _earlier(second, killed, tmp_path / "never")
    waiting = _earlier(third, parked, tmp_path / "never")
    try:
        slow_lease, dead_lease = _lease(slow), _lease(dead)
        _lease(waiting)
        # Killed ones end without letting go: their lease and their record stay.
        for child in (dead, waiting):
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
        assert _active(killed) == 1
        assert Variable.get(holder_variable(killed))["lease_id"] == dead_lease

        # Another run finding the leftovers of a run suspended at its gate takes the slot (the
        # process that held it is gone), and the suspended run keeps waiting: not Crashed.
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(third, Suspended(timeout_seconds=600), force=True)
            other_run(parked)
            still = client.read_flow_run(third).state
            client.set_flow_run_state(third, Cancelled(), force=True)  # the test's own tidying
        assert still.name == "Suspended", (still.name, still.message)
        assert _active(parked) == 0 and Variable.get(holder_variable(parked)) is None

        # Another run asking while the earlier incarnation holds the slot waits, then is refused
        # naming the holder.
        assert _active(unwinding) == 1
        with pytest.raises(SlotTaken, match=str(first)):
            other_run(unwinding)

        # Resumed while the earlier incarnation is still unwinding: re-entered at once (its wait
        # is 3 s, far shorter than the earlier one holds), the earlier lease released.
        _suspend_and_resume(first)
        seen, states = _run_again(first, unwinding, str(stop))
        slow.wait(timeout=60)
    finally:
        for child in (slow, dead, waiting):
            if child.poll() is None:
                child.kill()
                child.wait(timeout=30)
    record = seen["record"]
    assert record["flow_run_id"] == str(first) and record["pid"] == os.getpid()
    assert record["lease_id"] != slow_lease
    assert seen["active"] == 1  # one slot: the new incarnation's, the earlier one's released
    # The earlier one letting go later freed nothing and kept the new record.
    assert seen["active after the earlier let go"] == 1
    assert seen["record after the earlier let go"] == record
    assert seen["nested"] == 1 and seen["record after the nested"] == record
    assert "CRASHED" not in states and states[-1] == "COMPLETED", states
    assert _active(unwinding) == 0 and Variable.get(holder_variable(unwinding)) is None

    # Resumed after the earlier incarnation was killed holding the slot: granted at once, and
    # the run is not taken for that dead holder (never marked Crashed).
    _suspend_and_resume(second)
    seen, states = _run_again(second, killed, "")
    assert seen["record"]["flow_run_id"] == str(second)
    assert seen["record"]["lease_id"] != dead_lease and seen["active"] == 1
    assert "CRASHED" not in states and states[-1] == "COMPLETED", states
    assert _active(killed) == 0 and Variable.get(holder_variable(killed)) is None
