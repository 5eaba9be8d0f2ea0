"""The operating system's process table, thinly: whether a process id is alive on this host.

Used by the release slot (is the recorded holder of a service's slot still running here?).
"""

from __future__ import annotations

import os

__all__ = ["pid_alive"]


def pid_alive(pid: int) -> bool:
    """True while a process with this id exists on this host (signal 0 probes, sends nothing).

    A process owned by another user answers EPERM: it exists, so it counts as alive.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
