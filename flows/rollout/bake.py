"""A step's bake: the share holds while the judge reads both revisions' requests.

Every `judge.analysis_interval_s` (Flagger's interval, Argo Rollouts' analysis run) the bake reads
the requests both revisions answered since the step began (Cloud Run's request log,
tasks/request_logs.py) and the new revision's log lines with the canary's signatures (silent
CPU fallback, OOM: tasks/cloud_logging.py, as the canary reads them), asks the judge
(flows/rollout/judge.py), counts the interim failures against `failure_limit` (Argo Rollouts'
failureLimit: beyond it the step fails at once), takes a person's command (promote: on to 100 %;
abort: back to stable; flows/rollout/commands.py), and logs one line a person can follow. At the
end of the bake the judge reads the whole window once more: that verdict decides the step.

The load generator (flows/rollout/load.py) runs for the whole bake when the target enables it:
it sends the canary's samples to the service URL, and the traffic split decides which revision
answers each one.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
from prefect import get_run_logger

from shipyard.flows.release.context import RunContext
from shipyard.flows.rollout.journal import RolloutJournal
from shipyard.flows.rollout.judge import COLUMNS, Judgement, judge
from shipyard.flows.rollout.progress import Board, figures_text
from shipyard.tasks.cloud_logging import find_revision_entries
from shipyard.tasks.request_logs import read_requests
from shipyard.tasks.waiting import Deadline

Ended = Literal["judged", "promote", "abort"]


@dataclass(frozen=True)
class BakeEnd:
    """How a bake ended: the judge's verdict at its end (or early: beyond the failure limit), or
    a person's command (`by`, `comment`)."""

    how: Ended
    judgement: Judgement
    by: str = "judge"
    comment: str = ""
    seconds: float = 0.0


def read_window(
    ctx: RunContext, region: str, new: str, stable: str, since: dt.datetime
) -> tuple[pd.DataFrame, list[str]]:
    """Both revisions' requests since `since`, and the new revision's signature lines."""
    requests = read_requests(
        ctx.cloud, ctx.project, ctx.target.service, region, [new, stable], since
    )
    signatures = ctx.target.canary.log_signatures
    lines: list[str] = []
    if signatures:
        matches = find_revision_entries(
            ctx.cloud,
            service=ctx.target.service,
            revision=new,
            signatures=signatures,
            start=since,
            end=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1),
            region=region,
        )
        lines = [
            f"{m.signature}: {m.text.strip().splitlines()[0][:160] if m.text.strip() else ''}"
            for m in matches
        ]
    return requests, lines


def judge_window(
    ctx: RunContext, region: str, new: str, stable: str, since: dt.datetime
) -> Judgement:
    """The judge's verdict on the window since `since`; a window that cannot be read is
    inconclusive with the reason (never a pass)."""
    try:
        requests, lines = read_window(ctx, region, new, stable, since)
    except Exception as exc:  # noqa: BLE001 - an unreadable window is inconclusive, said so
        empty = pd.DataFrame({c: [] for c in COLUMNS})
        verdict = judge(empty, new, stable, ctx.target.rollout.judge)
        return Judgement(
            "inconclusive",
            (f"the request logs could not be read: {type(exc).__name__}: {exc}"[:300],),
            verdict.figures,
        )
    return judge(requests, new, stable, ctx.target.rollout.judge, lines)


@contextmanager
def _load(ctx: RunContext, url: str) -> Iterator[Any]:
    policy = ctx.target.rollout.load
    if not policy.enabled:
        with nullcontext() as nothing:
            yield nothing
        return
    from shipyard.flows.rollout.load import generate_load

    with generate_load(ctx, url, policy) as handle:
        yield handle


def bake(
    ctx: RunContext,
    journal: RolloutJournal,
    board: Board,
    *,
    url: str,
    bake_s: float,
    since: dt.datetime,
) -> BakeEnd:
    """Hold the step's share for `bake_s` (from `since`, when its traffic changed) with the
    judge reading every analysis interval; see the module docstring."""
    from shipyard.flows.rollout import commands

    logger = get_run_logger()
    policy = ctx.target.rollout.judge
    region, new, stable, percent = journal.region, journal.new, journal.stable, journal.percent
    started = time.monotonic() - max(0.0, (dt.datetime.now(dt.UTC) - since).total_seconds())
    deadline = Deadline(max(0.0, bake_s - (time.monotonic() - started)))
    failures = 0
    with _load(ctx, url):
        while not deadline.passed():
            time.sleep(min(policy.analysis_interval_s, max(0.0, deadline.remaining())))
            given = commands.take(ctx.target.scope, journal.flow_run_id)
            if given is not None:
                verdict = judge_window(ctx, region, new, stable, since)
                return BakeEnd(
                    given.command, verdict, given.by, given.comment, time.monotonic() - started
                )
            if deadline.passed():
                break  # the end of the bake: the final reading below decides
            interim = judge_window(ctx, region, new, stable, since)
            elapsed = time.monotonic() - started
            line = (
                f"step {percent}%: {elapsed:.0f} s of {bake_s:g} s, "
                f"{figures_text(interim.figures)}: {interim.verdict}"
            )
            logger.info("%s", line)
            board.tick(journal, line, elapsed, bake_s)
            if interim.verdict == "fail":
                failures += 1
                if failures > policy.failure_limit:
                    logger.warning(
                        "step %s%%: %d failed analyses (failure_limit %d): the step fails early",
                        percent,
                        failures,
                        policy.failure_limit,
                    )
                    return BakeEnd("judged", interim, seconds=elapsed)
        final = judge_window(ctx, region, new, stable, since)
        if _thin(final, policy.min_samples) and ctx.target.rollout.load.enabled:
            # The generator's own requests have not reached min_samples yet (it starts with the
            # bake; a loaded worker starts it late): bake on, up to the bake's length again.
            final = _bake_on(ctx, journal, since, max(bake_s, 2 * policy.analysis_interval_s))
    elapsed = time.monotonic() - started
    line = (
        f"step {percent}%: bake done ({elapsed:.0f} s), {figures_text(final.figures)}: "
        f"{final.verdict}"
    )
    logger.info("%s", line)
    board.tick(journal, line, bake_s, bake_s)
    return BakeEnd("judged", final, seconds=elapsed)


def _thin(verdict: Judgement, min_samples: int) -> bool:
    """Inconclusive for want of requests (not for an unreadable window)."""
    figures = verdict.figures
    counts = [figures.get("n_new"), figures.get("n_stable")]
    return verdict.verdict == "inconclusive" and any(
        isinstance(n, int | float) and n < min_samples for n in counts
    )


def _bake_on(
    ctx: RunContext, journal: RolloutJournal, since: dt.datetime, longest_s: float
) -> Judgement:
    """Keep the share (and the load generator) while the window is too thin to judge, at most
    `longest_s` more; the last verdict (inconclusive when still thin: said, never a pass)."""
    policy = ctx.target.rollout.judge
    logger = get_run_logger()
    deadline = Deadline(longest_s)
    logger.info(
        "step %s%%: too few requests to judge yet (min_samples %d): the bake goes on, up to %.0f s",
        journal.percent,
        policy.min_samples,
        longest_s,
    )
    verdict = judge_window(ctx, journal.region, journal.new, journal.stable, since)
    while _thin(verdict, policy.min_samples) and not deadline.passed():
        time.sleep(min(policy.analysis_interval_s, max(0.0, deadline.remaining())))
        verdict = judge_window(ctx, journal.region, journal.new, journal.stable, since)
    return verdict
