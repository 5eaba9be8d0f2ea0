"""The operating system's process table, thinly: whether a process id is alive on this host.

Used by the release slot (is the recorded holder of a service's slot still running here?).
"""

from __future__ import annotations

import os
import socket

__all__ = ["pid_alive", "process_host"]


def process_host() -> str:
    """This process's host as a record of "who holds it" names it: the host name and the PID
    namespace. A container on the host's network (a Docker work pool's flow run, `network_mode:
    host`) has the host's name but process ids of its own, so a pid recorded there says nothing
    here: only a record with the same name AND namespace can be probed with `pid_alive`."""
    try:
        return f"{socket.gethostname()}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:  # no /proc (not Linux): the name alone
        return socket.gethostname()


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
