"""How a release's outcome shows in Prefect: the flow run's final state and its log line.

A release that rolled back, or that serves the CPU baseline because no region could run the
GPU revision, did not do what was asked: its flow run must not look like a release that reached
100 %. The run ends in a state of its own name, with a message naming the reason and what
serves now; Prefect emits `prefect.flow-run.RolledBack` / `prefect.flow-run.CPUFallback` for
it (automations match those, or the `shipyard.release.*` events the release emits). The state
keeps Prefect's COMPLETED type so the run's result (the `ReleaseResult`) stays readable by the
caller and by `prefect deployment run --watch`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prefect.states import Completed, State

if TYPE_CHECKING:
    from flows.release import ReleaseResult

STATE_NAMES = {"rolled_back": "RolledBack", "cpu_fallback": "CPUFallback"}


def outcome_message(result: ReleaseResult) -> str:
    """One line: what happened, why, and what serves now."""
    serving = f"{result.revision or '-'} serves 100% in {result.region or '-'}"
    why = "; ".join(result.reasons) or "no reason recorded"
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
    return Completed(name=name, message=outcome_message(result)[:1000], data=result)


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
