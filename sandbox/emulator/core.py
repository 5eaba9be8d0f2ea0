"""Shared state of the emulator: scenario, long-running operations, logs, call counts, errors.

Each API module (run.py, quotas.py, build.py, logging_api.py) registers a router on the
app and keeps its own resources in `state.stores[<api>]`.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from sandbox.scenario import Scenario

STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    412: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

# google.rpc.Code numbers, for an operation's `error`.
RPC_CODES = {
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
}


ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"


def error_info(reason: str, domain: str = "googleapis.com", **metadata: str) -> dict:
    """A google.rpc.ErrorInfo as Google puts it in `error.details` (REST JSON).

    Shape and reasons from googleapis/googleapis: google/rpc/error_details.proto (ErrorInfo:
    reason, domain, metadata) and google/api/error_reason.proto, whose examples for
    RATE_LIMIT_EXCEEDED and RESOURCE_QUOTA_EXCEEDED use domain "googleapis.com" and metadata
    service, consumer ("projects/123"), quota_metric / quota_limit, quota_location.
    """
    return {"@type": ERROR_INFO_TYPE, "reason": reason, "domain": domain, "metadata": metadata}


def quota_error_info(service: str, project: str, quota_id: str, region: str) -> dict:
    """ErrorInfo of an exhausted allocation quota (waiting does not help)."""
    return error_info(
        "RESOURCE_QUOTA_EXCEEDED",
        service=service,
        consumer=f"projects/{project}",
        quota_limit=quota_id,
        quota_location=region,
    )


def rate_error_info(service: str, project: str = "unknown") -> dict:
    """ErrorInfo of a rate limit (per-minute request quota): transient."""
    return error_info(
        "RATE_LIMIT_EXCEEDED",
        service=service,
        consumer=f"projects/{project}",
        quota_metric=f"{service}/requests",
        quota_limit="RequestsPerMinutePerProject",
    )


class ApiError(Exception):
    """Raised by handlers; answered as Google's error envelope.

    `details` are google.rpc detail messages as REST JSON (each with its "@type"), e.g.
    `[error_info(...)]`; they go to `error.details` and, for an operation, to its Status.
    """

    def __init__(
        self, code: int, message: str, status: str | None = None, details: list | None = None
    ):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or STATUS_NAMES.get(code, "UNKNOWN")
        self.details = details or []

    def envelope(self) -> dict:
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "status": self.status,
                "details": self.details,
            }
        }

    def as_operation_error(self) -> dict:
        return {
            "code": RPC_CODES.get(self.status, 2),
            "message": self.message,
            "details": self.details,
        }


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.envelope(), status_code=exc.code)


async def json_body(request: Request) -> dict:
    """The request's JSON object ({} when empty), or Google's 400 for anything else."""
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise ApiError(400, "Invalid JSON payload received.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Invalid JSON payload received: expected an object.")
    return body


def query_flag(request: Request, name: str) -> bool:
    """A boolean query parameter such as validateOnly or allowMissing."""
    return request.query_params.get(name, "false").lower() in ("true", "1")


def paged(
    items: list,
    request: Request,
    key: str,
    render: Callable[[Any], Any] = lambda item: item,
    *,
    default_size: int | None = None,
) -> dict[str, Any]:
    """A list answer with offset paging: `{key: [render(item) ...], "nextPageToken": "…"}`.

    pageSize <= 0 or absent means `default_size` (None: the rest of the list). The last page
    carries no nextPageToken: the clients read an empty token as "ask again".
    """
    try:
        size = int(request.query_params.get("pageSize") or 0)
        start = int(request.query_params.get("pageToken") or 0)
    except ValueError:
        raise ApiError(400, "pageToken: not a token this API returned.") from None
    if size <= 0:
        size = default_size or max(len(items) - start, 0)
    end = start + size
    body: dict[str, Any] = {key: [render(item) for item in items[start:end]]}
    if end < len(items):
        body["nextPageToken"] = str(end)
    return body


def duration_s(value: Any, default: float, what: str) -> float:
    """A google.protobuf.Duration as JSON carries it ("600s", "12.5s") in seconds; `default`
    when absent; Google's 400 naming `what` and the value otherwise."""
    if not value:
        return default
    text = str(value)
    try:
        return float(text[:-1]) if text.endswith("s") else float(text)
    except ValueError:
        raise ApiError(400, f"{what} {value!r} is not a duration like '600s'") from None


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Operation:
    """A long-running operation. `finish` runs once, when the operation becomes done.

    `finish` returns the `response` dict (with its `@type`) or raises ApiError, which
    becomes the operation's `error`. `decided` (None: always) says whether the work behind it
    is over (a revision's container started or failed): until then no poll completes it,
    however many; `decision_made()` completes it then if its polls and delay allow.
    """

    name: str
    finish: Callable[[], dict]
    polls_left: int = 0
    metadata: dict | None = None
    not_before: float = 0.0  # time.monotonic() before which it is not done, however polled
    decided: Callable[[], bool] | None = None
    done: bool = False
    response: dict | None = None
    error: dict | None = None

    def complete(self) -> None:
        if self.done:
            return
        self.done = True
        try:
            self.response = self.finish()
        except ApiError as exc:
            self.error = exc.as_operation_error()

    def is_decided(self) -> bool:
        return self.decided is None or self.decided()

    def decision_made(self) -> None:
        """The work behind it is over: done now, unless polls or a delay are still owed."""
        if self.polls_left == 0 and time.monotonic() >= self.not_before:
            self.complete()

    def poll(self) -> dict:
        if not self.done and self.is_decided() and time.monotonic() >= self.not_before:
            if self.polls_left > 0:
                self.polls_left -= 1
            else:
                self.complete()
        return self.to_json()

    def to_json(self) -> dict:
        body: dict[str, Any] = {"name": self.name, "done": self.done}
        if self.metadata is not None:
            body["metadata"] = self.metadata
        if self.done:
            if self.error is not None:
                body["error"] = self.error
            else:
                body["response"] = self.response
        return body


