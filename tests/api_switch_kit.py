"""The tests' way to point this process at another Prefect API for a block: Shipyard's own
(deployments/stack/api_switch.py, which says why Prefect's event and log senders are drained on
the way in and out). Kept as a module of the suite so the tests import one name everywhere."""

from __future__ import annotations

from shipyard.deployments.stack.api_switch import drain_api_senders, pointed_at

__all__ = ["drain_api_senders", "pointed_at"]
