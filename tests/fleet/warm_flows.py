"""The flow tests/fleet/test_warm_engine.py deploys on a process pool whose runs are forked from
the warm engine (deployments/stack/warm_engine.py). The engine imports this module before it
serves (`modules=["warm_flows"]`, tests/fleet on its PYTHONPATH), so a forked run finds it
imported already: `IMPORTED_BY` is then the engine's PID, not the run's.

Standard library, Prefect and Shipyard's waiter: the run's process imports nothing of the test
suite."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from prefect import flow
from prefect.settings import get_current_settings

from shipyard.tasks.waiting import Deadline, NotYet, wait_for

IMPORTED_BY = os.getpid()  # module-level state: computed where the module was imported
MODES = ("report", "raise", "kill", "sleep")
SLEEP_LIMIT_S = 300.0  # a "sleep" run that nobody cancels ends by itself (a broken test)
PARTNER_TIMEOUT_S = 120.0


@flow(name="warm-probe", log_prints=True)
def probe(out: str, mode: str = "report", partner: str = "") -> str:
    """Write what this run's process is to `out` (JSON), then act by `mode`: "report" ends
    Completed, "raise" Failed, "kill" SIGKILLs the process, "sleep" sleeps until cancelled.
    `partner`: another run's `out`; this run ends only once that file exists (so two runs that
    name each other both complete only when they ran at the same time)."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: use one of {', '.join(MODES)}")
    record = {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "imported_by": IMPORTED_BY,
        # CPU this process had used when the flow's body began: for a forked run, the CPU since
        # the fork (a child's CPU clock starts at zero); for a fresh Python, its imports too.
        "cpu_s": time.process_time(),
        "var": os.environ.get("WARM_TEST_VAR"),
        "engine_only": os.environ.get("WARM_ENGINE_ONLY"),
        "flow_run_id": os.environ.get("PREFECT__FLOW_RUN_ID"),
        "cwd": os.getcwd(),
        "api_url": get_current_settings().api.url,
        "sys_path": sys.path[:4],
    }
    print(f"warm-probe: {mode} in process {record['pid']}")  # a run log (log_prints)
    written = Path(out + ".part")
    written.write_text(json.dumps(record))
    written.replace(out)  # whole or absent: the test polls for it
    if mode == "raise":
        raise RuntimeError("warm-probe: raised on purpose")
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "sleep":
        deadline = Deadline(SLEEP_LIMIT_S)
        while deadline.remaining() > 0:
            time.sleep(0.2)
        raise RuntimeError(f"warm-probe: nobody cancelled this run in {SLEEP_LIMIT_S:g} s")
    if partner:

        def partner_wrote() -> bool:
            if not Path(partner).exists():
                raise NotYet(f"{partner} not written yet")
            return True

        wait_for(
            partner_wrote,
            what=f"the partner run to write {partner}",
            first_delay_s=0.05,
            max_delay_s=0.5,
            deadline=Deadline(PARTNER_TIMEOUT_S),
            heartbeat_s=None,
        )
    return out
