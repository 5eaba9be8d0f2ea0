"""Deadlines of outside calls, in one place: how long one call may take before it is given up.

Why: Google's generated clients send a request with no socket timeout when the caller passes
none (`get_revision`, `list_revisions` and the long-running operation's `get_operation` have no
default timeout in google-cloud-run 0.16), so a server that accepts the connection and never
answers held a release, and its service's slot, until the flow's 3-hour timeout. Every call to
an outside system therefore passes a deadline from here:

- Google's clients (Cloud Run, Cloud Build, Cloud Quotas): `timeout=` on every call; over the
  REST transport it is the socket timeout of the request (`requests`: connect, and each read).
  A call inside a wait gets at most what the wait has left (`within`), so the wait's deadline
  holds even while a call stalls.
- Cloud Logging (google-cloud-logging over HTTP sends `timeout=60` on every request and offers
  no per-call setting): the client is given a session that caps each request (`capped_session`).
- The OCI registry (httpx), the Docker daemon (docker-py), git (tasks/git_source.py: 120 s per
  command) and the Prefect API (its client's `PREFECT_API_REQUEST_TIMEOUT`, 60 s by default):
  the figures below are what their clients are given.

Overriding: the `GoogleCloud` block (blocks/cloud.py) hands out every Google client; its
`call_timeout_s` replaces the Google deadlines for the clients it makes (`attach` records the
figures with the client, `of` finds them again in tasks/, which never import blocks).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from google.auth.transport.requests import AuthorizedSession
from requests import PreparedRequest, Response
from requests.adapters import HTTPAdapter

from shipyard.tasks.waiting import Deadline

__all__ = [
    "DEFAULT",
    "MIN_CALL_S",
    "CappedAdapter",
    "Deadlines",
    "attach",
    "capped_session",
    "of",
    "within",
]

# A call is never given less than this, even when its wait has (almost) nothing left: the call
# that falls due at the deadline is made once more (tasks/waiting.py) and must be able to answer.
MIN_CALL_S = 0.5


@dataclass(frozen=True)
class Deadlines:
    """Seconds one call may take, by kind of call (each a deadline per request, not per wait)."""

    google_read_s: float = 30.0  # GET / LIST of Cloud Run, Cloud Build, Cloud Quotas
    google_write_s: float = 60.0  # a create / update / delete (answers with an operation)
    operation_poll_s: float = 30.0  # one GET of a long-running operation
    logging_s: float = 30.0  # one Cloud Logging request (entries:write, one entries:list page)
    registry_connect_s: float = 10.0  # the OCI registry: opening a connection
    registry_io_s: float = 60.0  # the OCI registry: each read / write between bytes
    docker_s: float = 60.0  # one Docker daemon API call
    docker_build_silence_s: float = 1800.0  # a build's progress stream silent this long: stalled
    git_s: float = 120.0  # one git command (tasks/git_source.py)

    def google(self, seconds: float) -> Deadlines:
        """These deadlines with every Google one (API calls, operation polls, Logging) set to
        `seconds`: what the GoogleCloud block's `call_timeout_s` does."""
        if seconds <= 0:
            raise ValueError(
                f"call_timeout_s: {seconds!r} is not a duration; give seconds > 0 (e.g. 30), "
                "or leave it empty for the defaults"
            )
        return replace(
            self,
            google_read_s=seconds,
            google_write_s=seconds,
            operation_poll_s=seconds,
            logging_s=seconds,
        )


DEFAULT = Deadlines()

# client -> the deadlines it was made with (the GoogleCloud block records them; weak keys: a
# client that is gone takes its entry with it).
_ATTACHED: weakref.WeakKeyDictionary[Any, Deadlines] = weakref.WeakKeyDictionary()


C = TypeVar("C")


def attach(client: C, deadlines: Deadlines) -> C:
    """Record the deadlines `client`'s calls get (see `of`); returns the client."""
    _ATTACHED[client] = deadlines
    return client


def of(client: Any) -> Deadlines:
    """The deadlines recorded for `client`, else the defaults."""
    try:
        return _ATTACHED.get(client, DEFAULT)
    except TypeError:  # a client that cannot be weakly referenced was never attached
        return DEFAULT


def within(per_call_s: float, deadline: Deadline | None) -> float:
    """A call's timeout inside a wait: its own deadline, cut to what the wait has left (never
    below MIN_CALL_S)."""
    if deadline is None:
        return per_call_s
    return max(MIN_CALL_S, min(per_call_s, deadline.remaining()))


class CappedAdapter(HTTPAdapter):
    """A requests adapter that never lets one request wait longer than `cap_s` (connect, and
    each read): what `capped_session` mounts."""

    def __init__(self, cap_s: float) -> None:
        super().__init__()
        self.cap_s = cap_s

    def send(
        self,
        request: PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float | None, float | None] | None = None,
        verify: bool | str = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> Response:
        if isinstance(timeout, int | float):
            timeout = min(float(timeout), self.cap_s)
        else:
            timeout = self.cap_s
        return super().send(
            request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies
        )


def capped_session(credentials: Any, cap_s: float) -> AuthorizedSession:
    """google-auth's AuthorizedSession whose requests never wait longer than `cap_s` each: for
    google-cloud-logging's HTTP client (`Client(_http=...)`), which sends every request with its
    own 60 s timeout and has no per-call setting."""
    session = AuthorizedSession(credentials)  # type: ignore[no-untyped-call]  # google-auth: unannotated
    adapter = CappedAdapter(cap_s)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
