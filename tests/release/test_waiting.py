"""The one waiter (tasks/waiting.py): what ends a wait, and what it raises then."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from google.api_core import exceptions as gexc

from shipyard.tasks.errors import WaitExpired, is_transient
from shipyard.tasks.waiting import Deadline, NotYet, await_for, pauses, wait_for

NOW = {"first_delay_s": 0.0, "max_delay_s": 0.0}  # no pauses: the rules, not the clock


def _calls(*outcomes: object):
    """A call that raises or returns `outcomes` in turn; `calls.count` says how often it ran."""
    it = iter(outcomes)

    def call() -> object:
        call.count += 1  # type: ignore[attr-defined]
        outcome = next(it)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    call.count = 0  # type: ignore[attr-defined]
    return call


def test_the_backoff_doubles_up_to_the_cap_with_jitter():
    bounds = [0.1, 0.2, 0.4, 0.5, 0.5]
    for pause, bound in zip(itertools.islice(pauses(0.1, 0.5), 5), bounds, strict=True):
        assert 0 <= pause <= bound


def test_retries_transient_errors_then_returns():
    call = _calls(gexc.ServiceUnavailable("x"), gexc.TooManyRequests("y"), "done")
    assert wait_for(call, what="t", attempts=5, retry_on=is_transient, **NOW) == "done"
    assert call.count == 3


def test_attempts_spent_raise_the_last_error_itself():
    seen: list[Exception] = []
    call = _calls(*[gexc.ServiceUnavailable(str(n)) for n in range(3)])
    with pytest.raises(gexc.ServiceUnavailable, match="2"):
        wait_for(call, what="t", attempts=3, retry_on=is_transient, on_retry=seen.append, **NOW)
    assert call.count == 3 and len(seen) == 2  # the last failure is not "retried"


def test_a_permanent_error_ends_the_wait_at_once():
    call = _calls(gexc.BadRequest("no"), "never")
    with pytest.raises(gexc.BadRequest):
        wait_for(call, what="t", attempts=5, retry_on=is_transient, **NOW)
    assert call.count == 1


def test_polls_until_an_outcome():
    call = _calls(NotYet("queued"), NotYet("working"), "built")
    assert wait_for(call, what="t", deadline=Deadline(60), **NOW) == "built"


def test_an_expired_deadline_is_the_projects_verdict_never_transient():
    call = _calls(*[NotYet("reconciling")] * 3)
    with pytest.raises(WaitExpired, match="quota preference p: no outcome within 0 s") as info:
        wait_for(call, what="quota preference p", deadline=Deadline(0), **NOW)
    assert call.count == 1  # the deadline had passed: no second call
    assert isinstance(info.value, TimeoutError) and not is_transient(info.value)
    assert isinstance(info.value.__cause__, NotYet)

    failing = _calls(gexc.ServiceUnavailable("503"))
    with pytest.raises(WaitExpired, match="ServiceUnavailable") as info:
        wait_for(failing, what="t", deadline=Deadline(0), retry_on=is_transient, **NOW)
    assert isinstance(info.value.__cause__, gexc.ServiceUnavailable)


def test_the_async_waiter_follows_the_same_rules():
    outcomes = iter([NotYet(), gexc.ServiceUnavailable("x"), "token"])

    async def call() -> object:
        outcome = next(outcomes)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    got = asyncio.run(await_for(call, what="t", attempts=4, retry_on=is_transient, **NOW))
    assert got == "token"
