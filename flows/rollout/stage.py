"""The rollout after the 0 % canary: traffic in steps, each judged against the stable revision.

For each of `target.rollout.planned_steps()` (e.g. 10, 50, 100):
1. the step's GPU instances are checked against the region's quota (flows/rollout/
   quota_check.py); short -> `on_quota_short`: direct (cut over now, saying why), rollback, or
   ask (the gate);
2. the gate, when the step asks for approval (flows/rollout/gate.py); after a wait the judge
   reads the window the wait covered: a fail there aborts even an approved step (Flagger: the
   judge keeps reading);
3. one traffic update (flows/rollout/traffic.py); the 100 % step is the cutover;
4. the bake (flows/rollout/bake.py): pass -> next step; fail -> abort; inconclusive ->
   `on_inconclusive` (rollback, or ask: the gate, whose approval continues).
The abort warms the stable revision first (flows/rollout/abort.py).

Steps run only when a stable revision serves 100 % in the region and has been tested (it passed
a canary or served before Shipyard): the first release of a service skips them, as Cloud Deploy
does, and so does a release whose GPU hand-over moved the stable revision's users to a CPU one.

Re-entrance: a run suspended at a gate is re-run from the start by Prefect when resumed. The
journal (flows/rollout/journal.py) is written at every step and decision; a re-run of the same
flow run for the same new revision skips the hand-over and the canary (their figures are in the
journal), replays the recorded decisions and continues where it stopped. Each phase of a step is
recorded once decided, so nothing decided is decided twice.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger
from prefect.context import FlowRunContext

from shipyard.blocks.rollout_policy import RolloutStep
from shipyard.flows.deploy.region_deploy import revision_ready
from shipyard.flows.deploy.traffic import TrafficResult, cutover_step, good_because
from shipyard.flows.deploy.traffic_split import pinned_traffic
from shipyard.flows.observe.status import publish_status
from shipyard.flows.release.context import RunContext
from shipyard.flows.release.decided import Decision, Ended, Reason, StepDecided
from shipyard.flows.release.result import CanaryFigures
from shipyard.flows.release.slot import ReleaseError
from shipyard.flows.release.steps import StepLog
from shipyard.flows.rollout import journal as journals
from shipyard.flows.rollout.abort import back_to_stable, run_is_over
from shipyard.flows.rollout.bake import bake, judge_window
from shipyard.flows.rollout.journal import Phase, RolloutJournal, StepRecord
from shipyard.flows.rollout.progress import STEP_COLUMNS, Board, step_rows
from shipyard.flows.rollout.traffic import step_traffic_step, untag_stable_step
from shipyard.tasks import cloud_run as cr
from shipyard.tasks.reports import markdown_table

# What a rollout ends with: the cutover's traffic (released), or None (it yielded its Ended).
Rollout = Generator[Decision, None, TrafficResult | None]


class RolloutWaiting(ReleaseError):
    """Another release of the service waits at a gate (or bakes): this one is refused."""


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def current_run_id() -> str | None:
    run = FlowRunContext.get()
    return str(run.flow_run.id) if run is not None and run.flow_run is not None else None


# ---------------------------------------------------------------- before the release's stages


def refuse_if_waiting(target: Any, git_tag: str) -> str | None:
    """Called right after the release took its slot. A rollout of another run in progress (its
    run suspended at a gate frees the slot) refuses this release with one line naming it and
    how to go on; a rollout whose run is over is undone first (back to stable). Returns what
    was undone, if anything."""
    from shipyard.flows.rollout.abort import undo_rollout

    found = journals.read(target.scope)
    if found is None or found.flow_run_id == current_run_id():
        return None
    if run_is_over(found.flow_run_id):
        undone = undo_rollout(target)
        for line in undone:
            get_run_logger().warning("rollout left by an ended run: %s", line)
        return "; ".join(undone) or None
    raise RolloutWaiting(
        f"{target.scope!r}: release {found.git_tag} (flow run {found.flow_run_id}) is "
        f"{'waiting for approval' if found.state == 'awaiting-approval' else found.state} at "
        f"{found.percent}% of traffic; promote it or abort it first (shipyard promote TARGET / "
        f"shipyard abort TARGET, or the Resume form on its run page), then release {git_tag}"
    )


def resumed_journal(ctx: RunContext, new: str) -> RolloutJournal | None:
    """The journal this very flow run wrote for `new` before Prefect re-ran it (a resumed
    suspension), or None."""
    found = journals.read(ctx.target.scope)
    run_id = current_run_id()
    if (
        found is None
        or run_id is None
        or found.flow_run_id != run_id
        or found.new != new
        or found.git_tag != ctx.git_tag
    ):
        return None
    return found


def canary_of(found: RolloutJournal) -> CanaryFigures | None:
    try:
        return CanaryFigures.model_validate(found.canary)
    except ValueError:
        return None


# ---------------------------------------------------------------- whether to step


@dataclass(frozen=True)
class Eligible:
    stable: str | None  # None: no steps
    why: str = ""  # why not, for the summary ("" when the target has no steps)


def eligible(ctx: RunContext, region: str, new: str, handed_over: bool) -> Eligible:
    """Whether the rollout steps run: a tested revision serves 100 % in the region and no GPU
    hand-over moved its users."""
    if not ctx.target.rollout.enabled:
        return Eligible(None)
    if handed_over:
        return Eligible(
            None,
            "rollout steps skipped: the GPU hand-over moved the stable revision's users to a CPU "
            "revision (the region's GPU quota holds one revision at a time); 100% at once after "
            "the canary",
        )
    service = cr.get_service(ctx.services, ctx.service_name(region))
    serving = [
        t for t in (pinned_traffic(service) if service else []) if t.percent and t.revision != new
    ]
    split = ", ".join(f"{t.revision} {t.percent}%" for t in serving) or "nothing"
    if len(serving) != 1 or serving[0].percent != 100 or not serving[0].revision:
        return Eligible(
            None,
            f"rollout steps skipped: the first release of the service in {region} (serving: "
            f"{split}; nothing stable to compare with), as Cloud Deploy does; 100% after the "
            "canary",
        )
    stable = serving[0].revision
    if good_because(ctx, region, stable) is None:
        return Eligible(
            None,
            f"rollout steps skipped: the first release of the service ({stable} serves 100% in "
            f"{region} but never passed a canary: nothing stable to compare with), as Cloud "
            "Deploy does; 100% after the canary",
        )
    if not revision_ready(ctx, region, stable):
        return Eligible(None, f"rollout steps skipped: the stable revision {stable} is not Ready")
    return Eligible(stable)


# ---------------------------------------------------------------- the rollout


class _Run:
    """One rollout: the journal, the board, the decisions it yields."""

    def __init__(self, ctx: RunContext, steps: StepLog, found: RolloutJournal):
        self.ctx = ctx
        self.steps = steps
        self.j = found
        self.policy = ctx.target.rollout
        self.planned = self.policy.planned_steps()
        self.board = Board(found, [s.percent for s in self.planned])
        self.logger = get_run_logger()

    def save(self) -> None:
        journals.write(self.j)

    def record(
        self, percent: int, verdict: str, phase: Phase, *, bake_s: float = 0.0, **fields: Any
    ) -> StepDecided:
        """Append a decision to the journal (written), send its event; the decision."""
        record = StepRecord(
            percent=percent,
            verdict=verdict,
            phase=phase,
            bake_s=bake_s,
            ended_at=_now(),
            **fields,
        )
        self.j.steps.append(record)
        self.save()
        self.board.event(self.j, record)
        self.board.publish(self.j, f"step {percent}%: {verdict}")
        return StepDecided(record)

    def evidence(self, percent: int, why: str) -> str:
        j = self.j
        lines = [
            f"## Release {j.git_tag} of `{j.service}`: {why}",
            "",
            f"- new `{j.new}` at {j.percent}%, stable `{j.stable}` in `{j.region}`",
            f"- next: {percent}%",
            f"- the step table and each tick: artifact `rollout-{j.scope}`; the release summary "
            f"when it ends: `release-{j.scope}`",
            "",
        ]
        if j.steps:
            lines.append(markdown_table(step_rows(j.steps), STEP_COLUMNS))
        return "\n".join(lines)

    def gate(self, percent: int, why: str, key_part: str) -> tuple[bool, StepDecided | None, str]:
        """Ask (or replay) a person's decision: (approved, the decision if new, reason)."""
        phase: Phase = "gate" if key_part == "before" else "decision"
        recorded = self.j.recorded(percent, phase)
        if recorded is not None:
            return recorded.verdict == "approved", None, recorded.comment
        from shipyard.flows.rollout import gate

        if not (self.j.state == "awaiting-approval" and self.j.waiting_since):
            self.j.waiting_since = _now()  # a re-run keeps the first wait's start
        waiting_since = self.j.waiting_since
        self.j.state = "awaiting-approval"
        self.save()
        self.logger.info("step %s%%: waiting for approval (%s)", percent, why)
        decision = gate.ask(
            self.ctx.target,
            service=self.j.service,
            git_tag=self.j.git_tag,
            percent=percent,
            evidence_md=self.evidence(percent, why),
            # Pause keys belong to the flow run; Prefect's run-input keys take only lowercase
            # letters, digits and dashes (a git tag's dots are refused).
            key=f"step-{percent}-{key_part}",
            journal=self.j,
        )
        fresh = journals.read(self.j.scope)
        if fresh is not None and fresh.flow_run_id == self.j.flow_run_id:
            self.j = fresh  # the gate wrote its key and expiry run into it
        self.j.state, self.j.waiting_since = "baking", ""
        verdict = "approved" if decision.approved else "rejected"
        comment = decision.comment + (" (no decision in time)" if decision.timed_out else "")
        decided = self.record(
            percent,
            verdict,
            phase,
            decided_by=decision.by or "unknown",
            comment=comment,
            reasons=[why],
            started_at=waiting_since,
        )
        return decision.approved, decided, comment

    def reread(self, since: str) -> tuple[bool, StepDecided | None, str]:
        """After a wait: the judge reads the window it covered (when the new revision had
        traffic). (still good, the decision if it failed, the reason)."""
        if self.j.percent <= 0 or not since:
            return True, None, ""
        verdict = judge_window(
            self.ctx,
            self.j.region,
            self.j.new,
            self.j.stable,
            dt.datetime.fromisoformat(since),
        )
        if verdict.verdict != "fail":
            return True, None, ""
        why = f"step {self.j.percent}% (during the wait): " + "; ".join(verdict.reasons)
        return (
            False,
            self.record(
                self.j.percent,
                "fail",
                "bake",
                figures=dict(verdict.figures),
                reasons=list(verdict.reasons),
                decided_by="judge",
            ),
            why,
        )

    def abort(self, why: str) -> Ended:
        self.logger.warning("rollout of %s: %s; back to %s", self.j.git_tag, why, self.j.stable)
        moved, notes = back_to_stable(self.ctx, self.steps, self.j, why)
        return Ended("rolled_back", moved.region, self.j.stable, moved.url, reasons=(why, *notes))

    def cutover(
        self, decided_by: str, comment: str = ""
    ) -> Generator[Decision, None, TrafficResult]:
        ctx, j = self.ctx, self.j
        outcome = self.steps.run("cutover", cutover_step, ctx, j.region, j.new)
        self.steps.run("rollout-untag-stable", untag_stable_step, ctx, j.region)
        j.percent = 100
        publish_status(ctx.target, "step 100%")
        yield self.record(100, "pass", "bake", decided_by=decided_by, comment=comment)
        journals.clear(j.scope)
        return outcome

    def move(self, percent: int) -> None:
        ctx, j = self.ctx, self.j
        self.steps.run(
            f"rollout-step-{percent}", step_traffic_step, ctx, j.region, j.new, j.stable, percent
        )
        j.percent = percent
        j.step_started_at = _now()
        j.state = "baking"
        self.save()
        publish_status(ctx.target, f"step {percent}%")

    def run(self, url: str, replay: bool) -> Rollout:
        j = self.j
        if replay:
            for record in j.steps:
                yield StepDecided(record)
            self.logger.info(
                "rollout of %s resumed at %s%% (%d decisions replayed)",
                j.git_tag,
                j.percent,
                len(j.steps),
            )
        else:
            self.logger.info(
                "rollout of %s: %s against %s",
                j.git_tag,
                " -> ".join(f"{s.percent}%" for s in self.planned),
                j.stable,
            )
            self.move(0)  # the stable revision gets its tag; the new one keeps `canary`
        for step in self.planned:
            ended = yield from self._step(step, url)
            if ended is not None:
                return ended if isinstance(ended, TrafficResult) else None
        return None  # planned_steps always ends at 100 %: not reached

    def _step(
        self, step: RolloutStep, url: str
    ) -> Generator[Decision, None, TrafficResult | Ended | None]:
        """One step; None: go on to the next; TrafficResult: cut over; Ended: yielded abort."""
        j, p = self.j, step.percent
        if j.percent < p:
            short = self._quota_short(p)
            if short is not None:
                if j.recorded(p, "quota") is None:
                    yield self.record(p, "quota-short", "quota", reasons=[short])
                action = self.policy.on_quota_short
                if action == "direct":
                    why = f"step {p}%: {short}; cut over directly (on_quota_short=direct)"
                    yield Reason(why)
                    return (yield from self.cutover("quota (direct)"))
                if action == "rollback":
                    ended = self.abort(f"step {p}%: {short} (on_quota_short=rollback)")
                    yield ended
                    return ended
                ok, decided, comment = self.gate(p, f"GPU quota short: {short}", "quota")
                if decided is not None:
                    yield decided
                if not ok:
                    ended = self.abort(f"step {p}%: {short}; {self._rejected(comment)}")
                    yield ended
                    return ended
            if step.approval:
                since = _now()
                ok, decided, comment = self.gate(p, f"approval before {p}%", "before")
                if decided is not None:
                    yield decided
                if not ok:
                    ended = self.abort(f"step {p}%: {self._rejected(comment)}")
                    yield ended
                    return ended
                good, failed, why = self.reread(j.steps[-1].started_at or since)
                if failed is not None:
                    yield failed
                if not good:
                    ended = self.abort(why)
                    yield ended
                    return ended
            if p == 100:
                return (
                    yield from self.cutover(
                        "judge" if not step.approval else j.steps[-1].decided_by
                    )
                )
            self.move(p)
        elif p == 100:
            return (yield from self.cutover("judge"))
        recorded = j.recorded(p, "bake")
        if recorded is None:
            began = (
                dt.datetime.fromisoformat(j.step_started_at)
                if j.step_started_at
                else dt.datetime.now(dt.UTC)
            )
            end = bake(self.ctx, j, self.board, url=url, bake_s=step.bake_s, since=began)
            if end.how == "promote":
                yield self.record(
                    p,
                    "promoted",
                    "decision",
                    decided_by=end.by,
                    comment=end.comment,
                    figures=dict(end.judgement.figures),
                )
                return (yield from self.cutover(end.by, end.comment))
            if end.how == "abort":
                yield self.record(
                    p,
                    "aborted",
                    "decision",
                    decided_by=end.by,
                    comment=end.comment,
                    figures=dict(end.judgement.figures),
                )
                ended = self.abort(
                    f"step {p}%: aborted by {end.by}" + (f": {end.comment}" if end.comment else "")
                )
                yield ended
                return ended
            decided = self.record(
                p,
                end.judgement.verdict,
                "bake",
                bake_s=round(end.seconds, 1),
                figures=dict(end.judgement.figures),
                reasons=list(end.judgement.reasons),
                decided_by="judge",
                started_at=j.step_started_at,
            )
            yield decided
            recorded = decided.record
        reasons = "; ".join(recorded.reasons)
        if recorded.verdict == "pass":
            return None
        if recorded.verdict == "fail" or self.policy.on_inconclusive == "rollback":
            kind = "" if recorded.verdict == "fail" else "inconclusive: "
            ended = self.abort(f"step {p}%: {kind}{reasons}")
            yield ended
            return ended
        ok, decided_gate, comment = self.gate(
            p, f"step {p}% inconclusive: {reasons}", "inconclusive"
        )
        if decided_gate is not None:
            yield decided_gate
        if not ok:
            ended = self.abort(f"step {p}%: inconclusive ({reasons}); {self._rejected(comment)}")
            yield ended
            return ended
        good, failed, why = self.reread(j.step_started_at)
        if failed is not None:
            yield failed
        if not good:
            ended = self.abort(why)
            yield ended
            return ended
        return None

    def _rejected(self, comment: str) -> str:
        """'rejected by ana: too thin' (the last decision's approver)."""
        by = self.j.steps[-1].decided_by if self.j.steps else "unknown"
        return f"rejected by {by}" + (f": {comment}" if comment else "")

    def _quota_short(self, percent: int) -> str | None:
        from shipyard.flows.rollout.quota_check import step_fits

        j = self.j
        try:
            fit = step_fits(self.ctx, j.region, j.new, j.stable, percent)
        except Exception as exc:  # noqa: BLE001 - an unreadable quota does not stop a step
            self.logger.warning(
                "step %s%%: the GPU quota could not be read (%s): the step goes on unchecked",
                percent,
                exc,
            )
            return None
        return None if fit.fits else fit.why


