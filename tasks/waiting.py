"""The one waiter: retry a call, or poll until an outcome, with one backoff rule and a deadline.

Every hand-written wait in tasks/ (and the Cloud Build follow) goes through `wait_for` (or
`await_for` in async code); Google's long-running operations are waited for with
google-api-core's own `operation.result(polling=...)` (tasks/cloud_run.py), configured with the
same rule.

The backoff rule (`pauses`): google-api-core's truncated exponential backoff,
`google.api_core.retry.exponential_sleep_generator` — each pause drawn uniformly in [0, d], d
doubling from `first_delay_s` up to `max_delay_s` — the rule Google's own `Retry` and operation
polling use.

What ends a wait:
- the call returns: its value;
- the call raises `NotYet` (a poll's "no outcome yet") or an error `retry_on` accepts: pause, then
  call again; when the `deadline` has passed, `WaitExpired` (tasks/errors.py: a verdict, never
  retried), chained to the last `NotYet` or error; when `attempts` are spent, the last error
  itself;
- any other error: raised at once.

The deadline is one for the whole wait, not per attempt: a pause never runs past it, and the
call is made once more when it falls due.

A wait that lasts says so: every `heartbeat_s` (15 s by default) one INFO line, "still waiting
for {what}: N s so far, M s left (last: ...)", on the run's logger when a Prefect flow or task
run is current (the run page shows it under the task's name), else on `shipyard.waiting`. A
person reading the run page never faces more than 15 s of silence during a Ready wait, a quota
poll or a build follow.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from google.api_core.retry import exponential_sleep_generator

from shipyard.tasks.errors import WaitExpired

__all__ = ["HEARTBEAT_S", "Deadline", "Heartbeat", "NotYet", "await_for", "pauses", "wait_for"]

T = TypeVar("T")
MULTIPLIER = 2.0  # d doubles after each pause
HEARTBEAT_S = 15.0  # the longest silence of a wait on the run page (issue 23)


class NotYet(Exception):
    """Raised by a poll's call when there is no outcome yet; `last` is what it saw."""

    def __init__(self, last: object = None) -> None:
        super().__init__(str(last) if last is not None else "no outcome yet")
        self.last = last


