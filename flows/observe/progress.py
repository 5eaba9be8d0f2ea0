"""Progress artifacts on the long waits (quota decisions, build steps, canary runs): the
Prefect UI shows a bar (0-100 %) and a line saying what is being waited for.

Only inside a flow or task run (an artifact needs one); a progress artifact that cannot be
written is logged and skipped: a bar must never fail the step it describes.
"""

from __future__ import annotations

import logging
from typing import Any, cast
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import FlowRunContext, TaskRunContext

from shipyard.tasks.reports import artifact_key

__all__ = ["Progress"]

_log = logging.getLogger("shipyard.progress")


class Progress:
    def __init__(self, key: str, description: str):
        self.id: UUID | None = None
        if FlowRunContext.get() is None and TaskRunContext.get() is None:
            return
        try:
            created: Any = create_progress_artifact(
                progress=0.0, key=artifact_key("progress", key), description=description
            )
            self.id = cast(UUID, created)
        except Exception as exc:  # noqa: BLE001 - see the module docstring
            _log.warning("progress artifact %s not created: %s", key, exc)

    def update(self, done: float, total: float, description: str | None = None) -> None:
        if self.id is None or total <= 0:
            return
        try:
            update_progress_artifact(
                self.id,
                progress=round(100.0 * min(done, total) / total, 1),
                description=description,
            )
        except Exception as exc:  # noqa: BLE001 - see the module docstring
            _log.warning("progress artifact not updated: %s", exc)
