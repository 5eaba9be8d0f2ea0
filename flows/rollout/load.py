"""A bounded load generator: the canary's samples sent to the service URL during a bake.

Where real traffic is thin, a step's judge has too few requests to say anything (the
"no values found" of Argo Rollouts' users, a 0 % canary judged on three synthetic requests);
Flagger ships a load tester for this. `generate_load` sends the canary's own requests (its
samples, body shape, internal token and, for a private service, the invoker's ID token: reused
from flows/canary/samples.py and probing.py) to the *service* URL, so the traffic split decides
which revision answers and both are judged on the same kind of request.

Bounded in every direction: at most `rate_per_s` requests a second, at most `max_in_flight`
waiting for an answer (a slow revision holds the rate down instead of piling requests up; no
burst catches up on a missed slot), each with the canary's `request_timeout_s` as its deadline;
on exit nothing is left running (in-flight requests get `DRAIN_S` to finish, then are
cancelled) and the thread is joined.

It runs in a thread of its own with its own event loop and `httpx.AsyncClient`, so the release
flow's thread keeps judging, logging and reporting during the bake. The token lives only in
the request headers; counts and errors carry statuses and exception type names, never a header.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import httpx

from shipyard.blocks.rollout_policy import LoadGenerator
from shipyard.flows.canary.checks import request_shape
from shipyard.flows.canary.probing import _headers, invoker_token, load_token
from shipyard.flows.canary.samples import resolve_samples
from shipyard.flows.release.context import RunContext
from shipyard.flows.release.steps import StepLog
from shipyard.tasks.canary_probe import encode_request

__all__ = ["DRAIN_S", "LoadCounts", "LoadHandle", "Prepared", "generate_load"]

# How long in-flight requests may finish after the load stops, before they are cancelled.
DRAIN_S = 5.0
# An ID token lives an hour (Google's); a bake longer than this gets a fresh one.
BEARER_REFRESH_S = 45 * 60.0


@dataclass(frozen=True)
class LoadCounts:
    """What the generator did so far. `errors`: answers Cloud Run counts as failures (5xx,
    429: flows/rollout/judge.py) plus requests that got no answer (`unanswered`: a timeout, a
    refused connection; by exception type in `failures`)."""

    sent: int = 0
    answered: int = 0
    errors: int = 0
    unanswered: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Prepared:
    """The requests to send, ready: bodies with their content types, headers, method, URL."""

    url: str
    method: str
    bodies: list[tuple[bytes, str]]
    headers: dict[str, str]
    timeout_s: float
    bearer_audience: str | None = None  # refresh the ID token for this audience (private)


class LoadHandle:
    """A running (once entered) load generator; a context manager: `with generate_load(...) as
    load: ... load.counts()`. A disabled generator is a handle that sends nothing."""

    def __init__(
        self,
        prepared: Prepared | None,
        rate_per_s: float,
        max_in_flight: int,
        *,
        ctx: RunContext | None = None,
        drain_s: float = DRAIN_S,
    ) -> None:
        self._prepared = prepared
        self._interval = 1.0 / rate_per_s
        self._max_in_flight = max_in_flight
        self._ctx = ctx
        self._drain_s = drain_s
        self._lock = threading.Lock()
        self._sent = 0
        self._answered = 0
        self._unanswered = 0
        self._in_flight = 0
        self._peak = 0
        self._statuses: Counter[int] = Counter()
        self._failures: Counter[str] = Counter()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._crash: BaseException | None = None

    # ------------------------------------------------------------------ the caller's side

    def __enter__(self) -> Self:
        if self._prepared is None:
            return self
        self._thread = threading.Thread(
            target=self._run, name="shipyard-load-generator", daemon=True
        )
        self._thread.start()
        self._started.wait()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop sending, let in-flight requests finish within the drain time (then cancel
        them), close the client and join the thread."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended meanwhile
                loop.call_soon_threadsafe(stop.set)
        thread.join()
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def counts(self) -> LoadCounts:
        """The figures so far (safe from any thread)."""
        with self._lock:
            errors = sum(n for s, n in self._statuses.items() if s >= 500 or s == 429)
            return LoadCounts(
                sent=self._sent,
                answered=self._answered,
                errors=errors + self._unanswered,
                unanswered=self._unanswered,
                in_flight=self._in_flight,
                peak_in_flight=self._peak,
                by_status=dict(sorted(self._statuses.items())),
                failures=dict(self._failures),
            )

    # ------------------------------------------------------------------ the load's thread

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001  # kept for the caller's counts; a thread must not die silently
            self._crash = exc
            with self._lock:
                self._failures[f"generator {type(exc).__name__}"] += 1
        finally:
            self._started.set()

    async def _main(self) -> None:
        prepared = self._prepared
        if prepared is None:  # a disabled generator is never started
            return
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._started.set()
        slots = asyncio.Semaphore(self._max_in_flight)
        pending: set[asyncio.Task[None]] = set()
        bodies = itertools.cycle(prepared.bodies)
        headers = dict(prepared.headers)
        bearer_at = time.monotonic()
        limits = httpx.Limits(max_connections=self._max_in_flight)
        async with httpx.AsyncClient(
            timeout=prepared.timeout_s, limits=limits, follow_redirects=False
        ) as client:
            next_at = time.monotonic()
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._stop.wait(), timeout=max(0.0, next_at - time.monotonic())
                    )
                if self._stop.is_set():
                    break
                # A free slot, or wait for one (a stop ends the wait).
                acquire = asyncio.ensure_future(slots.acquire())
                stop_wait = asyncio.ensure_future(self._stop.wait())
                await asyncio.wait({acquire, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                stop_wait.cancel()
                if not acquire.done() or self._stop.is_set():
                    acquire.cancel()
                    if acquire.done() and not acquire.cancelled():
                        slots.release()
                    break
                if (
                    prepared.bearer_audience
                    and self._ctx is not None
                    and time.monotonic() - bearer_at > BEARER_REFRESH_S
                ):
                    bearer_at = time.monotonic()
                    try:
                        token = await asyncio.to_thread(
                            invoker_token, self._ctx, prepared.bearer_audience
                        )
                    except Exception as exc:  # noqa: BLE001  # keep the old token; counted, and tried again next interval
                        with self._lock:
                            self._failures[f"ID token refresh {type(exc).__name__}"] += 1
                    else:
                        if token:
                            headers["authorization"] = f"Bearer {token}"
                body, content_type = next(bodies)
                task = asyncio.create_task(
                    self._send(client, prepared, body, {"content-type": content_type, **headers})
                )
                task.add_done_callback(lambda _t: slots.release())
                pending.add(task)
                task.add_done_callback(pending.discard)
                # The next slot: one interval on, never in the past (no burst to catch up).
                next_at = max(next_at + self._interval, time.monotonic())
            if pending:
                _, late = await asyncio.wait(set(pending), timeout=self._drain_s)
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)

    async def _send(
        self, client: httpx.AsyncClient, prepared: Prepared, body: bytes, headers: dict[str, str]
    ) -> None:
        with self._lock:
            self._sent += 1
            self._in_flight += 1
            self._peak = max(self._peak, self._in_flight)
        try:
            async with asyncio.timeout(prepared.timeout_s):  # the request's whole deadline
                response = await client.request(
                    prepared.method, prepared.url, content=body, headers=headers
                )
        except asyncio.CancelledError:
            with self._lock:
                self._unanswered += 1
                self._failures["cancelled at stop"] += 1
            raise
        except (httpx.HTTPError, TimeoutError) as exc:
            # The type only: an httpx message can echo the request, which carries the token.
            with self._lock:
                self._unanswered += 1
                self._failures[type(exc).__name__] += 1
        else:
            with self._lock:
                self._answered += 1
                self._statuses[response.status_code] += 1
        finally:
            with self._lock:
                self._in_flight -= 1


def prepare(ctx: RunContext, url: str) -> Prepared:
    """The canary's requests for `url`: its samples (read once), the internal token and, for a
    private service, an ID token for `url`."""
    policy = ctx.target.canary
    samples = resolve_samples(policy, StepLog(), ctx.target.build_settings_block, ctx.git_tag)
    shape = request_shape(policy)
    bodies = []
    for resolved in samples:
        content, content_type, _detail = encode_request(resolved.sample, shape)
        bodies.append((content, content_type))
    bearer = invoker_token(ctx, url)
    headers = {**policy.headers, **_headers(policy, load_token(policy), bearer)}
    return Prepared(
        url=url.rstrip("/") + policy.path,
        method=policy.method,
        bodies=bodies,
        headers=headers,
        timeout_s=policy.request_timeout_s,
        bearer_audience=url if bearer else None,
    )


def generate_load(ctx: RunContext, url: str, load: LoadGenerator) -> LoadHandle:
    """A load generator for `url` (the service URL: the split decides who answers) at
    `load.rate_per_s` with at most `load.max_in_flight` in flight; it starts when the handle is
    entered and stops on exit. `load.enabled` false: a handle that sends nothing."""
    if not load.enabled:
        return LoadHandle(None, load.rate_per_s, load.max_in_flight)
    return LoadHandle(prepare(ctx, url), load.rate_per_s, load.max_in_flight, ctx=ctx)
