"""Steps of a release: Prefect tasks with retries on transient errors, timed, attempts counted.

Every step of the release is a Prefect task called inside the one release flow (a task costs
~5 ms, a subflow ~1 s). `StepLog.run` calls a step task with the target's retry settings
(exponential backoff from `retry_delay_s`, Prefect's jitter) and records its name, state,
seconds and attempts for the typed result. Attempts come from the task run's `run_count`,
noted by the task itself (`note_attempt()`), so no API round trip is needed to learn them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, TypeVar
from uuid import UUID

from prefect.context import TaskRunContext
from prefect.tasks import Task
from pydantic import BaseModel

from shipyard.flows.observe.stage_events import retry_reporter, step_stage
from shipyard.tasks.errors import is_transient, retry_condition_fn

T = TypeVar("T")
R = TypeVar("R")

_ATTEMPTS: dict[UUID, int] = {}


class Step(BaseModel):
    name: str
    state: Literal["completed", "failed", "skipped"]
    seconds: float
    attempts: int = 1
    detail: str = ""


def note_attempt() -> None:
    """Call first thing in a step task: remembers which attempt this run is."""
    ctx = TaskRunContext.get()
    if ctx is not None:
        _ATTEMPTS[ctx.task_run.id] = ctx.task_run.run_count


class StepLog:
    """The ordered record of a release's steps."""

    def __init__(self, retries: int = 0, retry_delays: list[float] | None = None):
        self.steps: list[Step] = []
        self.retries = retries
        self.retry_delays = retry_delays or []

    def run(self, name: str, step: Task[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a step task with retries on transient errors; record it; return or raise."""
        return self.run_with(name, self.retries, self.retry_delays, step, *args, **kwargs)

    def run_with(
        self,
        name: str,
        retries: int,
        delays: list[float],
        step: Task[..., T],
        *args: Any,
        **kwargs: Any,
    ) -> T:
        """`run` with its own retry count and delays (e.g. the canary policy's)."""
        with step_stage(name, *args):  # shipyard.<stage>.* events of the step
            return self._run_step(name, retries, delays, step, *args, **kwargs)

    def run_per_region(
        self, name: str, step: Task[..., T], regions: Sequence[str], *args: Any
    ) -> dict[str, T]:
        """One task run of `step(*args, region)` per region, named `{name}:{region}`, submitted
        side by side so the UI shows each region; each is retried on transient errors by
        Prefect with the target's settings. Recorded as one step (attempts: the most any
        region needed); the first failed region's error is raised once all have ended."""
        with step_stage(name, *args):
            started = time.perf_counter()
            futures = {
                region: self._configured(
                    f"{name}:{region}", step, self.retries, self.retry_delays
                ).submit(*args, region)
                for region in regions
            }
            for future in futures.values():
                future.wait()
            attempts = max((_ATTEMPTS.pop(f.task_run_id, 1) for f in futures.values()), default=1)
            seconds = round(time.perf_counter() - started, 3)
            return self._settled(
                name,
                seconds,
                attempts,
                lambda: {region: future.state.result() for region, future in futures.items()},
            )

    @staticmethod
    def _configured(
        name: str, step: Task[..., T], retries: int, delays: list[float]
    ) -> Task[..., T]:
        """The step task with the retry settings, its run named `name`; a granted retry is
        reported (a `retrying` stage event) and counted (for tasks that note no attempt)."""
        report = retry_reporter(name, retry_condition_fn)

        def retry_and_count(task: Any, task_run: Any, state: Any) -> bool:
            retry = report(task, task_run, state)
            if retry:
                _ATTEMPTS[task_run.id] = task_run.run_count + 1
            return retry

        return step.with_options(
            name=step.name,
            task_run_name=name,
            retries=retries,
            retry_delay_seconds=delays or 0,
            retry_jitter_factor=0.5,
            retry_condition_fn=retry_and_count,
        )

    def _settled(self, name: str, seconds: float, attempts: int, outcome: Callable[[], R]) -> R:
        """Record the step as completed or failed by what `outcome()` does; return or raise."""
        try:
            result = outcome()
        except BaseException as exc:
            self._record(name, "failed", seconds, attempts, _short(exc))
            raise
        self._record(name, "completed", seconds, attempts)
        return result

    def _record(
        self,
        name: str,
        state: Literal["completed", "failed"],
        seconds: float,
        attempts: int,
        detail: str = "",
    ) -> None:
        self.steps.append(
            Step(name=name, state=state, seconds=seconds, attempts=attempts, detail=detail)
        )

    def _run_step(
        self,
        name: str,
        retries: int,
        delays: list[float],
        step: Task[..., T],
        *args: Any,
        **kwargs: Any,
    ) -> T:
        configured = self._configured(name, step, retries, delays)
        started = time.perf_counter()
        state = configured(*args, return_state=True, **kwargs)
        attempts = _ATTEMPTS.pop(state.state_details.task_run_id, 1)
        seconds = round(time.perf_counter() - started, 3)
        outcome: Callable[[], T] = state.result  # raises the task's error
        return self._settled(name, seconds, attempts, outcome)

    @contextmanager
    def inline(self, name: str) -> Iterator[dict[str, Any]]:
        """Time a step done in the flow itself (no retries): `with log.inline("x") as s:`."""
        info: dict[str, Any] = {"detail": ""}
        started = time.perf_counter()
        try:
            yield info
        except BaseException as exc:
            self._record(name, "failed", round(time.perf_counter() - started, 3), 1, _short(exc))
            raise
        seconds = round(time.perf_counter() - started, 3)
        self._record(name, "completed", seconds, 1, str(info.get("detail", "")))

    def skip(self, name: str, detail: str = "") -> None:
        self.steps.append(Step(name=name, state="skipped", seconds=0.0, attempts=0, detail=detail))

    def note(self, name: str, detail: str) -> None:
        """Attach a detail to the last step with this name."""
        for step in reversed(self.steps):
            if step.name == name:
                step.detail = detail
                return


class _RetrySummary(logging.Filter):
    """A transient failure of a step's attempt reads as one line on the run page, without a
    traceback: Prefect's task engine logs each failed attempt ("Task run failed with
    exception: … - Retry 1/3 will start …") and the exhausted last one at ERROR with the whole
    traceback, then "Finished in state Failed(…)" at ERROR. For an error `is_transient` calls
    transient (a 503 answer, a reset connection) those are expected outcomes the step's caller
    judges (the canary's verdict, the release's WARNING): one INFO line per attempt, no
    traceback, and the attempt's final state at INFO."""

    def __init__(self) -> None:
        super().__init__()
        self.exhausted: set[str] = set()  # task runs whose last attempt was summarised

    def filter(self, record: logging.LogRecord) -> bool:
        raised = record.exc_info[1] if record.exc_info else None
        run_id = str(getattr(record, "task_run_id", "") or "")
        if raised is not None and is_transient(raised):
            text = record.getMessage().replace("Task run failed with exception: ", "attempt: ", 1)
            record.msg, record.args = text.split("\n", 1)[0][:500], ()
            record.exc_info, record.exc_text = None, None
            _demote(record)
            if "Retries are exhausted" in text and run_id:
                self.exhausted.add(run_id)
        elif run_id in self.exhausted and record.getMessage().startswith("Finished in state"):
            self.exhausted.discard(run_id)
            _demote(record)
        return True


def _demote(record: logging.LogRecord) -> None:
    record.levelno, record.levelname = logging.INFO, "INFO"


def summarise_retries() -> None:
    """Install the filter on Prefect's task-run logger (once; at import of this module, which
    every release step imports)."""
    logger = logging.getLogger("prefect.task_runs")
    if not any(isinstance(f, _RetrySummary) for f in logger.filters):
        logger.addFilter(_RetrySummary())


summarise_retries()


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:297] + "..."


Runner = Callable[..., Any]
