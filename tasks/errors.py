"""One shared classification of errors: transient (retry with backoff) or permanent (do not).

Transient: HTTP 429 and 5xx, connection errors, resets and timeouts, gRPC/REST UNAVAILABLE,
RESOURCE_EXHAUSTED (rate), DEADLINE_EXCEEDED, INTERNAL. Everything else is permanent: bad input,
bad config, other 4xx, quota denied. A 429 / RESOURCE_EXHAUSTED whose message is an allocation
quota error ("Quota exceeded for total allowable count of GPUs ...") is permanent: waiting does
not create quota (rate-limit quotas, "... per minute", stay transient). `retry_condition_fn`
adapts `is_transient` to Prefect's `@task(retry_condition_fn=...)`. Kept free of heavy imports: google.api_core is only consulted
when something else already imported it (an exception of its types cannot exist otherwise).
"""

from __future__ import annotations

import random
import re
import sys
from typing import Any

import httpx

__all__ = [
    "PermanentError",
    "TransientError",
    "backoff_delay",
    "is_quota_error",
    "is_transient",
    "retry_condition_fn",
]

# Transport errors that are our own fault, not the network's: retrying cannot help.
_PERMANENT_TRANSPORT = (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.ProxyError)
_GOOGLE_TRANSIENT = (
    "ServiceUnavailable",
    "TooManyRequests",
    "DeadlineExceeded",
    "InternalServerError",
)


class PermanentError(Exception):
    """An error that retrying cannot fix (bad input, bad config, 4xx, quota denied)."""


class TransientError(Exception):
    """An error worth retrying with backoff (rate limit, 5xx, a dropped connection)."""


def is_transient(exc: BaseException) -> bool:
    """True when retrying the same call later can succeed."""
    if isinstance(exc, PermanentError):
        return False
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, httpx.HTTPStatusError):
        code = exc.response.status_code
        return code == 429 or code >= 500
    if isinstance(exc, httpx.TransportError):
        return not isinstance(exc, _PERMANENT_TRANSPORT)
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    google = sys.modules.get("google.api_core.exceptions")
    if google is not None:
        if isinstance(exc, google.TooManyRequests) and is_quota_error(exc):
            return False  # ResourceExhausted is a TooManyRequests
        kinds = tuple(getattr(google, name) for name in _GOOGLE_TRANSIENT)
        return isinstance(exc, kinds)
    return False


# An allocation quota (GPUs, CPU, memory per region) is exhausted: permanent. Rate quotas
# ("Quota exceeded for quota metric 'Read requests' and limit '... per minute'") are not.
_QUOTA_MESSAGE = re.compile(
    r"quota exceeded|exceeded (?:its |the |your )?quota|do not have (?:enough )?quota"
    r"|insufficient quota|quota violated",
    re.IGNORECASE,
)
_RATE_MESSAGE = re.compile(r"per (?:minute|second|100 seconds|hour)|rate limit", re.IGNORECASE)


def is_quota_error(exc: BaseException) -> bool:
    """True when the error says an allocation quota is exhausted (not a rate limit)."""
    text = str(exc)
    return bool(_QUOTA_MESSAGE.search(text)) and not _RATE_MESSAGE.search(text)


def retry_condition_fn(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry a failed task run only when its error is transient."""
    data = getattr(state, "data", None)
    if isinstance(data, BaseException):
        return is_transient(data)
    try:
        state.result(raise_on_failure=True)
    except BaseException as exc:  # noqa: BLE001 - only classified, never swallowed
        return is_transient(exc)
    return False


def backoff_delay(attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff with jitter for retry number `attempt` (1-based): in [d/2, d]."""
    delay = min(cap, base * (2 ** max(0, attempt - 1)))
    return delay / 2 + random.uniform(0, delay / 2)
