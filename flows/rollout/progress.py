"""What a person sees of a rollout while it runs: one `shipyard.release.step` event per step
and decision, a progress bar over the whole rollout, and the markdown artifact `rollout-<scope>`
(the step table and the current bake) updated at every analysis tick.

Observability never fails the rollout: an event or artifact that cannot be written is logged.
"""

from __future__ import annotations

import logging
from typing import Any

from shipyard.flows.observe.progress import Progress
from shipyard.flows.observe.stage_events import emit_stage_event
from shipyard.flows.rollout.journal import RolloutJournal, StepRecord
from shipyard.tasks.reports import markdown_table, publish_markdown

_log = logging.getLogger("shipyard.rollout")

STEP_COLUMNS = ["percent", "bake_s", "verdict", "figures", "decided by"]


def figures_text(figures: dict[str, Any]) -> str:
    """'new 41 req / stable 380 req, errors 0.0% vs 0.0%, p95 120 vs 118 ms' from the judge's
    figures (flows/rollout/judge.py), '-' when there are none."""
    if not figures:
        return "-"
    f = figures

    def pct(value: Any) -> str:
        return "-" if value is None else f"{100 * float(value):.1f}%"

    def ms(value: Any) -> str:
        return "-" if value is None else f"{float(value):.0f}"

    return (
        f"new {f.get('n_new', '-')} req / stable {f.get('n_stable', '-')} req, errors "
        f"{pct(f.get('error_rate_new'))} vs {pct(f.get('error_rate_stable'))}, p95 "
        f"{ms(f.get('p95_new_ms'))} vs {ms(f.get('p95_stable_ms'))} ms"
    )


def step_rows(records: list[StepRecord]) -> list[dict[str, Any]]:
    return [
        {
            "percent": f"{r.percent}%",
            "bake_s": f"{r.bake_s:g}",
            "verdict": r.verdict + (f" ({r.phase})" if r.phase not in ("bake",) else ""),
            "figures": figures_text(r.figures) if r.figures else "; ".join(r.reasons)[:160] or "-",
            "decided by": r.decided_by + (f": {r.comment}" if r.comment else ""),
        }
        for r in records
    ]


class Board:
    """The rollout's progress bar and markdown artifact, and its events."""

    def __init__(self, journal: RolloutJournal, planned: list[int]):
        self.scope = journal.scope  # the artifact's key: one per service and environment
        self.planned = planned
        self.progress = Progress(
            f"rollout-{journal.scope}",
            f"Rollout of {journal.git_tag} ({journal.new}) against {journal.stable}: "
            + " -> ".join(f"{p}%" for p in planned),
        )

    def event(self, journal: RolloutJournal, record: StepRecord) -> None:
        """`shipyard.release.step`: one per step and decision, with the figures."""
        emit_stage_event(
            "release",
            "step",
            {
                "git_tag": journal.git_tag,
                "percent": record.percent,
                "phase": record.phase,
                "verdict": record.verdict,
                "figures": record.figures,
                "reasons": record.reasons[:3],
                "decided_by": record.decided_by,
                "region": journal.region,
                "revision": journal.new,
                "stable": journal.stable,
            },
        )

    def tick(self, journal: RolloutJournal, line: str, done: float, total: float) -> None:
        """The bar at `done` of `total` of the current step; the artifact with `line` on top."""
        index = self.planned.index(journal.percent) if journal.percent in self.planned else 0
        step_share = 1.0 / max(1, len(self.planned))
        overall = step_share * (index + (min(done, total) / total if total > 0 else 1.0))
        self.progress.update(overall, 1.0, line)
        self.publish(journal, line)

    def publish(self, journal: RolloutJournal, line: str) -> None:
        markdown = "\n".join(
            [
                f"# Rollout of {journal.git_tag} in `{journal.region}`",
                "",
                f"- new `{journal.new}` at **{journal.percent}%**, stable `{journal.stable}`",
                f"- plan: {' -> '.join(f'{p}%' for p in self.planned)}",
                f"- now: {line}",
                "",
                markdown_table(step_rows(journal.steps), STEP_COLUMNS)
                if journal.steps
                else "(no step judged yet)",
            ]
        )
        try:
            publish_markdown(
                markdown,
                key=f"rollout-{self.scope}",
                description=f"Rollout of {journal.git_tag}: {line}"[:500],
            )
        except Exception as exc:  # noqa: BLE001 - observability never fails the rollout
            _log.warning("rollout artifact not published: %s", exc)
