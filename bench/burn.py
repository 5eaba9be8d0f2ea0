"""A bounded CPU burner: keeps every core busy, for `make test-under-load` (the suite must stay
green on a loaded machine) or beside anything else that must survive one.

    .venv/bin/python bench/burn.py [--processes N] [--seconds S] [--while-pid PID] [--json]

N processes (default: 2 per CPU, `os.cpu_count()`) spin in a tight loop at normal priority.
Bounded three ways, so that no burner outlives what it loads:
  - the time limit: after --seconds (default 5: what `make bench`, which runs every bench with
    --json, costs) the parent stops the workers; each worker also stops by itself at the limit;
  - SIGTERM / SIGINT / SIGHUP to the parent, or the end of the process --while-pid names (the
    caller: `make test-under-load` gives make's own pid): it stops the workers (terminate, then
    kill) and exits;
  - a worker whose parent is gone (killed with -9) stops within a fraction of a second.

Figures (JSON, with --json): processes, seconds (how long it burnt), ended ("time limit" or the
signal), and loops_per_s_per_process (how much CPU each worker got: under contention, less; 0
when a signal stopped them).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import sys
import time
from types import FrameType
from typing import Any

CHECK_EVERY = 200_000  # loop turns between two looks at the clock and the parent (~10 ms)
STOP_GRACE_S = 5.0  # how long a terminated worker may take before it is killed


def _spin(deadline: float, parent: int, loops: Any) -> None:
    """One worker: spin until the deadline or until the parent is gone; adds its loop turns to
    `loops` (a shared multiprocessing Value)."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)  # not the parent's handlers: a signal ends a worker
    turns = 0
    while True:
        for _ in range(CHECK_EVERY):
            pass
        turns += CHECK_EVERY
        if time.monotonic() >= deadline or os.getppid() != parent:
            break
    with loops.get_lock():
        loops.value += turns


class _Stop(Exception):
    """Raised in the parent by a stop signal, naming it."""


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: it exists
    return True


def burn(processes: int, seconds: float, while_pid: int | None = None) -> dict[str, object]:
    """Spin `processes` workers for at most `seconds` (and while `while_pid` lives); stop them
    whatever happens."""
    started = time.monotonic()
    deadline = started + seconds
    loops = mp.Value("q", 0)
    workers = [
        mp.Process(target=_spin, args=(deadline, os.getpid(), loops), daemon=True)
        for _ in range(processes)
    ]
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    ended = "time limit"
    try:
        for worker in workers:
            worker.start()
        while any(w.is_alive() for w in workers) and time.monotonic() < deadline:
            if while_pid is not None and not _alive(while_pid):
                ended = f"pid {while_pid} ended"
                break
            time.sleep(0.5)
    except _Stop as stop:
        ended = str(stop)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # stopping is not to be interrupted
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
        for worker in workers:
            worker.join(STOP_GRACE_S)
            if worker.is_alive():
                worker.kill()
                worker.join()
    took = time.monotonic() - started
    return {
        "processes": processes,
        "seconds": round(took, 1),
        "ended": ended,
        "loops_per_s_per_process": round(loops.value / max(took, 1e-9) / max(processes, 1)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2 * (os.cpu_count() or 1))
    parser.add_argument("--seconds", type=float, default=5.0, help="the hard time limit")
    parser.add_argument(
        "--while-pid", type=int, help="stop as soon as this process is gone (e.g. the caller's)"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.processes < 1 or args.seconds <= 0:
        parser.error("--processes must be >= 1 and --seconds > 0")
    print(
        f"burn: {args.processes} spinning processes for at most {args.seconds:.0f} s "
        f"(pid {os.getpid()})",
        file=sys.stderr,
        flush=True,
    )
    figures = burn(args.processes, args.seconds, args.while_pid)
    print(f"burn: stopped ({figures['ended']}) after {figures['seconds']} s", file=sys.stderr)
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
