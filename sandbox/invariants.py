"""Checks of DESIGN.md's invariants on the sandbox's traffic history.

The history (`SandboxAdmin.traffic_history(service)`, route `GET /_sandbox/traffic-history`)
is every traffic state of a service in time order, one entry per create, update, revision
delete and service delete:

    {"seq", "time", "service", "name", "event", "exists", "generation", "note",
     "traffic": [{"revision", "percent", "tag", "ready", "latest"}],
     "revisions": {short_name: ready}}

`traffic` is what the service really serves (Google's trafficStatuses, LATEST resolved to
a revision), with each revision's Ready state at that moment.
"""

from __future__ import annotations


def traffic_violations(history: list[dict]) -> list[str]:
    """Invariant 1: at every moment, 100% of a service's traffic is on Ready revisions.

    Returns one message per violating moment (empty: the invariant held). A moment where
    a service exists and its traffic does not add up to 100%, or sends any traffic to a
    revision that is not Ready, is a violation. A deleted service serves nothing: fine.
    """
    violations = []
    for entry in history:
        if not entry.get("exists", True):
            continue
        where = f"#{entry.get('seq', '?')} {entry.get('event', '?')} of {entry.get('service', '?')}"
        traffic = entry.get("traffic", [])
        total = sum(t.get("percent", 0) for t in traffic)
        if total != 100:
            violations.append(f"{where}: traffic adds up to {total}%, not 100%")
        for target in traffic:
            ready = target.get("ready")
            if ready is None:
                ready = entry.get("revisions", {}).get(target.get("revision"), False)
            if target.get("percent", 0) > 0 and not ready:
                violations.append(
                    f"{where}: {target['percent']}% on revision {target.get('revision')!r}, "
                    "which is not Ready"
                )
    return violations