@dataclass
class SandboxState:
    scenario: Scenario
    base_url: str = "http://127.0.0.1:0"
    registry_url: str | None = None
    docker_host: str | None = None  # the sandbox's Docker daemon (None: in-process stand-ins)
    operations: dict[str, Operation] = field(default_factory=dict)
    log_entries: list[dict] = field(default_factory=list)
    calls: Counter = field(default_factory=Counter)
    api_requests: Counter = field(default_factory=Counter)
    stores: dict[str, Any] = field(default_factory=dict)
    # Secret Manager entries added by `shipyard setup` (PUT /_sandbox/secrets/NAME): the
    # project's, not the scenario's, so a reset keeps them; a scenario's own `secrets` win.
    added_secrets: dict[str, str] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    # Every other field is touched on the event loop only; log lines also come from threads
    # (a container's stdout/stderr pumps, its startup in sandbox/engine), hence this lock.
    _log_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.rng.seed(self.scenario.seed)

    def reset(self, scenario: Scenario | None = None) -> None:
        """Forget every resource; optionally switch scenario (tests share one emulator)."""
        if scenario is not None:
            self.scenario = scenario
        self.operations.clear()
        self.log_entries.clear()
        self.calls.clear()
        self.api_requests.clear()
        for store in self.stores.values():
            if hasattr(store, "reset"):
                store.reset()
        self.rng.seed(self.scenario.seed)

    def secret(self, name: str) -> str | None:
        """A Secret Manager value by short or full name (`projects/P/secrets/NAME`), or None."""
        short = name.rsplit("/", 1)[-1]
        for source in (self.scenario.secrets, self.added_secrets):
            for key in (name, short):
                if key in source:
                    return source[key]
        return None

    def new_id(self) -> str:
        return uuid.uuid4().hex[:12]

    def start_operation(
        self,
        name: str,
        finish: Callable[[], dict],
        metadata: dict | None = None,
        polls: int | None = None,
        delay_ms: int = 0,
        decided: Callable[[], bool] | None = None,
    ) -> Operation:
        """Register an operation; with zero polls and no delay it completes at once (once
        `decided`, if given: see Operation)."""
        polls = self.scenario.operations.polls_before_done if polls is None else polls
        op = Operation(
            name=name,
            finish=finish,
            polls_left=polls,
            metadata=metadata,
            not_before=time.monotonic() + delay_ms / 1000,
            decided=decided,
        )
        self.operations[name] = op
        if polls == 0 and not delay_ms and op.is_decided():
            op.complete()
        return op

    def write_log(
        self,
        text: str | None = None,
        *,
        severity: str = "DEFAULT",
        resource: dict,
        log_name: str,
        json_payload: dict | None = None,
        labels: dict | None = None,
        timestamp: str | None = None,
    ) -> dict:
        """Store one LogEntry (what revisions and builds write, and entries:write)."""
        entry: dict[str, Any] = {
            "logName": log_name,
            "resource": resource,
            "timestamp": timestamp or now_rfc3339(),
            "receiveTimestamp": now_rfc3339(),
            "severity": severity,
        }
        if labels:
            entry["labels"] = labels
        if json_payload is not None:
            entry["jsonPayload"] = json_payload
        else:
            entry["textPayload"] = text or ""
        with self._log_lock:  # insertIds in append order, whichever thread writes
            entry["insertId"] = f"{next(self._ids):012d}"
            self.log_entries.append(entry)
        return entry
