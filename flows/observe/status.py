"""What serves a service right now, per region: published after every change.

INTERFACE STUB (filled in by the status owner): `publish_status(target, reason)` reads Cloud
Run and publishes the `status-<service>` artifact (and the deployment page's section); it never
raises (a failure to publish is logged as a warning).
"""

from __future__ import annotations

from typing import Any


def publish_status(target: Any, reason: str) -> None:
    """Publish what serves `target`'s service now; `reason`: what changed it (e.g. 'release
    v1.4.0: released', 'rollback by hand', 'step 10%')."""
    return None
