"""Commands a person gives a rollout in progress: promote (on to 100 %) or abort (back to the
stable revision).

INTERFACE STUB (filled in by the gate's owner): `request(service, command, by, comment)` files
a command; `take(service, flow_run_id)` is read by the bake loop every analysis tick and returns
the pending command (removing it), or None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Command = Literal["promote", "abort"]


@dataclass(frozen=True)
class Given:
    command: Command
    by: str
    comment: str = ""


def request(service: str, command: Command, by: str, comment: str = "") -> None:
    raise NotImplementedError


def take(service: str, flow_run_id: str | None) -> Given | None:
    return None
