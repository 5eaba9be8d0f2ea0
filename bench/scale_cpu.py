"""Where bench/scale.py's CPU goes: CPU seconds of each part of the stack over a phase, read from
/proc (Linux), so the figure does not depend on what else loads the machine.

A part is a process tree: its root's user+system time, the time of the children it has already
reaped (a process worker reaps each flow run's `python -m prefect.engine` process), and the same
for every descendant still alive (PostgreSQL's backends, a run still going). Divided by the
releases of the phase it gives the CPU one release costs each part; with the machine's cores,
the most releases per minute this machine could do if nothing else ran on it
(`cpu_bound_releases_per_min`).
"""

from __future__ import annotations

import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent PID, CPU seconds incl. reaped children) of a live process; None when gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return ppid, (utime + stime + cutime + cstime) / _TICK


def _all() -> dict[int, tuple[int, float]]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            found = _stat(int(entry))
            if found is not None:
                out[int(entry)] = found
    return out


def tree_cpu(roots: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds so far of each named part (its root PIDs and all their live descendants)."""
    table = _all()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out = {}
    for name, pids in roots.items():
        total, stack, seen = 0.0, list(pids), set()
        while stack:
            pid = stack.pop()
            if pid in seen or pid not in table:
                continue
            seen.add(pid)
            total += table[pid][1]
            stack += children.get(pid, [])
        out[name] = total
    return out


def own_cpu() -> float:
    """This process's CPU seconds (and its reaped children's: the receiver once stopped)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class CpuMeter:
    """CPU seconds of named parts between `start()` and `stop()`."""

    def __init__(self, roots: dict[str, list[int]]) -> None:
        self.roots = {k: v for k, v in roots.items() if v}
        self._before: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        return {**tree_cpu(self.roots), "bench_process": own_cpu()}

    def start(self) -> None:
        self._before = self._now()

    def stop(self, releases: int, wall_s: float | None) -> dict[str, object]:
        after = self._now()
        spent = {k: round(after[k] - self._before.get(k, 0.0), 1) for k in after}
        total = sum(spent.values())
        cores = os.cpu_count() or 1
        per = {k: round(v / releases, 2) for k, v in spent.items()} if releases else {}
        return {
            "cpu_s": spent,
            "cpu_s_per_release": per,
            "cpu_s_per_release_total": round(total / releases, 2) if releases else None,
            # All parts at full speed on every core, nothing else running.
            "cpu_bound_releases_per_min": (
                round(60 * cores * releases / total, 1) if releases and total else None
            ),
            # Of the wall time x cores, how much these parts used (the rest: other work, idle).
            "cpu_share_of_machine": (round(total / (wall_s * cores), 2) if wall_s else None),
        }