class Deadline:
    """A point in time (monotonic clock) `seconds` from now."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def remaining(self) -> float:
        """Seconds left (negative once passed)."""
        return self.at - time.monotonic()

    def passed(self) -> bool:
        return self.remaining() <= 0


def pauses(first_delay_s: float, max_delay_s: float) -> Iterator[float]:
    """The one backoff rule: exponential with full jitter, capped (see the module docstring)."""
    return iter(exponential_sleep_generator(first_delay_s, max_delay_s, multiplier=MULTIPLIER))


def run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The current Prefect run's logger (its lines reach the run page), else `shipyard.waiting`."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("shipyard.waiting")


class Heartbeat:
    """One INFO line every `every_s` while a wait lasts (None or 0: silent)."""

    def __init__(self, what: str, every_s: float | None, deadline: Deadline | None = None):
        self.what = what
        self.every_s = every_s or 0.0
        self.deadline = deadline
        self.started = time.monotonic()
        self.next_at = self.started + self.every_s
        self.last: object = None

    def until_next(self) -> float:
        """Seconds until the next line is due (inf when silent)."""
        return max(0.0, self.next_at - time.monotonic()) if self.every_s else float("inf")

    def beat(self, last: object = None) -> bool:
        """Log the line if it is due; True when it was."""
        if last is not None:
            self.last = last
        now = time.monotonic()
        if not self.every_s or now < self.next_at:
            return False
        self.next_at = now + self.every_s
        left = (
            f", {max(0.0, self.deadline.remaining()):.0f} s left"
            if self.deadline is not None
            else ""
        )
        seen = f" (last: {str(self.last)[:200]})" if self.last is not None else ""
        run_logger().info(
            "still waiting for %s: %.0f s so far%s%s", self.what, now - self.started, left, seen
        )
        return True


class _Schedule:
    """When to call again: the shared decision of `wait_for` and `await_for`."""

    def __init__(
        self,
        what: str,
        first_delay_s: float,
        max_delay_s: float,
        deadline: Deadline | None,
        attempts: int | None,
        retry_on: Callable[[Exception], bool] | None,
        on_retry: Callable[[Exception], None] | None,
        heartbeat_s: float | None = HEARTBEAT_S,
    ) -> None:
        self.heartbeat = Heartbeat(what, heartbeat_s, deadline)
        self.what = what
        self.deadline = deadline
        self.attempts = attempts
        self.retry_on = retry_on
        self.on_retry = on_retry
        self.attempt = 0
        self._pauses = pauses(first_delay_s, max_delay_s)

    def pause_after(self, exc: Exception) -> float | None:
        """The pause before the next call; None: give up with `exc` itself. Raises WaitExpired
        when the deadline has passed."""
        self.attempt += 1
        pause = next(self._pauses)
        if not isinstance(exc, NotYet) and (self.retry_on is None or not self.retry_on(exc)):
            return None
        if self.deadline is not None and self.deadline.passed():
            last = exc.last if isinstance(exc, NotYet) else f"{type(exc).__name__}: {exc}"
            raise WaitExpired(
                f"{self.what}: no outcome within {self.deadline.seconds:g} s (last: {last})"
            ) from exc
        if self.attempts is not None and self.attempt >= self.attempts:
            if isinstance(exc, NotYet):
                raise WaitExpired(
                    f"{self.what}: no outcome after {self.attempt} attempts (last: {exc.last})"
                ) from exc
            return None
        if self.on_retry is not None:
            self.on_retry(exc)
        self.heartbeat.last = (
            exc.last if isinstance(exc, NotYet) else f"{type(exc).__name__}: {exc}"
        )
        if self.deadline is not None:
            pause = min(pause, max(0.0, self.deadline.remaining()))
        return pause

    def slices(self, pause: float) -> Iterator[float]:
        """The pause in pieces that end when a heartbeat line falls due (it is logged after
        each piece): a long pause is never a silence past `heartbeat_s`."""
        end = time.monotonic() + pause
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            yield min(left, self.heartbeat.until_next())
            self.heartbeat.beat()


def wait_for(
    call: Callable[[], T],
    *,
    what: str,
    first_delay_s: float,
    max_delay_s: float,
    deadline: Deadline | None = None,
    attempts: int | None = None,
    retry_on: Callable[[Exception], bool] | None = None,
    on_retry: Callable[[Exception], None] | None = None,
    heartbeat_s: float | None = HEARTBEAT_S,
) -> T:
    """Call `call` until it returns; see the module docstring for what ends the wait.

    `what` names the wait in WaitExpired's message and in its heartbeat lines. `retry_on`:
    which errors to call again on (e.g. `is_transient`); None: only `NotYet`. `on_retry` sees
    each error retried. `heartbeat_s`: the longest silence (None: no heartbeat lines).
    """
    schedule = _Schedule(
        what, first_delay_s, max_delay_s, deadline, attempts, retry_on, on_retry, heartbeat_s
    )
    while True:
        try:
            return call()
        except Exception as exc:
            pause = schedule.pause_after(exc)
            if pause is None:
                raise
        for piece in schedule.slices(pause):
            time.sleep(piece)


async def await_for(
    call: Callable[[], Awaitable[T]],
    *,
    what: str,
    first_delay_s: float,
    max_delay_s: float,
    deadline: Deadline | None = None,
    attempts: int | None = None,
    retry_on: Callable[[Exception], bool] | None = None,
    on_retry: Callable[[Exception], None] | None = None,
    heartbeat_s: float | None = HEARTBEAT_S,
) -> T:
    """`wait_for` for a coroutine function: the same rule, pausing with `asyncio.sleep`."""
    schedule = _Schedule(
        what, first_delay_s, max_delay_s, deadline, attempts, retry_on, on_retry, heartbeat_s
    )
    while True:
        try:
            return await call()
        except Exception as exc:
            pause = schedule.pause_after(exc)
            if pause is None:
                raise
        for piece in schedule.slices(pause):
            await asyncio.sleep(piece)