def run_rollout(
    ctx: RunContext,
    steps: StepLog,
    *,
    region: str,
    new: str,
    stable: str,
    url: str,
    canary: CanaryFigures,
    baseline_ms: float | None,
    resumed: RolloutJournal | None = None,
) -> Rollout:
    """The steps (see the module docstring). Returns the cutover's traffic when the release is
    released; None when it yielded its own end (rolled back)."""
    found = resumed or RolloutJournal(
        service=ctx.target.service,
        scope=ctx.target.scope,
        target=getattr(ctx.target, "_block_document_name", None) or "",
        flow_run_id=current_run_id(),
        git_tag=ctx.git_tag,
        region=region,
        new=new,
        stable=stable,
        canary=canary.model_dump(mode="json"),
        baseline_ms=baseline_ms,
    )
    run = _Run(ctx, steps, found)
    try:
        return (yield from run.run(url, replay=resumed is not None))
    except Exception as exc:
        # The rollout itself failed (a traffic update refused, Google unreachable ...): the
        # users go back to the stable revision before the error ends the release. Prefect's
        # Pause (a gate suspending the run) is not an Exception and leaves the share as it is.
        if journals.read(ctx.target.scope) is not None:
            try:
                back_to_stable(ctx, steps, run.j, f"the rollout failed: {exc}")
            except Exception as undo:  # noqa: BLE001 - the rollout's own error is raised
                run.logger.warning("the rollout's traffic could not go back: %s", undo)
        raise
