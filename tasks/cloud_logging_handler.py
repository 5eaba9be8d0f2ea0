"""A `logging.Handler` that ships log lines to Cloud Logging in the background.

`emit` only turns the record into a structured entry and appends it to a bounded buffer (a few
microseconds: the step that logs is not slowed); a daemon thread sends batches through
google-cloud-logging's `Logger.batch()` (REST, `entries:write`). A batch that gets a transient
answer (429 rate limit, 503, 5xx, a dropped connection) is sent again with backoff
(tasks/waiting.py), with the same insertIds and timestamps, so Logging drops any copy that had
landed. What could not be sent (buffer full, a permanent error, retries exhausted) is counted
in `stats` and said once, on stderr, when the handler closes.

It knows nothing of releases: labels come from a `labels` callable given by the caller. Each
send has the client's deadline (the GoogleCloud block's client: tasks/deadlines.py `logging_s`
per request), so a stalled Logging endpoint costs a batch `attempts` deadlines, never the
thread.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shipyard.tasks.cloud_logging import LoggingClient, _redact
from shipyard.tasks.errors import is_transient
from shipyard.tasks.waiting import wait_for

__all__ = ["CloudLoggingHandler", "HandlerStats", "severity_of"]

_SEVERITIES = (
    (logging.CRITICAL, "CRITICAL"),
    (logging.ERROR, "ERROR"),
    (logging.WARNING, "WARNING"),
)


def severity_of(levelno: int) -> str:
    """Python level -> LogSeverity (levels between two names take the lower one)."""
    for level, name in _SEVERITIES:
        if levelno >= level:
            return name
    if levelno >= logging.INFO:
        return "INFO"
    return "DEBUG" if levelno > logging.NOTSET else "DEFAULT"


@dataclass
class HandlerStats:
    queued: int = 0
    sent: int = 0
    batches: int = 0
    retried_batches: int = 0
    dropped_full: int = 0  # the buffer was full: the line was never queued
    failed: int = 0  # a permanent error, or still failing after every retry

    @property
    def unsent(self) -> int:
        return self.dropped_full + self.failed


class CloudLoggingHandler(logging.Handler):
    """Batch log records to Cloud Logging from a background thread.

    client: a google-cloud-logging `Client`. labels: called per record (in the logging
    thread, so context variables of the caller are visible) -> entry labels.
    """

    def __init__(
        self,
        client: LoggingClient,
        *,
        log_name: str = "shipyard",
        labels: Callable[[logging.LogRecord], dict[str, str]] | None = None,
        resource: Any = None,
        max_buffer: int = 10_000,
        batch_size: int = 200,
        flush_interval_s: float = 0.5,
        attempts: int = 8,
        level: int = logging.INFO,
    ):
        super().__init__(level)
        self.client = client
        if resource is None:
            # Named here: without one the library probes the GCE metadata server per logger
            # (seconds off Google). The pipeline's lines are about the project, not a machine.
            from google.cloud.logging_v2.resource import Resource

            resource = Resource(type="global", labels={"project_id": client.project})
        self.logger = client.logger(log_name, resource=resource)
        self.labels = labels
        self.resource = resource
        self.max_buffer = max_buffer
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.attempts = attempts
        self.stats = HandlerStats()
        self._buffer: deque[dict[str, Any]] = deque()
        self._cond = threading.Condition()
        self._in_flight = 0
        self._stopping = False
        self._last_error = ""
        self._thread = threading.Thread(target=self._run, name="cloud-logging", daemon=True)
        self._thread.start()

    # ---- producer side (the thread that logs)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            entry = self._entry(record)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)
            return
        with self._cond:
            if len(self._buffer) >= self.max_buffer:
                self.stats.dropped_full += 1
                return
            self._buffer.append(entry)
            self.stats.queued += 1
            if len(self._buffer) >= self.batch_size:
                self._cond.notify_all()

    def _entry(self, record: logging.LogRecord) -> dict[str, Any]:
        payload: dict[str, Any] = {"message": record.getMessage(), "logger": record.name}
        if record.exc_info and record.exc_info[0] is not None:
            payload["exception"] = logging.Formatter().formatException(record.exc_info)
        for key in ("task_run_name", "flow_run_name"):
            value = getattr(record, key, None)
            if value:
                payload[key] = str(value)
        labels = dict(self.labels(record)) if self.labels else {}
        return {
            "payload": _redact(payload),
            "severity": severity_of(record.levelno),
            "labels": {k: v for k, v in labels.items() if v},
            "insert_id": uuid.uuid4().hex,
            "timestamp": dt.datetime.fromtimestamp(record.created, dt.UTC),
        }

    # ---- consumer side (the background thread)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._buffer and not self._stopping:
                    self._cond.wait(self.flush_interval_s)
                if not self._buffer and self._stopping:
                    return
                if len(self._buffer) < self.batch_size and not self._stopping:
                    # Let a batch fill up for a moment: fewer, bigger writes.
                    self._cond.wait(self.flush_interval_s)
                batch = [
                    self._buffer.popleft() for _ in range(min(self.batch_size, len(self._buffer)))
                ]
                self._in_flight = len(batch)
            try:
                if batch:
                    self._send(batch)
            finally:
                with self._cond:
                    self._in_flight = 0
                    self._cond.notify_all()

    def _send(self, entries: list[dict[str, Any]]) -> None:
        try:
            batch = self.logger.batch()
            extra = {"resource": self.resource}
            for e in entries:
                batch.log_struct(
                    e["payload"],
                    severity=e["severity"],
                    labels=e["labels"] or None,
                    insert_id=e["insert_id"],
                    timestamp=e["timestamp"],
                    **extra,
                )
        except Exception as exc:  # noqa: BLE001 - an entry the library refuses: counted
            self._last_error = f"{type(exc).__name__}: {exc}"[:300]
            self.stats.failed += len(entries)
            return

        def commit() -> None:
            try:
                batch.commit()  # keeps its entries when it raises
            except Exception as exc:
                self._last_error = f"{type(exc).__name__}: {exc}"[:300]
                raise

        def retried(_exc: Exception) -> None:
            self.stats.retried_batches += 1

        try:
            wait_for(
                commit,
                what="Cloud Logging batch",
                first_delay_s=0.2,
                max_delay_s=5.0,
                attempts=self.attempts,
                retry_on=is_transient,
                on_retry=retried,
            )
        except Exception:  # noqa: BLE001 - a permanent error or retries spent: counted
            self.stats.failed += len(entries)
            return
        self.stats.sent += len(entries)
        self.stats.batches += 1

    # ---- lifecycle

    def flush(self) -> None:
        self.drain()

    def drain(self, timeout: float = 30.0) -> bool:
        """Send what is buffered now; True when everything queued so far left the process."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._cond.notify_all()
            while self._buffer or self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._cond.wait(min(left, 0.05))
                self._cond.notify_all()
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Flush, stop the thread, and say what could not be sent."""
        if not self._stopping:
            self.drain(timeout)
            with self._cond:
                self._stopping = True
                left = len(self._buffer)
                self.stats.failed += left
                self._buffer.clear()
                self._cond.notify_all()
            self._thread.join(timeout=5)
            if self.stats.unsent:
                print(self.unsent_message(), file=sys.stderr)
        super().close()

    def unsent_message(self) -> str:
        s = self.stats
        return (
            f"Cloud Logging: {s.unsent} of {s.queued + s.dropped_full} log lines were not sent "
            f"({s.dropped_full} over the {self.max_buffer}-line buffer, {s.failed} failed"
            + (f"; last error: {self._last_error}" if self._last_error else "")
            + ")"
        )
