"""How a release's outcome shows in Prefect: the flow run's final state and its log line.

A release that rolled back did not do what was asked: its flow run must not look like a release
that reached 100 %. It ends in a state of Prefect's FAILED type named `RolledBack` (red in the
UI, a failure for `prefect deployment run --watch` and for every tool that reads state types),
with a message naming the reason and what serves now.

A CPU fallback ends in a state of the COMPLETED type named `CPUFallback`: the service serves on
a Ready CPU baseline revision, nothing is left for an operator to undo, and Prefect's semantics
of a failed run (retries, "run failed" automations, a non-zero `--watch`) would send people to
fix a release that did the right thing under a quota of 0. The name, the message and a WARNING
log line mark it; `shipyard release` exits 3 for it as for a rollback.

Prefect emits `prefect.flow-run.RolledBack` / `prefect.flow-run.CPUFallback` for them (the
event's resource carries `prefect.state-type`: FAILED / COMPLETED); automations match those, or
the `shipyard.release.*` events the release emits.

The `ReleaseResult` stays readable: a rolled-back run's state data is a `ReleaseRolledBack`
exception carrying it (`.result`), so calling the flow raises it with the message, and
`state.result(raise_on_failure=False)` returns it; `run_release` / `release_result` hand back
the `ReleaseResult` for every outcome and raise only for a release that stopped.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

from prefect import State
from prefect.states import Completed, Failed

if TYPE_CHECKING:
    from shipyard.flows.release.result import ReleaseResult

STATE_NAMES = {"rolled_back": "RolledBack", "cpu_fallback": "CPUFallback"}


class ReleaseRolledBack(Exception):
    """The release rolled back: raised by a call of the flow, held by its RolledBack state.

    `result` is the run's `ReleaseResult` (what serves, what was attempted, the reasons)."""

    def __init__(self, message: str, result: ReleaseResult):
        super().__init__(message)
        self.result = result

    def __reduce__(self) -> tuple[Any, ...]:  # pickled with the run's result
        return (type(self), (str(self), self.result))


class _RolledBackIsNoCrash(logging.Filter):
    """Drops Prefect's "Engine execution exited with unexpected exception" traceback for a
    RolledBack run: a deployed run's engine (prefect/flow_engine.py `run_flow`, its
    `error_logger`) raises the final state's exception to its caller and logs it with its
    traceback on the run page. A rollback is an expected outcome, told by the state's message
    and one WARNING line (flows/release/run.py), never as a crash."""

    def filter(self, record: logging.LogRecord) -> bool:
        raised = record.exc_info[1] if record.exc_info else None
        return not isinstance(raised, ReleaseRolledBack)


def quiet_rolled_back() -> None:
    """Install the filter on Prefect's flow-run logger (once; at import of this module, which
    the release flow imports before any run)."""
    logger = logging.getLogger("prefect.flow_runs")
    if not any(isinstance(f, _RolledBackIsNoCrash) for f in logger.filters):
        logger.addFilter(_RolledBackIsNoCrash())


def release_result(state: State) -> ReleaseResult:
    """The `ReleaseResult` of a finished release run, whatever its outcome (released, rolled
    back, CPU fallback, planned); a run that stopped (Failed, Crashed) raises its error."""
    value = state.result(raise_on_failure=False)
    if isinstance(value, ReleaseRolledBack):
        return value.result
    if isinstance(value, BaseException):
        raise value
    return cast("ReleaseResult", value)


def outcome_message(result: ReleaseResult) -> str:
    """One line: what happened, why, and what serves now."""
    serving = f"{result.revision or '-'} serves 100% in {result.region or '-'}"
    # Each reason once: the canary finds the same log line on each of its runs.
    why = "; ".join(dict.fromkeys(result.reasons)) or "no reason recorded"
    if result.outcome == "rolled_back":
        return f"release {result.git_tag} ROLLED BACK ({serving}): {why}"
    if result.outcome == "cpu_fallback":
        return f"release {result.git_tag} fell back to CPU, no GPU region ({serving}): {why}"
    return f"release {result.git_tag}: {result.outcome}; {serving}"


def final_state(result: ReleaseResult) -> State | None:
    """The flow run's final state for a release that did not reach its goal (None: Completed)."""
    name = STATE_NAMES.get(result.outcome)
    if name is None or result.dry_run:
        return None
    message = outcome_message(result)[:1000]
    if result.outcome == "rolled_back":
        return Failed(name=name, message=message, data=ReleaseRolledBack(message, result))
    return Completed(name=name, message=message, data=result)


def serving_and_attempted(
    record: dict[str, Any], previous: dict[str, Any], result: ReleaseResult
) -> dict[str, Any]:
    """The release record after a rollback or CPU fallback: what serves, and apart from it,
    what was attempted (the failed tag and image never pass for the serving revision's)."""
    same = previous.get("revision") == result.revision
    return {
        **record,
        "git_tag": previous.get("git_tag") if same else None,
        "image": previous.get("image") if same else None,
        "attempted": {
            "git_tag": result.git_tag,
            "image": result.image,
            "outcome": result.outcome,
            "reasons": result.reasons[:10],
        },
    }


def how_to_return(result: ReleaseResult) -> list[str]:
    """Summary lines: what serves now and the command that returns to it later."""
    lines = [f"- **serving**: revision `{result.revision or '-'}` in `{result.region or '-'}`"]
    if result.outcome in STATE_NAMES:
        lines.append(
            f"- **attempted** (not serving): tag `{result.git_tag}`, image `{result.image or '-'}`"
        )
    if result.revision and result.region:
        lines.append(
            f"- to return to it after a later release: `gcloud run services update-traffic "
            f"{result.service} --region {result.region} --to-revisions {result.revision}=100` "
            "(the revision that served before a cutover keeps the `prior` tag)"
        )
    return lines


quiet_rolled_back()
