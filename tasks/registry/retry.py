"""When to retry a registry call: a budget of time (not a count), and the registry's Retry-After.

A registry that is rate limiting says how long to wait: `429 Too Many Requests` (Docker Hub,
GHCR, Artifact Registry) or `503 Service Unavailable` with a `Retry-After` header, either
delta-seconds or an HTTP-date (RFC 9110 section 10.2.3; Docker Hub's API reference: "the
`Retry-After` header specifies the number of seconds to wait", docker/docs#22916). Six quick
attempts give up long before such a window closes (containers/common#2494: skopeo failing fast on
`toomanyrequests`), so each operation gets a budget in seconds (default five minutes) and every
retry waits what the registry asked for, or an exponential backoff when it said nothing.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from shipyard.tasks.waiting import pauses

DEFAULT_RETRY_BUDGET = 300.0  # seconds per operation (one request, or one blob copy)
MAX_RETRY_AFTER = 3600.0  # a longer Retry-After is treated as this (then exceeds any budget)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or HTTP-date); None if absent or
    unreadable. A date in the past means "now" (0)."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


class RetryBudget:
    """The retry clock of one operation: how long to wait before attempt N+1, or None to stop."""

    def __init__(
        self,
        budget: float,
        backoff_base: float,
        backoff_cap: float,
        max_attempts: int | None = None,
    ) -> None:
        self.budget = budget
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.max_attempts = max_attempts
        self.started = time.monotonic()
        self._pauses = pauses(backoff_base, backoff_cap)  # the one backoff rule

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def delay(self, attempt: int, retry_after: float | None) -> float | None:
        """The pause before the next attempt (the registry's Retry-After if it gave one), or
        None when that attempt would start after the budget (or past max_attempts). Called once
        per failed attempt: each call takes the backoff's next pause."""
        if self.max_attempts is not None and attempt >= self.max_attempts:
            return None
        backoff = next(self._pauses)
        pause = retry_after if retry_after is not None else backoff
        if self.elapsed + pause > self.budget:
            return None
        return pause

    def gave_up(self, attempt: int, retry_after: float | None) -> str:
        """Why the retries stopped, with the setting that governs it."""
        asked = (
            f"; the registry asked to wait {retry_after:.0f}s more (Retry-After)"
            if retry_after is not None
            else ""
        )
        return (
            f"gave up after {attempt} attempt(s) over {self.elapsed:.1f}s: the retry budget is "
            f"{self.budget:.0f}s{asked}. Fix: retry later, or raise the budget "
            "(mirror_base_image retry_budget_seconds / shipyard mirror --retry-budget)"
        )
