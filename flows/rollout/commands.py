"""Commands a person gives a rollout in progress: promote (on to 100 %) or abort (back to the
stable revision).

A release that is suspended at a gate is answered through Prefect's resume (flows/rollout/
control.py); a release that is baking (its process alive, the judge reading) reads its commands
here: `request(scope, command, by, comment)` files one in the Variable
`shipyard-command-<scope>` (`ReleaseTarget.scope`: the service, or `service-environment`), and
`take(scope, flow_run_id)`, read by the bake loop at every
analysis tick, returns it once (and removes it) — only to the run the rollout journal names,
and only if the command was given while that same run was in progress, so a command meant for
an earlier rollout never steers the next one.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal, get_args

from prefect.variables import Variable

from shipyard.blocks.names import sanitize_name
from shipyard.flows.rollout import journal

Command = Literal["promote", "abort"]
COMMANDS: tuple[str, ...] = get_args(Command)
# A Prefect Variable holds at most 5000 characters of JSON: the comment is cut well below that.
MAX_COMMENT = 1000


@dataclass(frozen=True)
class Given:
    command: Command
    by: str
    comment: str = ""


class NoRolloutInProgress(ValueError):
    """No rollout journal names a run of the service: there is nothing to command."""


def command_variable(scope: str) -> str:
    return sanitize_name(f"shipyard-command-{scope}", 255)


def request(scope: str, command: Command, by: str, comment: str = "") -> None:
    """File `command` for the rollout of `scope` (ReleaseTarget.scope) in progress (the
    journal's run); a later request replaces one not taken yet. NoRolloutInProgress when there
    is none."""
    if command not in COMMANDS:
        raise ValueError(f"command={command!r}: not a rollout command; use one of {COMMANDS}")
    current = journal.read(scope)
    if current is None or not current.flow_run_id:
        raise NoRolloutInProgress(
            f"no rollout of {scope} is in progress (no rollout journal names a release run)"
        )
    Variable.set(
        command_variable(scope),
        {
            "command": command,
            "by": by[:200],
            "comment": comment[:MAX_COMMENT],
            "flow_run_id": current.flow_run_id,
            "requested_at": dt.datetime.now(dt.UTC).isoformat(),
        },
        overwrite=True,
    )


def pending(scope: str) -> dict[str, Any] | None:
    """The command filed and not taken yet, as stored (for status pages); None if none."""
    value = Variable.get(command_variable(scope), default=None)
    return value if isinstance(value, dict) and value.get("command") in COMMANDS else None


def take(scope: str, flow_run_id: str | None) -> Given | None:
    """The command filed for `flow_run_id`'s rollout, removed so that it is acted on once; None
    when there is none, or when the journal names another run (that run's to take)."""
    if not flow_run_id:
        return None
    current = journal.read(scope)
    if current is None or current.flow_run_id != str(flow_run_id):
        return None
    filed = pending(scope)
    if filed is None:
        return None
    if filed.get("flow_run_id") != str(flow_run_id):
        # Filed for a rollout that has ended since: stale, never acted on.
        Variable.unset(command_variable(scope))
        return None
    Variable.unset(command_variable(scope))
    return Given(
        command=filed["command"],
        by=str(filed.get("by") or ""),
        comment=str(filed.get("comment") or ""),
    )
