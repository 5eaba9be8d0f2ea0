"""A flow run's state history, oldest first, read as moments: shared by the fleet tests that
check which runs overlapped and how each waited."""

from __future__ import annotations

from typing import Any


class StateTimeline:
    """Mixin for a dataclass with a `states` field (Prefect states, oldest first)."""

    states: list[Any]

    def first(self, kind: str) -> float:
        return next(s.timestamp.timestamp() for s in self.states if s.type.value == kind)

    @property
    def started(self) -> float:
        return self.first("RUNNING")

    @property
    def ended(self) -> float:
        return self.states[-1].timestamp.timestamp()

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.states]
