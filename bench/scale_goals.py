"""bench/scale.py's goals (issue 25) and its judgement of a round's figures: `problems` (what
did not happen: the figures are void, exit 1) and `missed_goals` (what was too slow, exit 2)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.scale import FleetSize

GOALS: dict[str, float] = {
    "releases_per_min": 30.0,  # at least
    "p95_queue_wait_s": 5.0,  # at most
    "max_concurrent_per_service": 1,  # exactly
    "lost": 0,
    "twice": 0,
    "webhook_p95_accept_ms": 500.0,  # at most
}


def problems(figures: dict[str, Any], size: FleetSize) -> list[str]:
    """What makes a round's figures void (the bench exits 1)."""
    out = []
    if figures.get("error"):
        return [f"did not run: {figures['error']}"]
    if figures["not_completed"]:
        out.append(
            f"{figures['not_completed']} of {figures['expected']} releases did not complete "
            f"({figures['run_states']}; first: {figures['first_failure']})"
        )
    if figures["tags_run_twice"]:
        out.append(f"released twice: {figures['tags_run_twice'][:10]}")
    if figures["max_concurrent_per_service"] != 1:
        out.append(f"max_concurrent_per_service {figures['max_concurrent_per_service']}, not 1")
    burst = figures.get("burst")
    if size.deliveries and burst is not None:
        if burst["accepted"] != size.deliveries:
            out.append(f"{size.deliveries - burst['accepted']} deliveries not accepted")
        if burst["lost"] or burst["twice"]:
            out.append(f"burst: {burst['lost']} tags lost, {burst['twice']} run twice")
        if burst["not_completed"]:
            out.append(
                f"burst: {burst['not_completed']} of {burst['expected']} runs did not complete "
                f"({burst['run_states']}; first: {burst['first_failure']})"
            )
        if burst["max_concurrent_per_service"] > 1:
            out.append(f"burst: max_concurrent_per_service {burst['max_concurrent_per_service']}")
    return out


def missed_goals(figures: dict[str, Any]) -> list[str]:
    """The goals a round's figures missed (empty: all met)."""
    missed = []
    if (
        not figures.get("releases_per_min")
        or figures["releases_per_min"] < GOALS["releases_per_min"]
    ):
        missed.append(f"releases_per_min {figures.get('releases_per_min')} < 30")
    wait = figures.get("p95_queue_wait_s")
    if wait is None or wait > GOALS["p95_queue_wait_s"]:
        missed.append(f"p95_queue_wait_s {wait} > 5")
    if figures.get("max_concurrent_per_service") != 1:
        missed.append(f"max_concurrent_per_service {figures.get('max_concurrent_per_service')}")
    for key in ("lost", "twice"):
        if figures.get(key):
            missed.append(f"{key} {figures[key]}")
    accept = figures.get("webhook_p95_accept_ms")
    if accept is not None and accept > GOALS["webhook_p95_accept_ms"]:
        missed.append(f"webhook_p95_accept_ms {accept} > 500")
    return missed
