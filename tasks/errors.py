"""One shared classification of errors: transient (retry with backoff) or permanent (do not).

Transient: what google-api-core's own predicate `google.api_core.retry.if_transient_error`
retries (500 INTERNAL, 429 TOO_MANY_REQUESTS, 503 UNAVAILABLE, requests' ConnectionError and
ChunkedEncodingError, google.auth's TransportError), plus what a REST client meets on a bad
network day and that predicate leaves out: 502, 504 / DEADLINE_EXCEEDED, UNKNOWN, 408 Request
Timeout, ABORTED (a concurrent change, e.g. an etag that no longer matches: the caller's retry
reads again), requests' ReadTimeout / Timeout, httpx transport errors, socket resets and
timeouts. A server error (5xx but 501) is transient whatever its text says: "quota exceeded"
in a 503 is the server's own trouble, not the project's allocation.

Permanent: bad input, bad config, other 4xx, an allocation quota that is exhausted, and a wait
that ran out of time (`WaitExpired`: a revision that never became Ready, a build that never
finished — a verdict, not a network hiccup). Interrupts (KeyboardInterrupt, SystemExit,
asyncio.CancelledError, Prefect's TerminationSignal: BaseException, not Exception) are neither:
they are never classified, never retried, never rewrapped (`is_interrupt`).

Quota vs rate limit: Google says which in the `google.rpc.ErrorInfo` of the error's details
(`reason` RESOURCE_QUOTA_EXCEEDED vs RATE_LIMIT_EXCEEDED, googleapis/googleapis
google/api/error_reason.proto); google-api-core exposes it as `exc.reason`. Only when no
ErrorInfo came does the message text decide (`quota_kind` is the one place that reads it).
`retry_condition_fn` adapts `is_transient` to Prefect's `@task(retry_condition_fn=...)`; the
backoff rule and the waiter that use this classification are in tasks/waiting.py.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable
from typing import Any, Literal

import httpx

__all__ = [
    "PermanentError",
    "TransientError",
    "WaitExpired",
    "error_reason",
    "is_interrupt",
    "is_quota_error",
    "is_transient",
    "quota_kind",
    "retry_condition_fn",
]

# Transport errors that are our own fault, not the network's: retrying cannot help.
_PERMANENT_TRANSPORT = (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.ProxyError)

# ErrorInfo reasons (google/api/error_reason.proto) that say "an allocation is used up":
# waiting does not create quota. Rate limits refill by themselves: transient.
QUOTA_REASONS = frozenset({"RESOURCE_QUOTA_EXCEEDED", "RESOURCE_AVAILABILITY"})
RATE_REASONS = frozenset({"RATE_LIMIT_EXCEEDED"})
ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"


class PermanentError(Exception):
    """An error that retrying cannot fix (bad input, bad config, 4xx, quota denied)."""


class TransientError(Exception):
    """An error worth retrying with backoff (rate limit, 5xx, a dropped connection)."""


class WaitExpired(PermanentError, TimeoutError):
    """A wait for an outcome ran out of time: the verdict is "not within the deadline".

    Still a TimeoutError for callers that catch those, but never retried: retrying would wait
    the whole timeout again (a revision never Ready during a rollback: 4 x 10 min).
    """


@functools.cache
def _google_predicates() -> tuple[Callable[[Exception], bool], tuple[type, ...]]:
    """google-api-core's predicate and the REST transport errors it does not cover.

    Imported on first use: the webhook receiver classifies errors without loading Google.
    """
    import requests
    from google.api_core import exceptions as gexc
    from google.api_core.retry import if_transient_error

    extra: tuple[type, ...] = (
        gexc.BadGateway,  # 502
        gexc.GatewayTimeout,  # 504
        gexc.DeadlineExceeded,  # gRPC DEADLINE_EXCEEDED
        gexc.Unknown,  # gRPC UNKNOWN (an HTTP 5xx the client could not map)
        requests.exceptions.Timeout,  # ReadTimeout and ConnectTimeout
    )
    return if_transient_error, extra


def is_interrupt(exc: BaseException) -> bool:
    """An interrupt, not an error: Ctrl-C, `sys.exit`, a cancelled coroutine, Prefect's
    TerminationSignal (SIGTERM to a flow run). Everything that is not an `Exception`."""
    return not isinstance(exc, Exception)


# HTTP statuses worth another try whatever the text: 408 Request Timeout (the server gave up
# waiting for the request), 429 (a rate limit unless ErrorInfo or text say allocation quota),
# and 5xx but 501 Not Implemented.
def _status(exc: BaseException) -> int | None:
    """The HTTP status an error carries (httpx, requests, google-api-core), else None."""
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code
    if "requests" in sys.modules or "google.api_core" in sys.modules:  # else: not theirs
        import requests
        from google.api_core import exceptions as gexc

        if isinstance(exc, requests.HTTPError) and exc.response is not None:
            return exc.response.status_code
        if isinstance(exc, gexc.GoogleAPICallError) and isinstance(exc.code, int):
            return exc.code
    return None


def _server_error(code: int | None) -> bool:
    return code is not None and code >= 500 and code != 501


# The gRPC status an error over REST names in its body ("status": "ABORTED"): google-api-core
# maps the HTTP 409 to `Conflict` whether the body says ABORTED or ALREADY_EXISTS.
def _rest_status(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    try:
        body = response.json() if response is not None and hasattr(response, "json") else None
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    status = error.get("status") if isinstance(error, dict) else None
    return status if isinstance(status, str) else None


def _aborted(exc: BaseException) -> bool:
    """ABORTED: a concurrent change won (AIP-154, aip.dev/154: a request whose etag no longer
    matches is refused with ABORTED; over REST an HTTP 409 whose body's status is ABORTED)."""
    from google.api_core import exceptions as gexc

    if isinstance(exc, gexc.Aborted):
        return True
    return isinstance(exc, gexc.Conflict) and _rest_status(exc) == "ABORTED"


def is_transient(exc: BaseException) -> bool:
    """True when retrying the same call later can succeed."""
    if not isinstance(exc, Exception) or isinstance(exc, PermanentError):
        return False  # an interrupt (is_interrupt), or a verdict
    if isinstance(exc, TransientError):
        return True
    code = _status(exc)
    if _server_error(code) or code == 408:
        return True  # before the quota text: a 503 saying "quota exceeded" is still a 503
    if isinstance(exc, httpx.HTTPStatusError):
        return code == 429
    if isinstance(exc, httpx.TransportError):
        return not isinstance(exc, _PERMANENT_TRANSPORT)
    if quota_kind(exc) == "quota":
        return False  # a 429 RESOURCE_EXHAUSTED for an allocation quota: next region, not later
    google_transient, extra = _google_predicates()
    if google_transient(exc) or isinstance(exc, extra) or _aborted(exc):
        return True
    return isinstance(exc, ConnectionError | TimeoutError)


# ---------------------------------------------------------------- quota vs rate limit


def error_reason(exc: BaseException) -> str | None:
    """The `reason` of the ErrorInfo Google sent with the error, if any.

    google-api-core sets `.reason` from the REST body's details; an operation's error (a
    google.rpc.Status dict or proto) carries the same ErrorInfo in its `details`.
    """
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason.isupper():
        return reason
    details = list(getattr(exc, "details", None) or ())
    for status in getattr(exc, "errors", None) or ():  # an operation's google.rpc.Status
        details.extend(getattr(status, "details", None) or ())
    for detail in details:
        if isinstance(detail, dict) and detail.get("@type") == ERROR_INFO_TYPE:
            return detail.get("reason") or None
        if getattr(detail, "type_url", "") == ERROR_INFO_TYPE:  # a protobuf Any
            from google.rpc import error_details_pb2

            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason or None
    return None


# Fallback when no ErrorInfo came: an allocation quota (GPUs, CPU, memory per region) is
# exhausted. Rate quotas ("Quota exceeded for quota metric 'Read requests' and limit
# '... per minute'") are not. Seed 003's GPU refusals are the first two phrases.
# Cloud Run's older refusal of a region's CPU / memory allocation, a 400 INVALID_ARGUMENT
# without ErrorInfo: "spec.template.spec.containers.resources.limits.cpu: Invalid value
# specified for cpu. For the specified value, maxScale may not exceed 10.\nConsider running your
# workload in a region with greater capacity, ... or requesting an increase in quota for this
# region" (firebase/firebase-tools#5867, googlecodelabs/feedback#1210, the memory variant), and
# its newer wording "Max instances must be set to 200 or fewer to set the requested total CPU."
# (jspsych/datapipe#238; with "Quota violated: CpuAllocPerProjectRegion requested: ...",
# googlecodelabs/feedback#1856): another region may have the capacity.
_QUOTA_MESSAGE = re.compile(
    r"quota exceeded|exceeded (?:its |the |your )?quota|do not have (?:enough )?quota"
    r"|insufficient quota|quota violated|allowable count of GPUs"
    r"|maxScale may not exceed \d+|Max instances must be set to \d+ or fewer",
    re.IGNORECASE,
)
_RATE_MESSAGE = re.compile(r"per (?:minute|second|100 seconds|hour)|rate limit", re.IGNORECASE)


def quota_kind(error: BaseException | str) -> Literal["quota", "rate", None]:
    """'quota' (an allocation is used up), 'rate' (a rate limit) or None (neither).

    The structured ErrorInfo reason decides first; the message text only when there is none. A
    server error (5xx but 501) is neither, whatever its text: the server's trouble, retried.
    """
    if not isinstance(error, str):
        if _server_error(_status(error)):
            return None
        reason = error_reason(error)
        if reason in QUOTA_REASONS:
            return "quota"
        if reason in RATE_REASONS:
            return "rate"
        error = getattr(error, "message", None) or str(error)
    if _RATE_MESSAGE.search(error):
        return "rate"
    if _QUOTA_MESSAGE.search(error):
        return "quota"
    return None


def is_quota_error(error: BaseException | str) -> bool:
    """True when the error says an allocation quota is exhausted (not a rate limit)."""
    return quota_kind(error) == "quota"


# ---------------------------------------------------------------- retry plumbing


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
